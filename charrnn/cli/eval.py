"""charrnn-eval: the loss of a trained run's checkpoint on any text, in nats and bits per character."""

from __future__ import annotations

import math

from absl import flags

from charrnn import storage
from charrnn.cli import tool
from charrnn.errors import CharRNNError
from charrnn.progress import Progress
from charrnn.text.corpus import resolve_sources
from charrnn.text.idcache import TextIds, UnknownCharacters, ids_in
from charrnn.validate import MAX_INT

tool.define_checkpoint_flags()
flags.DEFINE_string("data", None, "Text file or registered corpus to evaluate on (default: the run's --data).")
flags.DEFINE_enum("split", "all", ["all", "val"], "all: the whole text; val: its last val_fraction, exactly the "
                  "training run's validation split (the run's own text only).")
flags.DEFINE_enum("unknown_chars", "refuse", ["refuse", "skip"], "Characters of the text outside the model's "
                  "vocabulary: refuse the text (naming them), or skip them (the report counts them).")
flags.DEFINE_integer("batch_size", None, "Sequences per batch (default: the run's); does not change the loss.")
FLAGS = flags.FLAGS


def check() -> None:
    if FLAGS.batch_size is not None and not 1 <= FLAGS.batch_size <= MAX_INT:
        raise CharRNNError(f"--batch_size must be between 1 and {MAX_INT}, got {FLAGS.batch_size}")
    files = tool.local_run()
    data = FLAGS.data or (files.config.data if files is not None else None)
    if data is not None:
        resolve_sources(data, fetch=False)
        if files is not None and all(storage.is_local(s) for s in resolve_sources(data, fetch=False)):
            try:
                ids_in(data, files.vocab, FLAGS.unknown_chars == "skip")  # refused here, before TensorFlow
            except UnknownCharacters:
                # Refused by main() once the checkpoint has confirmed that vocab.json is the
                # run's: an edited one would put the blame on the text.
                pass


def main() -> None:
    # TensorFlow: after the flags are parsed.
    from charrnn.nn.devices import resolve_device
    from charrnn.run.records import read_fingerprints
    from charrnn.run.trained import load_model
    from charrnn.text.data import Layout, split_ids
    from charrnn.training.evaluator import Evaluator

    device = resolve_device(FLAGS.device)
    model, config, vocab, path = load_model(FLAGS.run_dir, FLAGS.which, device)
    data = FLAGS.data or config.data
    text = ids_in(data, vocab, FLAGS.unknown_chars == "skip")
    ids, what = text.ids, "all"
    if FLAGS.split == "val":
        saved = read_fingerprints(path)
        if saved is not None and saved[1] != text.fingerprint:
            raise CharRNNError(f"{data} is not the text {path} was trained on (fingerprint {text.fingerprint}, the "
                               f"checkpoint's {saved[1]}): its last {config.val_fraction:g} is not the run's "
                               "validation split; evaluate it with --split=all")
        ids = split_ids(ids, config.val_fraction)[1]
        what = f"the validation split (last {config.val_fraction:g})"
    layout = Layout(config.seq_length, FLAGS.batch_size or config.batch_size, config.carry_state)
    shown = Progress(f"evaluating {data}", len(ids), unit="characters", scale=1)
    loss = Evaluator(model, layout, device=device).loss(ids, progress=shown.update)
    print(f"loss {loss:.4f} nats/char, {loss / math.log(2):.4f} bits/char on {len(ids):,} characters "
          f"({what} of {data}){_skipped(text)}; checkpoint {path}")


def _skipped(text: TextIds) -> str:
    if not text.skipped:
        return ""
    counts = sorted(text.skipped.items(), key=lambda item: -item[1])
    shown = ", ".join(f"{c!r} x{n:,}" for c, n in counts[:8]) + (" ..." if len(counts) > 8 else "")
    return f", {sum(text.skipped.values()):,} characters outside the vocabulary skipped ({shown})"


def run() -> None:
    tool.run(main, __doc__, check)


if __name__ == "__main__":
    run()
