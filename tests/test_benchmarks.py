"""Smoke runs of the benchmark scripts: they run on tiny models and end with valid JSON.

No timing is asserted here; speed is what the scripts themselves report.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from conftest import REPO

TINY = ["--rnn_units=16", "--embedding_dim=8"]


@pytest.mark.parametrize("script, args", [
    ("bench_train.py", [*TINY, "--batch_size=4", "--seq_length=12", "--steps=2", "--warmup=1", "--steps_per_loop=2"]),
    ("bench_train.py", ["--sweep=16:8", "--batch_size=4", "--seq_length=12", "--steps=2", "--warmup=1",
                        "--peak_rss=false"]),
    ("bench_lstm_ops.py", ["--sizes=8:16", "--repeats=1", "--precision=float32"]),
    ("bench_sample.py", [*TINY, "--num_chars=10", "--baseline_chars=5", "--repeats=1"]),
    ("bench_quality.py", [*TINY, "--batch_size=4", "--seq_length=12", "--time_budget=1", "--eval_every=50",
                          "--preset=cpu_medium"]),
    ("bench_data.py", ["--sizes_mb=1", "--steps=2", "--pipeline_steps=20", "--repeats=1"]),
    ("bench_lstm_ab.py", [*TINY, "--batch_size=4", "--seq_length=12", "--rounds=2", "--warmup=1", "--baseline=HEAD"]),
    ("bench_web.py", ["--sizes=16", "--num_chars=20"]),
])
def test_benchmark_smoke(script, args, small_text, tmp_path):
    data = [f"--data={small_text}"] if script in ("bench_train.py", "bench_quality.py", "bench_lstm_ab.py",
                                                  "bench_web.py") else []
    if script == "bench_quality.py":  # its default run directory is a kept temporary one
        data.append(f"--run_dir={tmp_path / 'run'}")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args, *data],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if script == "bench_lstm_ops.py":  # a line per size, no JSON
        product, layer = proc.stdout.splitlines()
        assert product.startswith("E8 H16 float32: recurrent product batch-major ") and "unit-major" in product
        assert layer.startswith("E8 H16 float32: layer forward + backward: batch_major ")
        assert all(f"{v} " in layer for v in ("unit_major", "batch_major+xla", "unit_major+xla", "BlockLSTMV2"))
        return
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result.get("benchmark") == "train_sweep":
        (row,) = result["rows"]
        assert row["rnn_units"] == 16 and row["embedding_dim"] == 8 and row["results"]["charrnn"]["median_step_s"] > 0
        assert "E8 LSTM 16" in proc.stdout and result["cpu"]["cores"] >= 1
    elif script == "bench_train.py":
        assert result["results"]["charrnn"]["steps_per_s"] > 0 and result["speedup_vs_fit"] > 0
        assert result["cpu"]["cores"] >= 1 and result["chosen"].startswith("lstm fused")  # auto on a CPU
        assert result["flops_per_step"] == 3 * 2 * 4 * 12 * (4 * 16 * (8 + 16) + 16 * result["vocab_size"])
    elif script == "bench_data.py":
        (row,) = result["rows"]
        assert row["size_mb"] == 1 and row["encode_mb_per_s"] > 0 and row["cached_peak_rss_mb"] > 0
        assert result["pipeline"]["ratio"] > 0
    elif script == "bench_lstm_ab.py":
        assert result["baseline"] == "HEAD" and result["rnn_units"] == 16 and result["ratio"] > 0
        assert result["current_step_s"] > 0 and result["baseline_step_s"] > 0
    elif script == "bench_web.py":
        (row,) = result["rows"]
        assert row["units"] == 16 and row["browser_chars_per_sec"] > 0 and row["sampler_chars_per_sec"] > 0
        assert row["outside_requests"] == 0 and row["folder_bytes"] > row["model_bytes"] > 0
    elif script == "bench_sample.py":
        rows = [(r["trained_in"], r["num_samples"], r["generates_in"]) for r in result["charrnn"]]
        assert rows == [(p, n, "float32") for p in ("float32", "mixed_bfloat16") for n in (1, 64)]
        assert result["eager_chars_per_s"] > 0 and all(r["chars_per_s"] > 0 for r in result["charrnn"])
    else:
        assert result["preset"] == "cpu_medium" and result["steps"] > 0 and math.isfinite(result["best_val_loss"])
        assert result["precision"] in ("float32", "mixed_bfloat16", "mixed_float16")  # auto, resolved
        assert result["chars_seen"] == result["steps"] * 4 * 12 and result["train_seconds"] >= 1
        assert "sample from the best checkpoint" in proc.stdout
        assert result["run_dir"] == str(tmp_path / "run") and (tmp_path / "run" / "config.json").is_file()


def test_bench_tflite_smoke(trained_run):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_tflite.py"), f"--run_dir={trained_run}",
                           "--chars=20"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["tflite"]["dynamic"]["bytes"] > 0 and result["sampler_chars_per_s"] > 0
    assert all(math.isfinite(result["tflite"][q]["val_loss"]) for q in ("none", "dynamic"))
