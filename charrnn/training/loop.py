"""The outer training loop: when to train, evaluate, checkpoint, report and stop.

Plain Python, no TensorFlow (as Orbit's Controller): `Controller.run()` drives a trainer
through the protocol `Trainable` epoch by epoch, in compiled chunks that never cross an
evaluation or checkpoint point, keeps the loop's bookkeeping in a `LoopState`, saves
through `Checkpoints` and tells the callbacks (charrnn.training.callbacks) what happened.
Its schedule is charrnn.training.cadence's arithmetic. Both are tested without a model.

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
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Protocol

from charrnn.training.cadence import Cadence
from charrnn.training.callbacks import Callback, CallbackList, TrainerView
from charrnn.training.stopping import Stopped

if TYPE_CHECKING:
    from charrnn.run.records import EvalRecord  # TensorFlow's module: for the type only


@dataclasses.dataclass(frozen=True)
class EpochStats:
    """One finalised epoch (or the partial last one), `epoch` counting from 1 as the
    callbacks' does (the trainer's epochs count from 0): `train_loss` is the mean over all its
    steps, across resumes; `steps_per_sec` covers the part run in this process; `fraction`
    is the share of the epoch's steps (as the run plans them, max_steps included) it had
    trained: 1 unless a time budget or patience ended it early; `val_metrics` every metric
    of its evaluation (the trainer's `validate`: `loss`, `bpc`, ...; empty without a
    validation split), as the epoch's logs carry them (`val_<name>`)."""

    epoch: int
    step: int
    train_loss: float
    steps_per_sec: float
    fraction: float = 1.0
    val_metrics: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def val_loss(self) -> float | None:
        return self.val_metrics.get("loss")

    @property
    def val_bpc(self) -> float | None:
        """The validation loss in bits per character."""
        return self.val_metrics.get("bpc")


class Trainable(TrainerView, Protocol):
    """What `Controller` needs of a trainer (charrnn.Trainer is one): to train and validate,
    as Orbit's trainer does, and the stop flags a callback or signal sets (`stop_training`,
    and `stop_reason`, of TrainerView, which is also what the callbacks are handed)."""

    def begin_epoch(self, epoch: int) -> None:
        """Prepares to train `epoch` (from 0) from the current step (its start resets its records)."""

    def train(self, num_steps: int) -> Collection[float]:
        """Trains `num_steps` steps of the current epoch; returns their losses."""

    def train_logs(self) -> dict[str, float]:
        """Figures of the last step to report with its chunk (learning_rate, grad_norm)."""

    def validate(self, should_stop: Callable[[], bool]) -> dict[str, float] | None:
        """The validation metrics, `loss` among them (None without a validation split);
        raises Stopped if asked."""


class LoopState(Protocol):
    """The loop's bookkeeping, which `Controller` reads and writes and the checkpoint keeps,
    so that a resumed run continues the schedule exactly (charrnn.run.records.LoopState is
    one). It is the trainer's too: the trainer's `begin_epoch` moves it to the epoch, its
    steps advance its step and the epoch's loss sum."""

    def position(self) -> tuple[int, int]:
        """(step, epoch) of the next step to train."""

    def epoch_train_loss(self) -> float:
        """The mean train loss of the current epoch's steps so far, resumes included."""

    def last_finalized(self) -> int:
        """The step whose epoch (or partial last epoch) was last finalised."""

    def finalize_epoch(self, step: int) -> None:
        """Marks the epoch finalised at `step` (the checkpoint saved next holds the mark)."""

    def record_evaluation(self, step: int, val_loss: float) -> bool:
        """Records an evaluation; returns whether it is the best so far."""

    @property
    def evaluations(self) -> EvalRecord:
        """The last and the best evaluation so far."""


class Checkpoints(Protocol):
    """Where `Controller` saves the trainer's state (charrnn.run.checkpoint.Checkpointer is one)."""

    def save(self, which: str, step: int) -> str:
        """Saves the state as checkpoint `step` of `which` kind (latest or best); returns its path."""


class Controller:
    """Runs a `Trainable` as `cadence` says, keeping the loop's bookkeeping in `state`,
    saving the run to `checkpoints` (the latest at each checkpoint point, finalised epoch and
    stop; the best at each new best) and telling `callbacks` what happens.

    `clock` measures training time (for steps/s and the time budget); the first chunk of
    the process traces the compiled step and is not counted.
    """

    def __init__(self, trainer: Trainable, cadence: Cadence, callbacks: Sequence[Callback] = (), *,
                 state: LoopState, checkpoints: Checkpoints, clock: Callable[[], float] | None = None):
        self.trainer, self.state = trainer, state
        self.cadence = cadence
        self.checkpoints = checkpoints
        self.callbacks = CallbackList(callbacks)
        self.clock = clock or time.perf_counter
        # Seconds spent training (tracing excluded) and evaluating in this run() call.
        self.train_seconds = self.eval_seconds = 0.0
        self._traced = False
        self._evaluated: tuple[int, dict[str, float]] = (-1, {})  # the last evaluation's step and metrics

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
            self.checkpoints.save("latest", self.state.position()[0])
            t.stop_reason = t.stop_reason or "stop_requested"
        else:
            if self._patience_exhausted():
                t.stop_reason = "patience"
            elif self._out_of_time():
                t.stop_reason = "time_budget"
        finally:
            if math.isfinite(self.state.evaluations.best_loss):
                logs["best_val_loss"] = self.state.evaluations.best_loss
            self.callbacks.on_train_end(logs)
        return history

    def _finished(self) -> bool:
        """Whether every step is trained (or patience ran out) and the last epoch is finalised."""
        step, _ = self.state.position()
        done = step >= self.cadence.total_steps or self._patience_exhausted()
        return done and self.state.last_finalized() == step

    def _patience_exhausted(self) -> bool:
        return self.cadence.patience_exhausted(self.state.evaluations.since_best)

    def _out_of_time(self) -> bool:
        return self.cadence.out_of_time(self.train_seconds)

    def _run_epoch(self) -> EpochStats:
        """Trains from the current step to the end of its epoch (or of the run), then finalises it."""
        t, state, cadence = self.trainer, self.state, self.cadence
        step, epoch = state.position()
        t.begin_epoch(epoch)
        epoch_end = cadence.epoch_end(epoch)
        start, start_step = self.clock(), step
        while True:
            if cadence.evaluation_due(step, epoch_end) and state.evaluations.last_step != step:
                self._evaluate(step)
            if step != start_step and cadence.checkpoint_due(step, epoch_end):
                self.checkpoints.save("latest", step)
            if t.stop_training:
                raise Stopped
            if step >= epoch_end or self._out_of_time() or self._patience_exhausted():
                break
            step = self._train_chunk(step, cadence.chunk(step, epoch_end))
        steps_per_sec = (step - start_step) / max(self.clock() - start, 1e-9)

        epoch_start = epoch * cadence.steps_per_epoch
        stats = EpochStats(epoch=epoch + 1, step=step, train_loss=state.epoch_train_loss(), steps_per_sec=steps_per_sec,
                           fraction=(step - epoch_start) / (epoch_end - epoch_start),
                           val_metrics=self._metrics_at(step) or {})
        self.callbacks.on_epoch_end(epoch + 1, _epoch_logs(stats))
        state.finalize_epoch(step)
        self.checkpoints.save("latest", step)
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

    def _metrics_at(self, step: int) -> dict[str, float] | None:
        """The validation metrics at `step`, where an epoch ends: evaluated (and reported) now,
        unless an evaluation at this step was recorded already (mid-epoch, then stopped
        early), whose metrics are reused: this process's, or measured again unreported where
        an earlier process made it (the record keeps its loss only)."""
        t = self.trainer
        if self.state.evaluations.last_step != step:
            return self._evaluate(step)
        if self._evaluated[0] == step:
            return self._evaluated[1]
        return t.validate(lambda: t.stop_training)

    def _evaluate(self, step: int) -> dict[str, float] | None:
        """Evaluates at `step`, records it and tells the callbacks every metric (as `val_<name>`);
        returns the metrics, None without a validation split."""
        start = self.clock()
        metrics = self.trainer.validate(lambda: self.trainer.stop_training)
        self.eval_seconds += self.clock() - start
        if metrics is None:
            return None
        self._evaluated = (step, metrics)
        if self.state.record_evaluation(step, metrics["loss"]):
            self.checkpoints.save("best", step)
        logs = {f"val_{name}": value for name, value in metrics.items()}
        self.callbacks.on_evaluate(step, {**logs, "best_val_loss": self.state.evaluations.best_loss})
        return metrics


def _epoch_logs(stats: EpochStats) -> dict[str, float]:
    """An epoch's logs: its train loss, speed and fraction, and every metric of its evaluation."""
    return {"loss": stats.train_loss, "steps_per_sec": stats.steps_per_sec, "epoch_fraction": stats.fraction,
            **{f"val_{name}": value for name, value in stats.val_metrics.items()}}
