"""Callbacks: how code watches and steers a training run, and the console's observers.

`Callback` is the protocol `Trainer.fit(callbacks=...)` calls (charrnn.loop's Controller
calls it) and `TrainerView` what a callback may read of the trainer; the run's own
observers use the same protocol: the console's progress and samples here, metrics.jsonl
(charrnn.metrics), TensorBoard (charrnn.tensorboard) and the signal handler
(charrnn.stopping). No TensorFlow here.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from charrnn.cadence import Cadence, EvalRecord
    from charrnn.config import TrainConfig


class TrainerView(Protocol):
    """What a callback may read of the trainer it is given in `on_train_begin`; of it, it may
    set `stop_training` (and `stop_reason`) only."""

    config: TrainConfig
    cadence: Cadence  # when evaluations, checkpoints, logs and samples happen
    restored_from: str | None  # the checkpoint this run resumed from
    stop_training: bool  # set (by a callback, a signal) to stop at the next chunk boundary
    stop_reason: str | None  # why the last run ended before its end (charrnn.loop.Controller sets it)

    def position(self) -> tuple[int, int]:
        """(step, epoch) of the next step to train."""

    @property
    def last_losses(self) -> Sequence[float]:
        """The per-step losses of the last chunk."""

    @property
    def evaluations(self) -> EvalRecord:
        """The last and the best evaluation so far."""

    def checkpoint_path(self, which: str = "latest") -> str | None:
        """The newest checkpoint saved of `which` kind (latest or best)."""

    def sample(self, step: int) -> str:
        """The sample of the model shown at `step` (the same after a resume)."""

    def describe(self) -> str:
        """The run's corpus, plan and model, as the console shows them at its start."""


class Callback:
    """Base class of training callbacks: override the methods you need (all do nothing).

    `logs` are plain dicts of Python floats, with the keys that apply:

    - `on_chunk_end(step, logs)`: after each compiled chunk of steps (`--steps_per_loop`),
      `step` the step reached; `loss` (mean over the chunk's steps), `learning_rate` and
      `grad_norm` (global gradient norm, before clipping) of its last step, `steps_per_sec`
      (training time only; absent for the first chunk, which traces the step). The chunk's
      per-step losses are in `trainer.last_losses`.
    - `on_evaluate(step, logs)`: after each evaluation on the validation split: `val_loss`
      (nats/char), `val_bpc` (bits/char), every other metric of charrnn.evaluator's
      `Evaluator.metrics` as `val_<name>`, `best_val_loss` (so far, this one included).
    - `on_epoch_end(epoch, logs)`: `epoch` counts from 1; `loss` (the epoch's mean train
      loss, across resumes), `val_loss`, `val_bpc`, `steps_per_sec`.
    - `on_train_end(logs)`: the last epoch's logs and `best_val_loss`; called however the
      run ends, so it is the place to close files.

    To stop the run, set `trainer.stop_training = True` (the trainer comes with
    `on_train_begin`): it stops at the next chunk boundary after saving a checkpoint, and
    running it again continues it. `trainer.stop_reason` may say why.
    """

    def on_train_begin(self, trainer: TrainerView) -> None:
        """The run starts (or resumes); `trainer` is the `charrnn.Trainer`."""

    def on_chunk_end(self, step: int, logs: dict[str, float]) -> None:
        """A compiled chunk of steps ended at `step`."""

    def on_evaluate(self, step: int, logs: dict[str, float]) -> None:
        """The validation split was evaluated at `step`."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        """Epoch `epoch` (from 1; or the run's partial last one) was finalised."""

    def on_train_end(self, logs: dict[str, float]) -> None:
        """The run ended: complete, stopped early, out of time, or stopped on request."""


class CallbackList(Callback):
    """Calls each callback in turn."""

    def __init__(self, callbacks: Sequence[Callback] = ()):
        for callback in callbacks:
            if not isinstance(callback, Callback):
                raise TypeError(f"callbacks must be charrnn.Callback instances, got {type(callback).__name__}")
        self.callbacks = list(callbacks)

    def on_train_begin(self, trainer: TrainerView) -> None:
        for callback in self.callbacks:
            callback.on_train_begin(trainer)

    def on_chunk_end(self, step: int, logs: dict[str, float]) -> None:
        for callback in self.callbacks:
            callback.on_chunk_end(step, logs)

    def on_evaluate(self, step: int, logs: dict[str, float]) -> None:
        for callback in self.callbacks:
            callback.on_evaluate(step, logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        for callback in self.callbacks:
            callback.on_epoch_end(epoch, logs)

    def on_train_end(self, logs: dict[str, float]) -> None:
        # Every callback gets to close what it holds, even if one of them fails.
        error = None
        for callback in self.callbacks:
            try:
                callback.on_train_end(logs)
            except Exception as e:  # noqa: BLE001 - re-raised below
                error = error or e
        if error is not None:
            raise error


class ProgressLogger(Callback):
    """The console: the run's corpus, plan and model as it starts; `verbose=1` a live line on
    a terminal (redrawn in place, cut to the terminal's width so that it never wraps),
    `verbose=2` one line per `log_every` steps (the interval's mean loss); evaluations, epoch
    ends and how the run ended, either way.

    The rate and the ETA cover this whole invocation (not just the current epoch), and the
    epoch count is the run's own (charrnn.cadence.Cadence: max_steps included). When a
    --time_budget ends the run before its last step, the totals are the budget's: the step
    and epoch it will end at, at this invocation's training rate (`~`), and the percentage
    is the budget's time spent.
    """

    _trainer: TrainerView  # from on_train_begin

    def __init__(self, verbose: int = 1):
        self.live = verbose == 1

    def on_train_begin(self, trainer: TrainerView) -> None:
        self._trainer, self._cadence = trainer, trainer.cadence
        self.total_steps, self.epochs = trainer.cadence.total_steps, trainer.cadence.num_epochs
        self._start_step, self._step = trainer.position()[0], trainer.position()[0]
        self._start, self._last_draw, self._train_seconds, self._timed_steps = time.monotonic(), 0.0, 0.0, 0
        self._interval_sum = self._interval_steps = 0.0
        print(trainer.describe(), flush=True)
        if trainer.restored_from is not None:
            step, epoch = trainer.position()
            print(f"Resumed from {trainer.restored_from} at step {step}, epoch {epoch + 1}", flush=True)

    def rate(self, step: int) -> float:
        """Steps per second since this invocation started (evaluations and saves included)."""
        elapsed = time.monotonic() - self._start
        return (step - self._start_step) / elapsed if elapsed > 0 else 0.0

    def _plan(self, step: int) -> tuple[str, str, float]:
        """(epochs, steps, fraction done) of the run as it will really end: its own totals, or,
        when the time budget ends it first, the budget's (`?` until a training rate is known)."""
        budget = self._cadence.time_budget
        if budget is None:
            return str(self.epochs), str(self.total_steps), step / self.total_steps
        if self._train_seconds == 0:
            return "?", "?", 0.0
        train_rate = self._timed_steps / self._train_seconds
        end = step + round(max(budget - self._train_seconds, 0.0) * train_rate)
        if end >= self.total_steps:
            return str(self.epochs), str(self.total_steps), step / self.total_steps
        return f"~{math.ceil(end / self._cadence.steps_per_epoch)}", f"~{end}", min(self._train_seconds / budget, 1.0)

    def line(self, epoch: int, step: int, loss: float, width: int | None = None) -> str:
        """The progress line; with `width`, its least useful parts are left out until it fits."""
        rate = self.rate(step)
        eta = (self.total_steps - step) / rate if rate > 0 else float("inf")
        if self._cadence.time_budget is not None:  # the budget may end the run first
            eta = min(eta, max(self._cadence.time_budget - self._train_seconds, 0.0))
        epochs, steps, done = self._plan(step)
        # In the order shown; the number is the rank of what goes first when space is short.
        parts = [(f"epoch {epoch + 1}/{epochs}", 3), (f"step {step}/{steps}", 6),
                 (f"{100 * done:.0f}%", 5), (f"loss {loss:.4f}", 4),
                 (f"{rate:.2f} steps/s", 1), (f"elapsed {_hms(time.monotonic() - self._start)}", 0),
                 (f"ETA {_hms(eta)}", 2)]
        while True:
            line = " ".join(text for text, _ in parts)
            if width is None or len(line) < width or len(parts) == 1:
                return line if width is None else line[:width - 1]
            parts.remove(min(parts, key=lambda part: part[1]))

    def on_chunk_end(self, step: int, logs: dict[str, float]) -> None:
        previous, self._step = self._step, step
        if "steps_per_sec" in logs:  # not the first chunk's (it traces the step)
            self._train_seconds += (step - previous) / logs["steps_per_sec"]
            self._timed_steps += step - previous
        self._interval_sum += logs["loss"] * (step - previous)
        self._interval_steps += step - previous
        epoch = (step - 1) // self._cadence.steps_per_epoch
        if self.live:
            if time.monotonic() - self._last_draw > 0.5 or step == self.total_steps:
                self._last_draw = time.monotonic()
                width = shutil.get_terminal_size().columns
                sys.stdout.write("\r" + self.line(epoch, step, logs["loss"], width) + "\033[K")
                sys.stdout.flush()
        elif self._cadence.log_due(step):
            loss = self._interval_sum / self._interval_steps
            self._interval_sum = self._interval_steps = 0.0
            print(self.line(epoch, step, loss), flush=True)

    def _print(self, text: str) -> None:
        """A line of its own, over the live line if there is one."""
        print(f"\r{text}\033[K" if self.live else text, flush=True)

    def on_evaluate(self, step: int, logs: dict[str, float]) -> None:
        best = " (best)" if logs["val_loss"] == logs["best_val_loss"] else ""
        self._print(f"step {step} val_loss {logs['val_loss']:.4f} val_bpc {logs['val_bpc']:.3f}{best}")

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        val = f" val_loss {logs['val_loss']:.4f} val_bpc {logs['val_bpc']:.3f}" if "val_loss" in logs else ""
        self._print(f"epoch {epoch}/{self._plan(self._step)[0]} step {self._step} loss {logs['loss']:.4f}{val} "
                    f"{logs['steps_per_sec']:.2f} steps/s")

    def on_train_end(self, logs: dict[str, float]) -> None:
        t = self._trainer
        step, reason = t.position()[0], t.stop_reason
        if reason == "patience":
            best = t.evaluations
            print(f"Stopped early at step {step}: no lower validation loss in {t.config.patience} evaluations; "
                  f"the best, {best.best_loss:.4f} at step {best.best_step}, is in {t.checkpoint_path('best')}",
                  flush=True)
        elif reason == "time_budget":
            print(f"Time budget of {self._cadence.time_budget:g} s reached at step {step}; run the same command "
                  "again to continue", flush=True)
        elif reason is not None and not reason.startswith("SIG"):  # signals: the tool reports them
            print(f"Stopped at step {step} ({reason}); checkpoint saved to {t.checkpoint_path('latest')}; run the "
                  "same command again to continue", flush=True)


class SamplePrinter(Callback):
    """Prints `trainer.sample(step)` every `--sample_every` steps."""

    _trainer: TrainerView  # from on_train_begin

    def __init__(self, live: bool = False):
        self.live = live

    def on_train_begin(self, trainer: TrainerView) -> None:
        self._trainer = trainer

    def on_chunk_end(self, step: int, logs: dict[str, float]) -> None:
        if self._trainer.cadence.sample_due(step):
            prefix = "\r\033[K" if self.live else ""
            print(f"{prefix}--- sample at step {step} ---\n{self._trainer.sample(step)}\n---", flush=True)


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
