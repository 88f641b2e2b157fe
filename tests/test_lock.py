"""The run directory's lock (charrnn.run.lock), observed from another process for the whole extent
of a run: at its start, between chunks, during an evaluation and a checkpoint, at each
epoch's end and as it ends; free once it has ended."""

from __future__ import annotations

import os
import subprocess
import sys

import tensorflow as tf

from charrnn import Callback, Trainer
from charrnn.run.rundir import RunDir
from conftest import tiny_config

# Another process asks for the lock as a second trainer would (flock, without waiting): exit
# 0 when someone holds it, 1 when it is free, 2 when there is no lock file at all.
_PROBE = """
import fcntl, os, sys
try:
    fd = os.open(sys.argv[1], os.O_RDONLY)
except FileNotFoundError:
    sys.exit(2)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    sys.exit(0)
sys.exit(1)
"""


def _held(path: str) -> str:
    code = subprocess.run([sys.executable, "-c", _PROBE, path], timeout=60).returncode
    return {0: "held", 1: "free", 2: "no lock file"}[code]


class _Probe(Callback):
    """The lock's state, seen from another process, at each point of the run."""

    def __init__(self, path: str):
        self.path, self.seen = path, []

    def on_train_begin(self, trainer):
        self.seen.append(("begin", _held(self.path)))

    def on_chunk_end(self, step, logs):
        self.seen.append((f"chunk {step}", _held(self.path)))

    def on_evaluate(self, step, logs):
        self.seen.append((f"evaluate {step}", _held(self.path)))

    def on_epoch_end(self, epoch, logs):
        self.seen.append((f"epoch {epoch}", _held(self.path)))

    def on_train_end(self, logs):
        self.seen.append(("end", _held(self.path)))


def test_the_lock_is_held_from_the_start_of_a_run_to_its_end(small_text, tmp_path, monkeypatch):
    run = tmp_path / "run"
    trainer = Trainer(tiny_config(small_text, run, max_steps=6, eval_every=3, checkpoint_every=2, steps_per_loop=2))
    path = RunDir(str(run)).lock().path
    probe = _Probe(path)
    saves: list[str] = []
    real_save = tf.train.CheckpointManager.save

    def save(manager, *args, **kwargs):  # in the middle of each checkpoint's write
        saves.append(_held(path))
        return real_save(manager, *args, **kwargs)

    monkeypatch.setattr(tf.train.CheckpointManager, "save", save)
    assert _held(path) == "no lock file"
    trainer.fit(callbacks=[probe], verbose=0)
    points = [point for point, _ in probe.seen]
    assert points == ["begin", "chunk 2", "chunk 3", "evaluate 3", "chunk 4", "chunk 6", "evaluate 6", "epoch 1", "end"]
    assert [state for _, state in probe.seen] == ["held"] * len(points)
    assert len(saves) >= 4 and set(saves) == {"held"}  # steps 2, 3 (best), 4, 6 (latest and best)
    assert _held(path) == "no lock file"  # released, its file removed


def test_an_acquire_that_races_a_release_takes_the_file_now_at_the_path(tmp_path, monkeypatch):
    """B opens the lock file while A holds it; before B locks it, A releases (unlinks, then
    unlocks) and C creates and locks a new file at the path. B's lock on the unlinked file
    succeeds, but it is no longer the run's lock: B must see that, try the file now at the
    path, and be refused as C holds it. Made deterministic by running A's release and C's
    acquire inside B's call to flock."""
    import fcntl

    import pytest

    from charrnn import CharRNNError
    from charrnn.run.lock import RunLock

    path = str(tmp_path / "train.lock")
    a, b, c = RunLock(path), RunLock(path), RunLock(path)
    a.acquire()
    real_flock, raced = fcntl.flock, []

    def flock(fd, operation):
        if not raced:
            raced.append(os.fstat(fd).st_ino)
            a.release()
            c.acquire()
        return real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    with pytest.raises(CharRNNError, match="is in use by another trainer"):
        b.acquire()
    assert b._fd is None and raced and os.stat(path).st_ino != raced[0]  # B met the race, C's file is the lock
    monkeypatch.undo()
    c.release()
    b.acquire()  # free again
    b.release()
