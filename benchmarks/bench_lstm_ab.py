"""charrnn's train step with its LSTM as it is against the LSTM of another git revision or
variant, in one process.

Two Trainers of the same settings on the same batches: one whose model runs
`charrnn/nn/lstm.py` of the working tree (in --variant), one whose model runs that file as it
was at --baseline (read with `git show`, loaded as a module of its own) or, with
--baseline_variant, the working tree's in that variant. After a warm-up their
steps alternate --rounds times, and the median of the per-round ratios (current over
baseline) is printed: a drift of the machine's speed during the run cancels, which on a
shared VM matters more than anything else (single steps vary by 20%).

    python benchmarks/bench_lstm_ab.py --baseline=e942012 --rnn_units=256 --embedding_dim=64
    python benchmarks/bench_lstm_ab.py --baseline=HEAD~1 --mixed_precision=float32 --rounds=10
    python benchmarks/bench_lstm_ab.py --variant=unit_major+xla --baseline_variant=batch_major --rnn_units=1024
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import tensorflow as tf
from absl import app, flags

import charrnn
import charrnn.nn.model
from charrnn.log import install_console
from charrnn.nn.lstm import VARIANTS, fused_lstm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cpuinfo import cpu  # noqa: E402 - a sibling module of the benchmarks

flags.DEFINE_string("baseline", "HEAD", "Git revision whose charrnn/nn/lstm.py is the baseline.")
flags.DEFINE_enum("variant", "auto", ["auto", *VARIANTS],
                  "Variant of the working tree's LSTM (charrnn.nn.lstm.VARIANTS).")
flags.DEFINE_enum("baseline_variant", None, ["auto", *VARIANTS], "Compare against the working tree's LSTM in "
                  "this variant instead of --baseline's.")
flags.DEFINE_string("data", "tinyshakespeare", "Corpus path or registered name.")
flags.DEFINE_integer("rnn_units", 256, "LSTM units.")
flags.DEFINE_integer("embedding_dim", 64, "Embedding size.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("seq_length", 100, "Sequence length.")
flags.DEFINE_string("mixed_precision", "auto", "Precision policy of both.")
flags.DEFINE_integer("rounds", 15, "Timed rounds (one step of each per round).")
flags.DEFINE_integer("warmup", 3, "Untimed steps of each first (the first traces).")
FLAGS = flags.FLAGS


def _in_variant(variant: str) -> object:
    """The working tree's `fused_lstm` in `variant`."""
    return lambda *args: fused_lstm(*args, variant=variant)


def _baseline_lstm() -> object:
    """The `fused_lstm` of charrnn/nn/lstm.py at --baseline (charrnn/lstm.py before the
    subpackages), or in --baseline_variant."""
    if FLAGS.baseline_variant:
        return _in_variant(FLAGS.baseline_variant)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for path in ("charrnn/nn/lstm.py", "charrnn/lstm.py"):
        shown = subprocess.run(["git", "show", f"{FLAGS.baseline}:{path}"], cwd=root, capture_output=True, text=True)
        if shown.returncode == 0:
            break
    shown.check_returncode()
    source = shown.stdout
    path = os.path.join(tempfile.mkdtemp(), "baseline_lstm.py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("baseline_lstm", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fused_lstm


def _trainer(lstm: object, run_dir: str) -> tuple[charrnn.Trainer, object]:
    """A Trainer whose model runs `lstm`, its step traced, and its batches."""
    charrnn.nn.model.fused_lstm = lstm  # read when the step is traced, below
    config = charrnn.TrainConfig(data=FLAGS.data, run_dir=run_dir, rnn_units=FLAGS.rnn_units,
                                 embedding_dim=FLAGS.embedding_dim, batch_size=FLAGS.batch_size,
                                 seq_length=FLAGS.seq_length, val_fraction=0.0, lstm_impl="fused",
                                 mixed_precision=FLAGS.mixed_precision)
    trainer = charrnn.Trainer(config)
    batches = iter(trainer.data.dataset(0).repeat())
    for _ in range(max(FLAGS.warmup, 1)):
        trainer._train_loop(batches, tf.constant(1))[0].numpy()  # noqa: SLF001 - train()'s compiled loop
    return trainer, batches


def main(argv: list[str]) -> None:
    del argv
    install_console()  # the library's progress lines and warnings, as the tools show them
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        variants = {"current": _trainer(_in_variant(FLAGS.variant), a), "baseline": _trainer(_baseline_lstm(), b)}
        charrnn.nn.model.fused_lstm = fused_lstm
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(FLAGS.rounds):
            for name, (trainer, batches) in variants.items():
                start = time.perf_counter()
                trainer._train_loop(batches, tf.constant(1))[0].numpy()  # noqa: SLF001
                times[name].append(time.perf_counter() - start)
        precision = variants["current"][0].config.mixed_precision
    ratio = statistics.median(c / b for c, b in zip(times["current"], times["baseline"]))
    c = cpu()
    baseline = f"variant {FLAGS.baseline_variant}" if FLAGS.baseline_variant else FLAGS.baseline
    print(f"CPU: {c['model']}, {c['cores']} cores, {' '.join(c['features'])}")
    print(f"E{FLAGS.embedding_dim} LSTM {FLAGS.rnn_units}, {precision}, batch {FLAGS.batch_size} x "
          f"{FLAGS.seq_length}: current (variant {FLAGS.variant}) {statistics.median(times['current']):.4f} s/step, "
          f"baseline ({baseline}) {statistics.median(times['baseline']):.4f} s/step, current/baseline {ratio:.3f} "
          f"(median of {FLAGS.rounds} paired rounds)")
    print(json.dumps({"benchmark": "lstm_ab", "cpu": c, "baseline": baseline, "variant": FLAGS.variant,
                      "rnn_units": FLAGS.rnn_units, "embedding_dim": FLAGS.embedding_dim, "precision": precision,
                      "current_step_s": statistics.median(times["current"]),
                      "baseline_step_s": statistics.median(times["baseline"]), "ratio": ratio}))


if __name__ == "__main__":
    app.run(main)
