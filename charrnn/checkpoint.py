"""The run directory and everything persisted in it.

    <run_dir>/config.json   the TrainConfig of the run (written atomically)
    <run_dir>/vocab.json    the vocabulary, so sampling never needs the corpus
    <run_dir>/ckpt/         tf.train.CheckpointManager files: checkpoint, ckpt-<step>.*
    <run_dir>/best/         the checkpoint with the lowest validation loss so far, ckpt-<step>.*
    <run_dir>/metrics.jsonl training and validation losses by step, one JSON object a line
    <run_dir>/logs/         TensorBoard summaries
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys
import tempfile

import tensorflow as tf

from charrnn.config import TrainConfig
from charrnn.data import Vocabulary
from charrnn.errors import CharRNNError
from charrnn.model import CharRNN

CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
CKPT_DIR = "ckpt"
BEST_DIR = "best"
# Which checkpoint of a run to read: the best by validation loss, or the newest.
WHICH = ("best", "latest")
LOG_DIR = "logs"
METRICS_FILE = "metrics.jsonl"


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


def _directory(run_dir: str, which: str) -> str:
    return os.path.join(run_dir, BEST_DIR if which == "best" else CKPT_DIR)


def checkpoint_manager(checkpoint: tf.train.Checkpoint, run_dir: str, max_to_keep: int,
                       which: str = "latest") -> tf.train.CheckpointManager:
    """The manager of the rolling checkpoints (`latest`) or of the best one (`best`)."""
    return tf.train.CheckpointManager(checkpoint, _directory(run_dir, which), max_to_keep=max_to_keep,
                                      checkpoint_name="ckpt")


def checkpoint_paths(run_dir: str, which: str = "latest") -> list[str]:
    """Every checkpoint prefix of `run_dir` (rolling, or best), newest (highest step) first.

    Both the `checkpoint` state file and the directory listing are consulted, so a
    checkpoint whose index is missing, or a lost state file, still shows up here.
    """
    directory = _directory(run_dir, which)
    paths = set()
    state = tf.train.get_checkpoint_state(directory) if os.path.isdir(directory) else None
    if state is not None:
        paths.update(os.path.join(directory, os.path.basename(p)) for p in state.all_model_checkpoint_paths)
    for name in glob.glob(os.path.join(directory, "ckpt-*.index")) + glob.glob(os.path.join(directory, "ckpt-*.data-*")):
        paths.add(re.sub(r"\.(index|data-\d+-of-\d+)$", "", name))
    return sorted(paths, key=_step_of, reverse=True)


def resolve_which(run_dir: str, which: str | None) -> str:
    """`best` or `latest` as asked, checked; None: `best` if the run has one, else `latest`."""
    has_best = bool(checkpoint_paths(run_dir, "best"))
    if which is None:
        return "best" if has_best else "latest"
    if which not in WHICH:
        raise CharRNNError(f"--which must be best or latest, got {which!r}")
    if which == "best" and not has_best:
        raise CharRNNError(f"run directory {run_dir} has no best checkpoint (one is kept once a validation "
                           "loss has been measured); use --which=latest")
    return which


def _step_of(path: str) -> int:
    match = re.search(r"ckpt-(\d+)$", path)
    return int(match.group(1)) if match else -1


def restore_newest_readable(checkpoint: tf.train.Checkpoint, run_dir: str, *, partial: bool = False,
                            which: str = "latest") -> str | None:
    """Restores the newest checkpoint of `run_dir` (of `which` kind) that can be read in full; returns its path.

    An unreadable one (truncated or corrupted data, missing index, other variables) is
    reported on stderr and the next older one is tried; every checkpoint holds every
    variable, so a later success overwrites whatever a failed attempt assigned. Returns
    None if the run has no checkpoint; raises CharRNNError if none is readable. With
    `partial`, the file may hold more than `checkpoint` (a sampler reads only the model).
    """
    paths = checkpoint_paths(run_dir, which)
    reasons = []
    for path in paths:
        try:
            status = checkpoint.restore(path)
            if partial:
                status.expect_partial()
            status.assert_existing_objects_matched()
            return path
        except Exception as e:  # noqa: BLE001 - a damaged file surfaces as OpError, IndexError,
            # ValueError, AssertionError... depending on where the reader trips; all mean "unreadable".
            reasons.append(str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__)
            print(f"charrnn: skipping unreadable checkpoint {path} ({reasons[-1]})", file=sys.stderr)
    if paths:
        raise CharRNNError(f"no readable checkpoint in {_directory(run_dir, which)} ({len(paths)} tried, newest: "
                           f"{reasons[0]}); if config.json was edited, undo that; else train into a new --run_dir")
    return None


def load_model(run_dir: str, which: str | None = None, device: str = "/CPU:0") -> tuple[CharRNN, TrainConfig, Vocabulary, str]:
    """The trained model of `run_dir` from its `which` checkpoint (see `resolve_which`),
    placed on `device`, with the run's config and vocabulary and the checkpoint's path."""
    if not os.path.isdir(run_dir):
        raise CharRNNError(f"run directory {run_dir} does not exist; pass the --run_dir of a training run")
    no_checkpoint = f"run directory {run_dir} holds no checkpoint; train first with charrnn-train --run_dir={run_dir}"
    files = load_run_files(run_dir)
    if files is None:
        raise CharRNNError(no_checkpoint)
    config, vocab = files
    which = resolve_which(run_dir, which)
    with tf.device(device):
        model = CharRNN(len(vocab), config.embedding_dim, config.rnn_units, config.num_layers,
                        precision=config.mixed_precision, cell=config.cell)
        model.build_for_vocab()
        path = restore_newest_readable(tf.train.Checkpoint(model=model), run_dir, partial=True, which=which)
    if path is None:
        raise CharRNNError(no_checkpoint)
    return model, config, vocab, path


class MetricsLog:
    """Appends one JSON object per line to `<run_dir>/metrics.jsonl`, flushed at once.

    Opening it for a run resumed at `resumed_step` first drops the lines of later steps:
    those steps are trained again, and a step must appear once, with the value of the run
    that continues.
    """

    def __init__(self, run_dir: str, resumed_step: int):
        path = os.path.join(run_dir, METRICS_FILE)
        old = _read(path)
        if old:
            kept = [line for line in old.splitlines(keepends=True) if _line_step(line) <= resumed_step]
            if len(kept) != len(old.splitlines()):
                write_atomic(path, "".join(kept))
        self._file = open(path, "a", encoding="utf-8")

    def write(self, **values: float | int | None) -> None:
        self._file.write(json.dumps(values) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _line_step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # a torn last line (crash mid-write) is dropped


def read_metrics(run_dir: str) -> list[dict]:
    """The lines of `<run_dir>/metrics.jsonl` as dictionaries."""
    text = _read(os.path.join(run_dir, METRICS_FILE)) or ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]
