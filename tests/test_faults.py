"""Fault tolerance: kills, signals, damaged checkpoints, non-finite losses and bad input.

Training runs are driven through the CLI in subprocesses, as a user or a cluster
scheduler would drive them.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
import typing
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from charrnn import CharRNNError, Sampler, TrainConfig, Trainer
from charrnn.checkpoint import read_metrics
from charrnn.preemption import EXIT_PREEMPTED, Preempted, StopRequest
from conftest import TINY_FLAGS, half_written, leftovers, run_cli, snapshot, tiny_config

# A model big enough that a step takes a few milliseconds, so a kill lands mid-run.
KILL_FLAGS = ["--embedding_dim=16", "--rnn_units=64", "--batch_size=8", "--seq_length=32", "--dropout=0.1",
              "--log_every=1", "--checkpoint_every=4", "--deterministic", "--device=/CPU:0"]


def _assert_one_line_error(proc: subprocess.CompletedProcess, message: str) -> None:
    """Exit status 2, no traceback, and the last line of stderr is our error naming `message`."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("charrnn: error: ") and message in last, proc.stderr


def _checkpoint_values(run: Path, directory: str = "ckpt") -> dict[str, np.ndarray]:
    path = tf.train.latest_checkpoint(str(run / directory))
    reader = tf.train.load_checkpoint(path)
    # save_counter counts saves, which a killed run makes more of; everything else must match.
    return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(path)
            if name not in ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/.ATTRIBUTES/VARIABLE_VALUE")}


def _train_until(args: list[str], step: int, sig: int = signal.SIGKILL, delay: float = 0.0) -> subprocess.Popen:
    """Starts charrnn-train, sends `sig` `delay` seconds after it reports `step`, and returns the ended process."""
    proc = subprocess.Popen([sys.executable, "-m", "charrnn.train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        match = re.search(r"step (\d+)/", line)
        if match and int(match.group(1)) >= step:
            time.sleep(delay)
            proc.send_signal(sig)
            break
    proc.stdout.read()
    proc.wait(timeout=120)
    return proc


def _assert_same_run(run: Path, reference: Path, total: int, context: str) -> None:
    """`run` ended with the same metrics, checkpoint and best checkpoint as `reference`, bit for bit."""
    assert read_metrics(run) == read_metrics(reference), context
    assert [m["step"] for m in read_metrics(run) if "loss" in m] == list(range(1, total + 1))
    for directory in ("ckpt", "best"):
        want, got = _checkpoint_values(reference, directory), _checkpoint_values(run, directory)
        assert want.keys() == got.keys()
        assert any(k.startswith("optimizer/") for k in want) and any(k.startswith("rng/") for k in want)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{directory}: {name}, {context}")
    assert sorted(os.listdir(run / "best")) == sorted(os.listdir(reference / "best"))


def test_chaos_many_sigkills_at_random_moments_then_a_clean_finish_is_bit_identical(small_text, tmp_path):
    """15 SIGKILLs a few milliseconds after random steps of a run that saves a checkpoint at
    every step (so that many land inside a save), with validation and carried state."""
    total, kills = 400, 15
    args = [f"--data={small_text}", f"--max_steps={total}", *KILL_FLAGS, "--checkpoint_every=1", "--carry_state",
            "--eval_every=7"]
    reference = run_cli("train", *args, f"--run_dir={tmp_path / 'ref'}")
    assert reference.returncode == 0, reference.stderr
    run, rng, reached, mid_save = tmp_path / "chaos", random.Random(), 0, 0
    for _ in range(kills):
        target = reached + rng.randint(1, 20)
        # Right after a step line comes that step's save: short delays land inside it.
        delay = rng.uniform(0, 0.004) if rng.random() < 0.5 else rng.uniform(0, 0.02)
        proc = _train_until([*args, f"--run_dir={run}"], target, delay=delay)
        assert proc.returncode == -signal.SIGKILL, f"run ended before the kill after step {target}"
        reached = max(m["step"] for m in read_metrics(run) if "loss" in m)
        mid_save += bool(half_written(run))
    final = run_cli("train", *args, f"--run_dir={run}")
    assert final.returncode == 0, final.stderr
    print(f"{kills} kills, {mid_save} of them left a half-written file behind")
    _assert_same_run(run, tmp_path / "ref", total, f"{kills} kills")
    assert not leftovers(run)


def test_sigkill_at_random_steps_then_resume_is_bit_identical(small_text, tmp_path):
    total = 300
    args = [f"--data={small_text}", f"--max_steps={total}", *KILL_FLAGS, "--eval_every=10"]
    reference = run_cli("train", *args, f"--run_dir={tmp_path / 'ref'}")
    assert reference.returncode == 0, reference.stderr

    rng = random.Random()
    first = rng.randint(10, 120)
    second = rng.randint(first + 20, 250)
    run = tmp_path / "killed"
    for kill_at in (first, second):
        proc = _train_until([*args, f"--run_dir={run}"], kill_at)
        assert proc.returncode == -signal.SIGKILL, f"run ended before the kill at step {kill_at}"
    final = run_cli("train", *args, f"--run_dir={run}")
    assert final.returncode == 0, final.stderr
    assert "Resumed from" in final.stdout

    _assert_same_run(run, tmp_path / "ref", total, f"killed at steps {first} and {second}")
    assert any(k.startswith("validation/") for k in _checkpoint_values(run, "best"))


def test_a_second_launch_on_a_running_run_is_refused_and_a_dead_ones_lock_taken_over(small_text, tmp_path):
    run = tmp_path / "run"
    args = [f"--data={small_text}", f"--run_dir={run}", *KILL_FLAGS]
    first = subprocess.Popen([sys.executable, "-m", "charrnn.train", *args, "--max_steps=100000"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in first.stdout:
        if re.search(r"step (\d+)/", line):
            break
    second = run_cli("train", *args, "--max_steps=100000")  # the same command, pressed twice
    _assert_one_line_error(second, f"is in use by another trainer (pid {first.pid} on host ")
    first.kill()
    first.communicate()
    reached = max(m["step"] for m in read_metrics(run) if "loss" in m)
    third = run_cli("train", *args, f"--max_steps={reached + 3}")
    assert third.returncode == 0, third.stderr
    assert f"taking over the lock of {run} from a trainer that is gone (pid {first.pid}" in third.stderr
    assert [m["step"] for m in read_metrics(run) if "loss" in m] == list(range(1, reached + 4))
    assert not leftovers(run)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_a_checkpoint_and_exits_with_preempted_status(small_text, tmp_path, sig):
    run = tmp_path / "run"
    args = [f"--data={small_text}", f"--run_dir={run}", "--max_steps=100000", *KILL_FLAGS]
    proc = _train_until(args, 15, sig)
    stderr = proc.stderr.read()
    assert proc.returncode == EXIT_PREEMPTED, stderr
    match = re.search(r"stopped by (SIG\w+) at step (\d+); checkpoint saved to (\S+);", stderr)
    assert match and match.group(1) == signal.Signals(sig).name, stderr
    step, path = int(match.group(2)), match.group(3)
    assert step >= 15 and path.endswith(f"ckpt-{step}") and Path(path + ".index").exists()
    assert "Traceback" not in stderr

    resumed = run_cli("train", *[a for a in args if not a.startswith("--max_steps")], f"--max_steps={step + 2}")
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resumed from {path} at step {step}" in resumed.stdout


def test_a_stop_during_evaluation_is_prompt_and_the_evaluation_is_redone(small_text, tmp_path):
    config = tiny_config(small_text, tmp_path / "run", max_steps=10)
    trainer = Trainer(config)
    real_eval_step = trainer._evaluator._step
    calls = []

    def eval_step_then_signal(*args):
        calls.append(1)
        os.kill(os.getpid(), signal.SIGTERM)  # handled by fit()'s StopRequest before the next batch
        return real_eval_step(*args)

    trainer._evaluator._step = eval_step_then_signal
    with pytest.raises(Preempted, match="stopped by SIGTERM at step 10") as info:
        trainer.fit()
    assert len(calls) == 1  # the evaluation stopped after one batch
    assert info.value.checkpoint.endswith("ckpt-10")
    assert not [m for m in read_metrics(tmp_path / "run") if "epoch" in m]

    resumed = Trainer(config)
    history = resumed.fit()
    assert [h.step for h in history] == [10] and history[0].val_loss is not None
    assert len([m for m in read_metrics(tmp_path / "run") if "epoch" in m]) == 1
    assert Trainer(config).fit() == []


def test_second_ctrl_c_falls_through_to_the_default_action():
    before = signal.getsignal(signal.SIGINT)
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested == "SIGINT"
        assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL  # the next Ctrl-C ends the process at once
    assert signal.getsignal(signal.SIGINT) is before


def _damage(run: Path, how: str) -> None:
    newest = run / "ckpt" / "ckpt-6"
    data = newest.with_name("ckpt-6.data-00000-of-00001")
    if how == "truncated":
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    elif how == "corrupted":  # a flipped byte in every tensor, the model's included
        raw = bytearray(data.read_bytes())
        for i in range(0, len(raw), 97):
            raw[i] ^= 0xFF
        data.write_bytes(bytes(raw))
    elif how == "missing index":
        newest.with_name("ckpt-6.index").unlink()


@pytest.mark.parametrize("how", ["truncated", "corrupted", "missing index"])
def test_damaged_newest_checkpoint_falls_back_to_an_older_one(small_text, tmp_path, how):
    run = tmp_path / "run"
    args = [f"--data={small_text}", f"--run_dir={run}", "--checkpoint_every=2", *TINY_FLAGS]
    assert run_cli("train", *args, "--max_steps=6").returncode == 0
    _damage(run, how)
    # The sampler meets the damaged checkpoint first (it is the newest), and falls back.
    sample = run_cli("sample", f"--run_dir={run}", "--which=latest", "--num_chars=5", "--seed=1")
    assert sample.returncode == 0, sample.stderr
    assert re.search(r"skipping unusable checkpoint \S+ckpt-6 ", sample.stderr), sample.stderr
    proc = run_cli("train", *args, "--max_steps=8")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"skipping unusable checkpoint \S+ckpt-6 ", proc.stderr), proc.stderr
    assert "Resumed from" in proc.stdout and "ckpt-4 at step 4" in proc.stdout


def test_no_readable_checkpoint_stops_with_a_message(small_text, tmp_path):
    run = tmp_path / "run"
    args = [f"--data={small_text}", f"--run_dir={run}", "--checkpoint_every=2", "--max_steps=4", *TINY_FLAGS]
    assert run_cli("train", *args).returncode == 0
    for index in (run / "ckpt").glob("*.index"):
        index.write_bytes(b"garbage")
    before = snapshot(run)
    proc = run_cli("train", *args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no usable checkpoint" in proc.stderr.strip().splitlines()[-1]
    assert snapshot(run) == before


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(small_text, tmp_path):
    config = tiny_config(small_text, tmp_path / "run", max_steps=4, checkpoint_every=2)
    Trainer(config).fit()
    trainer = Trainer(config.replace(max_steps=8))
    trainer.model.dense.bias.assign(tf.fill(trainer.model.dense.bias.shape, float("nan")))
    weights_before = [v.numpy().copy() for v in trainer.model.trainable_variables]
    with pytest.raises(CharRNNError, match=r"not finite at step 5 .*last checkpoint \(\S+ckpt-4\) is kept"):
        trainer.fit()
    assert int(trainer.step.numpy()) == 4  # the bad step was not applied
    for before, after in zip(weights_before, trainer.model.trainable_variables):
        np.testing.assert_array_equal(before, after.numpy())
    assert tf.train.latest_checkpoint(str(tmp_path / "run" / "ckpt")).endswith("ckpt-4")
    values = [v for v in _checkpoint_values(tmp_path / "run").values() if np.asarray(v).dtype.kind == "f"]
    assert values and all(np.isfinite(v).all() for v in values)


# -- bad input: one line, exit status 2, no traceback, nothing in the run directory changed --

@pytest.fixture
def bad_files(tmp_path) -> dict[str, str]:
    files = {"empty": b"", "latin1": "caf\u00e9 ol\u00e9".encode("latin-1"), "binary": bytes(range(256)),
             "short": b"abc" * 20}
    paths = {}
    for name, payload in files.items():
        (tmp_path / name).write_bytes(payload)
        paths[name] = str(tmp_path / name)
    (tmp_path / "emptydir").mkdir()
    return paths | {"missing": str(tmp_path / "nope.txt"), "emptydir": str(tmp_path / "emptydir")}


# Each case as a user types it. The command line's contract (one line, exit status 2, no
# traceback) is checked in a subprocess for the cases marked CLI; the rest run in process,
# where the same CharRNNError carries the same message.
TRAIN_ERRORS = [
    (["--data={missing}"], "neither an existing file, directory or glob nor a registered corpus"),
    (["--data={emptydir}"], "holds no files"),
    (["--data={empty}"], "holds no text"),
    (["--data={latin1}"], "not valid UTF-8 (bad byte 0xe9 at offset 3)"),
    (["--data={binary}"], "looks binary"),
    (["--data={short}"], "corpus too short: 60 characters, but batch_size=4 x (seq_length+1)=21 needs 84"),
    (["--batch_size=0"], "--batch_size must be at least 1, got 0"),
    (["--seq_length=-3"], "--seq_length must be at least 1, got -3"),
    (["--rnn_units=0"], "--rnn_units must be at least 1"),
    (["--epochs=0"], "--epochs must be at least 1"),
    (["--max_steps=-1"], "--max_steps must be at least 1"),
    (["--checkpoint_every=0"], "--checkpoint_every must be at least 1"),
    (["--learning_rate=-1"], "--learning_rate must be in (0, 1]"),
    (["--learning_rate=0"], "--learning_rate must be in (0, 1]"),
    (["--grad_clip=0"], "--grad_clip must be positive"),
    (["--dropout=1"], "--dropout must be in [0, 1)"),
    (["--val_fraction=1"], "--val_fraction must be in [0, 1)"),
    (["--val_fraction=-0.1"], "--val_fraction must be in [0, 1)"),
    (["--device=/GPU:7"], "is not a device of this machine"),
    (["--seq_length=10"], "seq_length=20 in the run, 10 requested"),
]
TRAIN_CLI_ERRORS = [
    (["--data={latin1}"], "not valid UTF-8 (bad byte 0xe9 at offset 3)"),
    (["stray"], "unexpected arguments"),
    (["--rnn_units=32"], "rnn_units=16 in the run, 32 requested"),
]


def _train_args(trained_run: Path, bad_files: dict[str, str], args: list[str]) -> list[str]:
    """TINY_FLAGS and the run's text, overridden by `args`."""
    args = [a.format(**bad_files) for a in args]
    if not any(a.startswith("--data=") for a in args):
        args.insert(0, f"--data={trained_run.parent / 'text.txt'}")
    overridden = {a.split("=")[0] for a in args}
    return [f for f in TINY_FLAGS if f.split("=")[0] not in overridden] + args + [f"--run_dir={trained_run}"]


def _config_from_flags(args: list[str]) -> TrainConfig:
    """The TrainConfig that charrnn-train builds from `args` (--name=value flags)."""
    hints = typing.get_type_hints(TrainConfig)
    values = {}
    for arg in args:
        name, value = arg[2:].split("=", 1)
        kind = next((a for a in typing.get_args(hints[name]) if a is not type(None)), hints[name])
        values[name] = kind(value)
    return TrainConfig(**values)


@pytest.mark.parametrize("args, message", TRAIN_ERRORS, ids=[m[:40] for _, m in TRAIN_ERRORS])
def test_train_bad_input(trained_run, bad_files, args, message):
    before = snapshot(trained_run)
    with pytest.raises(CharRNNError) as info:
        Trainer(_config_from_flags(_train_args(trained_run, bad_files, args))).fit()
    assert message in str(info.value) and "\n" not in str(info.value)
    assert snapshot(trained_run) == before


@pytest.mark.parametrize("args, message", TRAIN_CLI_ERRORS, ids=[m[:40] for _, m in TRAIN_CLI_ERRORS])
def test_train_bad_input_on_the_command_line(trained_run, bad_files, args, message):
    before = snapshot(trained_run)
    _assert_one_line_error(run_cli("train", *_train_args(trained_run, bad_files, args)), message)
    assert snapshot(trained_run) == before


SAMPLE_ERRORS = [
    (dict(run_dir="{tmp}/nope"), "does not exist"),
    (dict(run_dir="{tmp}"), "holds no checkpoint"),
    (dict(prime="Qo#"), "2 character(s) not in the model's vocabulary: '#', 'Q'"),
    (dict(temperature=0.0), "temperature must be between 1e-06 and 1e+06"),
    (dict(temperature=-2.0), "temperature must be between 1e-06 and 1e+06"),
    (dict(num_chars=-5), "num_chars must be between 0 and 1,000,000"),
    (dict(num_chars=99999999), "num_chars must be between 0 and 1,000,000"),
    (dict(num_samples=0), "num_samples must be between 1 and 4096"),
]


@pytest.mark.parametrize("options, message", SAMPLE_ERRORS, ids=[m[:40] for _, m in SAMPLE_ERRORS])
def test_sample_bad_input(tmp_path, trained_run, options, message):
    options = dict(options)
    run_dir = options.pop("run_dir", str(trained_run)).format(tmp=tmp_path)
    prime = options.pop("prime", "The")
    before = snapshot(trained_run)
    with pytest.raises(CharRNNError) as info:
        Sampler.from_checkpoint(run_dir, device="/CPU:0").generate(prime, **options)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert snapshot(trained_run) == before


def test_sample_bad_input_on_the_command_line(trained_run):
    before = snapshot(trained_run)
    _assert_one_line_error(run_cli("sample", f"--run_dir={trained_run}", "--prime=Qo#"),
                           "2 character(s) not in the model's vocabulary: '#', 'Q'")
    assert snapshot(trained_run) == before


@pytest.mark.parametrize("edit", ["config", "vocab"])
def test_sample_refuses_run_files_that_do_not_match_the_checkpoint(tmp_path, trained_run, edit):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    if edit == "config":
        path = run / "config.json"
        path.write_text(path.read_text().replace('"rnn_units": 16', '"rnn_units": 24'))
    else:
        path = run / "vocab.json"
        path.write_text(path.read_text().replace("z", ""))
    proc = run_cli("sample", f"--run_dir={run}", "--num_chars=5")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no usable checkpoint" in proc.stderr.strip().splitlines()[-1]


def test_unwritable_run_directory(tmp_path, small_text):
    if os.geteuid() == 0:
        target = "/proc/charrnn-run"  # root may write anywhere else
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = str(locked / "run")
    proc = run_cli("train", f"--data={small_text}", f"--run_dir={target}", "--max_steps=1", *TINY_FLAGS)
    assert proc.returncode == 2, proc.stderr
    assert "cannot create the run directory" in proc.stderr and "Traceback" not in proc.stderr
