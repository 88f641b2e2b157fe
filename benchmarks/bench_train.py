"""Training-step speed of charrnn's compiled train step.

Builds a `Trainer` on tiny-shakespeare (from $CHARRNN_DATA_DIR or the cache; pass --data
for another text), runs --warmup steps (tracing included, reported separately), then
times --steps steps one by one and reports the median: steps/s and characters/s. Prints a
table, then one JSON line.

    python benchmarks/bench_train.py                       # the case-study model
    python benchmarks/bench_train.py --rnn_units=64 --steps=3 --warmup=1   # smoke test
"""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
import time

from absl import app, flags

import charrnn

flags.DEFINE_string("data", "tinyshakespeare", "Corpus path or registered name.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("seq_length", 100, "Sequence length.")
flags.DEFINE_integer("embedding_dim", 256, "Embedding size.")
flags.DEFINE_integer("rnn_units", 1024, "LSTM units.")
flags.DEFINE_integer("num_layers", 1, "LSTM layers.")
flags.DEFINE_integer("steps", 10, "Timed steps.")
flags.DEFINE_integer("warmup", 2, "Untimed steps before timing (the first one traces).")
flags.DEFINE_string("device", "auto", "Device.")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    with tempfile.TemporaryDirectory() as run_dir:
        config = charrnn.TrainConfig(
            data=FLAGS.data, run_dir=run_dir, batch_size=FLAGS.batch_size, seq_length=FLAGS.seq_length,
            embedding_dim=FLAGS.embedding_dim, rnn_units=FLAGS.rnn_units, num_layers=FLAGS.num_layers,
            val_fraction=0.0, device=FLAGS.device)
        trainer = charrnn.Trainer(config)
        batches = iter(trainer.train_dataset(0).repeat())
        warmup_times, times = [], []
        for i in range(FLAGS.warmup + FLAGS.steps):
            inputs, targets = next(batches)
            start = time.perf_counter()
            float(trainer.train_step(inputs, targets)[0])  # float() waits for the result
            (warmup_times if i < FLAGS.warmup else times).append(time.perf_counter() - start)
    step_s = statistics.median(times)
    result = {
        "benchmark": "train_step", "machine": platform.machine(), "device": trainer.device,
        "batch_size": FLAGS.batch_size, "seq_length": FLAGS.seq_length, "embedding_dim": FLAGS.embedding_dim,
        "rnn_units": FLAGS.rnn_units, "num_layers": FLAGS.num_layers, "params": trainer.model.count_params(),
        "first_step_s": warmup_times[0] if warmup_times else None, "median_step_s": step_s,
        "steps_per_s": 1 / step_s, "chars_per_s": FLAGS.batch_size * FLAGS.seq_length / step_s,
        "timed_steps": FLAGS.steps,
    }
    print(f"{'model':<34}{'params':>12}{'step (s)':>12}{'steps/s':>10}{'chars/s':>12}")
    shape = f"E{FLAGS.embedding_dim} LSTM{FLAGS.rnn_units}x{FLAGS.num_layers} b{FLAGS.batch_size} s{FLAGS.seq_length}"
    print(f"{shape:<34}{result['params']:>12,}{step_s:>12.3f}{result['steps_per_s']:>10.3f}{result['chars_per_s']:>12,.0f}")
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
