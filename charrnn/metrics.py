"""`metrics.jsonl`: the run's losses by step, one JSON object a line, kept by the `MetricsLog`
observer of the training loop and read back with `read_metrics`."""

from __future__ import annotations

import json
import sys
from typing import Any

from charrnn import storage
from charrnn.callbacks import Callback
from charrnn.rundir import RunDir


class MetricsLog(Callback):
    """Keeps the metrics file at `path`: one JSON object per line, flushed at once:
    `{step, loss}` every `log_every` steps (that step's loss), `{step, val_loss, val_bpc}` at
    each evaluation, `{step, epoch, train_loss, val_loss, val_bpc}` at each epoch's end.

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
            old = storage.read_bytes(self.path) or b""
        except storage.storage_errors() as e:
            raise storage.storage_error("read", self.path, e) from None
        lines = old.splitlines(keepends=True)
        steps = [_step(_record(line)) for line in lines]
        damaged = sum(s is None for s in steps[:-1])
        if damaged:
            print(f"charrnn: warning: dropped {damaged} unreadable line(s) of {self.path}", file=sys.stderr)
        kept = [line.rstrip(b"\n").decode("utf-8") + "\n" for line, s in zip(lines, steps)
                if s is not None and s <= resumed_step]
        # Appended to on a local disk; elsewhere every line is kept and the file rewritten.
        self._lines: list[str] | None = None if storage.is_local(self.path) else kept
        try:
            if len(kept) != len(lines) or (lines and not lines[-1].endswith(b"\n")):
                storage.write_atomic(self.path, "".join(kept))
            self._file = open(self.path, "a", encoding="utf-8") if self._lines is None else None
        except storage.storage_errors() as e:
            raise storage.storage_error("write", self.path, e) from None

    def _write(self, **values: float | int | None) -> None:
        line = json.dumps(values) + "\n"
        if self._lines is not None:
            self._lines.append(line)
            return
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
    """The readable lines of the run's metrics.jsonl as dictionaries (damaged ones skipped)."""
    lines = (storage.read_bytes(RunDir(str(run_dir)).metrics_path) or b"").splitlines()
    return [record for record in map(_record, lines) if record is not None]
