"""The optimizer of a run: Adam (AdamW with --weight_decay), loss scaling under float16, and
the learning-rate schedule (`LearningRate`)."""

from __future__ import annotations

import math

import keras
import tensorflow as tf


class LearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """`base` (--learning_rate) after `warmup_steps` of linear warm-up, shaped by `schedule`
    (--lr_schedule: constant, exponential by `decay` each epoch, or cosine to `total_steps`).

    A function of the optimizer's step alone, so a resumed run continues the same curve.
    """

    def __init__(self, *, base: float, steps_per_epoch: int, total_steps: int, schedule: str = "constant",
                 decay: float = 1.0, warmup_steps: int = 0):
        self.base, self.kind, self.decay = base, schedule, decay
        self.warmup, self.steps_per_epoch, self.total_steps = warmup_steps, steps_per_epoch, total_steps

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
        return {"base": self.base, "schedule": self.kind, "decay": self.decay, "warmup_steps": self.warmup,
                "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps}


def make_optimizer(schedule: LearningRate, variables: list[tf.Variable], *, weight_decay: float = 0.0,
                   loss_scaling: bool = False) -> keras.optimizers.Optimizer:
    """The run's optimizer for `variables`, built: Keras 3 creates Adam's moments lazily, and a
    checkpoint restored before they exist would drop them. `loss_scaling` for float16."""
    if weight_decay > 0:
        optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=weight_decay)
    else:
        optimizer = keras.optimizers.Adam(learning_rate=schedule)
    if loss_scaling:
        # float16 gradients underflow without loss scaling (bfloat16 has float32's range).
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(variables)
    return optimizer
