"""tf.distribute: mirrored over logical CPU devices, multi-worker on localhost, resumes across strategies.

Logical devices can only be configured before TensorFlow starts, so every run here is a
charrnn-train process of its own.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from charrnn import CharRNNError, Sampler
from charrnn.checkpoint import read_metrics
from charrnn.distribute import configure_cpu_devices
from charrnn.preemption import EXIT_PREEMPTED
from conftest import run_cli

FLAGS = ["--embedding_dim=8", "--rnn_units=32", "--batch_size=8", "--seq_length=20", "--log_every=1",
         "--dropout=0.1", "--carry_state", "--steps_per_loop=4", "--eval_every=6", "--mixed_precision=float32",
         "--device=/CPU:0"]
# The cluster tests' flags: float32, the same numbers on every machine.
CLUSTER_FLAGS = [*FLAGS[:5], "--mixed_precision=float32"]


def _losses(run) -> list[float]:
    return [m["loss"] for m in read_metrics(run) if "loss" in m]


def _val_losses(run) -> list[float]:
    return [m["val_loss"] for m in read_metrics(run) if m.get("val_loss") is not None]


def test_mirrored_over_two_cpu_devices_equals_one_device_and_resumes_on_one(small_text, tmp_path):
    args = [f"--data={small_text}", "--max_steps=16", *FLAGS]
    single = run_cli("train", *args, f"--run_dir={tmp_path / 'single'}")
    assert single.returncode == 0, single.stderr
    mirrored = run_cli("train", *args, f"--run_dir={tmp_path / 'mirrored'}", "--strategy=mirrored",
                       "--num_cpu_devices=2")
    assert mirrored.returncode == 0, mirrored.stderr
    assert "2 replicas" in mirrored.stdout

    # The same global batch of 8 split 4 + 4: the loss is averaged over the global batch,
    # dropout masks are the global batch's, and the carried state is split by rows.
    want, got = _losses(tmp_path / "single"), _losses(tmp_path / "mirrored")
    assert len(want) == len(got) == 16
    difference = float(np.max(np.abs(np.array(want) - np.array(got))))
    print(f"largest loss difference, mirrored (2 CPU devices) vs default: {difference:.3g}")
    assert difference < 1e-5
    np.testing.assert_allclose(_val_losses(tmp_path / "mirrored"), _val_losses(tmp_path / "single"), atol=1e-5)

    # A mirrored run's checkpoint resumes on a single device and samples there.
    resumed = run_cli("train", f"--data={small_text}", "--max_steps=20", *FLAGS, f"--run_dir={tmp_path / 'mirrored'}")
    assert resumed.returncode == 0, resumed.stderr
    assert "Resumed from" in resumed.stdout and "at step 16" in resumed.stdout
    assert len(_losses(tmp_path / "mirrored")) == 20
    text = Sampler.from_checkpoint(str(tmp_path / "mirrored"), device="/CPU:0").generate("F", 20, seed=0)
    assert len(text) == 21


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_on_localhost_writes_the_chief_checkpoint(small_text, tmp_path):
    run = tmp_path / "run"
    workers = _start_workers([f"--data={small_text}", f"--run_dir={run}", "--max_steps=6", *CLUSTER_FLAGS], tmp_path)
    outputs = [w.communicate(timeout=240) for w in workers]
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-3000:]
        assert "Done at step 6" in out
    assert sorted(os.listdir(run / "ckpt")) == ["checkpoint", "ckpt-6.data-00000-of-00001", "ckpt-6.index"]
    assert len(_losses(run)) == 6
    assert not [p for p in os.listdir(tmp_path) if p.startswith("charrnn_worker_")]  # scratch removed
    text = Sampler.from_checkpoint(str(run), device="/CPU:0").generate("F", 20, seed=0)
    assert len(text) == 21


def _start_workers(args: list[str], tmp_path) -> list[subprocess.Popen]:
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
    workers = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
                   TMPDIR=str(tmp_path))  # where the non-chief worker's scratch checkpoints go
        workers.append(subprocess.Popen([sys.executable, "-m", "charrnn.train", "--strategy=multi_worker", *args],
                                        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return workers


def test_a_preempted_worker_makes_every_worker_checkpoint_and_exit(small_text, tmp_path):
    run = tmp_path / "run"
    args = [f"--data={small_text}", f"--run_dir={run}", *CLUSTER_FLAGS]
    workers = _start_workers([*args, "--max_steps=100000"], tmp_path)
    for line in workers[1].stdout:  # SIGTERM the non-chief worker once it is training
        match = re.search(r"step (\d+)/", line)
        if match and int(match.group(1)) >= 5:
            workers[1].send_signal(signal.SIGTERM)
            break
    outputs = [w.communicate(timeout=240) for w in workers]
    steps = set()
    for w, (_, err) in zip(workers, outputs):
        assert w.returncode == EXIT_PREEMPTED, err[-3000:]
        match = re.search(r"stopped by the preemption of a worker at step (\d+); checkpoint saved to (\S+);", err)
        assert match, err[-3000:]
        steps.add(int(match.group(1)))
    assert len(steps) == 1  # both saved at the same step
    step = steps.pop()
    assert (run / "ckpt" / f"ckpt-{step}.index").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith("charrnn_worker_")]

    workers = _start_workers([*args, f"--max_steps={step + 3}"], tmp_path)
    for w, (out, err) in zip(workers, [w.communicate(timeout=240) for w in workers]):
        assert w.returncode == 0, err[-3000:]
        assert f"at step {step}" in out and f"Done at step {step + 3}" in out
    assert [m["step"] for m in read_metrics(run) if "loss" in m] == list(range(1, step + 4))  # none lost, none twice


def test_strategy_errors(small_text, tmp_path):
    common = [f"--data={small_text}", f"--run_dir={tmp_path / 'run'}", *FLAGS[:4]]
    for extra, message in [
        (["--strategy=mirrored", "--num_cpu_devices=3"], "--batch_size=8 is the global batch and must divide evenly "
                                                         "among the strategy's 3 replicas"),
        (["--strategy=sideways"], "flag --strategy=sideways: value should be one of "
                                  "<default|one_device|mirrored|multi_worker|tpu>; see --help"),
        (["--devices=/CPU:0"], "--devices applies to --strategy=one_device or mirrored"),
        (["--strategy=multi_worker"], "needs the TF_CONFIG environment variable"),
    ]:
        proc = run_cli("train", *common, *extra)
        assert proc.returncode == 2 and message in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]
    assert not (tmp_path / "run").exists()
    tf.config.list_logical_devices()  # TensorFlow is running in this process now
    with pytest.raises(CharRNNError, match="can only be set before TensorFlow starts"):
        configure_cpu_devices(len(tf.config.list_logical_devices("CPU")) + 1)


def test_a_lost_worker_ends_the_others_with_the_retryable_status(small_text, tmp_path):
    run = tmp_path / "run"
    args = [f"--data={small_text}", f"--run_dir={run}", *CLUSTER_FLAGS, "--checkpoint_every=3"]
    chief, other = _start_workers([*args, "--max_steps=100000"], tmp_path)
    for line in chief.stdout:
        match = re.search(r"step (\d+)/", line)
        if match and int(match.group(1)) >= 5:
            other.kill()
            lost_at = time.monotonic()
            break
    out, err = chief.communicate(timeout=120)
    assert time.monotonic() - lost_at < 30, "the survivor took too long to notice"
    assert chief.returncode == EXIT_PREEMPTED, err[-3000:]
    last = err.strip().splitlines()[-1]
    match = re.search(r"lost a worker of the cluster at step (\d+) \(.*\); a relaunch resumes from (\S+): run the "
                      r"same command again on every worker", last)
    assert match, err[-3000:]
    assert "Traceback" not in err
    assert not (run / "train.lock").exists()
    other.communicate()


def _one_worker_of_two(args: list[str], tmp_path) -> subprocess.Popen:
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
    env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    return subprocess.Popen([sys.executable, "-m", "charrnn.train", "--strategy=multi_worker", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_a_worker_that_never_comes_up_ends_the_wait(small_text, tmp_path):
    args = [f"--data={small_text}", f"--run_dir={tmp_path / 'run'}", *CLUSTER_FLAGS]
    started = time.monotonic()
    proc = _one_worker_of_two([*args, "--cluster_timeout=3"], tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL and time.monotonic() - started < 60
    assert "not every worker of TF_CONFIG came up within 3 s (--cluster_timeout)" in err.strip().splitlines()[-1]

    # Ctrl-C (SIGINT to the process group, as a terminal sends it) ends the wait at once.
    proc = _one_worker_of_two(args, tmp_path)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    deadline = time.monotonic() + 120
    while not children.read_text().strip() and time.monotonic() < deadline:  # the watchdog: it waits now
        time.sleep(0.2)
    time.sleep(1)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert "stopped by SIGINT while waiting for the other workers" in err, err[-2000:]
    assert proc.returncode != 0 and not (tmp_path / "run").exists()
