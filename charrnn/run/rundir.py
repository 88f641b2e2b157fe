"""`RunDir`: a run directory, and the one owner of its layout.

    <run_dir>/config.json   the TrainConfig of the run (and, for a fine-tuned run, its "origin")
    <run_dir>/vocab.json    the vocabulary, so sampling never needs the corpus
    <run_dir>/ckpt/         tf.train.CheckpointManager files: checkpoint, ckpt-<step>.*
    <run_dir>/best/         the checkpoint with the lowest validation loss so far, ckpt-<step>.*
    <run_dir>/metrics.jsonl training and validation losses by step, one JSON object a line
    <run_dir>/events.*      TensorBoard summaries: hparams, best validation loss, samples
    <run_dir>/train/, validation/   TensorBoard summaries of each side (Keras' layout), so that
                            `tensorboard --logdir runs` names them <run>/train, <run>/validation
    <run_dir>/train.lock    held while a trainer runs (charrnn.run.lock)

Every file name of a run is written here and nowhere else; the modules that write the
files ask a RunDir for their paths. `read()` reads config.json and vocab.json once and
checks them; `write()` writes them atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterator

from charrnn import storage
from charrnn.config import TrainConfig
from charrnn.errors import CharRNNError
from charrnn.run.lock import RunLock
from charrnn.text.vocab import Vocabulary
from charrnn.validate import check_utf8

_CONFIG, _VOCAB, _METRICS, _LOCK = "config.json", "vocab.json", "metrics.jsonl", "train.lock"
# TensorBoard's writers: the run's own events beside config.json, each side in a directory.
_LOGS = {"run": "", "train": "train", "validation": "validation"}
_CHECKPOINTS = {"latest": "ckpt", "best": "best"}


# The largest config.json and vocab.json there can be (a vocabulary of every code point is
# about 9 MB): a larger file is not the run's, and is not read whole.
_CONFIG_LIMIT, _VOCAB_LIMIT = 1 << 20, 32 << 20


@dataclasses.dataclass(frozen=True)
class RunFiles:
    """What a run directory says of its run: its settings, its vocabulary and, for a
    fine-tuned run, where its first weights came from (config.json's "origin" record)."""

    config: TrainConfig
    vocab: Vocabulary
    origin: dict | None = None


class RunDir:
    """The run directory at `path` (local, or on any TensorFlow filesystem). Refuses a path
    that exists but is not a directory."""

    def __init__(self, path: str):
        self.path = check_utf8("--run_dir", path).rstrip("/") or path
        if storage.exists(self.path) and not storage.isdir(self.path):
            raise CharRNNError(f"--run_dir {path} is a file, not a directory; pass a directory for the run")
        self._files: RunFiles | None = None
        self._read = False

    def __repr__(self) -> str:
        return f"RunDir({self.path!r})"

    def _join(self, name: str) -> str:
        return f"{self.path}/{name}"

    @property
    def metrics_path(self) -> str:
        return self._join(_METRICS)

    @property
    def log_dirs(self) -> dict[str, str]:
        """TensorBoard's directories: `run` (the run directory), `train` and `validation`."""
        return {name: self._join(sub) if sub else self.path for name, sub in _LOGS.items()}

    @property
    def vocab_path(self) -> str:
        return self._join(_VOCAB)

    def checkpoint_dir(self, which: str = "latest") -> str:
        """Where the rolling checkpoints (`latest`) or the best one (`best`) are kept."""
        return self._join(_CHECKPOINTS[which])

    def exists(self) -> bool:
        return storage.isdir(self.path)

    def has_checkpoint(self) -> bool:
        """Whether the run has saved a rolling checkpoint (it continues from its own weights)."""
        return bool(storage.glob(f"{self.checkpoint_dir()}/ckpt-*.index"))

    def read(self) -> RunFiles | None:
        """The run's files, or None if it holds no run yet; read (and checked) once."""
        if not self._read:
            self._files, self._read = self._load(), True
        return self._files

    def reread(self) -> RunFiles | None:
        """The run's files as they are now (another trainer may have written them since)."""
        self._read = False
        return self.read()

    def _check_own_files(self) -> None:
        """Refuses, before anything is read or written, a run file that is a symbolic link or
        not a plain file: the tools would write through a link into the file it points to
        (appending metrics to a user's notes), and a directory or a pipe in its place would
        fail later, after config.json was rewritten. The checkpoint and log directories may
        be links (to a bigger disk): their files are new ones or replaced by renames."""
        if not storage.is_local(self.path):
            return
        for name in (_CONFIG, _VOCAB, _METRICS, _LOCK):
            path = self._join(name)
            if os.path.islink(path):
                raise CharRNNError(f"{path} is a symbolic link (to {os.readlink(path)!r}); charrnn writes a run's "
                                   "files itself, never through a link: remove the link (what it points to is left "
                                   "as it is), or use another --run_dir")
            if os.path.lexists(path) and not os.path.isfile(path):
                raise CharRNNError(f"{path} is not a plain file (a directory, a pipe, a device or a socket); remove "
                                   "it, or use another --run_dir")

    def _load(self) -> RunFiles | None:
        self._check_own_files()
        config_text = storage.read_utf8(self._join(_CONFIG), _CONFIG_LIMIT)
        vocab_text = storage.read_utf8(self.vocab_path, _VOCAB_LIMIT)
        if config_text is None:
            # config.json is written last: without it, nothing here was trained. A vocab.json
            # alone is a run killed as it began, which a new start writes over; files that a
            # run writes later are someone else's (or of a damaged run), and stay as they are.
            # "logs": where runs of charrnn before 0.1.0's issue 32 kept their TensorBoard files.
            theirs = [name for name in (_METRICS, "logs", *(s for s in _LOGS.values() if s), *_CHECKPOINTS.values())
                      if storage.exists(self._join(name))]
            if theirs:
                raise CharRNNError(f"run directory {self.path} holds {', '.join(theirs)} but no config.json: it is "
                                   "not a charrnn run (or a damaged one), and charrnn changes nothing in it; use "
                                   "another --run_dir")
            if vocab_text is not None:
                try:
                    Vocabulary.from_json(vocab_text)
                except (ValueError, KeyError, TypeError, CharRNNError):
                    raise CharRNNError(f"run directory {self.path} holds a vocab.json that is not charrnn's and no "
                                       "config.json; charrnn changes nothing in it: use another --run_dir") from None
            return None
        if vocab_text is None:
            raise CharRNNError(f"run directory {self.path} has no {_VOCAB}; it is not a complete charrnn run, use "
                               "another --run_dir")
        try:
            name = _CONFIG
            config = TrainConfig.from_json(config_text)
            name = _VOCAB
            vocab = Vocabulary.from_json(vocab_text)
        except (ValueError, KeyError, TypeError, CharRNNError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CharRNNError(f"{self._join(name)} is damaged ({reason}); restore it from a backup, or use "
                               "another --run_dir") from None
        origin = json.loads(config_text).get("origin")
        return RunFiles(config, vocab, origin if isinstance(origin, dict) else None)

    def write(self, files: RunFiles) -> None:
        """Creates the directory if needed and writes config.json (with `origin`) and vocab.json."""
        settings = json.loads(files.config.to_json())
        if files.origin is not None:
            settings["origin"] = files.origin
        path = self.path
        try:
            storage.makedirs(self.path)
            # config.json last: it makes the directory a run (see _load).
            for name, text in ((_VOCAB, files.vocab.to_json()), (_CONFIG, json.dumps(settings, indent=2,
                                                                                     sort_keys=True))):
                path = self._join(name)
                storage.write_atomic(path, text)
        except storage.storage_errors() as e:
            raise storage.storage_error("write", path, e) from None
        self._files, self._read = files, True

    def create(self) -> None:
        try:
            storage.makedirs(self.path)
        except storage.storage_errors() as e:
            raise storage.storage_error("create the run directory", self.path, e) from None

    def lock(self) -> RunLock:
        """The lock that keeps one trainer per run directory (see charrnn.run.lock)."""
        return RunLock(self._join(_LOCK))

    def remove_leftovers(self) -> list[str]:
        """Removes what an interrupted write of charrnn's left behind, and only that: the
        temporary files of its atomic writes of the run's files whose writer is gone (see
        storage.temp_name), and in its checkpoint directories TensorFlow's `_temp`
        directories and temporary state files; returns them. Only safe while holding the lock."""
        removed = storage.remove_dead_temps(self.path, (_CONFIG, _VOCAB, _METRICS)) if storage.is_local(self.path) \
            else []
        patterns = [f"{self.checkpoint_dir(which)}/{pattern}" for which in _CHECKPOINTS for pattern in ("*_temp",
                                                                                                     "*.tmp*")]
        return removed + [path for pattern in patterns for path in storage.glob(pattern) if storage.remove(path)]

    @staticmethod
    @contextlib.contextmanager
    def scratch() -> Iterator[RunDir]:
        """A run directory of its own in the temporary directory, removed at the end: where a
        non-chief worker of a multi-worker run writes its share of each save (as
        TensorFlow's multi-worker guide says: every worker saves, only the chief's files count)."""
        path = tempfile.mkdtemp(prefix="charrnn_worker_")
        try:
            yield RunDir(path)
        finally:
            shutil.rmtree(path, ignore_errors=True)
