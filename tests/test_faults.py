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
import types
import typing
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from charrnn import Callback, CharRNNError, Sampler, TrainConfig, Trainer
from charrnn.run.rundir import RunDir
from charrnn.run.which import checkpoint_paths
from charrnn.training.metrics import read_metrics
from charrnn.training.stopping import EXIT_PREEMPTED, Preempted, SignalStop
from conftest import (
    TINY_FLAGS,
    assert_one_line_error,
    copy_run,
    half_written,
    leftovers,
    logged,
    run_cli,
    shakespeare,
    snapshot,
    tiny_config,
)

# A model big enough that a step takes a few milliseconds, so a kill lands mid-run.
KILL_FLAGS = ["--embedding_dim=16", "--rnn_units=64", "--batch_size=8", "--seq_length=32", "--dropout=0.1",
              "--log_every=1", "--checkpoint_every=4", "--deterministic", "--device=/CPU:0"]


def _checkpoint_values(run: Path, directory: str = "ckpt") -> dict[str, np.ndarray]:
    path = tf.train.latest_checkpoint(str(run / directory))
    reader = tf.train.load_checkpoint(path)
    # save_counter counts saves, which a killed run makes more of; everything else must match.
    return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(path)
            if name not in ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/.ATTRIBUTES/VARIABLE_VALUE")}


def _train_until(args: list[str], step: int, sig: int) -> subprocess.Popen:
    """Starts charrnn-train, sends `sig` as soon as it reports `step`, and returns the ended process."""
    proc = subprocess.Popen([sys.executable, "-m", "charrnn.cli.train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        match = re.search(r"step (\d+)/", line)
        if match and int(match.group(1)) >= step:
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


def _launch_killed(args: list[str], where: str, step: int, marker: Path) -> subprocess.CompletedProcess:
    """charrnn-train `args` that SIGKILLs itself at `where` in the save of checkpoint `step` (tests/kill_train.py)."""
    return subprocess.run([sys.executable, str(Path(__file__).parent / "kill_train.py"), where, str(step), str(marker),
                           *args], capture_output=True, text=True, timeout=300)


def _state_file_names(run: Path) -> str:
    return os.path.basename(tf.train.get_checkpoint_state(str(run / "ckpt")).model_checkpoint_path)


def test_killed_anywhere_again_and_again_then_a_clean_finish_is_bit_identical(small_text, tmp_path):
    """SIGKILL at each kind of point of a checkpoint save (as it starts, right after a step;
    while TensorFlow writes its files; after the files and before the state file names them;
    after that and before old checkpoints are deleted), at steps drawn by a seeded RNG, then
    a SIGTERM; the same command after each; the finished run equals one never interrupted,
    bit for bit (--deterministic), with validation and carried state."""
    total = 70
    args = [f"--data={small_text}", f"--max_steps={total}", *KILL_FLAGS, "--checkpoint_every=1", "--max_to_keep=3",
            "--carry_state", "--eval_every=7"]
    reference = run_cli("train", *args, f"--run_dir={tmp_path / 'ref'}")
    assert reference.returncode == 0, reference.stderr
    run, rng, reached = tmp_path / "run", random.Random(21), 0
    args.append(f"--run_dir={run}")
    previous = None
    for where in ("start", "write", "record", "sweep"):
        target, marker = reached + rng.randint(3, 8), tmp_path / f"{where}.started"
        proc = _launch_killed(args, where, target, marker)
        assert proc.returncode == -signal.SIGKILL and marker.exists(), f"{where}: {proc.stderr[-2000:]}"
        if previous is not None:  # each launch took over the lock of the killed one, and cleaned up after it
            assert "taking over the lock of" in proc.stderr, proc.stderr[-2000:]
            if previous == "write":
                assert re.search(r"removed \S+ckpt-\d+_temp, left by an interrupted write", proc.stderr), proc.stderr
        index = run / "ckpt" / f"ckpt-{target}.index"
        if where == "start":  # nothing of the save was written
            assert not index.exists() and not half_written(run)
        elif where == "write":  # killed inside TensorFlow's write: its temporary files are there
            assert any(p.endswith(f"ckpt-{target}_temp") for p in half_written(run))
        elif where == "record":  # the files are whole, but the state file does not know them
            assert index.exists() and _state_file_names(run) != f"ckpt-{target}"
        else:  # the state file names it; the oldest checkpoint, past max_to_keep, is not deleted yet
            state = tf.train.get_checkpoint_state(str(run / "ckpt"))
            assert _state_file_names(run) == f"ckpt-{target}" and len(state.all_model_checkpoint_paths) == 4
        reached, previous = max(logged(run, "loss")), where

    # Then a SIGTERM, as a scheduler preempts: a checkpoint, exit status 75.
    proc = _train_until(args, reached + 3, signal.SIGTERM)
    stderr = proc.stderr.read()
    assert proc.returncode == EXIT_PREEMPTED, stderr
    match = re.search(r"stopped by SIGTERM at step (\d+); checkpoint saved to (\S+);", stderr)
    assert match and "Traceback" not in stderr, stderr
    step = int(match.group(1))
    assert match.group(2).endswith(f"ckpt-{step}") and Path(match.group(2) + ".index").exists() and step < total

    final = run_cli("train", *args)
    assert final.returncode == 0, final.stderr
    assert f"Resumed from {match.group(2)} at step {step}" in final.stdout
    _assert_same_run(run, tmp_path / "ref", total, f"interrupted at steps up to {step}")
    assert any(k.startswith("validation/") for k in _checkpoint_values(run, "best"))
    assert not leftovers(run)
    # The save killed before the state file named it was deleted in its turn: max_to_keep.
    assert len(list((run / "ckpt").glob("*.index"))) == 3


def test_a_second_trainer_on_a_run_in_use_is_refused_in_one_line(trained_run, tmp_path):
    """The train tool's error contract: one line, exit status 2, nothing changed."""
    run = copy_run(trained_run, tmp_path / "run")
    before = snapshot(run)
    with RunDir(str(run)).lock():  # as a trainer in another process holds it
        proc = run_cli("train", f"--data={trained_run.parent / 'text.txt'}", f"--run_dir={run}", "--max_steps=6",
                       *TINY_FLAGS)
    assert_one_line_error(proc, f"run directory {run} is in use by another trainer (pid {os.getpid()} on host ")
    assert snapshot(run) == before


def test_ctrl_c_in_fit_saves_a_checkpoint_and_raises_preempted(small_text, tmp_path):
    class CtrlC(Callback):
        def on_chunk_end(self, step, logs):
            if step == 5:
                os.kill(os.getpid(), signal.SIGINT)  # handled by fit(): a stop at this chunk's end

    config = tiny_config(small_text, tmp_path / "run", max_steps=20, log_every=1)
    with pytest.raises(Preempted, match=r"stopped by SIGINT at step 5; checkpoint saved to \S+ckpt-5; run the same "
                                        "command again to continue") as info:
        Trainer(config).fit(callbacks=[CtrlC()], verbose=0)
    assert info.value.checkpoint.endswith("ckpt-5")
    resumed = Trainer(config)
    assert resumed.restored_from.endswith("ckpt-5")
    resumed.fit(verbose=0)
    assert sorted(logged(tmp_path / "run", "loss")) == list(range(1, 21))


def test_a_stop_during_evaluation_is_prompt_and_the_evaluation_is_redone(small_text, tmp_path):
    config = tiny_config(small_text, tmp_path / "run", max_steps=10)
    trainer = Trainer(config)
    real_eval_step = trainer._evaluator._step
    calls = []

    def eval_step_then_signal(*args):
        calls.append(1)
        os.kill(os.getpid(), signal.SIGTERM)  # handled by fit()'s SignalStop before the next batch
        return real_eval_step(*args)

    trainer._evaluator._step = eval_step_then_signal
    with pytest.raises(Preempted, match="stopped by SIGTERM at step 10") as info:
        trainer.fit()
    assert len(calls) == 1  # the evaluation stopped after one batch
    assert info.value.checkpoint.endswith("ckpt-10")
    assert not [m for m in read_metrics(tmp_path / "run") if "epoch" in m]

    resumed = Trainer(config)
    history = resumed.fit()
    assert history.epoch == [0] and history.history["val_loss"][0] is not None
    assert len([m for m in read_metrics(tmp_path / "run") if "epoch" in m]) == 1
    assert Trainer(config).fit().epoch == []


def test_second_ctrl_c_falls_through_to_the_default_action():
    before = signal.getsignal(signal.SIGINT)
    trainer = types.SimpleNamespace(stop_training=False, stop_reason=None)
    stop = SignalStop()
    stop.on_train_begin(trainer)
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.requested == "SIGINT" and trainer.stop_training and trainer.stop_reason == "SIGINT"
    assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL  # the next Ctrl-C ends the process at once
    stop.on_train_end({})
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


@pytest.fixture(scope="module")
def six_steps(tmp_path_factory) -> tuple[Path, TrainConfig]:
    """A finished 6-step run with a checkpoint every 2 steps, and its config."""
    base = tmp_path_factory.mktemp("six")
    (base / "text.txt").write_text(shakespeare(12_000))
    config = tiny_config(base / "text.txt", base / "run", max_steps=6, checkpoint_every=2)
    Trainer(config).fit(verbose=0)
    return base / "run", config


@pytest.mark.parametrize("how", ["truncated", "corrupted", "missing index"])
def test_damaged_newest_checkpoint_falls_back_to_an_older_one(six_steps, tmp_path, capsys, how):
    run = copy_run(six_steps[0], tmp_path / "run")
    config = six_steps[1].replace(run_dir=str(run), max_steps=8)
    _damage(run, how)
    # The sampler meets the damaged checkpoint first (it is the newest), and falls back.
    sampler = Sampler.from_checkpoint(str(run), which="latest")
    assert re.search(r"skipping unusable checkpoint \S+ckpt-6 ", capsys.readouterr().err)
    resumed = Trainer(config)
    assert re.search(r"skipping unusable checkpoint \S+ckpt-6 ", capsys.readouterr().err)
    assert resumed.restored_from.endswith("ckpt-4") and int(resumed.step.numpy()) == 4
    for a, b in zip(sampler.model.trainable_variables, resumed.model.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())  # both read checkpoint 4
    resumed.fit(verbose=0)
    assert checkpoint_paths(str(run / "ckpt"))[0].endswith("ckpt-8")


def test_no_readable_checkpoint_stops_with_a_message(six_steps, tmp_path):
    run = copy_run(six_steps[0], tmp_path / "run")
    for index in (run / "ckpt").glob("*.index"):
        index.write_bytes(b"garbage")
    before = snapshot(run)
    with pytest.raises(CharRNNError, match=r"no usable checkpoint in \S+ckpt \(3 tried, newest: "):
        Trainer(six_steps[1].replace(run_dir=str(run), max_steps=8)).fit(verbose=0)
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
    (["stray"], "unexpected arguments"),
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
    assert_one_line_error(run_cli("train", *_train_args(trained_run, bad_files, args)), message)
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
    assert_one_line_error(run_cli("sample", f"--run_dir={trained_run}", "--prime=Qo#"),
                           "2 character(s) not in the model's vocabulary: '#', 'Q'")
    assert snapshot(trained_run) == before


@pytest.mark.parametrize("edit", ["config", "vocab"])
def test_sample_refuses_run_files_that_do_not_match_the_checkpoint(tmp_path, trained_run, edit):
    run = copy_run(trained_run, tmp_path / "run")
    if edit == "config":
        path = run / "config.json"
        path.write_text(path.read_text().replace('"rnn_units": 16', '"rnn_units": 24'))
    else:
        path = run / "vocab.json"
        path.write_text(path.read_text().replace("z", ""))
    with pytest.raises(CharRNNError, match="hold a model of other sizes than the run's config.json and vocab.json say"):
        Sampler.from_checkpoint(str(run))


def test_unwritable_run_directory(tmp_path, small_text):
    if os.geteuid() == 0:
        target = "/proc/charrnn-run"  # root may write anywhere else
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = str(locked / "run")
    with pytest.raises(CharRNNError, match="cannot create the run directory"):
        Trainer(tiny_config(small_text, target, max_steps=1)).fit(verbose=0)


def _limited(limit: int, soft: int, hard: int):
    """A preexec_fn that gives the tool's process these resource limits (as `ulimit` would)."""
    import resource

    def apply() -> None:
        resource.setrlimit(limit, (soft, hard))
    return apply


def test_resource_limits_a_tool_cannot_start_under_are_one_line(trained_run, small_text, tmp_path):
    """Too few open files, too little address space for TensorFlow: refused in one line
    before it loads (it would fail with a traceback, or crash); a low soft limit on open files
    is raised to the hard one, as any process may."""
    import resource

    sample = [sys.executable, "-m", "charrnn.cli.sample", f"--run_dir={trained_run}", "--num_chars=5"]
    for limit, soft, hard, message in [
            (resource.RLIMIT_NOFILE, 9, 9, "this process may open only 9 files (ulimit -n); charrnn needs at least 64"),
            (resource.RLIMIT_AS, 2 << 30, resource.RLIM_INFINITY, "this process may use only 2,048 MiB of address "
                                                                 "space (ulimit -v); TensorFlow needs about "
                                                                 "3,072 MiB")]:
        proc = subprocess.run(sample, capture_output=True, text=True, timeout=300,
                              preexec_fn=_limited(limit, soft, hard))
        assert_one_line_error(proc, message)
    proc = subprocess.run(sample, capture_output=True, text=True, timeout=300,
                          preexec_fn=_limited(resource.RLIMIT_NOFILE, 9, 4096))
    assert proc.returncode == 0 and len(proc.stdout) > 5, proc.stderr


def test_a_file_size_limit_hit_by_a_checkpoint_is_one_line(small_text, tmp_path):
    """ulimit -f smaller than a checkpoint: TensorFlow's write fails ("File too large") and
    the run says so in one line; nothing half-written stays."""
    import resource

    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "charrnn.cli.train", f"--data={small_text}", f"--run_dir={run}",
                           "--max_steps=2", *TINY_FLAGS, "--rnn_units=128"], capture_output=True, text=True,
                          timeout=300, preexec_fn=_limited(resource.RLIMIT_FSIZE, 100_000, resource.RLIM_INFINITY))
    assert_one_line_error(proc, "(File too large); what was saved before stays")
    assert not half_written(run)
