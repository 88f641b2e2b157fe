"""--carry_state: contiguous streams, the state handed from step to step, and what it buys."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from charrnn import Trainer
from charrnn.nn.model import sequence_loss
from conftest import tiny_config


def test_each_step_starts_from_the_state_the_previous_one_ended_with(small_text, tmp_path):
    config = tiny_config(small_text, tmp_path / "run", carry_state=True, max_steps=3)
    trainer = Trainer(config)
    assert trainer.steps_per_epoch == (len(trainer.data.train_ids) // 4 - 1) // 20
    assert all(not v.numpy().any() for v in trainer.carried_state)  # an epoch starts from zeros
    for i, (inputs, targets) in enumerate(trainer.data.dataset(0).take(3)):
        # What the step must do, computed with the weights and carried state before it.
        logits, end_state = trainer.model(inputs, state=trainer._steps.carried())
        expected_loss = tf.reduce_mean(sequence_loss(targets, logits))
        loss, finite, _ = trainer.train_step(inputs, targets)
        assert bool(finite)
        np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
        if i > 0:  # from a zero state the loss would be another one
            assert not np.isclose(float(loss), float(tf.reduce_mean(sequence_loss(targets, trainer.model(inputs)[0]))))
        for variable, value in zip(trainer.carried_state, tf.nest.flatten(end_state)):
            np.testing.assert_allclose(variable.numpy(), value.numpy(), rtol=1e-5, atol=1e-6)


def test_each_stream_starts_over_from_zeros_once_every_carry_restart_steps(small_text, tmp_path, monkeypatch):
    """Stream j starts step s from a zero state when (s + j) % CARRY_RESTART_EVERY == 0 (3
    here): the loss and the state carried on are those of the model run from that state."""
    import charrnn.text.data

    monkeypatch.setattr(charrnn.text.data, "CARRY_RESTART_EVERY", 3)
    trainer = Trainer(tiny_config(small_text, tmp_path / "run", carry_state=True, max_steps=6))
    for step, (inputs, targets) in enumerate(trainer.data.dataset(0).take(6)):
        keep = np.array([(step + j) % 3 != 0 for j in range(4)], np.float32)[:, None]
        state = tf.nest.map_structure(lambda v: v * keep, trainer._steps.carried())
        if step > 0:
            assert all(v.numpy()[~keep[:, 0].astype(bool)].any() for v in trainer.carried_state)  # zeroed here
        logits, end_state = trainer.model(inputs, state=state)
        loss, finite, _ = trainer.train_step(inputs, targets)
        assert bool(finite)
        np.testing.assert_allclose(loss, tf.reduce_mean(sequence_loss(targets, logits)), rtol=1e-5)
        for variable, value in zip(trainer.carried_state, tf.nest.flatten(end_state)):
            np.testing.assert_allclose(variable.numpy(), value.numpy(), rtol=1e-5, atol=1e-6)


def test_the_carried_state_is_checkpointed_and_reset_each_epoch(small_text, tmp_path):
    config = tiny_config(small_text, tmp_path / "run", carry_state=True, cell="gru", num_layers=2, epochs=2,
                         max_steps=5, steps_per_loop=10)
    first = Trainer(config)
    first.fit()
    saved = [v.numpy() for v in first.carried_state]
    assert len(saved) == 2 and all(v.any() for v in saved)  # a GRU layer carries one tensor
    resumed = Trainer(config.replace(max_steps=first.steps_per_epoch))
    for before, after in zip(saved, resumed.carried_state):
        np.testing.assert_array_equal(before, after.numpy())
    resumed.fit()  # to the end of epoch 1

    # The first step of epoch 2 starts from zeros, not from where epoch 1 ended.
    last = Trainer(config.replace(max_steps=first.steps_per_epoch + 1))
    assert all(v.numpy().any() for v in last.carried_state)
    _, end_state = last.model(next(iter(last.data.dataset(1)))[0])
    last.fit()
    assert int(last.epoch.numpy()) == 1
    for variable, value in zip(last.carried_state, tf.nest.flatten(end_state)):
        np.testing.assert_allclose(variable.numpy(), value.numpy(), rtol=1e-5, atol=1e-6)


def _keyed_text(rng: np.random.Generator, units: int) -> tuple[str, np.ndarray]:
    """Units of 20 characters: a random key, a copy of it 4 characters later and another 16
    characters after the key (12 after the first copy), "=" announcing each copy:
    "B..=B..........=B---"."""
    keys = rng.choice(list("ABCD"), units)
    return "".join(k + "." * 2 + "=" + k + "." * 10 + "=" + k + "-" * 3 for k in keys), keys


@pytest.mark.parametrize("carry_state", [True, False])
def test_carrying_state_learns_a_dependency_longer_than_seq_length(tmp_path, carry_state):
    # The second copy depends on the key 16 characters back and on its first copy 12 back,
    # both beyond seq_length=10: no shuffled window holds the second copy and an earlier
    # occurrence of its key, and with carry_state no gradient spans them either.
    # The state carried over the window boundary is what can remember the key: the first
    # copy (inside a window) teaches the model to store it, carrying makes it last.
    path = tmp_path / "keys.txt"
    path.write_text(_keyed_text(np.random.default_rng(0), 6400)[0])
    config = tiny_config(path, tmp_path / "run", embedding_dim=8, rnn_units=64, batch_size=16, seq_length=10,
                         epochs=4, learning_rate=0.003, val_fraction=0, carry_state=carry_state, steps_per_loop=20)
    trainer = Trainer(config)
    trainer.fit()

    # Predicted as each mode reads text (and is validated): one carried stream, or windows
    # of seq_length + 1 each from a zero state (the first character of a window unpredicted).
    text, keys = _keyed_text(np.random.default_rng(1), 200)
    ids = trainer.vocab.encode(text)
    predicted = np.full(len(ids), -1)
    if carry_state:
        predicted[1:] = tf.argmax(trainer.model(tf.constant(ids[None, :-1]))[0][0], -1).numpy()
    else:
        windows = ids[: len(ids) // 11 * 11].reshape(-1, 11)
        logits = trainer.model(tf.constant(windows[:, :-1]))[0]
        predicted[: windows.size].reshape(-1, 11)[:, 1:] = tf.argmax(logits, -1).numpy()
    far_copies = np.arange(200) * 20 + 16
    accuracy = np.mean(predicted[far_copies] == trainer.vocab.encode("".join(keys)))
    print(f"carry_state={carry_state}: far-copy accuracy {accuracy:.3f}")
    if carry_state:
        assert accuracy > 0.9
    else:
        assert accuracy < 0.45  # chance is 0.25
