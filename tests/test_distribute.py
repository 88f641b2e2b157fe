"""tf.distribute: mirrored over logical CPU devices, multi-worker on localhost, resumes across strategies.

Logical devices can only be configured before TensorFlow starts, and a cluster is several
processes, so those runs are charrnn-train processes of their own; single-device runs to
compare with happen in this process.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
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

from charrnn import CharRNNError, Sampler, TrainConfig, Trainer
from charrnn.training.distribute import configure_cpu_devices
from charrnn.training.stopping import EXIT_PREEMPTED
from conftest import logged, run_cli, tiny_config

FLAGS = ["--embedding_dim=8", "--rnn_units=32", "--batch_size=8", "--seq_length=20", "--log_every=1",
         "--dropout=0.1", "--carry_state", "--steps_per_loop=4", "--eval_every=6", "--mixed_precision=float32",
         "--device=/CPU:0"]
# The cluster tests' flags: float32, the same numbers on every machine.
CLUSTER_FLAGS = [*FLAGS[:5], "--mixed_precision=float32"]


def _single_device(small_text, run_dir, max_steps: int) -> TrainConfig:
    """The config FLAGS give, for a run in this process."""
    return tiny_config(small_text, run_dir, max_steps=max_steps, rnn_units=32, batch_size=8, log_every=1,
                       dropout=0.1, carry_state=True, steps_per_loop=4, eval_every=6)


def _losses(run) -> list[float]:
    return [loss for _, loss in sorted(logged(run, "loss").items())]


def _val_losses(run) -> list[float]:
    return [loss for _, loss in sorted(logged(run, "val_loss").items())]


def test_mirrored_over_two_cpu_devices_equals_one_device_and_resumes_on_one(small_text, tmp_path):
    mirrored = run_cli("train", f"--data={small_text}", "--max_steps=16", *FLAGS, f"--run_dir={tmp_path / 'mirrored'}",
                       "--strategy=mirrored", "--num_cpu_devices=2")
    assert mirrored.returncode == 0, mirrored.stderr
    assert "2 replicas" in mirrored.stdout
    Trainer(_single_device(small_text, tmp_path / "single", 16)).fit(verbose=0)

    # The same global batch of 8 split 4 + 4: the loss is averaged over the global batch,
    # dropout masks are the global batch's, and the carried state is split by rows.
    want, got = _losses(tmp_path / "single"), _losses(tmp_path / "mirrored")
    assert len(want) == len(got) == 16
    difference = float(np.max(np.abs(np.array(want) - np.array(got))))
    print(f"largest loss difference, mirrored (2 CPU devices) vs default: {difference:.3g}")
    assert difference < 1e-5
    np.testing.assert_allclose(_val_losses(tmp_path / "mirrored"), _val_losses(tmp_path / "single"), atol=1e-5)

    # A mirrored run's checkpoint resumes on a single device and samples there.
    resumed = Trainer(_single_device(small_text, tmp_path / "mirrored", 20))
    assert resumed.restored_from.endswith("ckpt-16")
    resumed.fit(verbose=0)
    assert len(_losses(tmp_path / "mirrored")) == 20
    text = Sampler.from_checkpoint(str(tmp_path / "mirrored"), device="/CPU:0").generate("F", 20, seed=0)
    assert len(text) == 21


@contextlib.contextmanager
def _cluster(count: int = 2):
    """The TF_CONFIG cluster of `count` workers on localhost, on free ports below the kernel's
    ephemeral range: the kernel never hands those out to other programs (a port taken with
    bind(0) would be free again once closed, and any connection could take it before the
    workers bind it, seconds later)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports: list[int] = []
    for port in random.Random(os.getpid()).sample(range(20000, low), 200):
        with socket.socket() as s:
            try:
                s.bind(("localhost", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            break
    yield {"worker": [f"localhost:{port}" for port in ports]}


def _worker(args: list[str], cluster: dict, index: int, tmp_path, **popen) -> subprocess.Popen:
    env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
               TMPDIR=str(tmp_path))  # where the non-chief worker's scratch checkpoints go
    return subprocess.Popen([sys.executable, "-m", "charrnn.cli.train", "--strategy=multi_worker", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def test_a_preempted_worker_makes_every_worker_checkpoint_and_a_relaunch_continues(small_text, tmp_path):
    run = tmp_path / "run"
    args = [f"--data={small_text}", f"--run_dir={run}", *CLUSTER_FLAGS]
    with _cluster() as cluster:
        workers = [_worker([*args, "--max_steps=100000"], cluster, index, tmp_path) for index in range(2)]
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
    assert not [p for p in os.listdir(tmp_path) if p.startswith("charrnn_worker_")]  # scratch removed

    with _cluster() as cluster:
        workers = [_worker([*args, f"--max_steps={step + 3}"], cluster, index, tmp_path) for index in range(2)]
        outputs = [w.communicate(timeout=240) for w in workers]
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-3000:]
        assert f"at step {step}" in out and f"Done at step {step + 3}" in out
    assert sorted(logged(run, "loss")) == list(range(1, step + 4))  # none lost, none twice
    assert tf.train.latest_checkpoint(str(run / "ckpt")).endswith(f"ckpt-{step + 3}")  # the chief's, in the run
    assert not [p for p in os.listdir(tmp_path) if p.startswith("charrnn_worker_")]
    assert len(Sampler.from_checkpoint(str(run), device="/CPU:0").generate("F", 20, seed=0)) == 21


def test_strategy_errors(small_text, tmp_path, monkeypatch):
    # A number of logical devices needs a fresh process; the flag parser's refusal is the tool's.
    common = [f"--data={small_text}", f"--run_dir={tmp_path / 'run'}", *FLAGS[:4]]
    for extra, message in [
        (["--strategy=mirrored", "--num_cpu_devices=3"], "--batch_size=8 is the global batch and must divide evenly "
                                                         "among the strategy's 3 replicas"),
        (["--strategy=sideways"], "flag --strategy=sideways: value should be one of "
                                  "<default|one_device|mirrored|multi_worker|tpu>; see --help"),
    ]:
        proc = run_cli("train", *common, *extra)
        assert proc.returncode == 2 and message in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]
    monkeypatch.delenv("TF_CONFIG", raising=False)
    for overrides, message in [(dict(devices="/CPU:0"), "--devices applies to --strategy=one_device or mirrored"),
                               (dict(strategy="multi_worker"), "needs the TF_CONFIG environment variable")]:
        with pytest.raises(CharRNNError, match=message):
            Trainer(tiny_config(small_text, tmp_path / "run", **overrides))
    assert not (tmp_path / "run").exists()
    tf.config.list_logical_devices()  # TensorFlow is running in this process now
    with pytest.raises(CharRNNError, match="can only be set before TensorFlow starts"):
        configure_cpu_devices(len(tf.config.list_logical_devices("CPU")) + 1)


def test_a_lost_worker_ends_the_others_with_the_retryable_status(small_text, tmp_path):
    run = tmp_path / "run"
    args = [f"--data={small_text}", f"--run_dir={run}", *CLUSTER_FLAGS, "--checkpoint_every=3", "--max_steps=100000"]
    with _cluster() as cluster:
        chief, other = (_worker(args, cluster, index, tmp_path) for index in range(2))
        for line in chief.stdout:
            match = re.search(r"step (\d+)/", line)
            if match and int(match.group(1)) >= 5:
                other.kill()
                break
        # The collective ops fail at once when a peer is gone: the timeout only guards a hang.
        out, err = chief.communicate(timeout=120)
    assert chief.returncode == EXIT_PREEMPTED, err[-3000:]
    last = err.strip().splitlines()[-1]
    match = re.search(r"lost a worker of the cluster at step (\d+) \(.*\); a relaunch resumes from (\S+): run the "
                      r"same command again on every worker", last)
    assert match, err[-3000:]
    assert "Traceback" not in err
    assert not (run / "train.lock").exists()
    other.communicate()


def _waiting_watchdog(pid: int) -> bool:
    """Whether the worker `pid` waits for its cluster: its watchdog child has installed its
    SIGTERM handler (SigCgt in /proc; Python itself catches SIGINT from the start) and
    sleeps in its select() (wchan), so its handlers are all in place."""
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            status, wchan = (Path(f"/proc/{child}/{name}").read_text() for name in ("status", "wchan"))
        except FileNotFoundError:
            continue
        caught = int(re.search(r"SigCgt:\s*([0-9a-f]+)", status).group(1), 16)
        if caught >> (signal.SIGTERM - 1) & 1 and ("poll" in wchan or "select" in wchan):
            return True
    return False


def test_a_worker_that_never_comes_up_ends_the_wait(small_text, tmp_path):
    args = [f"--data={small_text}", f"--run_dir={tmp_path / 'run'}", *CLUSTER_FLAGS]
    with _cluster() as cluster:
        proc = _worker([*args, "--cluster_timeout=3"], cluster, 0, tmp_path, start_new_session=True)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert "not every worker of TF_CONFIG came up within 3 s (--cluster_timeout)" in err.strip().splitlines()[-1]

    # Ctrl-C (SIGINT to the process group, as a terminal sends it) ends the wait at once.
    with _cluster() as cluster:
        proc = _worker(args, cluster, 0, tmp_path, start_new_session=True)
        while not _waiting_watchdog(proc.pid):  # polled, an event: the watchdog is ready
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert "stopped by SIGINT while waiting for the other workers" in err, err[-2000:]
    assert proc.returncode != 0 and not (tmp_path / "run").exists()


# Every pair of values of precision x carry_state x num_layers x cell in some row (a
# covering design: 6 rows for 3 x 2 x 2 x 2), and the combination the multi-device
# documentation's command trains (cpu_small: an LSTM carrying its state, in bfloat16).
MATRIX = [
    dict(mixed_precision="float32", carry_state=True, num_layers=1, cell="lstm"),
    dict(mixed_precision="float32", carry_state=False, num_layers=2, cell="gru"),
    dict(mixed_precision="mixed_bfloat16", carry_state=True, num_layers=2, cell="gru"),
    dict(mixed_precision="mixed_bfloat16", carry_state=False, num_layers=1, cell="lstm"),
    dict(mixed_precision="mixed_float16", carry_state=True, num_layers=1, cell="gru"),
    dict(mixed_precision="mixed_float16", carry_state=False, num_layers=2, cell="lstm"),
    dict(mixed_precision="mixed_bfloat16", carry_state=True, num_layers=1, cell="lstm", dropout=0.1),
]


def test_mirrored_trains_every_pair_of_precision_state_depth_and_cell_as_one_device_does(small_text, tmp_path):
    """Each row mirrored over two CPU devices and on one, in one process of its own: both
    train, to the same losses (float32 to 1e-5; 16-bit to its rounding). TensorFlow's CPU
    kernels compute bfloat16 and float16 on any x86 CPU (natively or not), so no row is
    skipped on a CPU without them."""
    proc = subprocess.run([sys.executable, str(Path(__file__).parent / "strategy_matrix.py"), str(small_text),
                           str(tmp_path), json.dumps(MATRIX)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["row"] for r in results] == MATRIX
    for result in results:
        mirrored, single = result["mirrored"], result["single"]
        assert isinstance(mirrored, list) and isinstance(single, list), result
        assert len(mirrored) == len(single) == 3, result
        tolerance = 1e-5 if result["row"]["mixed_precision"] == "float32" else 2e-2
        np.testing.assert_allclose(mirrored, single, rtol=tolerance, err_msg=str(result["row"]))
