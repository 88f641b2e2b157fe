"""The fused LSTM against Keras' LSTM (autodiff through its loop): same outputs, same gradients,
in float32 and, within bfloat16's precision, in a mixed bfloat16 run's dtypes."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from charrnn.nn import lstm
from charrnn.nn.lstm import fused_lstm


def _reference_and_inputs(batch=3, steps=7, features=5, units=6, seed=0):
    rng = np.random.default_rng(seed)
    layer = keras.layers.LSTM(units, return_sequences=True, return_state=True)
    layer.build((batch, steps, features))
    layer.cell.bias.assign(rng.normal(size=layer.cell.bias.shape).astype("float32"))  # not the 0/1 init only
    x = tf.constant(rng.normal(size=(batch, steps, features)), tf.float32)
    h0 = tf.constant(rng.normal(size=(batch, units)), tf.float32)
    c0 = tf.constant(rng.normal(size=(batch, units)), tf.float32)
    return layer, x, h0, c0


@pytest.mark.parametrize("variant", lstm.VARIANTS)
@pytest.mark.parametrize("use_final_state", [False, True])
@pytest.mark.parametrize("batch, steps", [(3, 7), (3, 50), (16, 53)])  # 16: two chains of 8 rows
def test_fused_lstm_matches_keras_outputs_and_gradients(use_final_state, batch, steps, variant, monkeypatch):
    monkeypatch.setattr(lstm, "_CHAINS", 2)  # whatever this machine's cores
    layer, x, h0, c0 = _reference_and_inputs(batch=batch, steps=steps)
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
        got = fused_lstm(x, h0, c0, *[tf.convert_to_tensor(w) for w in weights], variant=variant)
        got_loss = loss_of(*got)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    sources = [x, h0, c0, *weights]
    for g, w in zip(tape.gradient(got_loss, sources), tape.gradient(want_loss, sources)):
        # On the gradient's own scale: a sum over 53 steps of terms up to ~70 rounds in float32
        # by more than 1e-5 where its order changes (oneDNN's threads, under load), and a
        # small entry beside large ones shows it (1.6e-5 seen on a busy machine).
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=max(1e-5, 1e-6 * float(np.abs(w).max())))


@pytest.mark.parametrize("variant", lstm.VARIANTS)
def test_bfloat16_inputs_and_weights_give_keras_float32_results_within_bfloat16_precision(variant, monkeypatch):
    """A mixed bfloat16 run calls the layer with bfloat16 inputs, state and weights: outputs,
    state and gradients come back in bfloat16, as Keras' LSTM in float32 computes them from
    the same (rounded) values, to bfloat16's 8 bits."""
    monkeypatch.setattr(lstm, "_CHAINS", 2)
    layer, x, h0, c0 = _reference_and_inputs(batch=16, steps=30)
    cell = layer.cell
    for weight in (cell.kernel, cell.recurrent_kernel, cell.bias):  # values bfloat16 holds exactly
        weight.assign(tf.cast(tf.cast(weight, tf.bfloat16), tf.float32))
    x, h0, c0 = (tf.cast(tf.cast(v, tf.bfloat16), tf.float32) for v in (x, h0, c0))
    low = [tf.cast(v, tf.bfloat16) for v in (x, h0, c0, cell.kernel, cell.recurrent_kernel, cell.bias)]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, *low])
        want = layer(x, initial_state=[h0, c0])
        want_loss = tf.reduce_sum(tf.tanh(want[0])) + tf.reduce_sum(want[2])
        got = fused_lstm(*low, variant=variant)
        got_loss = tf.reduce_sum(tf.tanh(tf.cast(got[0], tf.float32))) + tf.reduce_sum(tf.cast(got[2], tf.float32))
    assert all(v.dtype == tf.bfloat16 for v in got)
    for a, b in zip(got, want):
        np.testing.assert_allclose(tf.cast(a, tf.float32), b, atol=0.02)
    got_grads = tape.gradient(got_loss, low[3:])
    want_grads = tape.gradient(want_loss, [cell.kernel, cell.recurrent_kernel, cell.bias])
    for g, w in zip(got_grads, want_grads):
        assert g.dtype == tf.bfloat16
        np.testing.assert_allclose(tf.cast(g, tf.float32), w, atol=0.03 * float(tf.reduce_max(tf.abs(w))))


@pytest.mark.parametrize("variant", lstm.VARIANTS)
def test_fused_lstm_compiles_with_unknown_batch_and_length(variant):
    layer, x, h0, c0 = _reference_and_inputs(batch=2, steps=4)
    cell = layer.cell
    spec = tf.TensorSpec([None, None, 5], tf.float32)
    state = tf.TensorSpec([None, 6], tf.float32)

    @tf.function(input_signature=[spec, state, state])
    def run(x, h, c):
        with tf.GradientTape() as tape:
            out, _, _ = fused_lstm(x, h, c, cell.kernel.value, cell.recurrent_kernel.value, cell.bias.value,
                                   variant=variant)
            loss = tf.reduce_sum(out)
        return out, tape.gradient(loss, cell.kernel.value)

    out, grad = run(x, h0, c0)
    assert out.shape == (2, 4, 6) and grad.shape == (5, 24)
    out, _ = run(x[:, :3], h0, c0)
    assert out.shape == (2, 3, 6)


def test_auto_picks_the_variant_measured_fastest_for_the_size_precision_and_cpu(monkeypatch):
    zen4, sapphire_rapids = frozenset({"avx512f", "avx512_bf16"}), frozenset({"avx512_bf16", "amx_bf16", "amx_tile"})
    for flags, units, dtype, want in [
            (zen4, 64, tf.bfloat16, "batch_major"), (zen4, 256, tf.bfloat16, "batch_major+xla"),
            (zen4, 1024, tf.float32, "batch_major+xla"), (frozenset(), 255, tf.float32, "batch_major"),
            (sapphire_rapids, 1024, tf.bfloat16, "unit_major+xla"),
            (sapphire_rapids, 256, tf.bfloat16, "unit_major+xla"),
            (sapphire_rapids, 1024, tf.float32, "batch_major+xla"),
            (sapphire_rapids, 128, tf.bfloat16, "batch_major")]:
        monkeypatch.setattr(lstm, "cpu_flags", lambda flags=flags: flags)
        assert lstm.variant_for(units, dtype) == want, (sorted(flags), units, dtype)

    # fused_lstm's auto runs the variant variant_for names.
    ran = []
    for name, real in list(lstm._LSTMS.items()):
        monkeypatch.setitem(lstm._LSTMS, name, lambda *args, name=name, real=real: ran.append(name) or real(*args))
    layer, x, h0, c0 = _reference_and_inputs(units=6)
    weights = [tf.convert_to_tensor(w) for w in (layer.cell.kernel, layer.cell.recurrent_kernel, layer.cell.bias)]
    fused_lstm(x, h0, c0, *weights)
    monkeypatch.setattr(lstm, "_LARGE", 4)  # a 6-unit layer counts as large
    fused_lstm(x, h0, c0, *weights)
    assert ran == ["batch_major", lstm.variant_for(6, tf.float32)] and ran[1].endswith("+xla")
