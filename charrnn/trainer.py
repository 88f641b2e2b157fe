"""`Trainer`: the training loop: compiled train step, validation, checkpoints, progress.

The outer loop (epochs, logging, evaluation, checkpointing) is plain Python; the step is
an `@tf.function` with a fixed input signature (GradientTape, sparse cross-entropy from
logits, Adam). Running the same configuration on the same run directory resumes from
the latest checkpoint: weights, Adam moments, step, epoch, dropout RNG and the position
within the epoch's data order, which is a pure function of the seed and the epoch.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from tensorflow.core.framework import summary_pb2

from charrnn import checkpoint
from charrnn.config import TrainConfig
from charrnn.data import Vocabulary, make_dataset, num_windows, read_text, resolve_corpus, split_ids
from charrnn.devices import resolve_device
from charrnn.errors import CharRNNError
from charrnn.model import CharRNN
from charrnn.sampler import Sampler


@dataclasses.dataclass(frozen=True)
class EpochStats:
    """What one epoch (or the part of it run in this process) achieved."""

    epoch: int
    step: int
    train_loss: float
    val_loss: float | None
    val_bpc: float | None
    steps_per_sec: float


def sequence_loss(targets: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Per-sequence mean sparse cross-entropy from logits, shape [batch]."""
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits), axis=-1)


class Trainer:
    """Trains a `CharRNN` as `config` describes, resuming from `config.run_dir` if it holds a run.

    Construction resolves and reads the corpus, checks the run directory, builds the model,
    optimizer and checkpoint (inside the current `tf.distribute` strategy's scope) and
    restores the latest checkpoint. Nothing is written until `fit()`.
    """

    def __init__(self, config: TrainConfig):
        self.config = config
        self.device = resolve_device(config.device)
        text = read_text(resolve_corpus(config.data))
        saved = checkpoint.load_run_files(config.run_dir)
        self.vocab = Vocabulary.from_text(text)
        if saved is not None:
            self._check_resumable(*saved)
        ids = self.vocab.encode(text)
        self._train_ids, self._val_ids = split_ids(ids, config.val_fraction)
        self._check_sizes(len(ids))
        self.steps_per_epoch = num_windows(len(self._train_ids), config.seq_length) // config.batch_size
        self.total_steps = config.epochs * self.steps_per_epoch
        if config.max_steps is not None:
            self.total_steps = min(self.total_steps, config.max_steps)

        self.strategy = tf.distribute.get_strategy()
        with self.strategy.scope(), tf.device(self.device):
            self.model = CharRNN(len(self.vocab), config.embedding_dim, config.rnn_units, config.num_layers,
                                 config.dropout, seed=config.seed)
            self.model.build_for_vocab()
            self.optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate)
            # Keras 3 creates Adam's moments lazily; build them now or a restore drops them.
            self.optimizer.build(self.model.trainable_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
            self.rng = tf.random.Generator.from_seed(config.seed)
            self._checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, step=self.step,
                                                   epoch=self.epoch, rng=self.rng)
        self.restored_from = checkpoint.latest_checkpoint(config.run_dir)
        if self.restored_from is not None:
            checkpoint.restore(self._checkpoint, self.restored_from)

        spec = tf.TensorSpec([None, None], tf.int32)
        # train_step(inputs, targets) -> loss: one compiled optimisation step on a batch.
        self.train_step = tf.function(self._train_step_fn, input_signature=[spec, spec])
        self._eval_step = tf.function(self._eval_step_fn, input_signature=[spec, spec])
        self._sampler: Sampler | None = None

    # -- checks ---------------------------------------------------------------------------

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

    def _train_step_fn(self, inputs: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
        with tf.device(self.device):
            return self._train_step_body(inputs, targets)

    def _train_step_body(self, inputs: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
        dropout_seed = self.rng.make_seeds(1)[:, 0]
        with tf.GradientTape() as tape:
            logits, _ = self.model(inputs, training=True, seed=dropout_seed)
            loss = tf.nn.compute_average_loss(sequence_loss(targets, logits), global_batch_size=self.config.batch_size)
        variables = self.model.trainable_variables
        grads = tape.gradient(loss, variables)
        if self.config.grad_clip is not None:
            grads, _ = tf.clip_by_global_norm(grads, self.config.grad_clip)
        self.optimizer.apply_gradients(zip(grads, variables))
        self.step.assign_add(1)
        return loss

    def _eval_step_fn(self, inputs: tf.Tensor, targets: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.device(self.device):
            logits, _ = self.model(inputs)
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits)
            return tf.reduce_sum(losses), tf.cast(tf.size(losses), tf.float32)

    # -- loop -------------------------------------------------------------------------------

    def train_dataset(self, epoch: int) -> tf.data.Dataset:
        """The batches of `epoch` in their order, which depends only on the seed and the epoch."""
        c = self.config
        # A different, reproducible order each epoch: the seed mixes run seed and epoch.
        return make_dataset(self._train_ids, c.seq_length, c.batch_size, shuffle_buffer=c.shuffle_buffer,
                            seed=c.seed * 1_000_003 + epoch)

    def evaluate(self) -> float | None:
        """Mean validation loss in nats per character, or None without a validation split."""
        if len(self._val_ids) == 0:
            return None
        c = self.config
        total, count = 0.0, 0.0
        for inputs, targets in make_dataset(self._val_ids, c.seq_length, c.batch_size, drop_remainder=False):
            batch_total, batch_count = self._eval_step(inputs, targets)
            total += float(batch_total)
            count += float(batch_count)
        return total / count

    def fit(self) -> list[EpochStats]:
        """Trains until `epochs` (or `max_steps`) is reached; returns per-epoch statistics.

        Saves a checkpoint every `checkpoint_every` steps and at each epoch end. Returns at
        once (an empty list) if the run is already complete.
        """
        c = self.config
        checkpoint.save_run_files(c.run_dir, c, self.vocab)
        manager = checkpoint.checkpoint_manager(self._checkpoint, c.run_dir, c.max_to_keep)
        writer = tf.summary.create_file_writer(os.path.join(c.run_dir, checkpoint.LOG_DIR))
        progress = _Progress(self.total_steps, c.log_every)
        history: list[EpochStats] = []
        step = int(self.step.numpy())
        if self.restored_from is not None:
            print(f"Resumed from {self.restored_from} at step {step}, epoch {int(self.epoch.numpy()) + 1}")
        while step < self.total_steps:
            epoch = int(self.epoch.numpy())
            offset = step - epoch * self.steps_per_epoch
            if not 0 <= offset < self.steps_per_epoch:
                raise CharRNNError(f"checkpoint step {step} and epoch {epoch} do not fit {self.steps_per_epoch} "
                                   "steps per epoch; the run directory belongs to other data, use a new --run_dir")
            epoch_end = min((epoch + 1) * self.steps_per_epoch, self.total_steps)
            dataset = self.train_dataset(epoch).skip(offset).take(epoch_end - step)
            losses = []
            start, start_step = time.perf_counter(), step
            for inputs, targets in dataset:
                losses.append(self.train_step(inputs, targets))
                step += 1
                if progress.due(step):
                    rate = (step - start_step) / (time.perf_counter() - start)
                    loss = float(losses[-1])
                    progress.show(epoch, c.epochs, step, loss, rate)
                    _write_scalars(writer, step, loss=loss, learning_rate=c.learning_rate, steps_per_sec=rate)
                if step % c.checkpoint_every == 0 and step < epoch_end:
                    manager.save(checkpoint_number=step)
            steps_per_sec = (step - start_step) / max(time.perf_counter() - start, 1e-9)
            if step == (epoch + 1) * self.steps_per_epoch:
                self.epoch.assign(epoch + 1)
            manager.save(checkpoint_number=step)
            val_loss = self.evaluate()
            stats = EpochStats(
                epoch=epoch + 1, step=step, train_loss=float(np.mean([float(x) for x in losses])),
                val_loss=val_loss, val_bpc=None if val_loss is None else val_loss / math.log(2),
                steps_per_sec=steps_per_sec,
            )
            history.append(stats)
            progress.end_epoch(stats, c.epochs)
            if val_loss is not None:
                _write_scalars(writer, step, val_loss=val_loss, val_bpc=stats.val_bpc)
        writer.flush()
        return history

    def generate(self, prime: str, num_chars: int = 500, temperature: float = 0.5, num_samples: int = 1,
                 seed: int | None = None) -> str | list[str]:
        """Samples from the model as it is now; see `Sampler.generate`."""
        if self._sampler is None:
            self._sampler = Sampler(self.model, self.vocab, self.config.device)
        return self._sampler.generate(prime, num_chars, temperature, num_samples, seed)


# TensorBoard's scalar plugin reads summaries tagged with this metadata. Writing them with
# tf.summary.write avoids a dependency on the tensorboard package just to log numbers.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
    data_class=summary_pb2.DATA_CLASS_SCALAR,
).SerializeToString()


def _write_scalars(writer: tf.summary.SummaryWriter, step: int, **values: float) -> None:
    with writer.as_default(step=step):
        for name, value in values.items():
            tf.summary.write(name, tf.constant(value, tf.float32), metadata=_SCALAR_METADATA)


class _Progress:
    """A live line on a terminal, a plain log line every `log_every` steps otherwise."""

    def __init__(self, total_steps: int, log_every: int):
        self.total_steps = total_steps
        self.log_every = log_every
        self.live = sys.stdout.isatty()
        self._last_draw = 0.0

    def due(self, step: int) -> bool:
        if self.live:
            return time.monotonic() - self._last_draw > 0.5 or step == self.total_steps
        return step % self.log_every == 0

    def show(self, epoch: int, epochs: int, step: int, loss: float, rate: float) -> None:
        eta = (self.total_steps - step) / rate if rate > 0 else float("inf")
        line = (f"epoch {epoch + 1}/{epochs} step {step}/{self.total_steps} loss {loss:.4f} "
                f"{rate:.2f} steps/s ETA {_hms(eta)}")
        if self.live:
            self._last_draw = time.monotonic()
            sys.stdout.write("\r" + line + "\033[K")
        else:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def end_epoch(self, stats: EpochStats, epochs: int) -> None:
        val = "" if stats.val_loss is None else f" val_loss {stats.val_loss:.4f} val_bpc {stats.val_bpc:.3f}"
        prefix = "\r" if self.live else ""
        print(f"{prefix}epoch {stats.epoch}/{epochs} step {stats.step} loss {stats.train_loss:.4f}{val} "
              f"{stats.steps_per_sec:.2f} steps/s" + ("\033[K" if self.live else ""), flush=True)


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
