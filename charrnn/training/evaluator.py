"""`Evaluator`: a model's loss on a text, in nats per character.

Holds the compiled evaluation step and the loop over the text that both validation during
training and `charrnn-eval` use, so the two measure exactly the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from charrnn.errors import CharRNNError
from charrnn.nn.model import CharRNN, token_losses
from charrnn.text.data import Layout
from charrnn.training.stopping import Stopped


def bits_per_char(nats: float) -> float:
    """A loss in nats per character, in bits per character."""
    return nats / math.log(2)


class Evaluator:
    """Mean cross-entropy of `model`'s next-character predictions over a text read as `layout`
    reads it for evaluation: every window from a zero state, or with carry_state every
    stream from start to end, the state carried from one batch to the next."""

    def __init__(self, model: CharRNN, layout: Layout, device: str = "/CPU:0"):
        self.model, self.layout, self.device = model, layout, device
        ids = tf.TensorSpec([None, None], tf.int32)
        self._step = tf.function(self._step_fn, input_signature=[ids, ids, model.state_spec()])

    def _step_fn(self, inputs: tf.Tensor, targets: tf.Tensor, state: tuple) -> tuple[tf.Tensor, tf.Tensor, tuple]:
        with tf.device(self.device):
            logits, state = self.model(inputs, state=state)
            losses = token_losses(targets, logits)
            return tf.reduce_sum(tf.cast(losses, tf.float64)), tf.size(losses), state

    def metrics(self, ids: np.ndarray, should_stop: Callable[[], bool] = lambda: False) -> dict[str, float]:
        """What a validation during training reports: each key `k` reaches the callbacks'
        logs as `val_<k>`, metrics.jsonl and TensorBoard's validation run as written. A new
        validation metric is a new key here (and its computation in this class), nothing else."""
        loss = self.loss(ids, should_stop)
        return {"loss": loss, "bpc": bits_per_char(loss)}

    def loss(self, ids: np.ndarray, should_stop: Callable[[], bool] = lambda: False,
             progress: Callable[[int], None] | None = None) -> float:
        """Mean loss per predicted character of `ids`, in nats.

        `should_stop` is polled between batches; when it returns True, raises `Stopped`.
        `progress` is told the characters predicted so far after each batch.
        """
        window = self.layout.seq_length + 1
        if len(ids) < window:
            raise CharRNNError(f"text too short to evaluate: {len(ids)} characters, one window of "
                               f"seq_length+1 needs {window}")
        total, count, state = 0.0, 0, None
        for inputs, targets in self.layout.evaluation(ids):
            if should_stop():
                raise Stopped
            if state is None or not self.layout.carry_state:
                state = self.model.initial_state(inputs.shape[0])
            batch_total, batch_count, state = self._step(tf.cast(inputs, tf.int32), tf.cast(targets, tf.int32), state)
            total += float(batch_total)
            count += int(batch_count)
            if progress is not None:
                progress(count)
        return total / count
