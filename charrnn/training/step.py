"""`TrainStep`: a run's optimisation step, compiled: GradientTape, sparse cross-entropy from
logits, the optimizer's update, under the run's `tf.distribute` strategy, and up to n steps
in one call (Orbit's steps_per_loop).

It updates the variables it is given, which the trainer owns and checkpoints: the model's
and the optimizer's, the step counter, the epoch's loss sum and, with carry_state, the
carried state. A step whose loss or gradients are not finite changes none of them.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from charrnn.nn.model import CharRNN, sequence_loss
from charrnn.text.data import restart_streams
from charrnn.training.distribute import Distribution


class TrainStep:
    """`one(inputs, targets)` -> (loss, applied, grad_norm): one step on a global batch;
    `loop(iterator, num_steps)` -> (losses, applied, grad_norm): up to `num_steps` steps,
    stopping at a step that was not applied. `grad_norm` is the gradients' global norm,
    unscaled, before clipping at `grad_clip`; `loss_scaling` for float16; dropout seeds come
    from `rng`; `carried_state` is empty without carry_state."""

    def __init__(self, model: CharRNN, optimizer: keras.optimizers.Optimizer, distribution: Distribution, *,
                 rng: tf.random.Generator, step: tf.Variable, epoch_loss_sum: tf.Variable,
                 carried_state: list[tf.Variable], batch_size: int, grad_clip: float | None, loss_scaling: bool,
                 jit_compile: bool):
        self.model, self.optimizer, self.distribution = model, optimizer, distribution
        self.rng, self.step, self.epoch_loss_sum, self.carried_state = rng, step, epoch_loss_sum, carried_state
        self.batch_size, self.grad_clip, self.loss_scaling = batch_size, grad_clip, loss_scaling
        spec = tf.TensorSpec([None, None], tf.int32)
        self.one = tf.function(self._one_fn, input_signature=[spec, spec])
        # Each replica's forward and backward pass; with jit_compile one XLA cluster.
        self._replica = tf.function(self._replica_fn, jit_compile=True) if jit_compile else self._replica_fn
        self.loop = tf.function(self._loop_fn)

    def carried(self) -> tuple:
        """The carried state as the model takes it: a tuple of each layer's state tensors."""
        return self.model.nest_state(self.carried_state)

    def _one_fn(self, inputs: tf.Tensor, targets: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        with self.distribution.placement():
            return self._step(inputs, targets)

    def _loop_fn(self, iterator: tf.data.Iterator, num_steps: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        losses = tf.TensorArray(tf.float32, size=num_steps)
        finite, norm = tf.constant(True), tf.constant(0.0)
        count = tf.constant(0)
        for i in tf.range(num_steps):
            inputs, targets = next(iterator)
            with self.distribution.placement():
                loss, finite, norm = self._step(inputs, targets)
            losses = losses.write(i, tf.cast(loss, tf.float32))
            count = i + 1
            if not finite:
                break
        return losses.stack()[:count], finite, tf.cast(norm, tf.float32)

    def _replica_fn(self, inputs: tf.Tensor, targets: tf.Tensor, seed: tf.Tensor,
                    state: tuple) -> tuple[tf.Tensor, list[tf.Tensor], tuple]:
        """One replica's share of a step: its loss (already divided by the global batch) and gradients."""
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        # This replica's rows of the global batch: their carried state, and their part of
        # the global batch's dropout masks.
        first = replica * tf.shape(inputs)[0]
        state = tf.nest.map_structure(lambda s: s[first:first + tf.shape(inputs)[0]], state)
        with tf.GradientTape() as tape:
            logits, final_state = self.model(inputs, state=state or None, training=True, seed=seed,
                                             rows=(first, tf.constant(self.batch_size)))
            loss = tf.nn.compute_average_loss(sequence_loss(targets, logits), global_batch_size=self.batch_size)
            scaled_loss = self.optimizer.scale_loss(loss) if self.loss_scaling else loss
        # Embedding gradients come as IndexedSlices; dense ones sum across replicas plainly,
        # and Adam then updates alike whatever the number of replicas (its sparse update
        # of IndexedSlices differs: the equivalence test fails without this).
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(scaled_loss, self.model.trainable_variables)]
        # In float32: gathering them across replicas has no 16-bit kernel on a CPU (the cast
        # there and back is exact).
        return loss, grads, tf.nest.map_structure(lambda s: tf.cast(s, tf.float32), final_state) if state else ()

    def _step(self, inputs: tf.Tensor, targets: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        strategy = self.distribution.strategy
        # Drawn once per step in cross-replica context, so the RNG advances the same way
        # whatever the number of replicas (a run may resume under another strategy).
        dropout_seed = self.rng.make_seeds(1)[:, 0]
        # Carried state enters as a constant (the tape does not watch non-trainable
        # variables): gradients stop at the batch boundary, as truncated BPTT wants.
        state = restart_streams(self.carried(), self.step) if self.carried_state else ()
        loss, grads, final_state = strategy.run(self._replica, args=(inputs, targets, dropout_seed, state))
        # The replicas' losses and gradients are shares of the global batch's: their sum
        # is the global mean, whatever the number of replicas.
        loss = strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
        grads = [strategy.reduce(tf.distribute.ReduceOp.SUM, g, axis=None) for g in grads]
        if self.carried_state:
            final_state = tf.nest.map_structure(lambda s: strategy.gather(s, axis=0), final_state)
        variables = self.model.trainable_variables
        scaling = self.loss_scaling
        # With loss scaling the gradients stay scaled: the loss-scale optimizer unscales them,
        # and skips (lowering the scale) a step whose gradients overflowed, which is routine
        # in float16 and no reason to stop.
        norm = tf.linalg.global_norm(grads)
        scale = self.optimizer.dynamic_scale if scaling else 1.0
        if self.grad_clip is not None:
            grads, _ = tf.clip_by_global_norm(grads, self.grad_clip * scale, use_norm=norm)
        finite = tf.math.is_finite(loss) & (scaling | tf.math.is_finite(norm))

        def apply() -> tf.Tensor:
            self.optimizer.apply_gradients(zip(grads, variables))
            self.step.assign_add(1)
            self.epoch_loss_sum.assign_add(tf.cast(loss, tf.float64))
            for variable, value in zip(self.carried_state, tf.nest.flatten(final_state)):
                variable.assign(tf.cast(value, variable.dtype))
            return tf.constant(True)

        # Checked inside the step so that NaN or Inf never reaches the weights (or a checkpoint).
        return loss, tf.cond(finite, apply, lambda: tf.constant(False)), norm / scale
