"""The evaluator against the loss computed another way: one long pass of the model over each
stream (or each window) and the cross-entropy in NumPy; and validation during training
against the same oracle on the text's last val_fraction."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from charrnn import CharRNN, Trainer, Vocabulary
from charrnn.text.data import Layout
from charrnn.training.evaluator import Evaluator
from conftest import shakespeare, tiny_config


def _cross_entropy(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target], in float64."""
    logits = logits.astype(np.float64)
    top = logits.max(-1, keepdims=True)
    log_z = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
    return log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]


def _long_pass_loss(model: CharRNN, ids: np.ndarray, seq_length: int, batch_size: int, carry_state: bool) -> float:
    """The documented meaning of the evaluator's loss, computed in one call of the model per
    layout. With carry_state: up to batch_size contiguous streams (min(batch_size, windows)),
    each read start to end in one call, every character after a stream's first predicted.
    Without: every whole window of seq_length + 1 from a zero state, its last seq_length
    characters predicted."""
    window = seq_length + 1
    if carry_state:
        streams = max(1, min(batch_size, len(ids) // window))
        rows = ids[: len(ids) // streams * streams].reshape(streams, -1)
    else:
        rows = ids[: len(ids) // window * window].reshape(-1, window)
    logits, _ = model(tf.constant(rows[:, :-1], tf.int32))
    return float(_cross_entropy(logits.numpy(), rows[:, 1:]).mean())


@pytest.fixture(scope="module")
def model() -> CharRNN:
    """A model with enough recurrent weight that what its state carries changes its predictions."""
    model = CharRNN(20, embedding_dim=8, rnn_units=16, seed=5)
    model.build_for_vocab()
    for weight in model.trainable_variables:
        weight.assign(weight * 3)
    return model


@pytest.mark.parametrize("carry_state", [True, False])
@pytest.mark.parametrize("length", [1000, 1013])  # streams and windows with a remainder, or without
def test_the_evaluator_equals_one_long_pass_of_the_model(model, carry_state, length):
    ids = np.random.default_rng(length).integers(0, 20, length)
    loss = Evaluator(model, Layout(seq_length=20, batch_size=4, carry_state=carry_state)).loss(ids)
    expected = _long_pass_loss(model, ids, 20, 4, carry_state)
    assert loss == pytest.approx(expected, rel=1e-5)
    # Teeth: the other layout (a state reset at every batch, or carried over the windows) is far off.
    other = _long_pass_loss(model, ids, 20, 4, not carry_state)
    assert abs(other - expected) > 100 * 1e-5 * expected


def test_validation_during_training_is_the_long_pass_over_the_texts_end(tmp_path):
    text = shakespeare(6_000)
    (tmp_path / "t.txt").write_text(text)
    for carry_state in (True, False):
        trainer = Trainer(tiny_config(tmp_path / "t.txt", tmp_path / f"run{carry_state}", carry_state=carry_state,
                                      val_fraction=0.2, max_steps=2))
        trainer.fit(verbose=0)
        vocab = Vocabulary.from_text(text)
        val = vocab.encode(text[int(len(text) * 0.8):])  # the last val_fraction of the characters
        expected = _long_pass_loss(trainer.model, val, 20, 4, carry_state)
        assert trainer.evaluate() == pytest.approx(expected, rel=1e-5)
        assert trainer.best_val_loss == pytest.approx(expected, rel=1e-5)  # the run's one evaluation, at its end
