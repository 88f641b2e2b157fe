"""`fit`: what `Trainer.fit()` does around the loop, in the order it does it.

1. Claims the run directory: creates it, takes its lock (one trainer per run), removes
   what an interrupted write left; if another trainer saved a checkpoint since this one was
   built, continues from that one. A non-chief worker of a multi-worker run writes to a
   scratch directory instead (every worker takes part in each save; only the chief's files
   are the run's).
2. Writes config.json and vocab.json, and builds the `Checkpointer` (charrnn.run.checkpoint)
   the Controller saves through.
3. Runs charrnn.training.loop's Controller with the default observers first (metrics.jsonl,
   TensorBoard, the console's progress and samples, signals, a worker's preemption), as
   Keras' CallbackList adds its defaults, then the caller's callbacks.
4. Turns every stop that a rerun continues into one exception, `Preempted`: a signal, the
   preemption of a worker, the loss of a worker.

Everything the session holds is built here and passed on explicitly; of the trainer's
attributes, only `stop_training` and `stop_reason` are set from outside it (by the loop and
the callbacks: Keras' `model.stop_training`, the way a callback stops a run).

A non-finite loss or gradient stops training with a CharRNNError; that step is not applied
and no checkpoint is written for it, and no checkpoint is ever written with non-finite
weights. A storage fault (no space, quota, read-only) raises CharRNNError; the checkpoints
already saved stay.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any, Literal, Protocol

import keras

from charrnn import storage
from charrnn.errors import CharRNNError
from charrnn.log import logger
from charrnn.run.checkpoint import Checkpointer
from charrnn.run.rundir import RunDir, RunFiles
from charrnn.text.vocab import Vocabulary
from charrnn.training import keras_callbacks
from charrnn.training.callbacks import Callback
from charrnn.training.console import ProgressLogger, SamplePrinter
from charrnn.training.distribute import Distribution, first_line
from charrnn.training.loop import Controller, LoopState, Trainable
from charrnn.training.metrics import MetricsLog
from charrnn.training.stopping import Preempted, SignalStop
from charrnn.training.tensorboard import TensorBoard


class Session(Trainable, Protocol):
    """What fit() needs of the trainer it runs (charrnn.training.trainer.Trainer is one): the
    loop's entry points (Trainable), the loop's bookkeeping (`state`), the run's description
    (the console's `describe` of it) and the samples shown while it trains, and what a run
    directory's files and checkpoints are made of. `catch_up` is the one call that changes
    the trainer, once fit() holds the run's lock."""

    vocab: Vocabulary
    model: keras.Model
    optimizer: Any
    distribution: Distribution
    samples: Any  # charrnn.generation.sampler.TrainingSamples
    checkpoint: Any  # the tf.train.Checkpoint the Checkpointer saves
    rundir: RunDir

    @property
    def origin(self) -> dict | None:
        """Where a fine-tuned run's first weights came from."""

    @property
    def state(self) -> LoopState:
        """The loop's bookkeeping, which the Controller reads and writes."""

    def describe(self) -> str:
        """The run's corpus, plan and model, as the console shows them first."""

    def catch_up(self) -> None:
        """Continues from a checkpoint another trainer saved since this one restored."""


@dataclasses.dataclass
class Timings:
    """The seconds a fit() call spent training (tracing excluded) and evaluating; filled in
    however the call ends."""

    train_seconds: float = 0.0
    eval_seconds: float = 0.0


def fit(trainer: Session, callbacks: Sequence[Callback | keras.callbacks.Callback] = (),
        verbose: int | Literal["auto"] = "auto", handle_signals: bool = True,
        timings: Timings | None = None) -> keras.callbacks.History:
    """Trains `trainer` to the end of its run (see the module docstring); returns a Keras
    History of the epochs this call finalised (none if the run was complete already), and
    fills in `timings`. Keras callbacks come after charrnn's (charrnn.training.keras_callbacks)."""
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    if verbose not in (0, 1, 2):
        raise CharRNNError(f"verbose must be 0, 1, 2 or 'auto', got {verbose!r}")
    keras_callbacks.check(callbacks)
    history = keras.callbacks.History()
    keras_ones = [*(c for c in callbacks if keras_callbacks.is_keras_callback(c)), history]
    callbacks = [*(c for c in callbacks if not keras_callbacks.is_keras_callback(c)),
                 keras_callbacks.KerasCallbacks(keras_ones, trainer.model, trainer.optimizer)]
    with _claim(trainer) as rundir:
        config = trainer.config
        rundir.write(RunFiles(config, trainer.vocab, trainer.origin))
        checkpoints = Checkpointer(trainer.checkpoint, rundir, config.max_to_keep,
                                   finite=trainer.model.variables + trainer.optimizer.variables)
        own: list[Callback] = [MetricsLog(rundir.metrics_path, trainer.state.position()[0]),
                               TensorBoard(rundir.log_dirs, trainer.samples.at)]
        if verbose:
            own.append(ProgressLogger(verbose, trainer.describe()))
            if config.sample_interval is not None:
                own.append(SamplePrinter(trainer.samples.at, live=verbose == 1))
        observers = [*own, *callbacks]
        signals = SignalStop(trainer.distribution.stop_signals()) if handle_signals else None
        if signals is not None:
            preemption = trainer.distribution.preemption_observer(checkpoints.managers["latest"],
                                                                  lambda: _preempted(trainer, checkpoints))
            # Last: a preemption saves once every other observer has seen the chunk.
            observers += [signals] + ([preemption] if preemption is not None else [])
        controller = Controller(trainer, trainer.cadence, observers, state=trainer.state, checkpoints=checkpoints)
        try:
            controller.run()
        except Exception as e:
            if not trainer.distribution.lost_worker(e):
                raise
            raise _lost_worker(trainer, checkpoints, e) from None
        finally:
            if timings is not None:
                timings.train_seconds, timings.eval_seconds = controller.train_seconds, controller.eval_seconds
    if signals is not None and signals.requested is not None:
        path = _saved(trainer, checkpoints)
        raise Preempted(f"stopped by {signals.requested} at step {trainer.state.position()[0]}; checkpoint saved to "
                        f"{path}; run the same command again to continue", path)
    return history


@contextlib.contextmanager
def _claim(trainer: Session) -> Iterator[RunDir]:
    """The run directory to write to, held for the run (see the module docstring, 1.)."""
    if not trainer.distribution.is_chief:
        with RunDir.scratch() as scratch:
            yield scratch
        return
    rundir = trainer.rundir
    rundir.create()
    lock = rundir.lock()
    try:
        lock.acquire()
    except OSError as e:
        raise storage.storage_error("lock the run directory", rundir.path, e) from None
    try:
        for path in rundir.remove_leftovers():
            logger.info(f"removed {path}, left by an interrupted write")
        trainer.catch_up()  # another trainer may have saved since this one was built
        yield rundir
    finally:
        lock.release()


def _saved(trainer: Session, checkpoints: Checkpointer) -> str | None:
    """The checkpoint this run saved last, in the run directory: on a non-chief worker,
    whose own copies are scratch, the chief's of the same step."""
    path = checkpoints.path()
    return f"{trainer.rundir.checkpoint_dir()}/{os.path.basename(path)}" if path else None


def _lost_worker(trainer: Session, checkpoints: Checkpointer, error: Exception) -> Preempted:
    """The stop a lost worker of the cluster makes: a relaunch resumes from the chief's
    newest checkpoint."""
    resume = _saved(trainer, checkpoints) or "the start"
    return Preempted(f"lost a worker of the cluster at step {trainer.state.position()[0]} ({first_line(error)}); a "
                     f"relaunch resumes from {resume}: run the same command again on every worker", resume)


def _preempted(trainer: Session, checkpoints: Checkpointer) -> None:
    """Called by TensorFlow's preemption handler once every worker has saved: ends the run
    as a signal would (the controller's observers close their files on the way out)."""
    path = _saved(trainer, checkpoints)
    raise Preempted(f"stopped by the preemption of a worker at step {trainer.state.position()[0]}; checkpoint saved to "
                    f"{path}; run the same command again on every worker to continue", path)
