"""charrnn-eval: the loss of a trained run's checkpoint on any text, in nats and bits per character."""

from __future__ import annotations

import math

from absl import flags

from charrnn.cli import tool
from charrnn.corpus import resolve_sources
from charrnn.errors import CharRNNError

tool.define_checkpoint_flags()
flags.DEFINE_string("data", None, "Text file or registered corpus to evaluate on (default: the run's --data).")
flags.DEFINE_enum("split", "all", ["all", "val"], "all: the whole text; val: its last val_fraction, exactly the "
                  "training run's validation split.")
flags.DEFINE_integer("batch_size", None, "Sequences per batch (default: the run's); does not change the loss.")
FLAGS = flags.FLAGS


def check() -> None:
    if FLAGS.batch_size is not None and FLAGS.batch_size < 1:
        raise CharRNNError(f"--batch_size must be at least 1, got {FLAGS.batch_size}")
    tool.local_run()
    if FLAGS.data is not None:
        resolve_sources(FLAGS.data, fetch=False)


def main() -> None:
    # TensorFlow: after the flags are parsed.
    from charrnn.data import Layout, split_ids
    from charrnn.devices import resolve_device
    from charrnn.evaluator import Evaluator
    from charrnn.trained import load_model
    from charrnn.traindata import text_ids

    batch_size = FLAGS.batch_size
    device = resolve_device(FLAGS.device)
    model, config, vocab, path = load_model(FLAGS.run_dir, FLAGS.which, device)
    data = FLAGS.data or config.data
    ids = text_ids(data, vocab)
    what = "all"
    if FLAGS.split == "val":
        ids = split_ids(ids, config.val_fraction)[1]
        what = f"the validation split (last {config.val_fraction:g})"
    layout = Layout(config.seq_length, batch_size or config.batch_size, config.carry_state)
    loss = Evaluator(model, layout, device=device).loss(ids)
    print(f"loss {loss:.4f} nats/char, {loss / math.log(2):.4f} bits/char on {len(ids):,} characters "
          f"({what} of {data}); checkpoint {path}")


def run() -> None:
    tool.run(main, __doc__, check)


if __name__ == "__main__":
    run()
