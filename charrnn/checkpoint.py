"""The run directory and everything persisted in it.

    <run_dir>/config.json   the TrainConfig of the run (written atomically)
    <run_dir>/vocab.json    the vocabulary, so sampling never needs the corpus
    <run_dir>/ckpt/         tf.train.CheckpointManager files: checkpoint, ckpt-<step>.*
    <run_dir>/logs/         TensorBoard summaries
"""

from __future__ import annotations

import os
import tempfile

import tensorflow as tf

from charrnn.config import TrainConfig
from charrnn.data import Vocabulary
from charrnn.errors import CharRNNError

CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
CKPT_DIR = "ckpt"
LOG_DIR = "logs"


def write_atomic(path: str, text: str) -> None:
    """Writes `text` to `path` via a temporary file and a rename, so a crash leaves old or new."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None


def load_run_files(run_dir: str) -> tuple[TrainConfig, Vocabulary] | None:
    """The saved config and vocabulary of `run_dir`, or None if it holds no run yet."""
    config_text = _read(os.path.join(run_dir, CONFIG_FILE))
    vocab_text = _read(os.path.join(run_dir, VOCAB_FILE))
    if config_text is None and vocab_text is None:
        return None
    if config_text is None or vocab_text is None:
        missing = CONFIG_FILE if config_text is None else VOCAB_FILE
        raise CharRNNError(f"run directory {run_dir} has no {missing}; it is not a complete charrnn run, use another --run_dir")
    try:
        return TrainConfig.from_json(config_text), Vocabulary.from_json(vocab_text)
    except (ValueError, KeyError, TypeError) as e:
        raise CharRNNError(f"cannot parse the run files in {run_dir} ({e}); use another --run_dir") from None


def save_run_files(run_dir: str, config: TrainConfig, vocab: Vocabulary) -> None:
    """Creates `run_dir` if needed and writes its config and vocabulary."""
    try:
        os.makedirs(run_dir, exist_ok=True)
        write_atomic(os.path.join(run_dir, VOCAB_FILE), vocab.to_json())
        write_atomic(os.path.join(run_dir, CONFIG_FILE), config.to_json())
    except OSError as e:
        raise CharRNNError(f"cannot write to run directory {run_dir} ({e.strerror}); pass a writable --run_dir") from None


def checkpoint_manager(checkpoint: tf.train.Checkpoint, run_dir: str, max_to_keep: int) -> tf.train.CheckpointManager:
    return tf.train.CheckpointManager(checkpoint, os.path.join(run_dir, CKPT_DIR), max_to_keep=max_to_keep,
                                      checkpoint_name="ckpt")


def latest_checkpoint(run_dir: str) -> str | None:
    return tf.train.latest_checkpoint(os.path.join(run_dir, CKPT_DIR))


def restore(checkpoint: tf.train.Checkpoint, path: str, *, partial: bool = False) -> None:
    """Restores `checkpoint` from `path`, checking that every object it holds was found.

    With `partial`, the file may hold more than `checkpoint` (a sampler reads only the model
    out of a training checkpoint).
    """
    status = checkpoint.restore(path)
    if partial:
        status.expect_partial()
    status.assert_existing_objects_matched()
