"""The compiled sampler: the distribution it draws from (against NumPy), greedy text against one
long pass of the model, reproducibility, shapes, prime handling, argument checks."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tensorflow as tf

from charrnn import MAX_NUM_CHARS, CharRNN, CharRNNError, Sampler, Trainer, Vocabulary, export
from charrnn.generation.sampler import filter_logits
from charrnn.sampling import SampleOptions
from conftest import (
    CONSTANT_CHARS,
    CONSTANT_LOGITS,
    constant_logits_model,
    draws_deviation,
    run_cli,
    sampling_probs,
    tiny_config,
)


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
    (dict(temperature=0.0), "temperature must be between 1e-06 and"),
    (dict(temperature=-1.0), "temperature must be between 1e-06 and"),
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
    assert trainer.generate("The ", 80, temperature=0.8, seed=3) == restored.generate("The ", 80, temperature=0.8,
                                                                                      seed=3)


def test_from_checkpoint_errors(tmp_path):
    with pytest.raises(CharRNNError, match="does not exist"):
        Sampler.from_checkpoint(str(tmp_path / "nope"))
    with pytest.raises(CharRNNError, match="holds no checkpoint"):
        Sampler.from_checkpoint(str(tmp_path))


def test_top_k_1_equals_greedy(sampler):
    greedy = sampler.generate("ab", num_chars=60, temperature=1.0, greedy=True, seed=1)
    assert sampler.generate("ab", num_chars=60, temperature=1.0, top_k=1, seed=2) == greedy
    assert greedy == sampler.generate("ab", num_chars=60, temperature=3.0, greedy=True, seed=9)  # no randomness


def test_filter_logits_top_p_keeps_the_smallest_set_reaching_p():
    probs = np.array([[0.5, 0.05, 0.3, 0.15]], np.float32)  # sorted: 0.5, 0.3, 0.15, 0.05
    logits = tf.constant(np.log(probs))
    def kept(p: float, k: int = 0) -> list[bool]:
        return np.isfinite(filter_logits(logits, tf.constant(k), tf.constant(p)).numpy()[0]).tolist()

    assert kept(0.5) == [True, False, False, False]  # 0.5 alone reaches 0.5
    assert kept(0.51) == [True, False, True, False]  # needs 0.5 + 0.3
    assert kept(0.8) == [True, False, True, False]
    assert kept(0.81) == [True, False, True, True]
    assert kept(1.0) == [True, True, True, True]
    assert kept(1.0, k=2) == [True, False, True, False]
    assert kept(0.9, k=1) == [True, False, False, False]


LOGITS = CONSTANT_LOGITS


@pytest.fixture(scope="module")
def constant_sampler() -> Sampler:
    vocab = Vocabulary(list(CONSTANT_CHARS))
    return Sampler(constant_logits_model(LOGITS, vocab), vocab, device="/CPU:0")


# (options, the nearest wrong options: what a sampler that ignores or mistakes one would draw from)
DISTRIBUTIONS = [
    (dict(temperature=0.5), [dict(temperature=1.0)]),
    (dict(temperature=2.0), [dict(temperature=1.0)]),
    (dict(temperature=1.5, top_k=4), [dict(temperature=1.5), dict(temperature=1.5, top_k=3),
                                      dict(temperature=1.5, top_k=5), dict(temperature=1.0, top_k=4)]),
    (dict(temperature=1.0, top_p=0.7), [dict(temperature=1.0), dict(temperature=1.0, top_p=0.6),
                                        dict(temperature=1.0, top_p=0.85), dict(temperature=0.5, top_p=0.7)]),
    (dict(temperature=2.0, top_k=5, top_p=0.6), [dict(temperature=2.0, top_k=5), dict(temperature=2.0, top_p=0.4)]),
    (dict(temperature=0.7, greedy=True), [dict(temperature=0.7)]),
]


@pytest.mark.parametrize("options, wrong", DISTRIBUTIONS, ids=[str(o) for o, _ in DISTRIBUTIONS])
def test_characters_are_drawn_from_the_distribution_the_options_define(constant_sampler, options, wrong):
    """4,000 draws (8 samples of 500 characters, each an independent draw: the logits never
    change) against the distribution computed in NumPy; see draws_deviation for the bound."""
    texts = constant_sampler.generate("a", num_chars=500, num_samples=8, seed=1234, **options)
    ids = constant_sampler.vocab.encode("".join(text[1:] for text in texts))
    assert len(ids) == 4000
    assert draws_deviation(ids, sampling_probs(LOGITS, **options)) <= 5
    for other in wrong:  # the test would catch a sampler that drew from these
        assert draws_deviation(ids, sampling_probs(LOGITS, **other)) > 5, other
    streamed = "".join(constant_sampler.stream("a", 500, seed=99, **options))
    assert draws_deviation(constant_sampler.vocab.encode(streamed), sampling_probs(LOGITS, **options)) <= 5


def test_greedy_text_follows_one_long_pass_of_the_model(sampler):
    """Each greedy character is the argmax of the model's logits after the text before it, as
    one call over the whole text computes them (no state carried by hand)."""
    model = CharRNN(len(sampler.vocab), embedding_dim=8, rnn_units=16, seed=3)
    model.build_for_vocab()
    for weight in model.trainable_variables:  # larger weights: a state that matters, a varied text
        weight.assign(weight * 4)
    text = Sampler(model, sampler.vocab, device="/CPU:0").generate("ROMEO:", num_chars=120, greedy=True)
    ids = sampler.vocab.encode(text)
    logits, _ = model(tf.constant(ids[None, :-1]))
    np.testing.assert_array_equal(ids[6:], np.argmax(logits.numpy()[0], -1)[5:])
    assert len(set(text[6:])) > 1  # a text, not one character repeated


@pytest.mark.parametrize("top_k, top_p", [(3, 1.0), (0, 0.5), (3, 0.9)])
def test_filtered_sampling_is_reproducible(sampler, top_k, top_p):
    options = dict(num_chars=80, temperature=1.5, top_k=top_k, top_p=top_p, num_samples=4)
    samples = sampler.generate("ab", seed=11, **options)
    assert samples == sampler.generate("ab", seed=11, **options)
    assert samples != sampler.generate("ab", seed=12, **options)


def test_stop_at_ends_each_sample_before_the_stop_text(sampler):
    full = sampler.generate("a", num_chars=300, temperature=1.0, num_samples=3, seed=4)
    stopped = sampler.generate("a", num_chars=300, temperature=1.0, num_samples=3, seed=4, stop_at="e")
    for whole, cut in zip(full, stopped):
        assert cut == "a" + whole[1:].split("e", 1)[0]
    with pytest.raises(CharRNNError, match="not in the model's vocabulary"):
        sampler.generate("a", num_chars=5, stop_at="z")
    with pytest.raises(CharRNNError, match="top_p must be in"):
        sampler.generate("a", num_chars=5, top_p=0)
    with pytest.raises(CharRNNError, match="top_k must be between 0 and 2147483647"):
        sampler.generate("a", num_chars=5, top_k=-1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_chars="10"), "num_chars must be an integer, got '10'"),
    (dict(num_chars=10.0), "num_chars must be an integer, got 10.0"),
    (dict(num_chars=True), "num_chars must be an integer, got True"),
    (dict(num_samples=2.0), "num_samples must be an integer, got 2.0"),
    (dict(seed="1"), "seed must be an integer or None, got '1'"),
    (dict(temperature="0.5"), "temperature must be a number, got '0.5'"),
    (dict(top_k=2.5), "top_k must be an integer, got 2.5"),
    (dict(top_p="0.9"), "top_p must be a number, got '0.9'"),
    (dict(greedy=1), "greedy must be True or False, got 1"),
    (dict(stop_at=5), "stop_at must be a string or None, got 5"),
    (dict(prime=b"ab"), "the prime must be a string (str), got bytes; decode bytes first: prime.decode('utf-8')"),
    (dict(prime="a\udcff"), "1 character(s) not in the model's vocabulary: '\\udcff'"),
])
def test_arguments_of_the_wrong_type_are_one_error(sampler, kwargs, message):
    kwargs = {"prime": "ab", **kwargs}
    with pytest.raises(CharRNNError, match=re.escape(message)):
        sampler.generate(**kwargs)
    if "num_samples" not in kwargs:  # stream makes one sample
        with pytest.raises(CharRNNError, match=re.escape(message)):
            next(sampler.stream(**kwargs))


def _graph_dtypes(function) -> set[tf.DType]:
    """Every dtype an op of `function`'s graph (its nested functions included) computes in."""
    graph = function.get_concrete_function().graph.as_graph_def()
    nodes = [*graph.node, *(node for f in graph.library.function for node in f.node_def)]
    return {tf.as_dtype(attr.type) for node in nodes for key, attr in node.attr.items()
            if key in ("T", "dtype", "DstT", "SrcT") and attr.type}


def test_a_bfloat16_model_is_sampled_in_float32_with_its_current_weights(sampler):
    """Generation computes in float32 whatever the model trained in (GENERATION_PRECISION):
    no bfloat16 op in the compiled loop, and the greedy text of a mixed_bfloat16 model is
    the argmax of one long float32 pass of its weights, also after its weights change."""
    vocab = sampler.vocab
    bf16 = CharRNN(len(vocab), embedding_dim=8, rnn_units=16, seed=3, precision="mixed_bfloat16")
    bf16.build_for_vocab()
    bf16_sampler = Sampler(bf16, vocab, device="/CPU:0")
    assert bf16_sampler.model.state_dtype == "float32"
    for seed in (3, 4):  # the second: the model trained on (its weights changed) since the first
        weights = CharRNN(len(vocab), embedding_dim=8, rnn_units=16, seed=seed)
        weights.build_for_vocab()
        bf16.set_weights([w * 4 for w in weights.get_weights()])
        text = bf16_sampler.generate("ROMEO:", num_chars=120, greedy=True)
        float32 = bf16.float32_copy()
        ids = vocab.encode(text)
        logits, _ = float32(tf.constant(ids[None, :-1]))
        np.testing.assert_array_equal(ids[6:], np.argmax(logits.numpy()[0], -1)[5:])
    for function in bf16_sampler._functions(SampleOptions()):  # noqa: SLF001 - the compiled (first, chunk) pair
        dtypes = _graph_dtypes(function)
        assert tf.float32 in dtypes and tf.bfloat16 not in dtypes


def test_a_bfloat16_run_samples_and_exports_in_float32(small_text, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(tiny_config(small_text, run, max_steps=3, mixed_precision="mixed_bfloat16"))
    trainer.fit(verbose=0)
    restored = Sampler.from_checkpoint(str(run), device="/CPU:0")
    assert restored.model.state_dtype == "float32" and trainer.model.state_dtype == "bfloat16"
    assert trainer.generate("The ", 80, temperature=0.8, seed=3) == restored.generate("The ", 80, temperature=0.8,
                                                                                      seed=3)
    export(str(run), str(tmp_path / "export"))
    _, inputs = tf.saved_model.load(str(tmp_path / "export")).signatures["step"].structured_input_signature
    assert inputs["state"].dtype == tf.float32


def test_a_prime_costs_the_output_layer_of_its_last_character_only():
    """The prime's pass runs the recurrent layers over every character and the output layer
    over the last one: a prime of 8,000 characters on a 70,001-character vocabulary would
    otherwise hold 2.2 GB of logits at once. Seen where the output layer is called."""
    vocab = Vocabulary.from_text("abcdefgh ROMEO:\n")
    model = CharRNN(len(vocab), embedding_dim=8, rnn_units=16, seed=0)
    model.build_for_vocab()
    shapes, real = [], model.dense.call
    model.dense.call = lambda x, *args, **kwargs: shapes.append(tuple(x.shape)) or real(x, *args, **kwargs)
    text = Sampler(model, vocab, device="/CPU:0").generate("ROMEO: " * 300, num_chars=5, seed=1)
    assert len(text) == 2100 + 5
    sequences = [shape for shape in shapes if len(shape) == 3]  # the prime's pass; steps are [batch, units]
    assert sequences and all(shape[1] == 1 for shape in sequences), shapes


def test_sample_from_a_chosen_checkpoint_with_a_prime_read_from_a_file(small_text, tmp_path):
    """--which=N or a checkpoint's path picks that checkpoint (not the newest, not the best);
    --prime_file starts from a file's text as it is; the tool prints what a Sampler of that
    checkpoint generates."""
    from charrnn.run.trained import load_model

    run = tmp_path / "run"
    Trainer(tiny_config(small_text, run, max_steps=4, checkpoint_every=2, learning_rate=0.05)).fit(verbose=0)
    chosen, by_path = load_model(str(run), "2"), load_model(str(run), str(run / "ckpt" / "ckpt-2.index"))
    latest = load_model(str(run), "latest")
    assert chosen.path == by_path.path == f"{run}/ckpt/ckpt-2" and latest.path == f"{run}/ckpt/ckpt-4"
    for a, b in zip(chosen.model.weights, by_path.model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert any(not np.array_equal(a.numpy(), b.numpy()) for a, b in zip(chosen.model.weights, latest.model.weights))
    with pytest.raises(CharRNNError, match=r"keeps no checkpoint of step 3; it keeps steps 2, 4$"):
        load_model(str(run), "3")

    prime = "The quick\nbrown "
    (tmp_path / "prime.txt").write_text(prime)
    proc = run_cli("sample", f"--run_dir={run}", "--which=2", f"--prime_file={tmp_path / 'prime.txt'}",
                   "--num_chars=40", "--seed=5", "--temperature=0.7")
    assert proc.returncode == 0, proc.stderr
    expected = Sampler.from_checkpoint(str(run), which="2").generate(prime, num_chars=40, seed=5, temperature=0.7)
    assert proc.stdout == expected + "\n" and expected.startswith(prime)


@pytest.mark.parametrize("seed", [0, 7, -3, 2**63 - 1])
def test_each_character_is_drawn_with_the_seed_of_its_index(constant_sampler, seed):
    """The documented derivation, computed here one draw at a time outside the sampler: the
    i-th character after the prime (0: the one the prime's pass draws) is
    stateless_categorical(logits / temperature, seed=stateless_fold_in([seed, 0], i)), the
    same seed for every sample of a batch (their rows differ in the draw)."""
    logits = tf.constant([LOGITS] * 3, tf.float32) / 0.8
    want = np.stack([tf.random.stateless_categorical(
        logits, 1, seed=tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int64), i))[:, 0].numpy()
        for i in range(60)], 1)
    texts = constant_sampler.generate("ab", num_chars=60, temperature=0.8, num_samples=3, seed=seed)
    got = np.stack([constant_sampler.vocab.encode(text[2:]) for text in texts])
    np.testing.assert_array_equal(got, want)
    alone = constant_sampler.generate("ab", num_chars=60, temperature=0.8, seed=seed)
    np.testing.assert_array_equal(constant_sampler.vocab.encode(alone[2:]), want[0])
    for chunk in (1, 7, 59, 60):
        assert "".join(constant_sampler.stream("ab", 60, temperature=0.8, seed=seed, chunk=chunk)) == alone[2:]


def test_a_stream_holds_back_a_possible_start_of_stop_at_at_every_split(constant_sampler):
    """A multi-character stop_at, split at every place by the chunks: nothing of it is ever
    yielded (a stream cannot take back what it yielded, so the pieces must join to the text
    before it), and what could have begun it but did not is yielded in the end."""
    full = constant_sampler.generate("a", num_chars=200, temperature=1.5, seed=5)[1:]
    # Three characters first met late, whose first two come earlier without the third: a
    # false start the stream must hold back, then yield.
    stop_at = next(full[i:i + 3] for i in range(100, 190)
                   if full.index(full[i:i + 3]) > 60 and full.find(full[i:i + 2]) < full.index(full[i:i + 3]))
    want = full.split(stop_at, 1)[0]
    assert constant_sampler.generate("a", num_chars=200, temperature=1.5, seed=5, stop_at=stop_at) == "a" + want
    for chunk in range(1, len(want) + 4):
        pieces = constant_sampler.stream("a", 200, temperature=1.5, seed=5, stop_at=stop_at, chunk=chunk)
        assert "".join(pieces) == want, chunk


def test_the_primes_characters_are_checked_also_when_nothing_is_generated(sampler):
    for call in (lambda: sampler.generate("az€", num_chars=0), lambda: list(sampler.stream("az€", 0))):
        with pytest.raises(CharRNNError, match=r"2 character\(s\) not in the model's vocabulary: 'z', '€'"):
            call()
    assert sampler.generate("ab", num_chars=0) == "ab"
