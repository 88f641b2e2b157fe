"""The run directory and everything persisted in it.

    <run_dir>/config.json   the TrainConfig of the run (written atomically)
    <run_dir>/vocab.json    the vocabulary, so sampling never needs the corpus
    <run_dir>/ckpt/         tf.train.CheckpointManager files: checkpoint, ckpt-<step>.*
    <run_dir>/best/         the checkpoint with the lowest validation loss so far, ckpt-<step>.*
    <run_dir>/metrics.jsonl training and validation losses by step, one JSON object a line
    <run_dir>/logs/         TensorBoard summaries: train/, validation/, hparams and samples
    <run_dir>/train.lock    held while a trainer runs (charrnn.lock)

Every checkpoint also records fingerprints of the vocabulary and of the training text
(`fingerprints/vocab`, `fingerprints/data`), so that a vocab.json that does not belong to
the weights, or a resume on other text, is noticed.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from typing import Any, Iterable

import tensorflow as tf

from charrnn.callbacks import Callback
from charrnn.config import WHICH, TrainConfig
from charrnn.corpus import is_local
from charrnn.data import Vocabulary
from charrnn.errors import CharRNNError
from charrnn.model import CharRNN

CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
CKPT_DIR = "ckpt"
BEST_DIR = "best"
LOG_DIR = "logs"
METRICS_FILE = "metrics.jsonl"
# Checkpoint keys of the fingerprints (see Fingerprints).
_FINGERPRINT_KEY = "fingerprints/{}/.ATTRIBUTES/VARIABLE_VALUE"


# What a failed write of a file or a checkpoint raises (no space, quota, read-only, permission).
STORAGE_ERRORS = (OSError, tf.errors.ResourceExhaustedError, tf.errors.PermissionDeniedError,
                  tf.errors.FailedPreconditionError, tf.errors.NotFoundError, tf.errors.DataLossError,
                  tf.errors.UnknownError)


def storage_error(what: str, path: str, error: BaseException) -> CharRNNError:
    """The one-line error for a failed write or read of `path` (no space, quota, read-only, permission)."""
    if isinstance(error, OSError):
        cause = error.strerror or str(error)
    else:  # tf.errors.OpError: "<path...>; No space left on device [Op:SaveV2]"
        message = getattr(error, "message", str(error)).strip().splitlines()[0]
        cause = re.sub(r"\s*\[Op:\w+\]$", "", message).rsplit("; ", 1)[-1]
    return CharRNNError(f"cannot {what} {path} ({cause}); nothing older was changed: free space or fix the "
                        "permissions, then run the same command again")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str, text: str) -> None:
    """Writes `text` to `path` via a temporary file and a rename, so a crash leaves old or new.

    On a local disk the file gets the permissions a plain open() would give it (0666 less
    the umask) and reaches the disk before the rename; elsewhere (gs://, ...) it is written
    through tf.io.gfile.
    """
    directory, name = path.rsplit("/", 1) if "/" in path else (".", path)
    if not is_local(path):
        tmp = f"{directory}/.{name}.{os.getpid()}.tmp"
        try:
            with tf.io.gfile.GFile(tmp, "w") as f:
                f.write(text)
            tf.io.gfile.rename(tmp, path, overwrite=True)
        except BaseException:
            if tf.io.gfile.exists(tmp):
                tf.io.gfile.remove(tmp)
            raise
        return
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_bytes(path: str) -> bytes | None:
    """The bytes of `path` (on any filesystem), or None if it does not exist."""
    if is_local(path):
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    except tf.errors.NotFoundError:
        return None


def _read(path: str) -> str | None:
    """The text of `path`, or None if it does not exist; CharRNNError if it cannot be read as UTF-8."""
    try:
        raw = _read_bytes(path)
        return None if raw is None else raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CharRNNError(f"{path} is damaged (not UTF-8 at byte {e.start}); restore it from a backup, "
                           "or use another --run_dir") from None
    except (OSError, tf.errors.OpError) as e:
        cause = e.strerror if isinstance(e, OSError) else e.message.splitlines()[0]
        raise CharRNNError(f"cannot read {path} ({cause}); it should be a readable file written by "
                           "charrnn-train, or use another --run_dir") from None


def check_run_dir(run_dir: str) -> None:
    """Refuses a `run_dir` that exists but is not a directory."""
    if tf.io.gfile.exists(run_dir) and not tf.io.gfile.isdir(run_dir):
        raise CharRNNError(f"--run_dir {run_dir} is a file, not a directory; pass a directory for the run")


def load_run_files(run_dir: str) -> tuple[TrainConfig, Vocabulary] | None:
    """The saved config and vocabulary of `run_dir`, or None if it holds no run yet."""
    check_run_dir(run_dir)
    config_path, vocab_path = os.path.join(run_dir, CONFIG_FILE), os.path.join(run_dir, VOCAB_FILE)
    config_text, vocab_text = _read(config_path), _read(vocab_path)
    if config_text is None and vocab_text is None:
        return None
    if config_text is None or vocab_text is None:
        missing = CONFIG_FILE if config_text is None else VOCAB_FILE
        raise CharRNNError(f"run directory {run_dir} has no {missing}; it is not a complete charrnn run, use another --run_dir")
    loaded = []
    for path, text, parse in ((config_path, config_text, TrainConfig.from_json),
                              (vocab_path, vocab_text, Vocabulary.from_json)):
        try:
            loaded.append(parse(text))
        except (ValueError, KeyError, TypeError, CharRNNError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CharRNNError(f"{path} is damaged ({reason}); restore it from a backup, or use another "
                               "--run_dir") from None
    return loaded[0], loaded[1]


def save_run_files(run_dir: str, config: TrainConfig, vocab: Vocabulary, origin: dict | None = None) -> None:
    """Creates `run_dir` if needed and writes its config (with the `origin` of a fine-tuned
    run under "origin") and vocabulary."""
    path = run_dir
    settings = config.to_json()
    if origin is not None:
        settings = json.dumps(json.loads(settings) | {"origin": origin}, indent=2, sort_keys=True)
    try:
        tf.io.gfile.makedirs(run_dir)
        for name, text in ((VOCAB_FILE, vocab.to_json()), (CONFIG_FILE, settings)):
            path = os.path.join(run_dir, name)
            write_atomic(path, text)
    except STORAGE_ERRORS as e:
        raise storage_error("write", path, e) from None


def read_origin(run_dir: str) -> dict | None:
    """The "origin" record of a fine-tuned run's config.json (see save_run_files), if any."""
    try:
        origin = json.loads(_read(os.path.join(run_dir, CONFIG_FILE)) or "{}").get("origin")
    except (ValueError, AttributeError):
        return None
    return origin if isinstance(origin, dict) else None


def _directory(run_dir: str, which: str) -> str:
    return os.path.join(run_dir, BEST_DIR if which == "best" else CKPT_DIR)


def checkpoint_manager(checkpoint: tf.train.Checkpoint, run_dir: str, max_to_keep: int,
                       which: str = "latest") -> tf.train.CheckpointManager:
    """The manager of the rolling checkpoints (`latest`) or of the best one (`best`)."""
    return tf.train.CheckpointManager(checkpoint, _directory(run_dir, which), max_to_keep=max_to_keep,
                                      checkpoint_name="ckpt")


def save(manager: tf.train.CheckpointManager, step: int) -> str:
    """Saves checkpoint `step` with `manager`; a storage fault becomes a CharRNNError.

    On failure the half-written files of this checkpoint (its `_temp` directory, a partial
    index) are removed, and the previous checkpoints and the state file stay as they were.
    """
    prefix = os.path.join(manager.directory, f"ckpt-{step}")
    try:
        return manager.save(checkpoint_number=step)
    except STORAGE_ERRORS as e:
        _remove_partial(prefix)
        raise storage_error("write checkpoint", prefix, e) from None


def _remove(path: str) -> bool:
    """Removes a file or a directory tree (on any filesystem); whether it is gone."""
    try:
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        else:
            tf.io.gfile.remove(path)
    except (OSError, tf.errors.OpError):
        return not tf.io.gfile.exists(path)
    return True


def _glob(pattern: str) -> list[str]:
    try:
        return tf.io.gfile.glob(pattern)
    except tf.errors.NotFoundError:  # the directory does not exist
        return []


def _remove_partial(prefix: str) -> None:
    for path in [prefix + "_temp", *_glob(prefix + ".*")]:
        if tf.io.gfile.exists(path):
            _remove(path)


def remove_leftovers(run_dir: str) -> list[str]:
    """Removes what an interrupted write leaves behind: checkpoint `_temp` directories, and the
    temporary files of atomic writes (ours and TensorFlow's). Only safe while holding the lock."""
    patterns = [os.path.join(run_dir, ".*.tmp")] + [
        os.path.join(run_dir, sub, pattern) for sub in (CKPT_DIR, BEST_DIR) for pattern in ("*_temp", "*.tmp*")]
    return [path for pattern in patterns for path in _glob(pattern) if _remove(path)]


def checkpoint_paths(run_dir: str, which: str = "latest") -> list[str]:
    """Every checkpoint prefix of `run_dir` (rolling, or best), newest (highest step) first.

    Both the `checkpoint` state file and the directory listing are consulted, so a
    checkpoint whose index is missing, or a lost state file, still shows up here.
    """
    directory = _directory(run_dir, which)
    paths = set()
    try:
        state = tf.train.get_checkpoint_state(directory) if tf.io.gfile.isdir(directory) else None
    except (tf.errors.OpError, ValueError):  # a damaged state file: the listing below still finds them
        state = None
    if state is not None:
        paths.update(os.path.join(directory, os.path.basename(p)) for p in state.all_model_checkpoint_paths)
    for name in _glob(os.path.join(directory, "ckpt-*.index")) + _glob(os.path.join(directory, "ckpt-*.data-*")):
        paths.add(re.sub(r"\.(index|data-\d+-of-\d+)$", "", name))
    return sorted((p for p in paths if _step_of(p) >= 0), key=_step_of, reverse=True)


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


def all_finite(variables: Iterable[tf.Variable]) -> bool:
    """Whether every value of the floating-point `variables` is finite (one read of each, one sync)."""
    checks = [tf.reduce_all(tf.math.is_finite(v)) for v in variables if tf.as_dtype(v.dtype).is_floating]
    return not checks or bool(tf.reduce_all(tf.stack(checks)))


def restore_newest_readable(checkpoint: tf.train.Checkpoint, run_dir: str, *, which: str = "latest",
                            check_finite: Iterable[tf.Variable] = ()) -> str | None:
    """Restores the newest checkpoint of `run_dir` (of `which` kind) that can be read in full; returns its path.

    An unreadable one (truncated or corrupted data, missing index, other variables), or one
    in which any of `check_finite` holds a NaN or an infinity (saved by an older charrnn
    after a diverged step), is reported on stderr and the next older one is tried; every
    checkpoint holds every variable, so a later success overwrites whatever a failed
    attempt assigned. Returns None if the run has no checkpoint; raises CharRNNError if
    none is usable. The file may hold more than `checkpoint` (a sampler reads only the
    model, a trainer reads the fingerprints apart), but every object of `checkpoint` must
    be in it.
    """
    check_finite = list(check_finite)
    paths = checkpoint_paths(run_dir, which)
    reasons = []
    for path in paths:
        try:
            status = checkpoint.restore(path)
            status.expect_partial()
            status.assert_existing_objects_matched()
            if not all_finite(check_finite):
                raise ValueError("it holds non-finite weights (saved after the training diverged)")
            return path
        except Exception as e:  # noqa: BLE001 - a damaged file surfaces as OpError, IndexError,
            # ValueError, AssertionError... depending on where the reader trips; all mean "unreadable".
            reasons.append(str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__)
            print(f"charrnn: skipping unusable checkpoint {path} ({reasons[-1]})", file=sys.stderr)
    if paths:
        raise CharRNNError(f"no usable checkpoint in {_directory(run_dir, which)} ({len(paths)} tried, newest: "
                           f"{reasons[0]}); if config.json was edited, undo that; else train into a new --run_dir")
    return None


class Fingerprints(tf.Module):
    """What a checkpoint's weights were trained on: fingerprints of the vocabulary and the text."""

    def __init__(self, vocab: str = "", data: str = "") -> None:
        super().__init__(name="fingerprints")
        with tf.device("/CPU:0"):
            self.vocab = tf.Variable(vocab, trainable=False, name="vocab")
            self.data = tf.Variable(data, trainable=False, name="data")


def read_fingerprints(path: str) -> tuple[str, str] | None:
    """The (vocabulary, data) fingerprints of checkpoint `path`; None for one saved before charrnn kept them."""
    try:
        reader = tf.train.load_checkpoint(path)
        return tuple(reader.get_tensor(_FINGERPRINT_KEY.format(k)).decode() for k in ("vocab", "data"))
    except (tf.errors.OpError, ValueError, KeyError):
        return None


def check_vocab(path: str, vocab: Vocabulary, run_dir: str) -> tuple[str, str] | None:
    """Refuses a vocab.json that is not the vocabulary the checkpoint at `path` was trained with;
    returns the checkpoint's fingerprints (see `read_fingerprints`)."""
    saved = read_fingerprints(path)
    if saved is not None and saved[0] != vocab.fingerprint:
        raise CharRNNError(f"{os.path.join(run_dir, VOCAB_FILE)} is not the vocabulary {path} was trained with "
                           f"(fingerprint {vocab.fingerprint}, the checkpoint's {saved[0]}); restore the run's "
                           "original vocab.json")
    return saved


def load_model(run_dir: str, which: str | None = None, device: str = "/CPU:0", lstm_impl: str = "auto",
               float32: bool = False) -> tuple[CharRNN, TrainConfig, Vocabulary, str]:
    """The trained model of `run_dir` from its `which` checkpoint (see `resolve_which`),
    placed on `device` (with `lstm_impl`, see CharRNN; with `float32`, computing in float32
    whatever precision it was trained in: the weights are float32 either way), with the
    run's config and vocabulary and the checkpoint's path.

    If no best checkpoint is usable, the latest one is used, with a warning.
    """
    check_run_dir(run_dir)
    if not tf.io.gfile.isdir(run_dir):
        raise CharRNNError(f"run directory {run_dir} does not exist; pass the --run_dir of a training run")
    no_checkpoint = f"run directory {run_dir} holds no checkpoint; train first with charrnn-train --run_dir={run_dir}"
    files = load_run_files(run_dir)
    if files is None:
        raise CharRNNError(no_checkpoint)
    config, vocab = files
    which = resolve_which(run_dir, which)
    with tf.device(device):
        model = CharRNN.from_config(config.replace(mixed_precision="float32") if float32 else config, len(vocab),
                                    lstm_impl)
        reader = tf.train.Checkpoint(model=model)
        try:
            path = restore_newest_readable(reader, run_dir, which=which, check_finite=model.variables)
        except CharRNNError as e:
            if which != "best" or not checkpoint_paths(run_dir, "latest"):
                raise
            print(f"charrnn: warning: {e}; using the latest checkpoint instead", file=sys.stderr)
            path = restore_newest_readable(reader, run_dir, check_finite=model.variables)
    if path is None:
        raise CharRNNError(no_checkpoint)
    check_vocab(path, vocab, run_dir)
    return model, config, vocab, path


class MetricsLog(Callback):
    """The training loop's observer that keeps `<run_dir>/metrics.jsonl`: one JSON object
    per line, flushed at once: `{step, loss}` every `log_every` steps (that step's loss),
    `{step, val_loss, val_bpc}` at each evaluation, `{step, epoch, train_loss, val_loss,
    val_bpc}` at each epoch's end.

    Opening it for a run resumed at `resumed_step` first drops the lines of later steps:
    those steps are trained again, and a step must appear once, with the value of the run
    that continues. Lines that cannot be read (a torn last line after a crash, damage) are
    dropped too, with a warning unless it was the last line.

    On a filesystem that cannot append (object stores such as gs://), the file is rewritten
    whole at each checkpoint point, epoch end and at the end, so that it always holds at
    least the lines of the newest checkpoint's steps.
    """

    def __init__(self, run_dir: str, resumed_step: int):
        self.path = os.path.join(run_dir, METRICS_FILE)
        self._trainer: Any = None
        try:
            old = _read_bytes(self.path) or b""
        except (OSError, tf.errors.OpError) as e:
            raise storage_error("read", self.path, e) from None
        lines = old.splitlines(keepends=True)
        steps = [_step(_record(line)) for line in lines]
        damaged = sum(s is None for s in steps[:-1])
        if damaged:
            print(f"charrnn: warning: dropped {damaged} unreadable line(s) of {self.path}", file=sys.stderr)
        kept = [line.rstrip(b"\n").decode("utf-8") + "\n" for line, s in zip(lines, steps)
                if s is not None and s <= resumed_step]
        # Appended to on a local disk; elsewhere every line is kept and the file rewritten.
        self._lines: list[str] | None = None if is_local(self.path) else kept
        try:
            if len(kept) != len(lines) or (lines and not lines[-1].endswith(b"\n")):
                write_atomic(self.path, "".join(kept))
            self._file = open(self.path, "a", encoding="utf-8") if self._lines is None else None
        except STORAGE_ERRORS as e:
            raise storage_error("write", self.path, e) from None

    def _write(self, **values: float | int | None) -> None:
        line = json.dumps(values) + "\n"
        if self._lines is not None:
            self._lines.append(line)
            return
        try:
            self._file.write(line)
            self._file.flush()
        except OSError as e:
            raise storage_error("write", self.path, e) from None

    def _rewrite(self) -> None:
        if self._lines is not None:
            try:
                write_atomic(self.path, "".join(self._lines))
            except STORAGE_ERRORS as e:
                raise storage_error("write", self.path, e) from None

    def on_train_begin(self, trainer: Any) -> None:
        self._trainer = trainer

    def on_chunk_end(self, step: int, logs: dict[str, float]) -> None:
        cadence = self._trainer.cadence
        if cadence.log_due(step):
            self._write(step=step, loss=float(self._trainer.last_losses[-1]))
        if step % cadence.checkpoint_every == 0:  # a checkpoint follows: its steps' lines first
            self._rewrite()

    def on_evaluate(self, step: int, logs: dict[str, float]) -> None:
        self._write(step=step, val_loss=logs["val_loss"], val_bpc=logs["val_bpc"])

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self._write(step=self._trainer.position()[0], epoch=epoch, train_loss=logs["loss"],
                    val_loss=logs.get("val_loss"), val_bpc=logs.get("val_bpc"))
        self._rewrite()

    def on_train_end(self, logs: dict[str, float]) -> None:
        if self._lines is not None:
            self._rewrite()
            return
        try:
            self._file.close()
        except OSError:  # the failed write was already reported
            pass


def _record(line: bytes) -> dict | None:
    """A metrics line as a dictionary with an integer step, or None if it is not one (torn or damaged)."""
    try:
        record = json.loads(line.decode("utf-8"))
        int(record["step"])
    except (ValueError, KeyError, TypeError):
        return None
    return record


def _step(record: dict | None) -> int | None:
    return None if record is None else int(record["step"])


def read_metrics(run_dir: str) -> list[dict]:
    """The readable lines of `<run_dir>/metrics.jsonl` as dictionaries (damaged ones skipped)."""
    lines = (_read_bytes(os.path.join(run_dir, METRICS_FILE)) or b"").splitlines()
    return [record for record in map(_record, lines) if record is not None]
