"""The outer training loop: when to train, evaluate, checkpoint, report and stop.

Plain Python, no TensorFlow (as Orbit's Controller): `Controller.run()` drives a trainer
through the protocol `Trainable` epoch by epoch, in compiled chunks that never cross an
evaluation or checkpoint point, and tells the callbacks (charrnn.callbacks) what happened.
`Cadence` holds the arithmetic of the schedule. Both are tested without a model.

Order at each chunk boundary: evaluate, then checkpoint, then honour a stop request. A
checkpoint taken at an evaluation point thus holds that evaluation's record, so a resume
from it neither repeats the evaluation nor reports it twice; a run stopped during an
evaluation (checkpointed without it) does it first when resumed. Finalising an epoch
(evaluate, report, checkpoint) comes last and is marked done in the checkpoint, so a
crash before that checkpoint resumes into a state that redoes it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Protocol, Sequence

from charrnn.callbacks import Callback, CallbackList
from charrnn.config import TrainConfig
from charrnn.preemption import Stopped


@dataclasses.dataclass(frozen=True)
class EpochStats:
    """One finalised epoch (or the partial last one): `train_loss` is the mean over all its
    steps, across resumes; `steps_per_sec` covers the part run in this process."""

    epoch: int
    step: int
    train_loss: float
    val_loss: float | None
    val_bpc: float | None
    steps_per_sec: float


@dataclasses.dataclass(frozen=True)
class Cadence:
    """When things happen, as a function of the step alone.

    `total_steps` is the last step of the run (epochs and max_steps applied); `eval_every`,
    `patience` and `time_budget` are None when unset.
    """

    steps_per_epoch: int
    total_steps: int
    steps_per_loop: int = 1
    checkpoint_every: int = 250
    eval_every: int | None = None
    log_every: int = 50
    patience: int | None = None
    time_budget: float | None = None
    sample_every: int | None = None

    @classmethod
    def from_config(cls, config: TrainConfig, steps_per_epoch: int, total_steps: int) -> Cadence:
        return cls(steps_per_epoch, total_steps, config.steps_per_loop, config.checkpoint_every, config.eval_every,
                   config.log_every, config.patience, config.time_budget, config.sample_every)

    @property
    def num_epochs(self) -> int:
        """Epochs this run trains (a partial last one counts)."""
        return max(math.ceil(self.total_steps / self.steps_per_epoch), 1)

    def epoch_end(self, epoch: int) -> int:
        """The step that ends (0-based) `epoch`: its last step, or the run's."""
        return min((epoch + 1) * self.steps_per_epoch, self.total_steps)

    def chunk(self, step: int, epoch_end: int) -> int:
        """Steps of the next compiled call from `step`: at most steps_per_loop, never past the
        epoch's end or the next checkpoint, log, evaluation or sample point, so that those
        land on the same steps whatever steps_per_loop is (and a callback sees each)."""
        size = min(self.steps_per_loop, epoch_end - step, self.checkpoint_every - step % self.checkpoint_every)
        for every in (self.log_every, self.eval_every, self.sample_every):
            if every is not None:
                size = min(size, every - step % every)
        return size

    def evaluation_due(self, step: int, epoch_end: int) -> bool:
        """Whether `step` is an eval_every point inside its epoch (epoch ends are evaluated
        when the epoch is finalised)."""
        return self.eval_every is not None and 0 < step < epoch_end and step % self.eval_every == 0

    def checkpoint_due(self, step: int, epoch_end: int) -> bool:
        """Whether `step` is a checkpoint_every point inside its epoch (epoch ends are saved
        when the epoch is finalised)."""
        return 0 < step < epoch_end and step % self.checkpoint_every == 0

    def log_due(self, step: int) -> bool:
        """Whether `step` is a log_every point (a chunk ends at each: see `chunk`)."""
        return step % self.log_every == 0

    def sample_due(self, step: int) -> bool:
        """Whether `step` is a sample_every point (a chunk ends at each: see `chunk`)."""
        return self.sample_every is not None and step % self.sample_every == 0

    def patience_exhausted(self, evaluations_since_best: int) -> bool:
        return self.patience is not None and evaluations_since_best >= self.patience

    def out_of_time(self, train_seconds: float) -> bool:
        return self.time_budget is not None and train_seconds >= self.time_budget


class Trainable(Protocol):
    """What `Controller` needs of a trainer (charrnn.Trainer is one).

    The trainer keeps, in its checkpoint, the run's position and the records below, so that
    a resumed run continues the schedule exactly.
    """

    stop_training: bool  # set (by a callback, a signal) to stop at the next chunk boundary
    stop_reason: str | None  # why the last run() ended before the end: set by the Controller

    def position(self) -> tuple[int, int]:
        """(step, epoch) of the next step to train."""

    def begin_epoch(self, epoch: int) -> None:
        """Prepares to train `epoch` from the current step (its start resets its records)."""

    def train(self, num_steps: int) -> Sequence[float]:
        """Trains `num_steps` steps of the current epoch; returns their losses."""

    def train_logs(self) -> dict[str, float]:
        """Figures of the last step to report with its chunk (learning_rate, grad_norm)."""

    def evaluate(self, should_stop: Callable[[], bool]) -> float | None:
        """The validation loss (None without a validation split); raises Stopped if asked."""

    def record_evaluation(self, step: int, val_loss: float) -> None:
        """Records an evaluation (and keeps the best checkpoint when it is a new best)."""

    def evaluation_record(self) -> tuple[int, float, int, float, int]:
        """(last step, last loss, best step, best loss, evaluations since the best); -1 and
        NaN/inf before any."""

    def epoch_train_loss(self) -> float:
        """The mean train loss of the current epoch's steps so far, resumes included."""

    def last_finalized(self) -> int:
        """The step whose epoch (or partial last epoch) was last finalised."""

    def finalize_epoch(self, step: int) -> None:
        """Marks the epoch finalised at `step` and saves a checkpoint."""

    def save(self) -> str:
        """Saves a checkpoint of the current state; returns its path."""


class Controller:
    """Runs a `Trainable` as `cadence` says, telling `callbacks` what happens.

    `clock` measures training time (for steps/s and the time budget); the first chunk of
    the process traces the compiled step and is not counted.
    """

    def __init__(self, trainer: Trainable, cadence: Cadence, callbacks: Sequence[Callback] = (),
                 clock: Callable[[], float] | None = None):
        self.trainer = trainer
        self.cadence = cadence
        self.callbacks = CallbackList(callbacks)
        self.clock = clock or time.perf_counter
        # Seconds spent training (tracing excluded) and evaluating in this run() call.
        self.train_seconds = self.eval_seconds = 0.0
        self._traced = False

    def run(self) -> list[EpochStats]:
        """Trains to the end of the run, a time budget, exhausted patience or a stop request;
        returns one EpochStats per epoch finalised. Sets the trainer's `stop_reason`:
        None (the run is complete), "patience", "time_budget", or on a stop request (a
        checkpoint was saved at the step it stopped) the reason its requester gave (a
        signal's name for SignalStop), else "stop_requested"."""
        t = self.trainer
        t.stop_training, t.stop_reason = False, None
        self.callbacks.on_train_begin(t)
        history: list[EpochStats] = []
        logs: dict[str, float] = {}
        try:
            while not self._finished() and not self._out_of_time():
                stats = self._run_epoch()
                history.append(stats)
                logs = _epoch_logs(stats)
        except Stopped:
            t.save()
            t.stop_reason = t.stop_reason or "stop_requested"
        else:
            if self._patience_exhausted():
                t.stop_reason = "patience"
            elif self._out_of_time():
                t.stop_reason = "time_budget"
        finally:
            _, _, _, best_loss, _ = t.evaluation_record()
            if math.isfinite(best_loss):
                logs["best_val_loss"] = best_loss
            self.callbacks.on_train_end(logs)
        return history

    def _finished(self) -> bool:
        """Whether every step is trained (or patience ran out) and the last epoch is finalised."""
        step, _ = self.trainer.position()
        done = step >= self.cadence.total_steps or self._patience_exhausted()
        return done and self.trainer.last_finalized() == step

    def _patience_exhausted(self) -> bool:
        return self.cadence.patience_exhausted(self.trainer.evaluation_record()[4])

    def _out_of_time(self) -> bool:
        return self.cadence.out_of_time(self.train_seconds)

    def _run_epoch(self) -> EpochStats:
        """Trains from the current step to the end of its epoch (or of the run), then finalises it."""
        t, c = self.trainer, self.cadence
        step, epoch = t.position()
        t.begin_epoch(epoch)
        epoch_end = c.epoch_end(epoch)
        start, start_step = self.clock(), step
        while True:
            if c.evaluation_due(step, epoch_end) and t.evaluation_record()[0] != step:
                self._evaluate(step)
            if step != start_step and c.checkpoint_due(step, epoch_end):
                t.save()
            if t.stop_training:
                raise Stopped
            if step >= epoch_end or self._out_of_time() or self._patience_exhausted():
                break
            step = self._train_chunk(step, c.chunk(step, epoch_end))
        steps_per_sec = (step - start_step) / max(self.clock() - start, 1e-9)

        last_step, last_loss, *_ = t.evaluation_record()
        # Evaluated already at this step (mid-epoch, then stopped early): not again.
        val_loss = last_loss if last_step == step else self._evaluate(step)
        stats = EpochStats(epoch=epoch + 1, step=step, train_loss=t.epoch_train_loss(), val_loss=val_loss,
                           val_bpc=None if val_loss is None else val_loss / math.log(2), steps_per_sec=steps_per_sec)
        self.callbacks.on_epoch_end(epoch + 1, _epoch_logs(stats))
        t.finalize_epoch(step)
        return stats

    def _train_chunk(self, step: int, size: int) -> int:
        """Trains one compiled chunk from `step`; returns the step reached."""
        start = self.clock()
        losses = self.trainer.train(size)
        seconds = self.clock() - start
        logs = {"loss": math.fsum(losses) / len(losses), **self.trainer.train_logs()}
        if self._traced:
            self.train_seconds += seconds
            logs["steps_per_sec"] = len(losses) / max(seconds, 1e-9)
        self._traced = True
        step += len(losses)
        self.callbacks.on_chunk_end(step, logs)
        return step

    def _evaluate(self, step: int) -> float | None:
        """Evaluates at `step`, records it and tells the callbacks; None without a validation split."""
        start = self.clock()
        val_loss = self.trainer.evaluate(lambda: self.trainer.stop_training)
        self.eval_seconds += self.clock() - start
        if val_loss is None:
            return None
        self.trainer.record_evaluation(step, val_loss)
        _, _, _, best_loss, _ = self.trainer.evaluation_record()
        self.callbacks.on_evaluate(step, {"val_loss": val_loss, "val_bpc": val_loss / math.log(2),
                                          "best_val_loss": best_loss})
        return val_loss


def _epoch_logs(stats: EpochStats) -> dict[str, float]:
    logs = {"loss": stats.train_loss, "steps_per_sec": stats.steps_per_sec}
    if stats.val_loss is not None:
        logs.update(val_loss=stats.val_loss, val_bpc=stats.val_bpc)
    return logs
