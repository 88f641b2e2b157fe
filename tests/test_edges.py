"""Faults at the edges of real launches: a second trainer, a full disk, a poisoned step, run
files that lie, inputs at their limits. In process where a process is not the point."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import stat
import subprocess
from pathlib import Path

import pytest
import tensorflow as tf

from charrnn import CharRNNError, Sampler, TrainConfig, Trainer, export, storage
from charrnn.run.records import read_fingerprints
from charrnn.run.rundir import RunDir
from charrnn.run.which import checkpoint_paths
from charrnn.text.vocab import fingerprint
from charrnn.training.metrics import read_metrics
from conftest import TINY_FLAGS, half_written, leftovers, run_cli, snapshot, tiny_config


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("edges") / "text.txt"
    path.write_text("The quick brown fox jumps over the lazy dog.\n" * 40)
    return path


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, text_file) -> Path:
    """A finished 4-step run with a checkpoint every 2 steps and a best checkpoint."""
    run = tmp_path_factory.mktemp("edges") / "run"
    Trainer(_config(text_file, run)).fit()
    return run


@pytest.fixture
def run_copy(tmp_path, base_run) -> Path:
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    return run


def _config(text_file: Path, run: Path, **overrides) -> TrainConfig:
    return tiny_config(text_file, run, **{"max_steps": 4, "checkpoint_every": 2, "eval_every": 2, "log_every": 1,
                                          **overrides})


# -- one trainer per run directory ----------------------------------------------------------

def test_a_held_lock_refuses_a_second_trainer_and_changes_nothing(text_file, run_copy):
    before = snapshot(run_copy)
    lock_path = RunDir(str(run_copy)).lock().path
    with RunDir(str(run_copy)).lock():
        holder = json.loads(open(lock_path).read())
        assert holder["pid"] == os.getpid() and holder["host"] and holder["started"]
        with pytest.raises(CharRNNError, match=rf"in use by another trainer \(pid {os.getpid()} on host "):
            Trainer(_config(text_file, run_copy, max_steps=6)).fit()
        with pytest.raises(CharRNNError, match="in use by another trainer"):
            RunDir(str(run_copy)).lock().acquire()
        assert {k: v for k, v in snapshot(run_copy).items() if k != lock_path} == before
    assert not os.path.exists(lock_path)  # released and removed
    Trainer(_config(text_file, run_copy, max_steps=6)).fit()  # free again


def test_a_lock_left_by_a_dead_trainer_is_taken_over(run_copy, capsys):
    lock = RunDir(str(run_copy)).lock()
    with open(lock.path, "w") as f:
        f.write(json.dumps({"host": "gone", "pid": 999999, "started": "yesterday"}))
    with lock:
        assert json.loads(open(lock.path).read())["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert "taking over the lock" in err and "pid 999999 on host gone, started yesterday" in err


def test_a_trainer_built_before_another_finished_continues_from_its_checkpoint(text_file, run_copy):
    early = Trainer(_config(text_file, run_copy, max_steps=10))  # restores step 4
    Trainer(_config(text_file, run_copy, max_steps=8)).fit()  # another trainer gets there first
    early.fit()
    steps = [m["step"] for m in read_metrics(run_copy) if "loss" in m]
    assert steps == list(range(1, 11))  # nothing trained twice, nothing lost


# -- storage faults --------------------------------------------------------------------------

def _fail_checkpoint_writes(monkeypatch, which: str) -> None:
    real = tf.train.CheckpointManager.save

    def save(self, checkpoint_number=None, **kwargs):
        if os.path.basename(self.directory) == which:
            os.makedirs(os.path.join(self.directory, f"ckpt-{checkpoint_number}_temp"))
            raise tf.errors.ResourceExhaustedError(None, None, f"{self.directory}/ckpt-{checkpoint_number}_temp/part; "
                                                   "No space left on device")
        return real(self, checkpoint_number=checkpoint_number, **kwargs)

    monkeypatch.setattr(tf.train.CheckpointManager, "save", save)


@pytest.mark.parametrize("which", ["ckpt", "best"])
def test_disk_full_during_a_checkpoint_is_one_error_and_the_previous_one_stays(text_file, run_copy, monkeypatch,
                                                                                which):
    _fail_checkpoint_writes(monkeypatch, which)
    with pytest.raises(CharRNNError, match=rf"cannot write checkpoint \S+/{which}/ckpt-6 \(No space left on device\)"):
        Trainer(_config(text_file, run_copy, max_steps=8)).fit()
    assert not leftovers(run_copy)
    monkeypatch.undo()
    assert checkpoint_paths(str(run_copy / "ckpt"))[0].endswith("ckpt-4")
    Trainer(_config(text_file, run_copy, max_steps=8)).fit()  # space freed: the same command continues


def _quota_exceeded(*args, **kwargs):
    raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))


@pytest.mark.parametrize("target", ["vocab.json", "metrics.jsonl"])
def test_quota_on_run_files_is_one_error(text_file, run_copy, monkeypatch, target):
    if target == "vocab.json":  # the rename that ends an atomic write
        monkeypatch.setattr(storage.os, "replace", _quota_exceeded)
    else:  # metrics.jsonl is opened to append
        real_open = os.open
        monkeypatch.setattr(os, "open", lambda path, flags, *a, **k: _quota_exceeded() if (
            str(path).endswith(target) and flags & os.O_APPEND) else real_open(path, flags, *a, **k))
    before = snapshot(run_copy)
    with pytest.raises(CharRNNError, match=rf"cannot write \S+{re.escape(target)} \(Disk quota exceeded\)"):
        Trainer(_config(text_file, run_copy, max_steps=6)).fit()
    monkeypatch.undo()
    assert not leftovers(run_copy)
    if target == "vocab.json":
        assert snapshot(run_copy) == before


@contextlib.contextmanager
def _tmpfs(path: Path, size: str):
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_really_full_disk(text_file, tmp_path):
    with _tmpfs(tmp_path / "disk", "2m") as disk:
        run = disk / "run"
        config = _config(text_file, run, rnn_units=64, max_steps=4)
        Trainer(config).fit()
        filler = disk / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        with contextlib.suppress(OSError):  # fill the disk, then leave room for the small files only
            while True:
                os.write(fd, b"\0" * 4096)
        os.ftruncate(fd, max(os.fstat(fd).st_size - 64 * 1024, 0))
        os.close(fd)
        with pytest.raises(CharRNNError, match=r"cannot write checkpoint \S+ckpt-6 \(No space left on device\)"):
            Trainer(config.replace(max_steps=8)).fit()
        assert not leftovers(run)
        filler.unlink()
        assert Sampler.from_checkpoint(str(run), device="/CPU:0", which="latest").generate("T", 5, seed=0)
        Trainer(config.replace(max_steps=8)).fit()
        assert checkpoint_paths(str(run / "ckpt"))[0].endswith("ckpt-8") and not leftovers(run)


def test_leftovers_of_a_killed_save_are_removed_at_the_next_start_and_nothing_else(text_file, run_copy, capsys):
    """What charrnn's own interrupted writes leave (TensorFlow's in its checkpoint directories,
    its atomic writes' files of a writer of this host that is gone) goes; files of the same
    look that it cannot prove its own stay."""
    (run_copy / "ckpt" / "ckpt-5_temp").mkdir()
    (run_copy / "ckpt" / "checkpoint.tmp1234").write_text("x")
    dead = run_copy / f".config.json.{socket.gethostname()}.{2**22 + 321}.tmp"  # a writer that is gone
    dead.write_text("x")
    alive = run_copy / f".metrics.jsonl.{socket.gethostname()}.{os.getppid()}.tmp"  # one still running
    others = [run_copy / ".config.json.abc.tmp", run_copy / ".draft.tmp", run_copy / "notes.tmp"]
    for path in [alive, *others]:
        path.write_text("mine")
    Trainer(_config(text_file, run_copy, max_steps=6)).fit()
    assert sorted(half_written(run_copy)) == sorted(str(p) for p in [alive, *others])
    assert all(p.read_text() == "mine" for p in [alive, *others]) and not (run_copy / "train.lock").exists()
    assert "ckpt-5_temp, left by an interrupted write" in capsys.readouterr().err


# -- poisoned checkpoints ------------------------------------------------------------------

def test_non_finite_weights_are_never_saved(text_file, run_copy):
    # One compiled call for steps 5 and 6 (chunks end at log points: log every 2 steps).
    trainer = Trainer(_config(text_file, run_copy, max_steps=6, steps_per_loop=2, log_every=2))
    real_loop = trainer._train_loop

    def overflowing_loop(*args):
        # A step whose loss and gradients are finite, but whose update overflows the weights
        # (the step guard cannot see it; the save must).
        result = real_loop(*args)
        trainer.model.dense.bias.assign(tf.fill(trainer.model.dense.bias.shape, float("inf")))
        return result

    trainer._train_loop = overflowing_loop
    with pytest.raises(CharRNNError, match=r"weights are not finite at step 6 .*\(\S+ckpt-4\) is kept"):
        trainer.fit()
    assert checkpoint_paths(str(run_copy / "ckpt"))[0].endswith("ckpt-4")


def test_a_poisoned_checkpoint_of_an_older_version_is_skipped(text_file, run_copy, capsys):
    trainer = Trainer(_config(text_file, run_copy, max_steps=6))
    trainer.model.dense.bias.assign(tf.fill(trainer.model.dense.bias.shape, float("nan")))
    trainer.step.assign(6)
    tf.train.CheckpointManager(trainer.checkpoint, str(run_copy / "ckpt"), 5).save(checkpoint_number=6)
    resumed = Trainer(_config(text_file, run_copy, max_steps=6))
    assert resumed.restored_from.endswith("ckpt-4") and int(resumed.step.numpy()) == 4
    assert re.search(r"skipping unusable checkpoint \S+ckpt-6 \(it holds non-finite", capsys.readouterr().err)
    assert Sampler.from_checkpoint(str(run_copy), device="/CPU:0", which="latest").generate("T", 5, seed=0)
    # Trained on from step 4, the run's checkpoint is the one it saved last, not the poisoned one above it.
    on = Trainer(_config(text_file, run_copy, max_steps=5))
    on.fit(verbose=0)
    assert on.checkpoint_path().endswith("ckpt-5") and checkpoint_paths(str(run_copy / "ckpt"))[0].endswith("ckpt-6")


# -- refusals write nothing ------------------------------------------------------------------

def test_a_resume_on_other_text_needs_a_flag_and_a_refused_one_writes_nothing(text_file, run_copy, tmp_path):
    other = tmp_path / "other.txt"  # the same characters and length, another text
    other.write_text("".join(reversed(text_file.read_text())))
    before = snapshot(run_copy)
    with pytest.raises(CharRNNError, match="is not the text run directory .* pass --allow_new_data"):
        Trainer(_config(other, run_copy, max_steps=6)).fit()
    shorter = tmp_path / "shorter.txt"
    shorter.write_text(text_file.read_text()[:300])
    with pytest.raises(CharRNNError, match="do not fit 3 steps per epoch"):
        Trainer(_config(shorter, run_copy, max_steps=6, allow_new_data=True, epochs=1)).fit()
    assert snapshot(run_copy) == before
    Trainer(_config(other, run_copy, max_steps=6, allow_new_data=True)).fit()
    newest = checkpoint_paths(str(run_copy / "ckpt"))[0]
    assert newest.endswith("ckpt-6") and read_fingerprints(newest)[1] == fingerprint(other.read_text())
    Trainer(_config(other, run_copy, max_steps=8)).fit()  # the new text is now the run's


# -- run files that lie ----------------------------------------------------------------------

DAMAGED_CONFIGS = {
    "a list": b"[1, 2, 3]",
    "null": b"null",
    "invalid UTF-8": b'{"rnn_units": "\xff\xfe"}',
    "a fractional size": None,  # filled in from the real config
    "a directory": None,
}


@pytest.mark.parametrize("damage", sorted(DAMAGED_CONFIGS))
def test_a_damaged_config_is_one_error_for_every_tool(text_file, run_copy, tmp_path, damage):
    path = run_copy / "config.json"
    if damage == "a directory":
        path.unlink()
        path.mkdir()
    elif damage == "a fractional size":
        path.write_text(path.read_text().replace('"rnn_units": 32', '"rnn_units": 32.5'))
    else:
        path.write_bytes(DAMAGED_CONFIGS[damage])
    before = snapshot(run_copy)
    for tool in (lambda: Trainer(_config(text_file, run_copy, max_steps=6)).fit(),
                 lambda: Sampler.from_checkpoint(str(run_copy), device="/CPU:0"),
                 lambda: export(str(run_copy), str(tmp_path / "export"))):
        with pytest.raises(CharRNNError, match=r"config\.json"):
            tool()
    assert snapshot(run_copy) == before and not (tmp_path / "export").exists()


def test_a_damaged_metrics_line_is_dropped_with_a_warning(text_file, run_copy, capsys):
    path = run_copy / "metrics.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + b"\xff\xfe garbage\n" + b"".join(lines[1:]))
    assert len(read_metrics(run_copy)) == len(lines)  # readers skip it
    Trainer(_config(text_file, run_copy, max_steps=6)).fit()
    assert "dropped 1 unreadable line(s)" in capsys.readouterr().err
    assert [m["step"] for m in read_metrics(run_copy) if "loss" in m] == list(range(1, 7))


def test_a_vocabulary_that_is_not_the_checkpoints_is_refused(run_copy):
    path = run_copy / "vocab.json"
    chars = json.loads(path.read_text())["chars"]
    path.write_text(json.dumps({"chars": chars.replace("z", "{")}))  # still sorted, one character changed
    with pytest.raises(CharRNNError, match=r"vocab\.json is not the vocabulary \S+ was trained with"):
        Sampler.from_checkpoint(str(run_copy), device="/CPU:0")


def test_an_unreadable_best_checkpoint_falls_back_to_the_latest(run_copy, capsys):
    for index in (run_copy / "best").glob("*.index"):
        index.write_bytes(b"garbage")
    sampler = Sampler.from_checkpoint(str(run_copy), device="/CPU:0")
    assert sampler.generate("T", 5, seed=0)
    assert "using the latest checkpoint instead" in capsys.readouterr().err


# -- inputs at their edges -------------------------------------------------------------------

def test_non_regular_data_files_are_refused(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for data in ("/dev/zero", str(fifo)):
        with pytest.raises(CharRNNError, match="is not a regular file"):
            Trainer(tiny_config(data, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_run_dir_that_is_a_file_is_refused(text_file, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CharRNNError, match="is a file, not a directory"):
        Trainer(tiny_config(text_file, tmp_path / "file"))
    with pytest.raises(CharRNNError, match="is a file, not a directory"):
        Sampler.from_checkpoint(str(tmp_path / "file"))


def test_export_dirs_that_cannot_take_a_savedmodel_are_refused(base_run, tmp_path):
    (tmp_path / "file").write_text("x")
    cases = [("", "--export_dir is empty"), (str(tmp_path / "file"), "is a file"),
             (str(tmp_path / "file" / "sub"), "which is a file")]
    readonly = tmp_path / "readonly"
    with contextlib.ExitStack() as stack:
        if os.geteuid() == 0:
            readonly.mkdir()
            if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(readonly)]).returncode == 0:
                stack.callback(subprocess.run, ["umount", "-l", str(readonly)])
                cases.append((str(readonly / "export"), "cannot write to"))
        else:
            readonly.mkdir(mode=0o555)
            cases.append((str(readonly / "export"), "cannot write to"))
        for export_dir, message in cases:
            with pytest.raises(CharRNNError, match=message):
                export(str(base_run), export_dir)
    assert sorted(os.listdir(tmp_path)) == ["file", "readonly"]


@pytest.mark.parametrize("options, message", [
    (dict(temperature=1e-38), "temperature must be between 1e-06 and 1e+06"),
    (dict(temperature=float("inf")), "temperature must be between"),
    (dict(seed=10**20), "seed must be a 64-bit integer"),
    (dict(seed=-(2**63) - 1), "seed must be a 64-bit integer"),
])
def test_sampling_options_outside_their_range(base_run, options, message):
    sampler = Sampler.from_checkpoint(str(base_run), device="/CPU:0")
    with pytest.raises(CharRNNError, match=re.escape(message)):
        sampler.generate("T", 5, **options)
    with pytest.raises(CharRNNError, match=re.escape(message)):
        next(sampler.stream("T", 5, **options))


def test_run_files_honour_the_umask(text_file, tmp_path):
    old = os.umask(0o022)
    try:
        Trainer(_config(text_file, tmp_path / "run", max_steps=2)).fit()
    finally:
        os.umask(old)
    for name in ("config.json", "vocab.json", "metrics.jsonl"):
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == 0o644, name


def test_strategy_tpu_without_a_tpu_is_one_line(text_file, tmp_path):
    proc = run_cli("train", f"--data={text_file}", f"--run_dir={tmp_path / 'run'}", "--strategy=tpu", *TINY_FLAGS)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "--strategy=tpu: no TPU found" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()


def test_a_failed_export_write_leaves_no_half_savedmodel(base_run, tmp_path, monkeypatch):
    import keras

    def write_out(self, path, *args, **kwargs):
        os.makedirs(os.path.join(path, "variables"))
        (Path(path) / "saved_model.pb").write_bytes(b"half")
        raise tf.errors.ResourceExhaustedError(None, None, f"{path}/variables/x; No space left on device")

    # keras.export.ExportArchive() makes an instance of a backend's subclass.
    monkeypatch.setattr(type(keras.export.ExportArchive()), "write_out", write_out)
    with pytest.raises(CharRNNError, match=r"cannot write the SavedModel to \S+ \(No space left on device\)"):
        export(str(base_run), str(tmp_path / "export"))
    assert not (tmp_path / "export").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(CharRNNError, match="No space left on device"):
        export(str(base_run), str(tmp_path / "empty"))
    assert os.listdir(tmp_path / "empty") == []


def test_an_export_appears_whole_or_not_at_all(base_run, tmp_path, monkeypatch):
    """The SavedModel is written under a name of the exporting process and renamed into place:
    a killed export leaves no half SavedModel at --export_dir, and the next export removes
    what a dead one left."""
    import keras

    dead = tmp_path / f"export.{socket.gethostname()}.{2**22 + 99}.part"  # left by an export killed halfway
    (dead / "variables").mkdir(parents=True)
    (dead / "saved_model.pb").write_bytes(b"half")
    archive_class = type(keras.export.ExportArchive())
    real_write_out = archive_class.write_out
    seen = []

    def write_out(self, path, *args, **kwargs):
        seen.append((path, (tmp_path / "export").exists()))
        return real_write_out(self, path, *args, **kwargs)

    monkeypatch.setattr(archive_class, "write_out", write_out)
    export(str(base_run), str(tmp_path / "export"))
    assert seen == [(str(tmp_path / f"export.{socket.gethostname()}.{os.getpid()}.part"), False)]
    assert sorted(os.listdir(tmp_path)) == ["export"]
    assert "serving_default" in tf.saved_model.load(str(tmp_path / "export")).signatures
