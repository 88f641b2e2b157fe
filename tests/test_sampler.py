"""The compiled sampler: reproducibility, shapes, prime handling, argument checks."""

from __future__ import annotations

import pytest

from charrnn import MAX_NUM_CHARS, CharRNN, CharRNNError, Sampler, Trainer, Vocabulary
from conftest import tiny_config


@pytest.fixture(scope="module")
def sampler() -> Sampler:
    vocab = Vocabulary.from_text("abcdefgh ROMEO:\n")
    model = CharRNN(len(vocab), embedding_dim=8, rnn_units=16, seed=0)
    model.build_for_vocab()
    return Sampler(model, vocab, device="/CPU:0")


def test_same_seed_same_text_other_seed_other_text(sampler):
    a = sampler.generate("ROMEO: ", num_chars=200, temperature=1.0, seed=7)
    assert a == sampler.generate("ROMEO: ", num_chars=200, temperature=1.0, seed=7)
    assert a != sampler.generate("ROMEO: ", num_chars=200, temperature=1.0, seed=8)


def test_length_shape_and_prime(sampler):
    text = sampler.generate("ab", num_chars=37, seed=1)
    assert isinstance(text, str) and len(text) == 2 + 37 and text.startswith("ab")
    texts = sampler.generate("ROMEO:", num_chars=50, temperature=1.0, num_samples=5, seed=1)
    assert isinstance(texts, list) and len(texts) == 5
    assert all(len(t) == 6 + 50 and t.startswith("ROMEO:") for t in texts)
    assert len(set(texts)) > 1  # samples in a batch are independent draws
    assert sampler.generate("abc", num_chars=0) == "abc"


def test_parallel_samples_are_reproducible(sampler):
    assert (sampler.generate("a", num_chars=30, num_samples=3, seed=5)
            == sampler.generate("a", num_chars=30, num_samples=3, seed=5))


def test_out_of_vocabulary_prime_lists_the_characters(sampler):
    with pytest.raises(CharRNNError, match=r"2 character\(s\) not in the model's vocabulary: 'x', 'z'"):
        sampler.generate("axbz", num_chars=5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=0.0), "temperature must be > 0"),
    (dict(temperature=-1.0), "temperature must be > 0"),
    (dict(num_chars=-1), "num_chars must be between 0 and"),
    (dict(num_chars=MAX_NUM_CHARS + 1), "num_chars must be between 0 and"),
    (dict(num_samples=0), "num_samples must be between 1 and"),
])
def test_bad_arguments(sampler, kwargs, message):
    with pytest.raises(CharRNNError, match=message):
        sampler.generate("ab", **kwargs)
    with pytest.raises(CharRNNError, match="the prime is empty"):
        sampler.generate("")


def test_trainer_generate_equals_sampler_from_checkpoint(small_text, tmp_path):
    trainer = Trainer(tiny_config(small_text, tmp_path / "run", max_steps=3))
    trainer.fit()
    restored = Sampler.from_checkpoint(str(tmp_path / "run"), device="/CPU:0")
    assert trainer.generate("The ", 80, temperature=0.8, seed=3) == restored.generate("The ", 80, temperature=0.8, seed=3)


def test_from_checkpoint_errors(tmp_path):
    with pytest.raises(CharRNNError, match="does not exist"):
        Sampler.from_checkpoint(str(tmp_path / "nope"))
    with pytest.raises(CharRNNError, match="holds no checkpoint"):
        Sampler.from_checkpoint(str(tmp_path))
