"""charrnn-eval: the loss of a trained run's checkpoint on any text, in nats and bits per character."""

from __future__ import annotations

import math

from absl import flags

from charrnn import _cli
from charrnn.errors import CharRNNError

_cli.define_checkpoint_flags()
flags.DEFINE_string("data", None, "Text file or registered corpus to evaluate on (default: the run's --data).")
flags.DEFINE_enum("split", "all", ["all", "val"], "all: the whole text; val: its last val_fraction, exactly the "
                  "training run's validation split.")
flags.DEFINE_integer("batch_size", None, "Sequences per batch (default: the run's); does not change the loss.")
FLAGS = flags.FLAGS


def main() -> None:
    # TensorFlow: after the flags are parsed.
    from charrnn import checkpoint
    from charrnn.corpus import read_text
    from charrnn.data import split_ids
    from charrnn.devices import resolve_device
    from charrnn.evaluator import Evaluator

    device = resolve_device(FLAGS.device)
    model, config, vocab, path = checkpoint.load_model(FLAGS.run_dir, FLAGS.which, device)
    data = FLAGS.data or config.data
    ids = vocab.encode(read_text(data))
    what = "all"
    if FLAGS.split == "val":
        ids = split_ids(ids, config.val_fraction)[1]
        what = f"the validation split (last {config.val_fraction:g})"
    batch_size = FLAGS.batch_size or config.batch_size
    if batch_size < 1:
        raise CharRNNError(f"--batch_size must be at least 1, got {batch_size}")
    loss = Evaluator(model, config.seq_length, batch_size, carry_state=config.carry_state, device=device).loss(ids)
    print(f"loss {loss:.4f} nats/char, {loss / math.log(2):.4f} bits/char on {len(ids):,} characters "
          f"({what} of {data}); checkpoint {path}")


def run() -> None:
    _cli.run(main, __doc__)


if __name__ == "__main__":
    run()
