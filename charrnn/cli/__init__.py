"""The command-line tools, one module each (charrnn-train, charrnn-sample, charrnn-eval,
charrnn-export), and what they share (`tool`: flags, --help, a quiet TensorFlow start-up,
one-line errors). Run one as `charrnn-train` or `python -m charrnn.cli.train`."""
