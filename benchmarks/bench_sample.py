"""Sampling speed: the case study's eager generate_text and PyTorch's loop against charrnn's Sampler.

In one process, with the same weights (a freshly initialised case-study model; speed does
not depend on training): (a) the case study's loop, a stateful batch-1 Keras model called
eagerly once per character from Python; (b) charrnn's Sampler at --num_samples 1 and 64,
of a model built in each precision of --precisions, as a run trained in it is (the
Sampler picks the precision it generates in); (c) where torch is importable, PyTorch's
per-character nn.LSTM loop (benchmarks/torch_lstm.py, a process of its own). Reports
characters per second, ratios, the time to the first character including tracing, and
the memory-bandwidth bound for batch 1: bytes of weights read per character divided by a
copy bandwidth measured in this run. Prints the CPU, a table, then one JSON line.

    python benchmarks/bench_sample.py                              # case-study model
    python benchmarks/bench_sample.py --rnn_units=64 --num_chars=20 --baseline_chars=10   # smoke
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

import charrnn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cpuinfo import cpu  # noqa: E402 - a sibling module of the benchmarks

flags.DEFINE_integer("vocab_size", 65, "Vocabulary size (tiny-shakespeare has 65 characters).")
flags.DEFINE_integer("embedding_dim", 256, "Embedding size.")
flags.DEFINE_integer("rnn_units", 1024, "LSTM units.")
flags.DEFINE_integer("num_chars", 500, "Characters per sample.")
flags.DEFINE_integer("baseline_chars", 200, "Characters the eager baseline generates (it is slow).")
flags.DEFINE_multi_integer("num_samples", [1, 64], "Batch sizes for charrnn's sampler.")
flags.DEFINE_integer("repeats", 3, "Timed repetitions of each charrnn measurement (median).")
flags.DEFINE_list("precisions", ["float32", "mixed_bfloat16"], "Precisions the sampled models are built (trained) in.")
FLAGS = flags.FLAGS


def _case_study_generate(model: keras.Model, start_ids: list[int], num_chars: int, temperature: float) -> list[int]:
    """The case study's generate_text: one eager batch-1 call per character."""
    model.layers[1].reset_states()
    input_eval = tf.expand_dims(start_ids, 0)
    generated = []
    for _ in range(num_chars):
        predictions = model(input_eval)[:, -1, :] / temperature
        predicted_id = int(tf.random.categorical(predictions, num_samples=1)[-1, 0].numpy())
        input_eval = tf.expand_dims([predicted_id], 0)
        generated.append(predicted_id)
    return generated


def _copy_bandwidth(nbytes: int) -> float:
    """Bytes per second moved by copying an array of `nbytes` (read + write), best of 5."""
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - start)
    return 2 * src.nbytes / min(times)


def _torch() -> float | None:
    """PyTorch's per-character loop in chars/s (benchmarks/torch_lstm.py), or None without torch."""
    if importlib.util.find_spec("torch") is None:
        return None
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_lstm.py")
    settings = {"job": "sample", "vocab_size": FLAGS.vocab_size, "embedding_dim": FLAGS.embedding_dim,
                "rnn_units": FLAGS.rnn_units, "num_chars": FLAGS.baseline_chars}
    proc = subprocess.run([sys.executable, script, json.dumps(settings)], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["chars_per_s"]


def _charrnn(model: charrnn.CharRNN, vocab: charrnn.Vocabulary, prime: str, precision: str) -> tuple[list, float]:
    """The Sampler of `model`: a row per --num_samples, and its time to the first character."""
    start = time.perf_counter()
    sampler = charrnn.Sampler(model, vocab)
    sampler.generate(prime, num_chars=1, seed=0)
    first_char_s = time.perf_counter() - start
    rows = []
    for num_samples in FLAGS.num_samples:
        sampler.generate(prime, num_chars=FLAGS.num_chars, num_samples=num_samples, seed=0)  # warm
        times = []
        for r in range(FLAGS.repeats):
            start = time.perf_counter()
            sampler.generate(prime, num_chars=FLAGS.num_chars, num_samples=num_samples, seed=r)
            times.append(time.perf_counter() - start)
        cps = num_samples * FLAGS.num_chars / statistics.median(times)
        rows.append({"trained_in": precision, "generates_in": sampler.model.state_dtype, "num_samples": num_samples,
                     "chars_per_s": cps})
    return rows, first_char_s


def main(argv: list[str]) -> None:
    del argv
    vocab = charrnn.Vocabulary([chr(33 + i) for i in range(FLAGS.vocab_size)])
    model = charrnn.CharRNN(len(vocab), FLAGS.embedding_dim, FLAGS.rnn_units, seed=0)
    model.build_for_vocab()
    prime = vocab.chars[0] * 8

    baseline = keras.Sequential([
        keras.Input(batch_shape=(1, None)),
        keras.layers.Embedding(len(vocab), FLAGS.embedding_dim),
        keras.layers.LSTM(FLAGS.rnn_units, return_sequences=True, stateful=True,
                          recurrent_initializer="glorot_uniform"),
        keras.layers.Dense(len(vocab)),
    ])
    baseline.set_weights(model.get_weights())
    start = time.perf_counter()
    _case_study_generate(baseline, list(vocab.encode(prime)), 1, 0.5)
    baseline_first = time.perf_counter() - start
    start = time.perf_counter()
    _case_study_generate(baseline, list(vocab.encode(prime)), FLAGS.baseline_chars, 0.5)
    baseline_cps = FLAGS.baseline_chars / (time.perf_counter() - start)

    rows, first_char_s = [], {}
    for precision in FLAGS.precisions:
        trained = charrnn.CharRNN(len(vocab), FLAGS.embedding_dim, FLAGS.rnn_units, seed=0, precision=precision)
        trained.build_for_vocab()
        trained.set_weights(model.get_weights())  # float32 under every policy
        precision_rows, first_char_s[precision] = _charrnn(trained, vocab, prime, precision)
        rows += precision_rows
    torch_cps = _torch()
    for row in rows:
        row["ratio_vs_eager"] = row["chars_per_s"] / baseline_cps
        row["ratio_vs_torch"] = row["chars_per_s"] / torch_cps if torch_cps else None

    # Per generated character, batch 1 reads every LSTM and Dense weight once.
    h, e, v = FLAGS.rnn_units, FLAGS.embedding_dim, len(vocab)
    weight_bytes = 4 * (4 * h * (e + h) + 4 * h + h * v + v + e)
    # A 256 MiB copy measures DRAM; a copy the size of the weights measures whatever cache
    # level they fit in, which is where batch-1 sampling reads them from on a large-cache CPU.
    bandwidth = _copy_bandwidth(256 * 1024 * 1024)
    cached_bandwidth = _copy_bandwidth(weight_bytes)
    bound_cps, cached_bound_cps = bandwidth / weight_bytes, cached_bandwidth / weight_bytes

    c = cpu()
    print(f"CPU: {c['model']}, {c['cores']} cores, {' '.join(c['features'])}")
    print(f"{'sampler':<52}{'chars/s':>12}{'x eager':>10}{'x PyTorch':>11}")
    print(f"{'case study (eager, batch 1)':<52}{baseline_cps:>12,.1f}{1.0:>10.1f}")
    if torch_cps:
        name = "PyTorch nn.LSTM, per-character loop (batch 1)"
        print(f"{name:<52}{torch_cps:>12,.1f}{torch_cps / baseline_cps:>10.1f}{1.0:>11.1f}")
    for row in rows:
        name = f"charrnn, {row['trained_in']} run ({row['generates_in']}), num_samples={row['num_samples']}"
        print(f"{name:<52}{row['chars_per_s']:>12,.1f}{row['ratio_vs_eager']:>10.1f}"
              f"{row['ratio_vs_torch'] or float('nan'):>11.1f}")
    firsts = ", ".join(f"{p} run {s:.2f} s" for p, s in first_char_s.items())
    print(f"time to first character incl. tracing: charrnn {firsts}; eager {baseline_first:.2f} s")
    print(f"batch-1 bandwidth bound: {weight_bytes / 1e6:.1f} MB of weights per character / "
          f"{bandwidth / 1e9:.1f} GB/s DRAM copy = {bound_cps:,.0f} chars/s; / {cached_bandwidth / 1e9:.1f} GB/s "
          f"copy of a weights-sized buffer = {cached_bound_cps:,.0f} chars/s")
    print(json.dumps({
        "benchmark": "sample", "machine": platform.machine(), "cpu": c, "rnn_units": h, "embedding_dim": e,
        "vocab_size": v,
        "num_chars": FLAGS.num_chars, "eager_chars_per_s": baseline_cps, "eager_first_char_s": baseline_first,
        "torch_chars_per_s": torch_cps,
        "charrnn": rows, "charrnn_first_char_s": first_char_s, "weight_bytes_per_char": weight_bytes,
        "copy_bandwidth_bytes_per_s": bandwidth, "batch1_bound_chars_per_s": bound_cps,
        "weights_sized_copy_bandwidth_bytes_per_s": cached_bandwidth,
        "batch1_cached_bound_chars_per_s": cached_bound_cps,
    }))


if __name__ == "__main__":
    app.run(main)
