"""`Trainer`: a run's model, optimizer and checkpointed state, and the loop's entry points.

`train(num_steps)` runs steps in one compiled call (charrnn.training.step), `evaluate()` measures
the validation loss, `fit()` runs the loop (charrnn.training.fit). What a run starts from is planned
by charrnn.training.resume: a resumed run continues from its latest checkpoint, weights, Adam
moments, step, epoch, dropout RNG and the place in the epoch's data order (a pure function
of the seed and the epoch)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import keras
import numpy as np
import tensorflow as tf

from charrnn.config import TrainConfig
from charrnn.errors import CharRNNError
from charrnn.generation.sampler import Sampler, TrainingSamples
from charrnn.nn.model import CharRNN
from charrnn.nn.optimizer import LearningRate, make_optimizer
from charrnn.run import records
from charrnn.run.checkpoint import run_checkpoint
from charrnn.run.records import EvalRecord
from charrnn.run.which import checkpoint_paths, newest
from charrnn.training.cadence import Cadence
from charrnn.training.callbacks import Callback
from charrnn.training.console import describe
from charrnn.training.distribute import Distribution
from charrnn.training.evaluator import Evaluator
from charrnn.training.fit import Timings, fit
from charrnn.training.resume import Start
from charrnn.training.step import TrainStep


class Trainer:
    """Trains a `CharRNN` as `config` describes, resuming from `config.run_dir` if it holds a
    run. Construction plans the start, builds the model, optimizer and state in the scope of
    `config.strategy` (with `default`, the caller's `tf.distribute` strategy, if any) and
    restores the latest checkpoint; nothing is written until `fit()`, which owns the run
    directory's files and checkpoints while it runs (charrnn.training.fit)."""

    def __init__(self, config: TrainConfig):
        if config.deterministic:
            # Process-wide and irreversible: every op then picks a deterministic kernel.
            tf.config.experimental.enable_op_determinism()
        self.distribution = Distribution(
            strategy=config.strategy, device=config.device, devices=config.devices, tpu=config.tpu,
            cluster_timeout=config.cluster_timeout, num_cpu_devices=config.num_cpu_devices,
            batch_size=config.batch_size)
        self.strategy, self.device = self.distribution.strategy, self.distribution.device
        self.start = Start(config, self.device, tpu=self.distribution.name == "tpu")
        # The caller's config with what the start resolved (precision, model sizes, a
        # fine-tuned run's source): what config.json records.
        self.config, self.precision_reason = self.start.config, self.start.precision_reason
        self.rundir, self.data = self.start.rundir, self.start.data
        self.vocab, self.steps_per_epoch = self.data.vocab, self.data.steps_per_epoch
        run = self.config
        epochs_steps = run.epochs * self.steps_per_epoch
        self.total_steps = min(epochs_steps, run.max_steps or epochs_steps)
        # When evaluation, checkpoints, logs and samples happen.
        self.cadence = Cadence(
            steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps, steps_per_loop=run.steps_per_loop,
            checkpoint_every=run.checkpoint_every, eval_every=run.eval_every, log_every=run.log_every,
            patience=run.patience, time_budget=run.time_budget, sample_every=run.sample_interval)
        with self.strategy.scope(), self.distribution.placement():
            state = self._build_state()
        # What a checkpoint holds (charrnn.run.checkpoint.run_checkpoint; the Controller saves it
        # through its Checkpointer), and the part a resume restores.
        fingerprints = records.Fingerprints(self.vocab.fingerprint, self.data.fingerprint)
        self.checkpoint, self._restorable = run_checkpoint(state, fingerprints)
        self._restore()
        if self.restored_from is None:
            self.start.transfer(self.model)  # a new fine-tuned run: its first weights

        self._steps = TrainStep(
            self.model, self.optimizer, self.distribution, rng=self.rng, step=self.state.step,
            epoch_loss_sum=self.state.epoch_loss_sum, carried_state=self.carried_state, batch_size=run.batch_size,
            grad_clip=run.grad_clip, loss_scaling=self._loss_scaling, jit_compile=run.jit_compile)
        # train_step(inputs, targets) -> (loss, applied, grad_norm): one step on a batch
        # (default strategy); _train_loop: train()'s compiled chunks of steps.
        self.train_step, self._train_loop = self._steps.one, self._steps.loop
        self._evaluator = Evaluator(self.model, self.data.layout, device=self.device)
        self._sampler: Sampler | None = None
        # The samples the console and TensorBoard show while it trains.
        self.samples = TrainingSamples(self.generate, self.start.sample_prime, run.sample_chars,
                                       run.sample_temperature, run.seed)
        self.last_losses: list[float] = []  # the per-step losses of the last train() call
        self._grad_norm = math.nan  # its last step's gradient norm
        self.stop_training = False  # set to end fit() at the next chunk boundary, with a checkpoint
        self.stop_reason: str | None = None  # why the last fit() ended early (charrnn.training.stopping)
        self.train_seconds = self.eval_seconds = 0.0  # of the last fit() call (tracing excluded)

    def _build_state(self) -> dict:
        """Creates the model, optimizer and training state (in the strategy's scope); returns
        what a checkpoint holds of them."""
        run = self.config
        self.model = CharRNN.from_config(run, len(self.vocab))
        self._loss_scaling = run.mixed_precision == "mixed_float16"
        self._schedule = LearningRate(
            base=run.learning_rate, schedule=run.lr_schedule, decay=run.lr_decay, warmup_steps=run.warmup_steps,
            steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps)
        self.optimizer = make_optimizer(self._schedule, self.model.trainable_variables,
                                        weight_decay=run.weight_decay, loss_scaling=self._loss_scaling)
        self.state = records.LoopState(self.steps_per_epoch)  # the loop's bookkeeping
        self.step, self.epoch = self.state.step, self.state.epoch  # for inspection
        self.rng = tf.random.Generator.from_seed(run.seed)
        # With carry_state, the state the last step ended with, flattened: the initial
        # state of the next step. Zero at each epoch's start.
        self.carried_state = [
            tf.Variable(tf.zeros(spec.shape, spec.dtype), trainable=False, name=f"carried_state_{i}")
            for i, spec in enumerate(tf.nest.flatten(self.model.state_spec(run.batch_size)) if run.carry_state else [])]
        return dict(model=self.model, optimizer=self.optimizer, rng=self.rng, carried_state=self.carried_state,
                    **self.state.checkpointed())

    @property
    def origin(self) -> dict | None:
        """Where a fine-tuned run's first weights came from (None for other runs)."""
        return self.start.origin

    def describe(self) -> str:
        """What the console shows as a run starts (charrnn.training.console.describe)."""
        return describe(self)

    def _restore(self) -> None:
        """Restores the newest usable checkpoint of the run (charrnn.training.resume checks it); sets
        `restored_from` (None for a new run) and remembers which checkpoints existed, for
        catch_up()."""
        self._seen_checkpoints = checkpoint_paths(self.rundir.checkpoint_dir())
        self.restored_from = self.start.restore(self._restorable, self.model.variables + self.optimizer.variables,
                                                self.position)
        self._batches: tf.data.Iterator | None = None

    def catch_up(self) -> None:
        """Continues from the newest checkpoint if another trainer saved one since this one
        restored (fit() calls it once it holds the run's lock)."""
        if checkpoint_paths(self.rundir.checkpoint_dir()) != self._seen_checkpoints:
            self.start.recheck()
            self._restore()

    # -- the entry points of the loop (charrnn.training.loop.Trainable) ---------------------------

    def position(self) -> tuple[int, int]:
        """(step, epoch): the epoch the next step belongs to (charrnn.run.records.LoopState.position)."""
        return self.state.position()

    def begin_epoch(self, epoch: int) -> None:
        """Positions the training data at the current step of `epoch` (0-based); at the
        epoch's start, resets its loss sum and the carried state."""
        offset = self.state.begin_epoch(epoch)  # in [0, steps_per_epoch]: checked at restore
        if offset == 0:
            for variable in self.carried_state:
                variable.assign(tf.zeros_like(variable))
        step = int(self.step.numpy())
        end = self.cadence.epoch_end(epoch)
        batches = self.data.dataset(epoch, start=offset).take(max(end - step, 0))
        self._batches = iter(self.distribution.distribute(batches))

    def train(self, num_steps: int) -> np.ndarray:
        """Trains `num_steps` steps of the current epoch in one compiled call; returns their
        losses (also kept in `last_losses`). A step whose loss or gradients are not finite is
        not applied and raises CharRNNError."""
        step, epoch = self.position()
        left = self.cadence.epoch_end(epoch) - step
        if not 1 <= num_steps <= left:
            raise CharRNNError(f"train({num_steps}): {left} step(s) are left in epoch {epoch + 1} of this run; "
                               "fit() moves from one epoch to the next")
        if self._batches is None:
            self.begin_epoch(epoch)
        losses, finite, norm = self._train_loop(self._batches, tf.constant(num_steps))
        losses = losses.numpy()
        if not bool(finite):
            raise CharRNNError(
                f"loss or gradients not finite at step {step + len(losses)} (loss {losses[-1]}); the step was not "
                f"applied and the last checkpoint ({self.checkpoint_path() or 'none'}) is kept; "
                "lower --learning_rate or set --grad_clip, then run again")
        self.last_losses, self._grad_norm = losses.tolist(), float(norm)
        return losses

    def train_logs(self) -> dict[str, float]:
        """The learning rate and gradient norm of the last step trained."""
        rate = float(self._schedule(tf.constant(max(int(self.step.numpy()) - 1, 0), tf.int64)))
        return {"learning_rate": rate, "grad_norm": self._grad_norm}

    def evaluate(self, should_stop: Callable[[], bool] = lambda: False) -> float | None:
        """Mean validation loss in nats per character now (None without a validation split);
        see validate()."""
        metrics = self.validate(should_stop)
        return None if metrics is None else metrics["loss"]

    def validate(self, should_stop: Callable[[], bool] = lambda: False) -> dict[str, float] | None:
        """The validation metrics (charrnn.training.evaluator.Evaluator.metrics; None without a
        validation split); `should_stop` is polled between batches, and its True raises `Stopped`."""
        if len(self.data.val_ids) == 0:
            return None
        return self._evaluator.metrics(self.data.val_ids, should_stop)

    @property
    def evaluations(self) -> EvalRecord:
        """The last and the best evaluation so far, and how many came since the best."""
        return self.state.evaluations

    @property
    def best_val_loss(self) -> float | None:
        """The lowest validation loss measured in this run (None before any)."""
        best = self.evaluations.best_loss
        return best if math.isfinite(best) else None

    def checkpoint_path(self, which: str = "latest") -> str | None:
        """The checkpoint of `which` kind (latest or best) the run directory saved last, if any
        (charrnn.run.which.newest)."""
        return newest(self.rundir.checkpoint_dir(which))

    def sample(self, step: int) -> str:
        """The sample shown at `step` while training (charrnn.generation.sampler.TrainingSamples)."""
        return self.samples.at(step)

    def generate(self, prime: str, num_chars: int = 500, temperature: float = 0.5, num_samples: int = 1,
                 seed: int | None = None, **options) -> str | list[str]:
        """Samples from the model as it is now; see `Sampler.generate` (and its options)."""
        if self._sampler is None:
            self._sampler = Sampler(self.model, self.vocab, self.device)  # where training runs, as evaluation
        return self._sampler.generate(prime, num_chars, temperature, num_samples, seed, **options)

    def fit(self, callbacks: Sequence[Callback | keras.callbacks.Callback] = (),
            verbose: int | Literal["auto"] = "auto", handle_signals: bool = True) -> keras.callbacks.History:
        """Trains until `epochs` (or `max_steps`) is reached, with checkpoints, and returns a
        Keras History of the epochs it ran (`history.history["loss"]`, `["val_loss"]`, ...);
        `callbacks` (charrnn.Callback, or Keras' own: charrnn.training.keras_callbacks) come after the
        run's own observers; `verbose` 0 is silent, 1 a live line, 2 a line per `log_every` steps,
        "auto" 1 on a terminal, else 2; with `handle_signals`, SIGTERM and Ctrl-C stop the
        run with a checkpoint and raise `Preempted`. The whole contract: charrnn.training.fit."""
        timings = Timings()
        try:
            return fit(self, callbacks, verbose, handle_signals, timings)
        finally:
            self.train_seconds, self.eval_seconds = timings.train_seconds, timings.eval_seconds
