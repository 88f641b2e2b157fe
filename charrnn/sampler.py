"""`Sampler`: text generation as one compiled call.

The prime runs through the model once to build the recurrent state; then a `tf.range`
loop inside a `tf.function` samples each next character from logits / temperature with
stateless ops and feeds it back, the state carried as loop variables. `num_samples`
sequences are generated in parallel as one batch, and a seed reproduces the output exactly.
"""

from __future__ import annotations

import functools
import secrets
from typing import Iterator

import numpy as np
import tensorflow as tf

from charrnn import checkpoint
from charrnn.data import Vocabulary
from charrnn.devices import resolve_device
from charrnn.errors import CharRNNError
from charrnn.model import CharRNN

MAX_NUM_CHARS = 1_000_000
MAX_NUM_SAMPLES = 4096
# Below MIN_TEMPERATURE, logits / temperature overflow float32 (use greedy instead); above
# MAX_TEMPERATURE every character is equally likely anyway.
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-6, 1e6
SEED_RANGE = (-(2**63), 2**63 - 1)  # int64


def _check_options(prime: str, num_chars: int, temperature: float, num_samples: int, top_k: int, top_p: float,
                   stop_at: str | None, seed: int | None) -> None:
    if not prime:
        raise CharRNNError("the prime is empty; pass at least one character to start from")
    if not MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE:
        raise CharRNNError(f"temperature must be between {MIN_TEMPERATURE:g} and {MAX_TEMPERATURE:g}, got {temperature} "
                           "(for the most likely character every time, use greedy)")
    if seed is not None and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise CharRNNError(f"seed must be a 64-bit integer, between {SEED_RANGE[0]} and {SEED_RANGE[1]}, got {seed}")
    if not 0 <= num_chars <= MAX_NUM_CHARS:
        raise CharRNNError(f"num_chars must be between 0 and {MAX_NUM_CHARS:,}, got {num_chars}")
    if not 1 <= num_samples <= MAX_NUM_SAMPLES:
        raise CharRNNError(f"num_samples must be between 1 and {MAX_NUM_SAMPLES}, got {num_samples}")
    if top_k < 0:
        raise CharRNNError(f"top_k must be >= 0 (0 keeps every character), got {top_k}")
    if not 0 < top_p <= 1:
        raise CharRNNError(f"top_p must be in (0, 1] (1 keeps every character), got {top_p}")
    if stop_at == "":
        raise CharRNNError("stop_at is empty; pass the text that should end a sample, or leave it unset")


class Sampler:
    """Generates text from a `CharRNN` and its vocabulary."""

    def __init__(self, model: CharRNN, vocab: Vocabulary, device: str = "auto"):
        if model.vocab_size != len(vocab):
            raise CharRNNError(f"the model has {model.vocab_size} output classes but the vocabulary {len(vocab)} characters")
        self.model = model
        self.vocab = vocab
        self.device = resolve_device(device)
        # One compiled loop per combination of (filtering, stopping): the per-step ops of an
        # option that is off are then absent, not skipped at run time.
        self._compiled: dict[tuple[bool, bool], tf.types.experimental.GenericFunction] = {}
        self._streaming: dict[bool, tuple] = {}

    def _generate_ids(self, *args: tf.Tensor, filtering: bool, stopping: bool) -> tf.Tensor:
        key = (filtering, stopping)
        if key not in self._compiled:
            self._compiled[key] = tf.function(
                functools.partial(self._generate_ids_fn, filtering=filtering, stopping=stopping),
                input_signature=[
                    tf.TensorSpec([None, None], tf.int32),  # prime ids, one row per sample
                    tf.TensorSpec([], tf.int32),  # number of characters to generate (>= 1)
                    tf.TensorSpec([], tf.float32),  # temperature
                    tf.TensorSpec([2], tf.int64),  # stateless seed
                    tf.TensorSpec([], tf.int32),  # top_k (0: all)
                    tf.TensorSpec([], tf.float32),  # top_p (1: all)
                    tf.TensorSpec([], tf.bool),  # greedy
                    tf.TensorSpec([None], tf.int32),  # stop_at ids
                ])
        return self._compiled[key](*args)

    @classmethod
    def from_checkpoint(cls, run_dir: str, device: str = "auto", which: str | None = None) -> Sampler:
        """Loads the model of `run_dir`; only the run directory is needed.

        `which` is `best` (lowest validation loss), `latest`, or None: best when the run has one.
        """
        model, _, vocab, _ = checkpoint.load_model(run_dir, which, resolve_device(device))
        return cls(model, vocab, device)

    def generate(self, prime: str, num_chars: int = 500, temperature: float = 0.5, num_samples: int = 1,
                 seed: int | None = None, *, top_k: int = 0, top_p: float = 1.0, greedy: bool = False,
                 stop_at: str | None = None) -> str | list[str]:
        """Returns `prime` followed by up to `num_chars` sampled characters (a list if num_samples > 1).

        Each next character is drawn from softmax(logits / temperature), restricted to the
        `top_k` most likely characters (0: all) and to the smallest set whose probability
        reaches `top_p` (1: all); `greedy` takes the most likely one instead. A sample ends
        just before the first occurrence of `stop_at` in its generated text, and generation
        stops once every sample has reached it. The same `seed` and arguments give the same
        text; without one a random seed is drawn.
        """
        _check_options(prime, num_chars, temperature, num_samples, top_k, top_p, stop_at, seed)
        stop_ids = self.vocab.encode(stop_at) if stop_at else np.zeros([0], np.int32)
        prime_ids = self.vocab.encode(prime)
        if num_chars == 0:
            texts = [prime] * num_samples
        else:
            if seed is None:
                seed = secrets.randbits(63)
            batch = tf.tile(tf.constant(prime_ids[None, :]), [num_samples, 1])
            ids = self._generate_ids(batch, tf.constant(num_chars, tf.int32), tf.constant(temperature, tf.float32),
                                     tf.constant([seed, 0], tf.int64), tf.constant(top_k, tf.int32),
                                     tf.constant(top_p, tf.float32), tf.constant(greedy), tf.constant(stop_ids),
                                     filtering=top_k > 0 or top_p < 1, stopping=bool(stop_at))
            texts = [self.vocab.decode(row) for row in ids.numpy().T]  # time-major: a column per sample
            if stop_at:
                texts = [text.split(stop_at, 1)[0] for text in texts]
            texts = [prime + text for text in texts]
        return texts if num_samples > 1 else texts[0]

    def stream(self, prime: str, num_chars: int = 500, temperature: float = 0.5, seed: int | None = None, *,
               top_k: int = 0, top_p: float = 1.0, greedy: bool = False, stop_at: str | None = None,
               chunk: int = 32) -> Iterator[str]:
        """Yields the text that `generate(prime, ...)` returns after the prime, piece by piece
        as it is produced: compiled chunks of `chunk` steps, the state carried between them.
        The same seed and options give exactly `generate`'s text (one sample)."""
        _check_options(prime, num_chars, temperature, 1, top_k, top_p, stop_at, seed)
        if chunk < 1:
            raise CharRNNError(f"chunk must be at least 1, got {chunk}")
        if num_chars == 0:
            return
        filtering = top_k > 0 or top_p < 1
        if filtering not in self._streaming:
            self._streaming[filtering] = self._compile_stream(filtering)
        first_fn, continue_fn = self._streaming[filtering]
        options = (tf.constant(temperature, tf.float32), tf.constant([secrets.randbits(63) if seed is None else seed, 0],
                   tf.int64), tf.constant(top_k, tf.int32), tf.constant(top_p, tf.float32), tf.constant(greedy))
        ids, state = first_fn(tf.constant(self.vocab.encode(prime)[None, :]), *options)
        text, emitted, produced = self.vocab.decode(ids.numpy()), 0, 1
        # Held back: the end of the text that could be the start of stop_at.
        hold = len(stop_at) - 1 if stop_at else 0
        while True:
            if stop_at and stop_at in text:
                yield text[emitted:text.index(stop_at)]
                return
            if produced == num_chars:
                yield text[emitted:]
                return
            if len(text) - hold > emitted:
                yield text[emitted:len(text) - hold]
                emitted = len(text) - hold
            count = min(chunk, num_chars - produced)
            chunk_ids, ids, state = continue_fn(ids, state, tf.constant(produced), tf.constant(count), *options)
            text += self.vocab.decode(chunk_ids.numpy()[:, 0])
            produced += count

    def _compile_stream(self, filtering: bool) -> tuple:
        """The two compiled halves of `stream`: the prime and first character, then chunks."""
        option_specs = [tf.TensorSpec([], tf.float32), tf.TensorSpec([2], tf.int64), tf.TensorSpec([], tf.int32),
                        tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.bool)]
        layer = tuple(tf.TensorSpec([None, self.model.rnn_units], self.model.state_dtype)
                      for _ in range(self.model.state_size))

        def first(prime_ids, temperature, seed, top_k, top_p, greedy):
            with tf.device(self.device):
                logits, state = self.model(prime_ids)
                return _draw(logits[:, -1, :], 0, temperature, seed, top_k, top_p, greedy, filtering), state

        def continue_(ids, state, start, count, temperature, seed, top_k, top_p, greedy):
            with tf.device(self.device):
                out = tf.TensorArray(tf.int32, size=count)
                for i in tf.range(count):
                    logits, state = self.model.step(ids, state)
                    ids = _draw(logits, start + i, temperature, seed, top_k, top_p, greedy, filtering)
                    out = out.write(i, ids)
                return out.stack(), ids, state  # time-major, as sample_ids

        return (tf.function(first, input_signature=[tf.TensorSpec([None, None], tf.int32), *option_specs]),
                tf.function(continue_, input_signature=[tf.TensorSpec([None], tf.int32),
                                                        (layer,) * self.model.num_layers, tf.TensorSpec([], tf.int32),
                                                        tf.TensorSpec([], tf.int32), *option_specs]))

    def _generate_ids_fn(self, prime_ids: tf.Tensor, num_chars: tf.Tensor, temperature: tf.Tensor, seed: tf.Tensor,
                         top_k: tf.Tensor, top_p: tf.Tensor, greedy: tf.Tensor, stop_ids: tf.Tensor, *,
                         filtering: bool, stopping: bool) -> tf.Tensor:
        with tf.device(self.device):
            return self.sample_ids(prime_ids, num_chars, temperature, seed, top_k, top_p, greedy, stop_ids,
                                   filtering=filtering, stopping=stopping)

    def sample_ids(self, prime_ids: tf.Tensor, num_chars: tf.Tensor, temperature: tf.Tensor, seed: tf.Tensor,
                   top_k: tf.Tensor | int = 0, top_p: tf.Tensor | float = 1.0, greedy: tf.Tensor | bool = False,
                   stop_ids: tf.Tensor | None = None, *, filtering: bool = False, stopping: bool = False) -> tf.Tensor:
        """The sampling loop itself, for callers that compile it into their own function (the
        SavedModel export): ids [num_chars, batch] (time-major) generated after `prime_ids`
        [batch, length] (>= 1 id each). `generate` runs exactly this, so the same seed gives
        the same ids. Time-major because an integer Transpose inside the compiled loop goes
        to oneDNN, which logs an error for int32 and falls back; callers transpose outside."""
        if stop_ids is None:
            stop_ids = tf.zeros([0], tf.int32)
        logits, state = self.model(prime_ids)
        batch = tf.shape(prime_ids)[0]
        stop_len = tf.shape(stop_ids)[0]

        def sample(step_logits: tf.Tensor, i: tf.Tensor) -> tf.Tensor:
            return _draw(step_logits, i, temperature, seed, top_k, top_p, greedy, filtering)

        # The last len(stop_at) ids of each sample, to notice when it has produced stop_at.
        recent = tf.fill([batch, stop_len], -1)
        done = tf.zeros([batch], tf.bool)

        def advance(next_ids: tf.Tensor, recent: tf.Tensor, done: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            if not stopping:
                return recent, done
            recent = tf.concat([recent, next_ids[:, None]], 1)[:, 1:]
            return recent, done | tf.reduce_all(tf.equal(recent, stop_ids), axis=1)

        next_ids = sample(logits[:, -1, :], 0)
        recent, done = advance(next_ids, recent, done)
        # Grows as it is written, so that stopping early leaves no unwritten rows.
        out = tf.TensorArray(tf.int32, size=0, dynamic_size=True).write(0, next_ids)
        for i in tf.range(1, num_chars):
            if stopping and tf.reduce_all(done):
                break
            step_logits, state = self.model.step(next_ids, state)
            next_ids = sample(step_logits, i)
            recent, done = advance(next_ids, recent, done)
            out = out.write(i, next_ids)
        return out.stack()


def _draw(logits: tf.Tensor, i: tf.Tensor, temperature: tf.Tensor, seed: tf.Tensor, top_k: tf.Tensor,
          top_p: tf.Tensor, greedy: tf.Tensor, filtering: bool) -> tf.Tensor:
    """The ids drawn from `logits` [batch, vocab] as the `i`-th generated characters."""
    logits = logits / temperature
    if filtering:
        logits = filter_logits(logits, top_k, top_p)
    drawn = tf.random.stateless_categorical(logits, 1, seed=tf.random.experimental.stateless_fold_in(seed, i))[:, 0]
    return tf.cast(tf.where(greedy, tf.argmax(logits, -1), drawn), tf.int32)


def filter_logits(logits: tf.Tensor, top_k: tf.Tensor, top_p: tf.Tensor) -> tf.Tensor:
    """Sets to -inf the logits outside the `top_k` largest (0: none dropped) and outside the
    smallest set of largest ones whose softmax probability sums to at least `top_p`."""
    vocab = tf.shape(logits)[-1]
    k = tf.where(top_k > 0, tf.minimum(top_k, vocab), vocab)
    sorted_logits = tf.sort(logits, direction="DESCENDING", axis=-1)
    # Nucleus: keep a character while the probability of the more likely ones is below p;
    # the most likely one is always kept.
    before = tf.math.cumsum(tf.nn.softmax(sorted_logits), axis=-1, exclusive=True)
    keep = tf.minimum(k, tf.reduce_sum(tf.cast(before < top_p, tf.int32), axis=-1, keepdims=True))
    threshold = tf.gather(sorted_logits, tf.maximum(keep, 1) - 1, batch_dims=1)
    return tf.where(logits < threshold, tf.constant(-float("inf"), logits.dtype), logits)
