"""`metrics.jsonl`: the run's losses by step, one JSON object a line, kept by the `MetricsLog`
observer of the training loop and read back with `read_metrics`."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO, TextIO

from charrnn import storage
from charrnn.log import logger
from charrnn.run.rundir import RunDir
from charrnn.training.callbacks import Callback


class MetricsLog(Callback):
    """Keeps the metrics file at `path`: one JSON object per line, flushed at once:
    `{step, loss}` every `log_every` steps (that step's loss), `{step, val_loss, val_bpc,
    best_val_loss, ...}` at each evaluation (every key of its logs), `{step, epoch, train_loss,
    val_loss, val_bpc, ..., epoch_fraction}` at each epoch's end (every `val_` metric of its
    logs; `epoch_fraction` below 1: a time budget or patience ended it early; a resumed run
    finalises it again at its end).

    Opening it for a run resumed at `resumed_step` first drops the lines of later steps:
    those steps are trained again, and a step must appear once, with the value of the run
    that continues. Lines that cannot be read (a torn last line after a crash, damage) are
    dropped too, with a warning unless it was the last line.

    On a filesystem that cannot append (object stores such as gs://), the file is rewritten
    whole at each checkpoint point, epoch end and at the end, so that it always holds at
    least the lines of the newest checkpoint's steps.
    """

    def __init__(self, path: str, resumed_step: int):
        self.path = path
        self._trainer: Any = None
        try:
            if storage.is_local(self.path):
                # Appended to; cut back in place, line by line (it may be far larger than memory).
                self._lines: list[str] | None = None
                _cut_back(self.path, resumed_step)
                # O_NOFOLLOW: never appended through a link put there since RunDir checked it.
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
                self._file: TextIO | None = os.fdopen(fd, "a", encoding="utf-8")
            else:  # every line kept in memory, and the file rewritten whole (see the class docstring)
                old = storage.read_bytes(self.path) or b""
                self._lines = [line.decode("utf-8") for line in _kept(old.splitlines(keepends=True), resumed_step,
                                                                       self.path)]
                storage.write_atomic(self.path, "".join(self._lines))
                self._file = None
        except storage.storage_errors() as e:
            raise storage.storage_error("write", self.path, e) from None

    def _write(self, **values: float | int | None) -> None:
        line = json.dumps(values) + "\n"
        if self._lines is not None:
            self._lines.append(line)
            return
        assert self._file is not None  # appended to (else _lines, above)
        try:
            self._file.write(line)
            self._file.flush()
        except OSError as e:
            raise storage.storage_error("write", self.path, e) from None

    def _rewrite(self) -> None:
        if self._lines is not None:
            try:
                storage.write_atomic(self.path, "".join(self._lines))
            except storage.storage_errors() as e:
                raise storage.storage_error("write", self.path, e) from None

    def on_train_begin(self, trainer: Any) -> None:
        self._trainer = trainer

    def on_chunk_end(self, step: int, logs: dict[str, float]) -> None:
        cadence = self._trainer.cadence
        if cadence.log_due(step):
            self._write(step=step, loss=float(self._trainer.last_losses[-1]))
        if step % cadence.checkpoint_every == 0:  # a checkpoint follows: its steps' lines first
            self._rewrite()

    def on_evaluate(self, step: int, logs: dict[str, float]) -> None:
        self._write(step=step, **logs)  # every metric of the evaluation, whatever the evaluator measures

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        evaluation = {name: value for name, value in logs.items() if name.startswith("val_")}
        self._write(step=self._trainer.position()[0], epoch=epoch, train_loss=logs["loss"],
                    **{"val_loss": None, "val_bpc": None, **evaluation}, epoch_fraction=logs["epoch_fraction"])
        self._rewrite()

    def on_train_end(self, logs: dict[str, float]) -> None:
        if self._lines is not None:
            self._rewrite()
            return
        try:
            if self._file is not None:
                self._file.close()
        except OSError:  # the failed write was already reported
            pass


def _kept(lines: Iterable[bytes | None], resumed_step: int, path: str) -> Iterator[bytes]:
    """The lines of steps up to `resumed_step`, each ending in a newline; a warning for each
    unreadable line (None: one too long to be a metrics line) but a last one (a torn write)."""
    damaged, pending = 0, False
    for line in lines:
        damaged, pending = damaged + pending, False
        step = _step(_record(line))
        if step is None:
            pending = True
        elif step <= resumed_step and line is not None:
            yield line.rstrip(b"\n") + b"\n"
    if damaged:
        logger.warning(f"dropped {damaged} unreadable line(s) of {path}")


# No line MetricsLog writes comes near this; a longer one (damage, a file of zeros) is
# unreadable, and skipped without being held in memory.
_MAX_LINE = 1 << 20


def _lines(f: BinaryIO) -> Iterator[tuple[int, bytes | None]]:
    """(length in bytes, the line) for each line of `f`, the line None where it is longer than
    _MAX_LINE: memory stays bounded whatever the file holds."""
    while line := f.readline(_MAX_LINE + 1):
        if len(line) <= _MAX_LINE or line.endswith(b"\n"):
            yield len(line), line
            continue
        size = len(line)
        while not line.endswith(b"\n") and (line := f.readline(_MAX_LINE)):
            size += len(line)
        yield size, None


def _cut_back(path: str, resumed_step: int) -> None:
    """Drops the lines of metrics.jsonl at `path` that _kept drops, reading it line by line:
    when they all come after the lines it keeps (the usual case: the steps of a crash, a
    torn last line), by truncating the file; else by rewriting it, line by line."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        kept_end, size, prefix, unreadable, last_unreadable = 0, 0, True, 0, False
        for length, line in _lines(f):
            step = _step(_record(line))
            unreadable, last_unreadable = unreadable + (step is None), step is None
            if step is not None and step <= resumed_step:
                if not prefix:  # a line kept after one dropped
                    break
                kept_end = size + length
            else:
                prefix = False
            size += length
        else:
            if unreadable - last_unreadable:
                logger.warning(f"dropped {unreadable - last_unreadable} unreadable line(s) of {path}")
            with os.fdopen(os.open(path, os.O_RDWR | os.O_NOFOLLOW), "r+b") as cut:
                cut.truncate(kept_end)
                if kept_end and (cut.seek(kept_end - 1), cut.read(1))[1] != b"\n":  # a last line without one
                    cut.write(b"\n")
            return
    with open(path, "rb") as f:
        storage.write_atomic_lines(path, _kept((line for _, line in _lines(f)), resumed_step, path))


def _record(line: bytes | None) -> dict | None:
    """A metrics line as a dictionary with an integer step, or None if it is not one (torn or damaged)."""
    if line is None:
        return None
    try:
        record = json.loads(line.decode("utf-8"))
        int(record["step"])
    except (ValueError, KeyError, TypeError, OverflowError):  # 1e400 is a float JSON reads as inf
        return None
    return record


def _step(record: dict | None) -> int | None:
    return None if record is None else int(record["step"])


def read_metrics(run_dir: str) -> list[dict]:
    """The readable lines of the run's metrics.jsonl as dictionaries (damaged ones skipped)."""
    lines = (storage.read_bytes(RunDir(str(run_dir)).metrics_path) or b"").splitlines()
    return [record for record in map(_record, lines) if record is not None]
