"""The model: case-study size, explicit state, one-step path, loss."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from charrnn import CharRNN
from charrnn.nn.model import sequence_loss, token_losses


def test_case_study_model_has_5326398_parameters_for_62_characters():
    model = CharRNN(62)
    model.build_for_vocab()
    assert model.count_params() == 5_326_398
    table = model.summary_table(64)
    assert "(64, None, 1024)" in table and "5,246,976" in table and "5,326,398" in table


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_state_is_explicit_and_continues_a_sequence(cell):
    model = CharRNN(11, embedding_dim=4, rnn_units=8, num_layers=2, cell=cell)
    ids = tf.constant(np.random.default_rng(0).integers(0, 11, size=(3, 12)), tf.int32)
    logits, state = model(ids)
    assert logits.shape == (3, 12, 11)
    assert len(state) == 2 and all(len(s) == model.state_size and s[0].shape == (3, 8) for s in state)
    # Two halves with the state handed over equal one call on the whole sequence.
    first, mid_state = model(ids[:, :5])
    second, end_state = model(ids[:, 5:], state=mid_state)
    np.testing.assert_allclose(tf.concat([first, second], 1), logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(end_state[1][-1], state[1][-1], rtol=1e-5, atol=1e-6)
    zeros = model.initial_state(3)
    np.testing.assert_allclose(model(ids, state=zeros)[0], logits, rtol=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_step_matches_a_one_character_call(cell):
    model = CharRNN(11, embedding_dim=4, rnn_units=8, num_layers=2, cell=cell)
    ids = tf.constant([[1, 2, 3], [4, 5, 6]], tf.int32)
    _, state = model(ids)
    nxt = tf.constant([7, 8], tf.int32)
    full_logits, full_state = model(nxt[:, None], state=state)
    step_logits, step_state = model.step(nxt, state)
    np.testing.assert_allclose(step_logits, full_logits[:, 0], rtol=1e-5, atol=1e-6)
    for a, b in zip(tf.nest.flatten(step_state), tf.nest.flatten(full_state)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_gru_model_has_gru_layers_and_a_one_tensor_state():
    model = CharRNN(11, embedding_dim=4, rnn_units=8, num_layers=2, cell="gru")
    model.build_for_vocab()
    assert [type(layer).__name__ for layer in model.rnns] == ["GRU", "GRU"]
    assert "gru_1 (GRU)" in model.summary_table()
    assert model.state_size == 1 and len(model.initial_state(2)[0]) == 1
    # reset_after GRU: 3 * 8 * (4 + 8 + 2) parameters in the first layer.
    assert model.rnns[0].count_params() == 3 * 8 * (4 + 8 + 2)


def test_dropout_is_reproducible_from_its_seed_and_off_at_inference():
    model = CharRNN(11, embedding_dim=4, rnn_units=8, dropout=0.5, seed=7)
    plain = CharRNN(11, embedding_dim=4, rnn_units=8, dropout=0.0, seed=7)  # the same weights, no dropout
    ids = tf.constant([[1, 2, 3, 4]], tf.int32)
    seed = tf.constant([3, 4], tf.int64)
    a, _ = model(ids, training=True, seed=seed)
    b, _ = model(ids, training=True, seed=seed)
    c, _ = model(ids, training=True, seed=tf.constant([5, 6], tf.int64))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    np.testing.assert_array_equal(model(ids)[0], plain(ids)[0])  # off at inference
    assert not np.allclose(a, plain(ids)[0])  # on in training


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.75])
def test_dropout_zeroes_a_fraction_rate_and_keeps_the_expectation(rate):
    """Inverted dropout by its definition: each value kept with probability 1 - rate and then
    divided by 1 - rate, so the mean over many masks is the input's. 409,600 draws: the
    kept fraction's standard deviation is below 0.001."""
    model = CharRNN(11, embedding_dim=4, rnn_units=8, dropout=rate, seed=7)
    x = tf.ones([256, 50, 32])
    out = model._dropout(x, True, tf.constant([1, 2], tf.int64), 0, None).numpy()  # noqa: SLF001 - the maths itself
    kept = out != 0
    assert abs(kept.mean() - (1 - rate)) < 0.005
    np.testing.assert_allclose(out[kept], 1 / (1 - rate), rtol=1e-6)
    assert abs(out.mean() - 1.0) < 0.01


def test_loss_equals_keras_sparse_categorical_crossentropy():
    rng = np.random.default_rng(1)
    logits = tf.constant(rng.normal(size=(4, 7, 13)), tf.float32)
    targets = tf.constant(rng.integers(0, 13, size=(4, 7)), tf.int32)
    keras_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(targets, logits)
    np.testing.assert_allclose(tf.reduce_mean(sequence_loss(targets, logits)), keras_loss, rtol=1e-6)


def test_token_losses_and_their_gradient_against_numpy_with_extreme_logits():
    """-log softmax(logits)[target], and its gradient softmax - one_hot(target), computed in
    NumPy in float64, also where logits are large enough to overflow a naive exp."""
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(3, 5, 11)) * np.array([1.0, 30.0, 400.0])[:, None, None]
    targets = rng.integers(0, 11, size=(3, 5))
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    want = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    want_grad = np.exp(log_probs) - np.eye(11)[targets]
    logits_t = tf.constant(logits, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(logits_t)
        got = token_losses(tf.constant(targets, tf.int32), logits_t)
        total = tf.reduce_sum(got)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(tape.gradient(total, logits_t), want_grad, atol=1e-5)


def test_a_device_is_named_short_full_or_as_a_strategy_names_it():
    from charrnn import CharRNNError
    from charrnn.nn.devices import resolve_device

    cpu = resolve_device("/CPU:0")
    for name in ("cpu:0", "/device:CPU:0", "/job:localhost/replica:0/task:0/device:CPU:0"):
        assert resolve_device(name) == cpu
    with pytest.raises(CharRNNError, match="is not a device of this machine"):
        resolve_device("/job:worker/replica:0/task:1/device:CPU:0")
