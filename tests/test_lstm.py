"""The fused LSTM against Keras' LSTM: same outputs, same gradients."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from charrnn.lstm import fused_lstm


def _reference_and_inputs(batch=3, steps=7, features=5, units=6, seed=0):
    rng = np.random.default_rng(seed)
    layer = keras.layers.LSTM(units, return_sequences=True, return_state=True)
    layer.build((batch, steps, features))
    layer.cell.bias.assign(rng.normal(size=layer.cell.bias.shape).astype("float32"))  # not the 0/1 init only
    x = tf.constant(rng.normal(size=(batch, steps, features)), tf.float32)
    h0 = tf.constant(rng.normal(size=(batch, units)), tf.float32)
    c0 = tf.constant(rng.normal(size=(batch, units)), tf.float32)
    return layer, x, h0, c0


@pytest.mark.parametrize("use_final_state", [False, True])
@pytest.mark.parametrize("steps", [7, 50, 53])  # one partial, two full, and uneven weight-gradient chunks
def test_fused_lstm_matches_keras_outputs_and_gradients(use_final_state, steps):
    layer, x, h0, c0 = _reference_and_inputs(steps=steps)
    cell = layer.cell
    weights = [cell.kernel, cell.recurrent_kernel, cell.bias]
    rng = np.random.default_rng(1)
    w_out = tf.constant(rng.normal(size=(6,)), tf.float32)

    def loss_of(out, h, c):
        loss = tf.reduce_sum(tf.tanh(out) * w_out)  # a non-trivial upstream gradient
        return loss + (tf.reduce_sum(h * h) + tf.reduce_sum(c) if use_final_state else 0.0)

    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, h0, c0])
        want = layer(x, initial_state=[h0, c0])
        want_loss = loss_of(*want)
        got = fused_lstm(x, h0, c0, *[tf.convert_to_tensor(w) for w in weights])
        got_loss = loss_of(*got)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    sources = [x, h0, c0, *weights]
    for g, w in zip(tape.gradient(got_loss, sources), tape.gradient(want_loss, sources)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_fused_lstm_compiles_with_unknown_batch_and_length():
    layer, x, h0, c0 = _reference_and_inputs(batch=2, steps=4)
    cell = layer.cell
    spec = tf.TensorSpec([None, None, 5], tf.float32)
    state = tf.TensorSpec([None, 6], tf.float32)

    @tf.function(input_signature=[spec, state, state])
    def run(x, h, c):
        with tf.GradientTape() as tape:
            out, _, _ = fused_lstm(x, h, c, cell.kernel.value, cell.recurrent_kernel.value, cell.bias.value)
            loss = tf.reduce_sum(out)
        return out, tape.gradient(loss, cell.kernel.value)

    out, grad = run(x, h0, c0)
    assert out.shape == (2, 4, 6) and grad.shape == (5, 24)
    out, _ = run(x[:, :3], h0, c0)
    assert out.shape == (2, 3, 6)
