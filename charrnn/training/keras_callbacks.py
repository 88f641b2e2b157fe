"""Keras' callbacks in a charrnn run: `Trainer.fit(callbacks=[keras.callbacks.EarlyStopping()])`.

`KerasCallbacks` calls them as Keras' `fit` would, with what a charrnn run can give them:
`set_model` (the `CharRNN`, with the run's optimizer as `self.model.optimizer`, read-only for
its learning rate) and `set_params` (`epochs`, `steps`, `verbose`) first, then
`on_train_begin`, `on_epoch_begin` / `on_epoch_end` (epochs counted from 0, as Keras
does; the logs hold `loss`, `val_loss`, `val_bpc`, `steps_per_sec` and `epoch_fraction`, below 1
for an epoch a time budget or patience ended early), `on_train_batch_end`
once per compiled chunk of steps (`--steps_per_loop`; `batch` is the chunk's last step in
its epoch, the logs hold its mean `loss`) and `on_train_end`. A callback that sets
`model.stop_training` (EarlyStopping, TerminateOnNaN) stops the run as a charrnn callback
does: at the next chunk boundary, with a checkpoint. Batch-begin hooks are not called
(a chunk of steps runs compiled, in one call).

Callbacks whose job charrnn does itself, in its own way, are refused by name (`check`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from charrnn.errors import CharRNNError
from charrnn.training.callbacks import Callback, TrainerView

# Keras callbacks that would fight what a charrnn run does, and what does that job instead.
_REFUSED = {
    "BackupAndRestore": "a charrnn run checkpoints itself and resumes when the same command runs again",
    "ModelCheckpoint": "a charrnn run checkpoints every --checkpoint_every steps and keeps the best in <run_dir>/best",
    "TensorBoard": "a charrnn run writes TensorBoard logs into its run directory",
    "ReduceLROnPlateau": "the learning rate follows --lr_schedule, checkpointed with the run",
    "LearningRateScheduler": "the learning rate follows --lr_schedule, checkpointed with the run",
    "ProgbarLogger": "the console's progress is charrnn's (fit's verbose=)",
    "History": "fit() returns a History of its own",
    "SwapEMAWeights": "charrnn's optimizer keeps no moving average of the weights",
}


def is_keras_callback(callback: Any) -> bool:
    return isinstance(callback, keras.callbacks.Callback)


def check(callbacks: Sequence[Any]) -> None:
    """Refuses what `fit(callbacks=...)` cannot honour: an object that is no callback, and
    the Keras callbacks of _REFUSED (by name, with what to do instead)."""
    for callback in callbacks:
        if not isinstance(callback, (Callback, keras.callbacks.Callback)):
            raise TypeError(f"callbacks must be charrnn.Callback or keras.callbacks.Callback instances, got "
                            f"{type(callback).__name__}")
        for kind in type(callback).__mro__:
            if kind.__module__.startswith("keras") and kind.__name__ in _REFUSED:
                raise CharRNNError(f"keras.callbacks.{kind.__name__} does not apply to a charrnn run: "
                                   f"{_REFUSED[kind.__name__]}")


class KerasCallbacks(Callback):
    """Keras callbacks, called as Keras' fit calls them (see the module docstring)."""

    _trainer: TrainerView  # from on_train_begin

    def __init__(self, callbacks: Sequence[keras.callbacks.Callback], model: keras.Model,
                 optimizer: keras.optimizers.Optimizer):
        self.callbacks, self.model = list(callbacks), model
        self._view = _ModelView(model, optimizer)
        self._epoch = 0

    def on_train_begin(self, trainer: TrainerView) -> None:
        self._trainer = trainer
        self.model.stop_training = False
        cadence = trainer.cadence
        self._epoch = trainer.position()[1]
        for callback in self.callbacks:
            callback.set_model(self._view)
            callback.set_params({"epochs": cadence.num_epochs, "steps": cadence.steps_per_epoch, "verbose": 0})
        self._call("on_train_begin", {})
        self._call("on_epoch_begin", self._epoch, {})

    def on_chunk_end(self, step: int, logs: dict[str, float]) -> None:
        batch = step - 1 - self._epoch * self._trainer.cadence.steps_per_epoch
        self._call("on_train_batch_end", batch, {"loss": logs["loss"]})

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self._call("on_epoch_end", epoch - 1, dict(logs))
        self._epoch = epoch
        if not self._trainer.stop_training and epoch < self._trainer.cadence.num_epochs:
            self._call("on_epoch_begin", epoch, {})

    def on_train_end(self, logs: dict[str, float]) -> None:
        for callback in self.callbacks:
            callback.on_train_end(dict(logs))

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            try:
                getattr(callback, hook)(*args)
            except TypeError as e:
                if "LearningRateSchedule" not in str(e):
                    raise
                raise CharRNNError(f"{type(callback).__name__} set the optimizer's learning rate, which in a charrnn "
                                   "run follows --lr_schedule (checkpointed with the run): read "
                                   "self.model.optimizer.learning_rate, set --learning_rate and --lr_schedule "
                                   "instead") from None
        if self.model.stop_training and not self._trainer.stop_training:
            self._trainer.stop_training = True
            self._trainer.stop_reason = "a Keras callback set model.stop_training"


class _ModelView:
    """What a Keras callback sees as `self.model`: the CharRNN, with the run's optimizer as
    `optimizer`, as on a compiled Keras model (Keras' idiom: `self.model.optimizer`). The
    optimizer is no attribute of the model itself, so the model's checkpoints stay as they
    are; every other attribute, read or set, is the model's."""

    def __init__(self, model: keras.Model, optimizer: keras.optimizers.Optimizer):
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "optimizer", optimizer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._model, name, value)
