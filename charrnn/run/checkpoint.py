"""TensorFlow checkpoints of a run: restoring the newest usable one, writing them
(`Checkpointer`). Finding them (which ones a run keeps, what `--which` names) is
charrnn.run.which's; what each one records beside the weights (validation, fingerprints) is
charrnn.run.records'.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

import tensorflow as tf

from charrnn import storage
from charrnn.config import WHICH
from charrnn.errors import CharRNNError
from charrnn.log import logger
from charrnn.run.rundir import RunDir
from charrnn.run.which import checkpoint_paths, checkpoint_step, state_file


def all_finite(variables: Iterable[tf.Variable]) -> bool:
    """Whether every value of the floating-point `variables` is finite (one read of each, one sync)."""
    checks = [tf.reduce_all(tf.math.is_finite(v)) for v in variables if tf.as_dtype(v.dtype).is_floating]
    return not checks or bool(tf.reduce_all(tf.stack(checks)))


class ModelMismatch(CharRNNError):
    """A checkpoint of a model of other sizes than the one it is restored into: config.json
    was edited, or the checkpoint is another run's. Not damage: no other checkpoint helps."""


# A run's checkpoint holds the training state (restored on resume) and, under this name,
# the fingerprints of its vocabulary and text (charrnn.run.records.Fingerprints), read apart
# (records.read_fingerprints) so that checkpoints of versions without them still restore.
FINGERPRINTS = "fingerprints"


def run_checkpoint(state: dict[str, Any], fingerprints: tf.Module) -> tuple[tf.train.Checkpoint,
                                                                          tf.train.Checkpoint]:
    """(what a run's checkpoint saves, what a resume restores of it), for the training
    `state` (each object under its name: a new object in the checkpoint is a new key there)."""
    return tf.train.Checkpoint(**state, **{FINGERPRINTS: fingerprints}), tf.train.Checkpoint(**state)


def restore_newest_readable(checkpoint: tf.train.Checkpoint, directory: str, *,
                            check_finite: Iterable[tf.Variable] = (), step: int | None = None) -> str | None:
    """Restores the newest checkpoint of `directory` that can be read in full; returns its path.

    An unreadable one (truncated or corrupted data, missing index, other variables), or one
    in which any of `check_finite` holds a NaN or an infinity (saved by an older charrnn
    after a diverged step), is reported on stderr and the next older one is tried; every
    checkpoint holds every variable, so a later success overwrites whatever a failed
    attempt assigned. One that fails while newer ones appear (a running trainer saved them
    and deleted it) is passed over quietly for the newest. Returns None if there is no
    checkpoint; raises CharRNNError if none is usable. The file may hold more than
    `checkpoint` (a sampler reads only the model, a trainer reads the fingerprints apart),
    but every object of `checkpoint` must be in it. With `step`, only that step's checkpoint
    is a candidate.
    """
    check_finite = list(check_finite)
    tried: set[str] = set()
    reasons = []
    with _quiet_tensorflow():
        while paths := [p for p in checkpoint_paths(directory) if p not in tried and step in (None,
                                                                                              checkpoint_step(p))]:
            path = paths[0]
            tried.add(path)
            try:
                status = checkpoint.restore(path)
                status.expect_partial()
                status.assert_existing_objects_matched()
                if not all_finite(check_finite):
                    raise ValueError("it holds non-finite weights (saved after the training diverged)")
                return path
            except Exception as e:  # noqa: BLE001 - a damaged file surfaces as OpError, IndexError,
                # ValueError, AssertionError... depending on where the reader trips; all mean "unreadable".
                if "incompatible tensor with shape" in str(e):  # not damage: a model of other sizes
                    raise ModelMismatch(f"the checkpoints of {directory} hold a model of other sizes than the run's "
                                        f"config.json and vocab.json say ({str(e).strip().splitlines()[0][:200]}); if "
                                        "either was edited, restore it, else train into a new --run_dir") from None
                if any(checkpoint_step(p) > checkpoint_step(path) and p not in tried
                       for p in checkpoint_paths(directory)):
                    # Newer ones came meanwhile: a running trainer saved them, and deleted this
                    # one to keep max_to_keep. A race, not damage: on to the newest, quietly.
                    continue
                reasons.append(str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__)
                logger.info(f"skipping unusable checkpoint {path} ({reasons[-1]})")
    if reasons:
        raise CharRNNError(f"no usable checkpoint in {directory} ({len(reasons)} tried, newest: {reasons[0]}); if "
                           "config.json was edited, undo that; else train into a new --run_dir")
    return None


@contextlib.contextmanager
def _quiet_tensorflow() -> Iterator[None]:
    """Keeps TensorFlow's warnings about a restore that failed halfway ("Value in checkpoint
    could not be found ...", logged when its bookkeeping is collected) off the console:
    restore_newest_readable says what matters in one line."""
    tf_logger = tf.get_logger()
    level = tf_logger.level
    tf_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        gc.collect()  # the failed restore's bookkeeping logs as it goes
        tf_logger.setLevel(level)


class Checkpointer:
    """Writes the checkpoints of `checkpoint` (a trainer's state) into `rundir`: the rolling
    ones (`latest`, the newest `max_to_keep`) and the best one (`best`).

    Never saves weights that are not finite (`finite`: the variables to check), and turns a
    storage fault into a CharRNNError after removing the half-written files of that
    checkpoint: the previous checkpoints and the state file stay as they were. Those checks
    are the `managers`' own, so a writer handed one (TensorFlow's preemption handler) saves
    as `save` does.
    """

    def __init__(self, checkpoint: tf.train.Checkpoint, rundir: RunDir, max_to_keep: int,
                 finite: Iterable[tf.Variable]):
        finite = list(finite)
        self.managers = {which: _manager(checkpoint, rundir.checkpoint_dir(which), max_to_keep if which == "latest"
                                         else 1, finite) for which in WHICH}

    def path(self, which: str = "latest") -> str | None:
        """The checkpoint of `which` kind saved last (None before any)."""
        return self.managers[which].latest_checkpoint

    def save(self, which: str, step: int) -> str:
        """Saves the state as checkpoint `step` of `which` kind; returns its path."""
        return self.managers[which].save(checkpoint_number=step)


class _CheckedManager(tf.train.CheckpointManager):
    """A CheckpointManager whose every save is Checkpointer's: finite weights only, and a
    storage fault cleaned up and reported in one line."""

    def __init__(self, checkpoint: tf.train.Checkpoint, directory: str, max_to_keep: int,
                 finite: list[tf.Variable]):
        super().__init__(checkpoint, directory, max_to_keep=max_to_keep, checkpoint_name="ckpt")
        self._finite = finite

    def save(self, checkpoint_number: int | None = None, check_interval: bool = True, options: object = None) -> str:
        if checkpoint_number is None:  # charrnn's checkpoints are numbered by their step
            raise ValueError("a run's checkpoint is saved with its step as checkpoint_number")
        step = int(checkpoint_number)
        if not all_finite(self._finite):
            raise CharRNNError(
                f"the weights are not finite at step {step} (training diverged); nothing was saved and the last "
                f"checkpoint ({self.latest_checkpoint or 'none'}) is kept; lower --learning_rate or set "
                "--grad_clip, then run again")
        prefix = f"{self.directory}/ckpt-{step}"
        try:
            return super().save(checkpoint_number=checkpoint_number, check_interval=check_interval, options=options)
        except storage.storage_errors() as e:
            for path in [prefix + "_temp", *storage.glob(prefix + ".*")]:
                storage.remove(path)
            raise storage.storage_error("write checkpoint", prefix, e) from None


def _manager(checkpoint: tf.train.Checkpoint, directory: str, max_to_keep: int,
             finite: list[tf.Variable]) -> tf.train.CheckpointManager:
    """The CheckpointManager of `directory`, which first takes on the checkpoints its state file
    does not name (a save killed after its files were written, before it was recorded), so
    that max_to_keep counts them and deletes them in their turn."""
    on_disk = [p for p in checkpoint_paths(directory) if storage.exists(p + ".index")][::-1]  # oldest first
    if {os.path.basename(p) for p in on_disk} - set(state_file(directory)[1]):
        now = time.time()
        tf.compat.v1.train.update_checkpoint_state(directory, on_disk[-1], on_disk,
                                                   all_model_checkpoint_timestamps=[now] * len(on_disk),
                                                   last_preserved_timestamp=now - 1)
    return _CheckedManager(checkpoint, directory, max_to_keep, finite)
