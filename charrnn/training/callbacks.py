"""Callbacks: how code watches and steers a training run.

`Callback` is the protocol `Trainer.fit(callbacks=...)` calls (charrnn.training.loop's Controller
calls it), `CallbackList` calls several in turn, and `TrainerView` is what a callback may
read of the trainer. The run's own observers use the same protocol: the console's progress
and samples (charrnn.training.console), metrics.jsonl (charrnn.training.metrics), TensorBoard
(charrnn.training.tensorboard) and the signal handler (charrnn.training.stopping). No TensorFlow here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from charrnn.config import TrainConfig
    from charrnn.run.records import EvalRecord
    from charrnn.training.cadence import Cadence


class TrainerView(Protocol):
    """What a callback may read of the trainer it is given in `on_train_begin`; of it, it may
    set `stop_training` (and `stop_reason`) only."""

    config: TrainConfig
    cadence: Cadence  # when evaluations, checkpoints, logs and samples happen
    restored_from: str | None  # the checkpoint this run resumed from
    stop_training: bool  # set (by a callback, a signal) to stop at the next chunk boundary
    stop_reason: str | None  # why the last run ended before its end (charrnn.training.loop.Controller sets it)

    def position(self) -> tuple[int, int]:
        """(step, epoch) of the next step to train; the epoch counts from 0 (on_epoch_end's from 1)."""

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


class Callback:
    """Base class of training callbacks: override the methods you need (all do nothing).

    `logs` are plain dicts of Python floats, with the keys that apply:

    - `on_chunk_end(step, logs)`: after each compiled chunk of steps (`--steps_per_loop`),
      `step` the step reached; `loss` (mean over the chunk's steps), `learning_rate` and
      `grad_norm` (global gradient norm, before clipping) of its last step, `steps_per_sec`
      (training time only; absent for the first chunk, which traces the step). The chunk's
      per-step losses are in `trainer.last_losses`.
    - `on_evaluate(step, logs)`: after each evaluation on the validation split: `val_loss`
      (nats/char), `val_bpc` (bits/char), every other metric of charrnn.training.evaluator's
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
