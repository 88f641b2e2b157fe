"""`Trainer`: a run's model, optimizer and checkpointed state, and its compiled steps.

`train(num_steps)` runs steps in one `@tf.function` (GradientTape, sparse cross-entropy
from logits, Adam) and `evaluate()` measures the validation loss; `fit()` hands both to
the loop of charrnn.loop, with the run's observers (progress, metrics.jsonl, TensorBoard,
samples, signals) and the caller's callbacks. Running the same configuration on the same
run directory resumes from the latest checkpoint: weights, Adam moments, step, epoch,
dropout RNG and the position within the epoch's data order, which is a pure function of
the seed and the epoch.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
from typing import Callable, Literal, Sequence

import keras
import numpy as np
import tensorflow as tf

from charrnn import checkpoint, preemption
from charrnn.callbacks import Callback, ProgressLogger, SamplePrinter, SignalStop
from charrnn.config import TrainConfig
from charrnn.corpus import encode
from charrnn.data import Vocabulary, make_dataset, make_stream_dataset, num_stream_batches, num_windows, split_ids
from charrnn.devices import choose_precision
from charrnn.distribute import Distribution, describe
from charrnn.errors import CharRNNError
from charrnn.evaluator import Evaluator
from charrnn.lock import RunLock
from charrnn.loop import Cadence, Controller, EpochStats
from charrnn.model import CharRNN
from charrnn.sampler import Sampler
from charrnn.tensorboard import TensorBoard


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
        if config.deterministic:
            # Process-wide and irreversible: every op then picks a deterministic kernel.
            tf.config.experimental.enable_op_determinism()
        self.distribution = Distribution(config)
        self.strategy, self.device = self.distribution.strategy, self.distribution.device
        self.num_replicas, self.is_chief = self.distribution.num_replicas, self.distribution.is_chief
        checkpoint.check_run_dir(config.run_dir)
        # The policy in use (auto resolved) and why; config.json records it, and a resumed
        # run keeps it (its carried state and checkpoints have that precision's dtypes).
        self.config, self.precision_reason = self._resolve_precision(config)
        config = self.config
        origin = self._load_origin() if config.init_from else None
        corpus = encode(config.data, base=origin[1] if origin else None)
        self.vocab, self._data_fingerprint, ids = corpus.vocab, corpus.fingerprint, corpus.ids
        self._train_ids, self._val_ids = split_ids(ids, config.val_fraction)
        self._check_sizes(len(ids))
        self._sample_prime = self._check_sample_prime()
        self._check_run_files()
        if config.carry_state:
            self.steps_per_epoch = num_stream_batches(len(self._train_ids), config.seq_length, config.batch_size)
        else:
            self.steps_per_epoch = num_windows(len(self._train_ids), config.seq_length) // config.batch_size
        self.total_steps = config.epochs * self.steps_per_epoch
        if config.max_steps is not None:
            self.total_steps = min(self.total_steps, config.max_steps)
        # When evaluation, checkpoints, logs and samples happen: charrnn.loop's Cadence.
        self.cadence = Cadence.from_config(config, self.steps_per_epoch, self.total_steps)

        with self.strategy.scope(), self.distribution.placement():
            self.model = CharRNN.from_config(config, len(self.vocab))
            self._schedule = LearningRate(config, self.steps_per_epoch, self.total_steps)
            if config.weight_decay > 0:
                self.optimizer = keras.optimizers.AdamW(learning_rate=self._schedule, weight_decay=config.weight_decay)
            else:
                self.optimizer = keras.optimizers.Adam(learning_rate=self._schedule)
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
        # Where a fine-tuned run's weights came from (None for other runs): config.json keeps it.
        self.origin: dict | None = None
        if origin is not None:
            self.origin = checkpoint.read_origin(config.run_dir) if self.restored_from else None
            if self.origin is None:
                self.origin = self._transfer(*origin)

        spec = tf.TensorSpec([None, None], tf.int32)
        # train_step(inputs, targets) -> (loss, finite, grad_norm): one compiled optimisation
        # step on a batch (with the default strategy; under others, batches come from the
        # distributed dataset of train()). When the loss (or, without loss scaling, the
        # gradients) is not finite, nothing is updated.
        self.train_step = tf.function(self._train_step_fn, input_signature=[spec, spec])
        # Each replica's forward and backward pass; with jit_compile one XLA cluster.
        self._replica_step = (tf.function(self._replica_step_fn, jit_compile=True) if config.jit_compile
                              else self._replica_step_fn)
        # Up to num_steps steps in one call (Orbit's steps_per_loop), pulling batches from a
        # tf.data iterator inside the function; see _train_loop_fn.
        self._train_loop = tf.function(self._train_loop_fn)
        self._batches: tf.data.Iterator | None = None
        self._evaluator = Evaluator(self.model, config.seq_length, config.batch_size, carry_state=config.carry_state,
                                    device=self.device)
        self._sampler: Sampler | None = None
        self._samples: dict[int, str] = {}
        self._managers: dict[str, tf.train.CheckpointManager] = {}
        # The per-step losses of the last train() call, and its last step's gradient norm.
        self.last_losses = np.zeros([0], np.float32)
        self._grad_norm = math.nan
        # Set by a callback (or a signal) to end fit() at the next chunk boundary, with a
        # checkpoint; stop_reason says why the last fit() ended early (charrnn.loop).
        self.stop_training = False
        self.stop_reason: str | None = None
        # Seconds spent training (tracing excluded) and evaluating in the last fit() call.
        self.train_seconds = self.eval_seconds = 0.0

    # -- checks ---------------------------------------------------------------------------

    def _resolve_precision(self, config: TrainConfig) -> tuple[TrainConfig, str]:
        if config.mixed_precision != "auto":
            return config, "as asked"
        saved = checkpoint.load_run_files(config.run_dir)
        if saved is not None and saved[0].mixed_precision != "auto":
            return config.replace(mixed_precision=saved[0].mixed_precision), "auto: the run's own, kept on resume"
        policy, why = choose_precision(self.device, tpu=self.distribution.name == "tpu")
        return config.replace(mixed_precision=policy), f"auto: {why}"

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
        self._batches = None
        if self.restored_from is None:
            return
        saved = checkpoint.check_vocab(self.restored_from, self.vocab, run_dir)
        if saved is not None and saved[1] != self._data_fingerprint and not self.config.allow_new_data:
            raise CharRNNError(f"{self.config.data} is not the text run directory {run_dir} was trained on "
                               f"(fingerprint {self._data_fingerprint}, the checkpoint's {saved[1]}); pass "
                               "--allow_new_data to continue training on it, or use a new --run_dir")
        step, epoch = self.position()
        if not 0 <= step - epoch * self.steps_per_epoch <= self.steps_per_epoch:
            raise CharRNNError(f"checkpoint step {step} and epoch {epoch} do not fit {self.steps_per_epoch} "
                               "steps per epoch; the run directory belongs to other data, use a new --run_dir")

    def _load_origin(self) -> tuple[CharRNN, Vocabulary, str]:
        """The model, vocabulary and checkpoint path of --init_from, checked against this run's model."""
        c = self.config
        if os.path.normpath(c.init_from) == os.path.normpath(c.run_dir):
            raise CharRNNError("--init_from is the run directory itself; pass another run to start from, or leave "
                               "--init_from unset to resume")
        try:
            model, saved, vocab, path = checkpoint.load_model(c.init_from, None if c.init_which == "best" else "latest")
        except CharRNNError as e:
            raise CharRNNError(f"--init_from: {e}") from None
        different = [f"{name}={getattr(saved, name)!r} there, {getattr(c, name)!r} here"
                     for name in TrainConfig.MODEL_FIELDS if getattr(saved, name) != getattr(c, name)]
        if different:
            raise CharRNNError(f"cannot fine-tune from {c.init_from}: its model has other sizes "
                               f"({'; '.join(different)}); pass the same model flags")
        return model, vocab, path

    def _transfer(self, old: CharRNN, old_vocab: Vocabulary, path: str) -> dict:
        """Copies `old`'s weights into this (new) run's model: each of its characters keeps its
        rows of the embedding and of the output layer, the new text's new characters keep the
        rows this model was initialised with. Returns the origin record for config.json."""
        index = {ch: i for i, ch in enumerate(self.vocab.chars)}
        rows = np.array([index[ch] for ch in old_vocab.chars])
        for variable, value, axis in ((self.model.embedding.embeddings, old.embedding.embeddings, 0),
                                      (self.model.dense.kernel, old.dense.kernel, 1),
                                      (self.model.dense.bias, old.dense.bias, 0)):
            merged = variable.numpy()
            if axis == 0:
                merged[rows] = value.numpy()
            else:
                merged[:, rows] = value.numpy()
            variable.assign(merged)
        for layer, old_layer in zip(self.model.rnns, old.rnns):
            for variable, value in zip(layer.weights, old_layer.weights):
                variable.assign(value)
        return {"run": self.config.init_from, "checkpoint": path, "vocab_size_before": len(old_vocab),
                "vocab_size": len(self.vocab)}

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

    def _check_sample_prime(self) -> str:
        """The prime of the samples shown while training: --sample_prime, or a newline (the
        text's first character if it has none)."""
        prime = self.config.sample_prime or ("\n" if "\n" in self.vocab.chars else self.vocab.chars[0])
        unknown = sorted(set(prime) - set(self.vocab.chars))
        if unknown:
            raise CharRNNError(f"--sample_prime has characters that are not in {self.config.data}: "
                               f"{''.join(unknown)!r}; use characters of the training text")
        return prime

    # -- compiled steps ---------------------------------------------------------------------

    def _train_step_fn(self, inputs: tf.Tensor, targets: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        with self.distribution.placement():
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

    def _train_step_body(self, inputs: tf.Tensor, targets: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
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
        scale = self.optimizer.dynamic_scale if scaling else 1.0
        if self.config.grad_clip is not None:
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
        return loss, tf.cond(finite, apply, lambda: tf.constant(False)), norm / scale

    def _train_loop_fn(self, iterator: tf.data.Iterator,
                       num_steps: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Runs up to `num_steps` steps on batches from `iterator`; stops early at a bad step.

        Returns the losses of the steps run, whether the last one was applied (finite) and
        its gradients' global norm (unscaled, before clipping).
        """
        losses = tf.TensorArray(tf.float32, size=num_steps)
        finite, norm = tf.constant(True), tf.constant(0.0)
        count = tf.constant(0)
        for i in tf.range(num_steps):
            inputs, targets = next(iterator)
            with self.distribution.placement():
                loss, finite, norm = self._train_step_body(inputs, targets)
            losses = losses.write(i, tf.cast(loss, tf.float32))
            count = i + 1
            if not finite:
                break
        return losses.stack()[:count], finite, tf.cast(norm, tf.float32)

    def _carried(self) -> tuple:
        size = self.model.state_size
        return tuple(tuple(self.carried_state[i * size:(i + 1) * size]) for i in range(self.config.num_layers))

    # -- the entry points of the loop (charrnn.loop.Trainable) ---------------------------

    def train_dataset(self, epoch: int, start: int = 0) -> tf.data.Dataset:
        """The batches of `epoch` from batch `start` on, in their order, which depends only on
        the seed and the epoch (with carry_state, the same contiguous streams every epoch).
        Batches before `start` are skipped without being read."""
        c = self.config
        if c.carry_state:
            return make_stream_dataset(self._train_ids, c.seq_length, c.batch_size, start=start)
        # A different, reproducible order each epoch: the seed mixes run seed and epoch.
        return make_dataset(self._train_ids, c.seq_length, c.batch_size, shuffle_buffer=c.shuffle_buffer,
                            seed=c.seed * 1_000_003 + epoch, start=start)

    def position(self) -> tuple[int, int]:
        """(step, epoch): the epoch the next step belongs to (the next one once the current
        epoch is trained to its end and finalised)."""
        step, epoch = int(self.step.numpy()), int(self.epoch.numpy())
        if step == (epoch + 1) * self.steps_per_epoch and int(self.finalized_step.numpy()) == step:
            epoch += 1
        return step, epoch

    def begin_epoch(self, epoch: int) -> None:
        """Positions the training data at the current step of `epoch` (0-based); at the
        epoch's start, resets its loss sum and the carried state."""
        step = int(self.step.numpy())
        self.epoch.assign(epoch)
        offset = step - epoch * self.steps_per_epoch  # in [0, steps_per_epoch]: checked by _restore
        if offset == 0:
            self.epoch_loss_sum.assign(0.0)
            for variable in self.carried_state:
                variable.assign(tf.zeros_like(variable))
        end = self.cadence.epoch_end(epoch)
        batches = self.train_dataset(epoch, start=offset).take(max(end - step, 0))
        self._batches = iter(self.distribution.distribute(batches))

    def train(self, num_steps: int) -> np.ndarray:
        """Trains `num_steps` steps of the current epoch in one compiled call; returns their
        losses (also kept in `last_losses`).

        A step whose loss or gradients are not finite is not applied and raises CharRNNError.
        """
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
            kept = self._managers["latest"].latest_checkpoint if self._managers else None
            raise CharRNNError(
                f"loss or gradients not finite at step {step + len(losses)} (loss {losses[-1]}); the step was not "
                f"applied and the last checkpoint ({kept or 'none'}) is kept; "
                "lower --learning_rate or set --grad_clip, then run again")
        self.last_losses, self._grad_norm = losses, float(norm)
        return losses

    def train_logs(self) -> dict[str, float]:
        """The learning rate and gradient norm of the last step trained."""
        rate = float(self._schedule(tf.constant(max(int(self.step.numpy()) - 1, 0), tf.int64)))
        return {"learning_rate": rate, "grad_norm": self._grad_norm}

    def evaluate(self, should_stop: Callable[[], bool] = lambda: False) -> float | None:
        """Mean validation loss in nats per character, or None without a validation split.

        `should_stop` is polled between batches; if it returns True, raises `Stopped`.
        """
        if len(self._val_ids) == 0:
            return None
        return self._evaluator.loss(self._val_ids, should_stop)

    def record_evaluation(self, step: int, val_loss: float) -> None:
        """Records the evaluation at `step`; a new best is saved as the best checkpoint."""
        v = self.validation
        v.last_step.assign(step)
        v.last_loss.assign(val_loss)
        if val_loss < float(v.best_loss.numpy()):
            v.best_loss.assign(val_loss)
            v.best_step.assign(step)
            v.since_best.assign(0)
            self._save("best")
        else:
            v.since_best.assign_add(1)

    def evaluation_record(self) -> tuple[int, float, int, float, int]:
        """(last step, last loss, best step, best loss, evaluations since the best)."""
        v = self.validation
        return (int(v.last_step.numpy()), float(v.last_loss.numpy()), int(v.best_step.numpy()),
                float(v.best_loss.numpy()), int(v.since_best.numpy()))

    @property
    def best_val_loss(self) -> float | None:
        """The lowest validation loss measured in this run (None before any)."""
        best = float(self.validation.best_loss.numpy())
        return best if math.isfinite(best) else None

    def epoch_train_loss(self) -> float:
        step, epoch = int(self.step.numpy()), int(self.epoch.numpy())
        return float(self.epoch_loss_sum.numpy()) / max(step - epoch * self.steps_per_epoch, 1)

    def last_finalized(self) -> int:
        return int(self.finalized_step.numpy())

    def finalize_epoch(self, step: int) -> None:
        self.finalized_step.assign(step)
        self.save()

    def save(self) -> str:
        """Saves a checkpoint of the current state (fit() sets up where); returns its path."""
        return self._save("latest")

    def _save(self, which: str) -> str:
        """Saves the current state as checkpoint `step` in `which`, if every weight is finite."""
        manager = self._managers[which]
        step = int(self.step.numpy())
        if not checkpoint.all_finite(self.model.variables + self.optimizer.variables):
            raise CharRNNError(
                f"the weights are not finite at step {step} (training diverged); nothing was saved and the last "
                f"checkpoint ({manager.latest_checkpoint or 'none'}) is kept; lower --learning_rate or set "
                "--grad_clip, then run again")
        return checkpoint.save(manager, step)

    def checkpoint_path(self, which: str = "latest") -> str | None:
        """The newest checkpoint fit() saved in `which` (latest or best), if any."""
        return self._managers[which].latest_checkpoint if which in self._managers else None

    def sample(self, step: int) -> str:
        """The sample shown at `step` while training (--sample_chars, --sample_prime,
        --sample_temperature), seeded by the run's seed and the step: a resumed run shows
        the same samples as an uninterrupted one, and the training RNG is not touched."""
        if step not in self._samples:
            c = self.config
            seed = (c.seed * 1_000_003 + step) % 2**63
            self._samples = {step: self.generate(self._sample_prime, c.sample_chars, c.sample_temperature,
                                                 seed=seed)}
        return self._samples[step]

    def generate(self, prime: str, num_chars: int = 500, temperature: float = 0.5, num_samples: int = 1,
                 seed: int | None = None, **options) -> str | list[str]:
        """Samples from the model as it is now; see `Sampler.generate` (and its options)."""
        if self._sampler is None:
            self._sampler = Sampler(self.model, self.vocab, self.config.device)
        return self._sampler.generate(prime, num_chars, temperature, num_samples, seed, **options)

    # -- fit --------------------------------------------------------------------------------

    def fit(self, callbacks: Sequence[Callback] = (), verbose: int | Literal["auto"] = "auto",
            handle_signals: bool = True) -> list[EpochStats]:
        """Trains until `epochs` (or `max_steps`) is reached; returns per-epoch statistics.

        `callbacks` (charrnn.Callback) are called after the run's own observers. `verbose`:
        0 silent, 1 a live progress line, 2 a line per `log_every` steps; "auto" is 1 on a
        terminal, else 2. Saves a checkpoint every `checkpoint_every` steps and at each epoch
        end, and returns at once (an empty list) if the run is already complete. A callback
        may set `stop_training`: the run then stops at the next chunk boundary with a
        checkpoint. With `handle_signals` (and in the main thread), SIGTERM or SIGINT does
        the same, then raises `Preempted`. A non-finite loss or gradient stops training
        with a CharRNNError; that step is not applied and no checkpoint is written for it,
        and no checkpoint is ever written with non-finite weights.

        Holds the run directory's lock (charrnn.lock) while it runs, and before writing
        anything removes what an interrupted write left and, if another trainer saved a
        checkpoint since this one was built, continues from that one. A storage fault (no
        space, quota, read-only) raises CharRNNError; the checkpoints already saved stay.
        """
        if verbose == "auto":
            verbose = 1 if sys.stdout.isatty() else 2
        if verbose not in (0, 1, 2):
            raise CharRNNError(f"verbose must be 0, 1, 2 or 'auto', got {verbose!r}")
        c = self.config
        if not self.is_chief:
            # Every worker of a multi-worker run takes part in each save, but only the chief's
            # files are the run's (and only the chief holds the lock); the others write to a
            # temporary directory, removed at the end (as TensorFlow's multi-worker guide says).
            write_dir = tempfile.mkdtemp(prefix="charrnn_worker_")
            try:
                return self._fit(write_dir, callbacks, verbose, handle_signals)
            finally:
                shutil.rmtree(write_dir, ignore_errors=True)
        try:
            tf.io.gfile.makedirs(c.run_dir)
        except checkpoint.STORAGE_ERRORS as e:
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
            return self._fit(c.run_dir, callbacks, verbose, handle_signals)
        finally:
            run_lock.release()

    def _fit(self, write_dir: str, callbacks: Sequence[Callback], verbose: int,
             handle_signals: bool) -> list[EpochStats]:
        c = self.config
        checkpoint.save_run_files(write_dir, c, self.vocab, self.origin)
        self._managers = {"latest": checkpoint.checkpoint_manager(self._checkpoint, write_dir, c.max_to_keep),
                          "best": checkpoint.checkpoint_manager(self._checkpoint, write_dir, 1, which="best")}
        files = [checkpoint.MetricsLog(write_dir, int(self.step.numpy())),
                 TensorBoard(os.path.join(write_dir, checkpoint.LOG_DIR))]
        observers: list[Callback] = list(files)
        if verbose:
            observers.append(ProgressLogger(verbose))
            if c.sample_every is not None:
                observers.append(SamplePrinter(live=verbose == 1))
        observers += callbacks
        stop = SignalStop(self.distribution.stop_signals()) if handle_signals else None
        if stop is not None:
            observers.append(stop)
            preempted = self.distribution.preemption_observer(self._managers["latest"],
                                                               lambda: self._exit_preempted(files))
            if preempted is not None:
                observers.append(preempted)
        controller = Controller(self, self.cadence, observers)
        try:
            history = controller.run()
        except Exception as e:
            if not self.distribution.lost_worker(e):
                raise
            # A worker died or became unreachable (the collective ops fail at once). Name the
            # chief's copy of the checkpoint: a non-chief's own copies are scratch.
            latest = self._managers["latest"].latest_checkpoint
            resume = os.path.join(c.run_dir, checkpoint.CKPT_DIR, os.path.basename(latest)) if latest else "the start"
            raise preemption.Preempted(
                f"lost a worker of the cluster at step {int(self.step.numpy())} ({describe(e)}); "
                f"a relaunch resumes from {resume}: run the same command again on every worker", resume) from None
        finally:
            self.train_seconds, self.eval_seconds = controller.train_seconds, controller.eval_seconds
        if stop is not None and stop.requested is not None:
            path = self.checkpoint_path()
            raise preemption.Preempted(f"stopped by {stop.requested} at step {int(self.step.numpy())}; checkpoint "
                                       f"saved to {path}; run the same command again to continue", path)
        return history

    def _exit_preempted(self, files: list[Callback]) -> None:
        """Called by TensorFlow's preemption handler once every worker has saved."""
        for observer in files:
            observer.on_train_end({})
        print(f"charrnn: stopped by the preemption of a worker at step {int(self.step.numpy())}; checkpoint saved to "
              f"{self.checkpoint_path()}; run the same command again on every worker to continue",
              file=sys.stderr, flush=True)
        sys.exit(preemption.EXIT_PREEMPTED)
