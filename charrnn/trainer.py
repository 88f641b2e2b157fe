"""`Trainer`: the training loop: compiled train step, validation, checkpoints, progress.

The outer loop (epochs, logging, evaluation, checkpointing) is plain Python; the step is
an `@tf.function` with a fixed input signature (GradientTape, sparse cross-entropy from
logits, Adam). Running the same configuration on the same run directory resumes from
the latest checkpoint: weights, Adam moments, step, epoch, dropout RNG and the position
within the epoch's data order, which is a pure function of the seed and the epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from typing import Callable

import keras
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from charrnn import checkpoint, distribute, preemption
from charrnn.config import TrainConfig
from charrnn.data import (Vocabulary, fingerprint, make_dataset, make_stream_dataset, num_stream_batches, num_windows,
                          read_text, resolve_corpus, split_ids)
from charrnn.devices import resolve_device
from charrnn.errors import CharRNNError
from charrnn.evaluator import Evaluator
from charrnn.lock import RunLock
from charrnn.model import CharRNN
from charrnn.preemption import Stopped
from charrnn.sampler import Sampler


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


class LearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """`config.learning_rate` after `warmup_steps` of linear warm-up, shaped by `lr_schedule`.

    A function of the optimizer's step alone, so a resumed run continues the same curve.
    """

    def __init__(self, config: TrainConfig, steps_per_epoch: int, total_steps: int):
        self.base, self.kind, self.decay = config.learning_rate, config.lr_schedule, config.lr_decay
        self.warmup, self.steps_per_epoch, self.total_steps = config.warmup_steps, steps_per_epoch, total_steps

    def __call__(self, step: tf.Tensor) -> tf.Tensor:
        step = tf.cast(step, tf.float32)
        warm = tf.minimum(1.0, (step + 1.0) / self.warmup) if self.warmup else 1.0
        if self.kind == "cosine":
            span = max(self.total_steps - self.warmup, 1)
            progress = tf.clip_by_value((step - self.warmup) / span, 0.0, 1.0)
            shape = 0.5 * (1.0 + tf.cos(math.pi * progress))
        elif self.kind == "exponential":
            shape = self.decay ** tf.floor(step / self.steps_per_epoch)
        else:
            shape = 1.0
        return self.base * warm * shape

    def get_config(self) -> dict:
        return {"base": self.base, "kind": self.kind, "decay": self.decay, "warmup": self.warmup,
                "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps}


class Validation(tf.Module):
    """The checkpointed record of validation: the last evaluation and the best one."""

    def __init__(self) -> None:
        super().__init__(name="validation")
        self.last_step = tf.Variable(-1, dtype=tf.int64, trainable=False, name="last_step")
        self.last_loss = tf.Variable(math.nan, dtype=tf.float64, trainable=False, name="last_loss")
        self.best_loss = tf.Variable(math.inf, dtype=tf.float64, trainable=False, name="best_loss")
        self.best_step = tf.Variable(-1, dtype=tf.int64, trainable=False, name="best_step")
        # Evaluations since the best one, for early stopping (--patience).
        self.since_best = tf.Variable(0, dtype=tf.int64, trainable=False, name="since_best")


def sequence_loss(targets: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Per-sequence mean sparse cross-entropy from logits, shape [batch]."""
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits), axis=-1)


class Trainer:
    """Trains a `CharRNN` as `config` describes, resuming from `config.run_dir` if it holds a run.

    Construction resolves and reads the corpus, checks the run directory, builds the model,
    optimizer and checkpoint inside the scope of `config.strategy` (with `default`, of the
    caller's current `tf.distribute` strategy, if any) and restores the latest checkpoint.
    Nothing is written until `fit()`.
    """

    def __init__(self, config: TrainConfig):
        self.config = config
        if config.deterministic:
            # Process-wide and irreversible: every op then picks a deterministic kernel.
            tf.config.experimental.enable_op_determinism()
        if config.num_cpu_devices is not None:
            distribute.configure_cpu_devices(config.num_cpu_devices)
        if config.strategy == "default":
            # No strategy of ours: the caller's scope, if any, else one device.
            self.strategy = tf.distribute.get_strategy()
            self.device = resolve_device(config.device)
        else:
            self.strategy = distribute.make_strategy(config.strategy, config.devices, config.tpu,
                                                     config.cluster_timeout)
            # Evaluation and sampling run on one device: the first of the strategy's.
            self.device = self.strategy.extended.worker_devices[0]
        self.num_replicas = self.strategy.num_replicas_in_sync
        if config.batch_size % self.num_replicas:
            raise CharRNNError(f"--batch_size={config.batch_size} is the global batch and must divide evenly among "
                               f"the strategy's {self.num_replicas} replicas; use a multiple of {self.num_replicas}")
        self.is_chief = distribute.is_chief(self.strategy)
        checkpoint.check_run_dir(config.run_dir)
        text = read_text(resolve_corpus(config.data))
        self.vocab = Vocabulary.from_text(text)
        self._data_fingerprint = fingerprint(text)
        ids = self.vocab.encode(text)
        del text
        self._train_ids, self._val_ids = split_ids(ids, config.val_fraction)
        self._check_sizes(len(ids))
        self._check_run_files()
        if config.carry_state:
            self.steps_per_epoch = num_stream_batches(len(self._train_ids), config.seq_length, config.batch_size)
        else:
            self.steps_per_epoch = num_windows(len(self._train_ids), config.seq_length) // config.batch_size
        self.total_steps = config.epochs * self.steps_per_epoch
        if config.max_steps is not None:
            self.total_steps = min(self.total_steps, config.max_steps)

        with self.strategy.scope(), self._placement():
            self.model = CharRNN(len(self.vocab), config.embedding_dim, config.rnn_units, config.num_layers,
                                 config.dropout, seed=config.seed, lstm_impl=config.lstm_impl,
                                 precision=config.mixed_precision, cell=config.cell)
            self.model.build_for_vocab()
            schedule = LearningRate(config, self.steps_per_epoch, self.total_steps)
            if config.weight_decay > 0:
                self.optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config.weight_decay)
            else:
                self.optimizer = keras.optimizers.Adam(learning_rate=schedule)
            if config.mixed_precision == "mixed_float16":
                # float16 gradients underflow without loss scaling (bfloat16 has float32's range).
                self.optimizer = keras.optimizers.LossScaleOptimizer(self.optimizer)
            # Keras 3 creates Adam's moments lazily; build them now or a restore drops them.
            self.optimizer.build(self.model.trainable_variables)
            self._loss_scaling = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
            # Sum of this epoch's step losses, checkpointed so that an epoch's mean train
            # loss is the same whether or not the epoch was interrupted.
            self.epoch_loss_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="epoch_loss_sum")
            # The step at which an epoch (or the run's last, partial one) was last evaluated
            # and logged; a step equal to it needs no finalising again after a resume.
            self.finalized_step = tf.Variable(-1, dtype=tf.int64, trainable=False, name="finalized_step")
            self.rng = tf.random.Generator.from_seed(config.seed)
            self.validation = Validation()
            # With carry_state, the state the last step ended with, flattened: the initial
            # state of the next step. Zero at each epoch's start.
            self.carried_state = [
                tf.Variable(tf.zeros([config.batch_size, config.rnn_units], self.model.state_dtype), trainable=False,
                            name=f"carried_state_{i}")
                for i in range(config.num_layers * self.model.state_size if config.carry_state else 0)]
            state = dict(model=self.model, optimizer=self.optimizer, step=self.step, epoch=self.epoch,
                         epoch_loss_sum=self.epoch_loss_sum, finalized_step=self.finalized_step, rng=self.rng,
                         validation=self.validation, carried_state=self.carried_state)
        # Saved with every checkpoint; restored apart (see _restore), so that checkpoints of
        # versions that did not record fingerprints still restore.
        self._fingerprints = checkpoint.Fingerprints(self.vocab.fingerprint, self._data_fingerprint)
        self._checkpoint = tf.train.Checkpoint(**state, fingerprints=self._fingerprints)
        self._restorable = tf.train.Checkpoint(**state)
        self._restore()

        spec = tf.TensorSpec([None, None], tf.int32)
        # train_step(inputs, targets) -> (loss, finite): one compiled optimisation step on a
        # batch (with the default strategy; under others, batches come from fit()'s
        # distributed dataset). When the loss (or, without loss scaling, the gradients) is
        # not finite, nothing is updated.
        self.train_step = tf.function(self._train_step_fn, input_signature=[spec, spec])
        # Each replica's forward and backward pass; with jit_compile one XLA cluster.
        self._replica_step = (tf.function(self._replica_step_fn, jit_compile=True) if config.jit_compile
                              else self._replica_step_fn)
        # Up to steps_per_loop steps in one call (Orbit's steps_per_loop), pulling batches
        # from a tf.data iterator inside the function; see _train_loop_fn.
        self._train_loop = tf.function(self._train_loop_fn)
        self._evaluator = Evaluator(self.model, config.seq_length, config.batch_size, carry_state=config.carry_state,
                                    device=self.device)
        self._sampler: Sampler | None = None
        # Seconds spent training (tracing excluded) and evaluating in the last fit() call.
        self.train_seconds = self.eval_seconds = 0.0

    # -- checks ---------------------------------------------------------------------------

    def _check_run_files(self) -> None:
        """Refuses a run directory whose config or vocabulary this run cannot continue."""
        saved = checkpoint.load_run_files(self.config.run_dir)
        if saved is not None:
            self._check_resumable(*saved)

    def _restore(self) -> None:
        """Restores the newest usable checkpoint and checks that this run can continue it.

        Sets `restored_from` (None for a new run) and remembers which checkpoints existed,
        so that fit() notices one saved in between (by a trainer that held the lock then).
        """
        run_dir = self.config.run_dir
        self._seen_checkpoints = checkpoint.checkpoint_paths(run_dir)
        variables = self.model.variables + self.optimizer.variables
        self.restored_from = checkpoint.restore_newest_readable(self._restorable, run_dir, check_finite=variables)
        if self.restored_from is None:
            return
        saved = checkpoint.check_vocab(self.restored_from, self.vocab, run_dir)
        if saved is not None and saved[1] != self._data_fingerprint and not self.config.allow_new_data:
            raise CharRNNError(f"{self.config.data} is not the text run directory {run_dir} was trained on "
                               f"(fingerprint {self._data_fingerprint}, the checkpoint's {saved[1]}); pass "
                               "--allow_new_data to continue training on it, or use a new --run_dir")
        step, epoch = self._position()
        if not 0 <= step - epoch * self.steps_per_epoch <= self.steps_per_epoch:
            raise CharRNNError(f"checkpoint step {step} and epoch {epoch} do not fit {self.steps_per_epoch} "
                               "steps per epoch; the run directory belongs to other data, use a new --run_dir")

    def _position(self) -> tuple[int, int]:
        """(step, epoch): the epoch the next step belongs to (the next one once the current
        epoch is trained to its end and finalised)."""
        step, epoch = int(self.step.numpy()), int(self.epoch.numpy())
        if step == (epoch + 1) * self.steps_per_epoch and int(self.finalized_step.numpy()) == step:
            epoch += 1
        return step, epoch

    def _check_resumable(self, saved_config: TrainConfig, saved_vocab: Vocabulary) -> None:
        problems = self.config.mismatches(saved_config)
        if saved_vocab != self.vocab:
            problems.append(f"vocabulary of {len(saved_vocab)} characters in the run, "
                            f"{len(self.vocab)} in {self.config.data}")
        if problems:
            raise CharRNNError(f"run directory {self.config.run_dir} holds an incompatible run ({'; '.join(problems)}); "
                               "pass the same settings to resume, or a new --run_dir")

    def _check_sizes(self, num_chars: int) -> None:
        c = self.config
        window = c.seq_length + 1
        train_needed = c.batch_size * window
        if num_windows(len(self._train_ids), c.seq_length) < c.batch_size:
            total_needed = math.ceil(train_needed / (1 - c.val_fraction))
            raise CharRNNError(
                f"corpus too short: {num_chars:,} characters, but batch_size={c.batch_size} x (seq_length+1)={window} "
                f"needs {train_needed:,} for training ({total_needed:,} with val_fraction={c.val_fraction}); "
                "use more text or a smaller --batch_size/--seq_length"
            )
        if c.val_fraction > 0 and len(self._val_ids) < window:
            raise CharRNNError(
                f"validation split too short: {len(self._val_ids)} characters, one window needs {window}; "
                "raise --val_fraction, lower --seq_length, or pass --val_fraction=0"
            )

    # -- compiled steps ---------------------------------------------------------------------

    def _placement(self) -> contextlib.AbstractContextManager:
        """The device scope for the default strategy; other strategies place ops themselves."""
        return tf.device(self.device) if self.config.strategy == "default" else contextlib.nullcontext()

    def _train_step_fn(self, inputs: tf.Tensor, targets: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with self._placement():
            return self._train_step_body(inputs, targets)

    def _replica_step_fn(self, inputs: tf.Tensor, targets: tf.Tensor, seed: tf.Tensor,
                         state: tuple) -> tuple[tf.Tensor, list[tf.Tensor], tuple]:
        """One replica's share of a step: its loss (already divided by the global batch) and gradients."""
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        # This replica's rows of the global batch: their carried state, and their part of
        # the global batch's dropout masks.
        first = replica * tf.shape(inputs)[0]
        state = tf.nest.map_structure(lambda s: s[first:first + tf.shape(inputs)[0]], state)
        with tf.GradientTape() as tape:
            logits, final_state = self.model(inputs, state=state or None, training=True, seed=seed,
                                             rows=(first, tf.constant(self.config.batch_size)))
            loss = tf.nn.compute_average_loss(sequence_loss(targets, logits), global_batch_size=self.config.batch_size)
            scaled_loss = self.optimizer.scale_loss(loss) if self._loss_scaling else loss
        # Embedding gradients come as IndexedSlices; dense ones sum across replicas plainly,
        # and Adam then updates alike whatever the number of replicas (its sparse update
        # of IndexedSlices differs: the equivalence test fails without this).
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(scaled_loss, self.model.trainable_variables)]
        return loss, grads, final_state if state else ()

    def _train_step_body(self, inputs: tf.Tensor, targets: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        # Drawn once per step in cross-replica context, so the RNG advances the same way
        # whatever the number of replicas (a run may resume under another strategy).
        dropout_seed = self.rng.make_seeds(1)[:, 0]
        # Carried state enters as a constant (the tape does not watch non-trainable
        # variables): gradients stop at the batch boundary, as truncated BPTT wants.
        state = self._carried() if self.config.carry_state else ()
        loss, grads, final_state = self.strategy.run(self._replica_step, args=(inputs, targets, dropout_seed, state))
        # The replicas' losses and gradients are shares of the global batch's: their sum
        # is the global mean, whatever the number of replicas.
        loss = self.strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
        grads = [self.strategy.reduce(tf.distribute.ReduceOp.SUM, g, axis=None) for g in grads]
        if self.config.carry_state:
            final_state = tf.nest.map_structure(lambda s: self.strategy.gather(s, axis=0), final_state)
        variables = self.model.trainable_variables
        scaling = self._loss_scaling
        # With loss scaling the gradients stay scaled: the loss-scale optimizer unscales them,
        # and skips (lowering the scale) a step whose gradients overflowed, which is routine
        # in float16 and no reason to stop.
        norm = tf.linalg.global_norm(grads)
        if self.config.grad_clip is not None:
            scale = self.optimizer.dynamic_scale if scaling else 1.0
            grads, _ = tf.clip_by_global_norm(grads, self.config.grad_clip * scale, use_norm=norm)
        finite = tf.math.is_finite(loss) & (scaling | tf.math.is_finite(norm))

        def apply() -> tf.Tensor:
            self.optimizer.apply_gradients(zip(grads, variables))
            self.step.assign_add(1)
            self.epoch_loss_sum.assign_add(tf.cast(loss, tf.float64))
            for variable, value in zip(self.carried_state, tf.nest.flatten(final_state)):
                variable.assign(value)
            return tf.constant(True)

        # Checked inside the step so that NaN or Inf never reaches the weights (or a checkpoint).
        return loss, tf.cond(finite, apply, lambda: tf.constant(False))

    def _train_loop_fn(self, iterator: tf.data.Iterator, num_steps: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Runs up to `num_steps` steps on batches from `iterator`; stops early at a bad step.

        Returns the losses of the steps run and whether the last one was applied (finite).
        """
        losses = tf.TensorArray(tf.float32, size=num_steps)
        finite = tf.constant(True)
        count = tf.constant(0)
        for i in tf.range(num_steps):
            inputs, targets = next(iterator)
            with self._placement():
                loss, finite = self._train_step_body(inputs, targets)
            losses = losses.write(i, tf.cast(loss, tf.float32))
            count = i + 1
            if not finite:
                break
        return losses.stack()[:count], finite

    def _carried(self) -> tuple:
        size = self.model.state_size
        return tuple(tuple(self.carried_state[i * size:(i + 1) * size]) for i in range(self.config.num_layers))

    # -- loop -------------------------------------------------------------------------------

    def train_dataset(self, epoch: int) -> tf.data.Dataset:
        """The batches of `epoch` in their order, which depends only on the seed and the epoch
        (with carry_state, the same contiguous streams every epoch)."""
        c = self.config
        if c.carry_state:
            return make_stream_dataset(self._train_ids, c.seq_length, c.batch_size)
        # A different, reproducible order each epoch: the seed mixes run seed and epoch.
        return make_dataset(self._train_ids, c.seq_length, c.batch_size, shuffle_buffer=c.shuffle_buffer,
                            seed=c.seed * 1_000_003 + epoch)

    def evaluate(self, should_stop: Callable[[], bool] = lambda: False) -> float | None:
        """Mean validation loss in nats per character, or None without a validation split.

        `should_stop` is polled between batches; if it returns True, raises `Stopped`.
        """
        if len(self._val_ids) == 0:
            return None
        return self._evaluator.loss(self._val_ids, should_stop)

    @property
    def best_val_loss(self) -> float | None:
        """The lowest validation loss measured in this run (None before any)."""
        best = float(self.validation.best_loss.numpy())
        return best if math.isfinite(best) else None

    def fit(self, handle_signals: bool = True) -> list[EpochStats]:
        """Trains until `epochs` (or `max_steps`) is reached; returns per-epoch statistics.

        Saves a checkpoint every `checkpoint_every` steps and at each epoch end, and returns
        at once (an empty list) if the run is already complete. With `handle_signals` (and
        in the main thread), SIGTERM or SIGINT saves a checkpoint at the next step boundary
        and raises `Preempted`. A non-finite loss or gradient stops training with a
        CharRNNError; that step is not applied and no checkpoint is written for it, and no
        checkpoint is ever written with non-finite weights.

        Holds the run directory's lock (charrnn.lock) while it runs, and before writing
        anything removes what an interrupted write left and, if another trainer saved a
        checkpoint since this one was built, continues from that one. A storage fault (no
        space, quota, read-only) raises CharRNNError; the checkpoints already saved stay.
        """
        c = self.config
        if not self.is_chief:
            # Every worker of a multi-worker run takes part in each save, but only the chief's
            # files are the run's (and only the chief holds the lock); the others write to a
            # temporary directory, removed at the end (as TensorFlow's multi-worker guide says).
            write_dir = tempfile.mkdtemp(prefix="charrnn_worker_")
            try:
                return self._fit(write_dir, handle_signals)
            finally:
                shutil.rmtree(write_dir, ignore_errors=True)
        try:
            os.makedirs(c.run_dir, exist_ok=True)
        except OSError as e:
            raise checkpoint.storage_error("create the run directory", c.run_dir, e) from None
        run_lock = RunLock(c.run_dir)
        try:
            run_lock.acquire()
        except OSError as e:
            raise checkpoint.storage_error("lock the run directory", c.run_dir, e) from None
        try:
            for path in checkpoint.remove_leftovers(c.run_dir):
                print(f"charrnn: removed {path}, left by an interrupted write", file=sys.stderr)
            if checkpoint.checkpoint_paths(c.run_dir) != self._seen_checkpoints:
                # Another trainer saved since this one was built: continue from its state.
                self._check_run_files()
                self._restore()
            return self._fit(c.run_dir, handle_signals)
        finally:
            run_lock.release()

    def _fit(self, write_dir: str, handle_signals: bool) -> list[EpochStats]:
        c = self.config
        checkpoint.save_run_files(write_dir, c, self.vocab)
        logs = os.path.join(write_dir, checkpoint.LOG_DIR)
        try:
            writer = tf.summary.create_file_writer(logs)
        except checkpoint.STORAGE_ERRORS as e:
            raise checkpoint.storage_error("write TensorBoard logs to", logs, e) from None
        run = _Run(
            manager=checkpoint.checkpoint_manager(self._checkpoint, write_dir, c.max_to_keep),
            best=checkpoint.checkpoint_manager(self._checkpoint, write_dir, 1, which="best"),
            writer=writer,
            logs=logs,
            metrics=checkpoint.MetricsLog(write_dir, resumed_step=int(self.step.numpy())),
            progress=_Progress(self.total_steps, self.steps_per_epoch, c.log_every, int(self.step.numpy())),
            # Under multi_worker, SIGTERM belongs to TensorFlow's preemption handler (below).
            stop=(preemption.StopRequest((signal.SIGINT,) if c.strategy == "multi_worker" else
                                         (signal.SIGTERM, signal.SIGINT)) if handle_signals else None),
            time_budget=c.time_budget,
        )
        if c.strategy == "multi_worker" and handle_signals:
            # A worker that gets SIGTERM (a preempted machine) tells the others; all of them
            # save a checkpoint at the same step and exit with EXIT_PREEMPTED.
            run.preemption = tf.distribute.experimental.PreemptionCheckpointHandler(
                self.strategy.cluster_resolver, run.manager,
                termination_config=tf.distribute.experimental.TerminationConfig(
                    exit_fn=lambda: self._exit_preempted(run), grace_period=0))
        if self.restored_from is not None:
            print(f"Resumed from {self.restored_from} at step {int(self.step.numpy())}, "
                  f"epoch {int(self.epoch.numpy()) + 1}", flush=True)
        history: list[EpochStats] = []
        try:
            with run.stop or contextlib.nullcontext():
                while not self._finished() and not run.out_of_time():
                    history.append(self._run_epoch(run))
            if self._patience_exhausted():
                print(f"Stopped early at step {int(self.step.numpy())}: no lower validation loss in {c.patience} "
                      f"evaluations; the best, {self.best_val_loss:.4f} at step "
                      f"{int(self.validation.best_step.numpy())}, is in {run.best.latest_checkpoint}", flush=True)
            elif run.out_of_time():
                print(f"Time budget of {c.time_budget:g} s reached at step {int(self.step.numpy())}; "
                      "run the same command again to continue", flush=True)
        except Stopped:
            path = self._save(run.manager)
            raise preemption.Preempted(
                f"stopped by {run.stop.requested} at step {int(self.step.numpy())}; checkpoint saved to {path}; "
                "run the same command again to continue", path) from None
        except distribute.PEER_ERRORS as e:
            if c.strategy != "multi_worker":
                raise
            # A worker died or became unreachable (the collective ops fail at once). Name the
            # chief's copy of the checkpoint: a non-chief's own copies are scratch.
            latest = run.manager.latest_checkpoint
            resume = os.path.join(c.run_dir, checkpoint.CKPT_DIR, os.path.basename(latest)) if latest else "the start"
            raise preemption.Preempted(
                f"lost a worker of the cluster at step {int(self.step.numpy())} ({distribute.describe(e)}); "
                f"a relaunch resumes from {resume}: run the same command again on every worker", resume) from None
        finally:
            run.metrics.close()
            _flush(run)
            self.train_seconds, self.eval_seconds = run.train_seconds, run.eval_seconds
        return history

    def _save(self, manager: tf.train.CheckpointManager) -> str:
        """Saves the current state as checkpoint `step` with `manager`, if every weight is finite."""
        step = int(self.step.numpy())
        if not checkpoint.all_finite(self.model.variables + self.optimizer.variables):
            raise CharRNNError(
                f"the weights are not finite at step {step} (training diverged); nothing was saved and the last "
                f"checkpoint ({manager.latest_checkpoint or 'none'}) is kept; lower --learning_rate or set "
                "--grad_clip, then run again")
        return checkpoint.save(manager, step)

    def _exit_preempted(self, run: _Run) -> None:
        """Called by TensorFlow's preemption handler once every worker has saved."""
        run.metrics.close()
        _flush(run)
        print(f"charrnn: stopped by the preemption of a worker at step {int(self.step.numpy())}; checkpoint saved to "
              f"{run.manager.latest_checkpoint}; run the same command again on every worker to continue",
              file=sys.stderr, flush=True)
        sys.exit(preemption.EXIT_PREEMPTED)

    def _finished(self) -> bool:
        """Whether every step is trained (or patience ran out) and the last epoch is finalised."""
        step = int(self.step.numpy())
        return (step >= self.total_steps or self._patience_exhausted()) and int(self.finalized_step.numpy()) == step

    def _patience_exhausted(self) -> bool:
        patience = self.config.patience
        return patience is not None and int(self.validation.since_best.numpy()) >= patience

    def _validate(self, run: _Run, step: int) -> float | None:
        """Evaluates at `step`, records it, and keeps the checkpoint if it is the best so far.

        Returns the validation loss, or None without a validation split.
        """
        start = time.perf_counter()
        val_loss = self.evaluate(run.stop_requested)
        run.eval_seconds += time.perf_counter() - start
        if val_loss is None:
            return None
        v = self.validation
        v.last_step.assign(step)
        v.last_loss.assign(val_loss)
        improved = val_loss < float(v.best_loss.numpy())
        if improved:
            v.best_loss.assign(val_loss)
            v.best_step.assign(step)
            v.since_best.assign(0)
            self._save(run.best)
        else:
            v.since_best.assign_add(1)
        _write_scalars(run, step, val_loss=val_loss, val_bpc=val_loss / math.log(2))
        return val_loss

    def _evaluation_due(self, step: int, epoch_end: int) -> bool:
        """Whether `step` is an --eval_every point inside the epoch not yet evaluated (epoch
        ends are evaluated when the epoch is finalised)."""
        every = self.config.eval_every
        return (every is not None and 0 < step < epoch_end and step % every == 0
                and int(self.validation.last_step.numpy()) != step)

    def _run_epoch(self, run: _Run) -> EpochStats:
        """Trains from the current step to the end of its epoch (or of the run), then finalises it.

        Finalising (evaluate, log, checkpoint) comes last and is marked done in the
        checkpoint, so a crash or stop before that checkpoint resumes into a state that
        redoes it: an earlier step, or this step not yet marked finalised.
        """
        c = self.config
        step, epoch = self._position()
        self.epoch.assign(epoch)
        offset = step - epoch * self.steps_per_epoch  # in [0, steps_per_epoch]: checked by _restore
        if offset == 0:
            self.epoch_loss_sum.assign(0.0)
            for variable in self.carried_state:
                variable.assign(tf.zeros_like(variable))
        epoch_end = min((epoch + 1) * self.steps_per_epoch, self.total_steps)
        start, start_step = time.perf_counter(), step
        batches = self.train_dataset(epoch).skip(offset).take(max(epoch_end - step, 0))
        if c.strategy != "default":
            # Global batches, split among the replicas (and, across workers, by data).
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
            batches = self.strategy.experimental_distribute_dataset(batches.with_options(options))
        batches = iter(batches)
        while True:
            # Evaluate, then checkpoint: a checkpoint taken at an evaluation point holds that
            # evaluation's record, so a resume from it neither repeats the evaluation nor
            # logs it twice; a run stopped during an evaluation (checkpointed without it)
            # does it first when resumed.
            if self._evaluation_due(step, epoch_end):
                val_loss = self._validate(run, step)
                run.metrics.write(step=step, val_loss=val_loss, val_bpc=val_loss / math.log(2))
                run.progress.validation(step, val_loss, self.validation)
            if step != start_step and step % c.checkpoint_every == 0 and step < epoch_end:
                self._save(run.manager)
            if run.stop_requested():
                raise Stopped
            if step >= epoch_end or run.out_of_time() or self._patience_exhausted():
                break
            # A chunk never crosses a checkpoint or evaluation boundary, so both land on the
            # same steps whatever steps_per_loop is.
            chunk = min(c.steps_per_loop, epoch_end - step, c.checkpoint_every - step % c.checkpoint_every)
            if c.eval_every is not None:
                chunk = min(chunk, c.eval_every - step % c.eval_every)
            chunk_start = time.perf_counter()
            losses, finite = self._train_loop(batches, tf.constant(chunk))
            losses = losses.numpy()
            run.count_training_time(time.perf_counter() - chunk_start)
            if not bool(finite):
                raise CharRNNError(
                    f"loss or gradients not finite at step {step + len(losses)} (loss {losses[-1]}); the step was not "
                    f"applied and the last checkpoint ({run.manager.latest_checkpoint or 'none'}) is kept; "
                    "lower --learning_rate or set --grad_clip, then run again")
            previous, step = step, step + len(losses)
            for s, loss in enumerate(losses, start=previous + 1):
                if s % c.log_every == 0:
                    run.metrics.write(step=s, loss=float(loss))
            if run.progress.due(previous, step):
                budget_left = None if c.time_budget is None else c.time_budget - run.train_seconds
                run.progress.show(epoch, step, float(losses[-1]), budget_left)
                _write_scalars(run, step, loss=float(losses[-1]),
                               learning_rate=float(self.optimizer.learning_rate), steps_per_sec=run.progress.rate(step))
            if run.preemption is not None:  # after this chunk's metrics: a preemption ends the process here
                run.preemption.save_checkpoint_if_preempted(checkpoint_number=step)
        steps_per_sec = (step - start_step) / max(time.perf_counter() - start, 1e-9)

        if int(self.validation.last_step.numpy()) == step:  # evaluated mid-epoch, then stopped early
            val_loss = float(self.validation.last_loss.numpy())
        else:
            val_loss = self._validate(run, step)
        train_loss = float(self.epoch_loss_sum.numpy()) / (step - epoch * self.steps_per_epoch)
        stats = EpochStats(epoch=epoch + 1, step=step, train_loss=train_loss, val_loss=val_loss,
                           val_bpc=None if val_loss is None else val_loss / math.log(2), steps_per_sec=steps_per_sec)
        run.progress.end_epoch(stats)
        run.metrics.write(step=step, epoch=epoch + 1, train_loss=train_loss, val_loss=val_loss, val_bpc=stats.val_bpc)
        self.finalized_step.assign(step)
        self._save(run.manager)
        return stats

    def generate(self, prime: str, num_chars: int = 500, temperature: float = 0.5, num_samples: int = 1,
                 seed: int | None = None, **options) -> str | list[str]:
        """Samples from the model as it is now; see `Sampler.generate` (and its options)."""
        if self._sampler is None:
            self._sampler = Sampler(self.model, self.vocab, self.config.device)
        return self._sampler.generate(prime, num_chars, temperature, num_samples, seed, **options)


# TensorBoard's scalar plugin reads summaries tagged with this metadata. Writing them with
# tf.summary.write avoids a dependency on the tensorboard package just to log numbers.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
    data_class=summary_pb2.DATA_CLASS_SCALAR,
).SerializeToString()


def _write_scalars(run: _Run, step: int, **values: float) -> None:
    try:
        with run.writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.write(name, tf.constant(value, tf.float32), metadata=_SCALAR_METADATA)
    except checkpoint.STORAGE_ERRORS as e:
        raise checkpoint.storage_error("write TensorBoard logs to", run.logs, e) from None


def _flush(run: _Run) -> None:
    try:
        run.writer.flush()
    except checkpoint.STORAGE_ERRORS as e:
        raise checkpoint.storage_error("write TensorBoard logs to", run.logs, e) from None


@dataclasses.dataclass
class _Run:
    """What one fit() call writes to and listens to."""

    manager: tf.train.CheckpointManager
    best: tf.train.CheckpointManager
    writer: tf.summary.SummaryWriter
    logs: str
    metrics: checkpoint.MetricsLog
    progress: _Progress
    stop: preemption.StopRequest | None
    time_budget: float | None
    preemption: tf.distribute.experimental.PreemptionCheckpointHandler | None = None
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    traced: bool = False

    def stop_requested(self) -> bool:
        return self.stop is not None and self.stop.requested is not None

    def count_training_time(self, seconds: float) -> None:
        # The first call of the process traces the step; that is start-up, not training.
        if self.traced:
            self.train_seconds += seconds
        self.traced = True

    def out_of_time(self) -> bool:
        return self.time_budget is not None and self.train_seconds >= self.time_budget


class _Progress:
    """A live line on a terminal (redrawn in place, cut to the terminal's width so that it
    never wraps), a plain log line every `log_every` steps otherwise.

    The rate and the ETA cover this whole invocation (not just the current epoch), and the
    epoch count is the run's own: `total_steps` (max_steps included) over `steps_per_epoch`.
    """

    def __init__(self, total_steps: int, steps_per_epoch: int, log_every: int, start_step: int):
        self.total_steps = total_steps
        self.epochs = max(math.ceil(total_steps / steps_per_epoch), 1)
        self.log_every = log_every
        self.live = sys.stdout.isatty()
        self._start, self._start_step = time.monotonic(), start_step
        self._last_draw = 0.0

    def due(self, previous: int, step: int) -> bool:
        """Whether to show progress after advancing from step `previous` to `step`."""
        if self.live:
            return time.monotonic() - self._last_draw > 0.5 or step == self.total_steps
        return step // self.log_every > previous // self.log_every

    def rate(self, step: int) -> float:
        """Steps per second since this invocation started (evaluations and saves included)."""
        elapsed = time.monotonic() - self._start
        return (step - self._start_step) / elapsed if elapsed > 0 else 0.0

    def line(self, epoch: int, step: int, loss: float, budget_left: float | None = None,
             width: int | None = None) -> str:
        """The progress line; with `width`, its least useful parts are left out until it fits."""
        rate = self.rate(step)
        eta = (self.total_steps - step) / rate if rate > 0 else float("inf")
        if budget_left is not None:  # a --time_budget ends the run first
            eta = min(eta, max(budget_left, 0.0))
        # In the order shown; the number is the rank of what goes first when space is short.
        parts = [(f"epoch {epoch + 1}/{self.epochs}", 3), (f"step {step}/{self.total_steps}", 6),
                 (f"{100 * step / self.total_steps:.0f}%", 5), (f"loss {loss:.4f}", 4),
                 (f"{rate:.2f} steps/s", 1), (f"elapsed {_hms(time.monotonic() - self._start)}", 0),
                 (f"ETA {_hms(eta)}", 2)]
        while True:
            line = " ".join(text for text, _ in parts)
            if width is None or len(line) < width or len(parts) == 1:
                return line if width is None else line[:width - 1]
            parts.remove(min(parts, key=lambda part: part[1]))

    def show(self, epoch: int, step: int, loss: float, budget_left: float | None = None) -> None:
        if self.live:
            self._last_draw = time.monotonic()
            width = shutil.get_terminal_size().columns
            sys.stdout.write("\r" + self.line(epoch, step, loss, budget_left, width) + "\033[K")
        else:
            sys.stdout.write(self.line(epoch, step, loss, budget_left) + "\n")
        sys.stdout.flush()

    def validation(self, step: int, val_loss: float, record: Validation) -> None:
        best = " (best)" if int(record.best_step.numpy()) == step else ""
        prefix = "\r" if self.live else ""
        print(f"{prefix}step {step} val_loss {val_loss:.4f} val_bpc {val_loss / math.log(2):.3f}{best}"
              + ("\033[K" if self.live else ""), flush=True)

    def end_epoch(self, stats: EpochStats) -> None:
        val = "" if stats.val_loss is None else f" val_loss {stats.val_loss:.4f} val_bpc {stats.val_bpc:.3f}"
        prefix = "\r" if self.live else ""
        print(f"{prefix}epoch {stats.epoch}/{self.epochs} step {stats.step} loss {stats.train_loss:.4f}{val} "
              f"{stats.steps_per_sec:.2f} steps/s" + ("\033[K" if self.live else ""), flush=True)


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
