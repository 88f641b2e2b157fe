"""Corpora bigger than memory: peak memory, start-up, encoding speed, and the pipeline's cost.

For each size in --sizes_mb, a corpus of that many megabytes is generated (tiny-shakespeare
from $CHARRNN_DATA_DIR or the cache, repeated; never committed) in --work_dir, then:

  first start   `charrnn-train` on it with an empty id cache, a tiny model, --steps steps:
                wall time and peak resident memory (VmHWM) of the process;
  cached start  the same command again (the ids come from the cache);
  encode        MB/s of charrnn.text.idcache.encode with an empty cache, in a process of its own.

Then, for the first size, steps/s of a small model whose batches come from the id file
(the pipeline charrnn uses) against the same batches from an in-memory tf.data dataset
(from_tensor_slices of the windows, what charrnn did before), alternating --repeats times.
Prints a table, then one JSON line.

    python benchmarks/bench_data.py --sizes_mb=10,100,1024
    python benchmarks/bench_data.py --sizes_mb=2 --steps=2 --pipeline_steps=20   # smoke test
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from charrnn.log import install_console

flags.DEFINE_list("sizes_mb", ["10", "100", "1024"], "Corpus sizes in MB (10**6 bytes).")
flags.DEFINE_string("work_dir", None, "Where corpora and caches go (default: a temporary directory, removed after).")
flags.DEFINE_integer("steps", 5, "Training steps of each start.")
flags.DEFINE_integer("pipeline_steps", 300, "Steps per timed pass of the pipeline comparison.")
flags.DEFINE_integer("repeats", 3, "Alternating passes of each pipeline.")
flags.DEFINE_string("encode_only", None, "Internal: encode this corpus and print the seconds it took.")
FLAGS = flags.FLAGS

TINY = ["--embedding_dim=16", "--rnn_units=32", "--batch_size=16", "--seq_length=50", "--device=/CPU:0",
        "--val_fraction=0.001", "--checkpoint_every=1000"]
SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")


def _source_text() -> bytes:
    for directory in (os.environ.get("CHARRNN_DATA_DIR"), SHARED):
        if directory and os.path.exists(os.path.join(directory, "tinyshakespeare.txt")):
            with open(os.path.join(directory, "tinyshakespeare.txt"), "rb") as f:
                return f.read()
    from charrnn.text.corpus import resolve_sources  # downloads it once
    with open(resolve_sources("tinyshakespeare")[0], "rb") as f:
        return f.read()


def _make_corpus(path: str, size: int) -> None:
    text = _source_text()
    with open(path, "wb") as f:
        written = 0
        while written < size:
            piece = text[: size - written]
            f.write(piece)
            written += len(piece)


def _timed(args: list[str], env: dict) -> tuple[float, float]:
    """Wall seconds and peak resident MB of a command (GNU time's maximum resident set)."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "maxrss_kb=%M", *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return wall, int(re.findall(r"maxrss_kb=(\d+)", proc.stderr)[-1]) / 1024


def _pipeline_ratio(corpus: str, run_dir: str) -> dict:
    """Steps/s with batches from the id file against an in-memory from_tensor_slices dataset."""
    import numpy as np
    import tensorflow as tf

    import charrnn
    from charrnn.text.data import num_windows

    config = charrnn.TrainConfig(data=corpus, run_dir=run_dir, embedding_dim=16, rnn_units=32,
                                 batch_size=16, seq_length=50, val_fraction=0.001, device="/CPU:0", steps_per_loop=10)
    trainer = charrnn.Trainer(config)
    ids = trainer.data.train_ids
    width = config.seq_length + 1
    windows = np.asarray(ids[: num_windows(len(ids), config.seq_length) * width], np.int32).reshape(-1, width)
    in_memory = (tf.data.Dataset.from_tensor_slices(windows).shuffle(config.shuffle_buffer, seed=0)
                 .map(lambda w: (w[:-1], w[1:])).batch(config.batch_size, drop_remainder=True)
                 .prefetch(tf.data.AUTOTUNE).repeat())
    from_file = trainer.data.dataset(0).repeat()
    rates: dict[str, list[float]] = {"id_file": [], "in_memory": []}
    iterators = {"id_file": iter(from_file), "in_memory": iter(in_memory)}
    for name, iterator in iterators.items():  # trace, warm up
        trainer._train_loop(iterator, tf.constant(10))  # noqa: SLF001 - train()'s compiled loop
    for _ in range(FLAGS.repeats):
        for name, iterator in iterators.items():
            start = time.perf_counter()
            for _ in range(FLAGS.pipeline_steps // 10):
                losses, *_ = trainer._train_loop(iterator, tf.constant(10))  # noqa: SLF001
            losses.numpy()
            rates[name].append(FLAGS.pipeline_steps / (time.perf_counter() - start))
    median = {name: sorted(r)[len(r) // 2] for name, r in rates.items()}
    return {"steps_per_s": median, "ratio": median["id_file"] / median["in_memory"], "all": rates}


def main(argv: list[str]) -> None:
    del argv
    install_console()  # the library's progress lines and warnings, as the tools show them
    if FLAGS.encode_only:
        from charrnn.text.idcache import encode
        start = time.perf_counter()
        encode(FLAGS.encode_only)
        print(f"encode_s={time.perf_counter() - start:.3f}")
        return
    work = FLAGS.work_dir or tempfile.mkdtemp(prefix="charrnn_bench_data_")
    os.makedirs(work, exist_ok=True)
    rows = []
    try:
        for size_mb in map(int, FLAGS.sizes_mb):
            corpus = os.path.join(work, f"corpus_{size_mb}mb.txt")
            _make_corpus(corpus, size_mb * 10**6)
            cache = os.path.join(work, f"cache_{size_mb}")
            shutil.rmtree(cache, ignore_errors=True)
            env = dict(os.environ, CHARRNN_DATA_DIR=cache, TF_CPP_MIN_LOG_LEVEL="2")
            train = [sys.executable, "-m", "charrnn.cli.train", f"--data={corpus}", f"--max_steps={FLAGS.steps}", *TINY]
            first = _timed([*train, f"--run_dir={os.path.join(work, f'run_{size_mb}_a')}"], env)
            cached = _timed([*train, f"--run_dir={os.path.join(work, f'run_{size_mb}_b')}"], env)
            shutil.rmtree(cache)
            proc = subprocess.run([sys.executable, sys.argv[0], f"--encode_only={corpus}"], capture_output=True,
                                  text=True, env=env, check=True)
            encode_s = float(re.search(r"encode_s=([\d.]+)", proc.stdout).group(1))
            rows.append({"size_mb": size_mb, "first_start_s": round(first[0], 1), "first_peak_rss_mb": round(first[1]),
                         "cached_start_s": round(cached[0], 1), "cached_peak_rss_mb": round(cached[1]),
                         "encode_mb_per_s": round(size_mb / encode_s, 1)})
            shutil.rmtree(os.path.join(work, f"run_{size_mb}_a"), ignore_errors=True)
            shutil.rmtree(os.path.join(work, f"run_{size_mb}_b"), ignore_errors=True)
        os.environ["CHARRNN_DATA_DIR"] = os.path.join(work, f"cache_{FLAGS.sizes_mb[0]}")
        pipeline = _pipeline_ratio(os.path.join(work, f"corpus_{FLAGS.sizes_mb[0]}mb.txt"),
                                   os.path.join(work, "run_pipeline"))
    finally:
        if not FLAGS.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{'MB':>6}{'first start s':>15}{'peak MB':>9}{'cached start s':>16}{'peak MB':>9}{'encode MB/s':>13}")
    for r in rows:
        print(f"{r['size_mb']:>6}{r['first_start_s']:>15}{r['first_peak_rss_mb']:>9}{r['cached_start_s']:>16}"
              f"{r['cached_peak_rss_mb']:>9}{r['encode_mb_per_s']:>13}")
    rates = pipeline["steps_per_s"]
    print(f"steps/s of a small model ({FLAGS.sizes_mb[0]} MB corpus): id file {rates['id_file']:.1f}, "
          f"in memory {pipeline['steps_per_s']['in_memory']:.1f}, ratio {pipeline['ratio']:.3f}")
    print(json.dumps({"benchmark": "data", "rows": rows, "pipeline": pipeline, "steps": FLAGS.steps,
                      "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count()}))


if __name__ == "__main__":
    app.run(main)
