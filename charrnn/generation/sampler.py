"""`Sampler`: text generation in compiled calls. What may be asked of it (the options and
their ranges) is charrnn.sampling's `SampleOptions`; how it draws is `_draw` below, with the
options as one structure of tensors (`Draw`).

The prime runs through the model once to build the recurrent state and draw the first
character; then a `tf.while_loop` compiled in a `tf.function` samples each next character from
logits / temperature with stateless ops and feeds it back, the state carried as loop
variables. `num_samples` sequences are generated in parallel as one batch, and a seed
reproduces the output exactly.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from charrnn.errors import CharRNNError
from charrnn.nn.devices import resolve_device
from charrnn.nn.model import CharRNN
from charrnn.run.trained import load_model
from charrnn.sampling import TENSOR_OPTIONS, SampleOptions, check_request
from charrnn.text.data import mix_seed
from charrnn.text.vocab import Vocabulary

# The precision every generation computes in, whatever the run trained in (the weights are
# float32 under every policy, so nothing is lost). One character at a time, each step is a
# matrix-vector product bound by memory and latency, which float32 runs fastest on every CPU
# measured (AVX2; AVX-512 with bfloat16; AMX): a mixed bfloat16 policy casts every weight
# again at every character, 3x slower at 1024 units (benchmarks/RESULTS.md, issue 29).
GENERATION_PRECISION = "float32"


# SampleOptions (and a seed) as the compiled loop takes them: one argument, a dict of the
# options charrnn.sampling declares with a dtype, and "seed" (int64 [2]: the seed, and 0).
# The SavedModel export builds one from its signature's inputs.
Draw = dict[str, tf.Tensor]


def draw_of(options: SampleOptions, seed: int) -> Draw:
    return {"seed": tf.constant([seed, 0], tf.int64),
            **{name: tf.constant(getattr(options, name), dtype) for name, dtype in TENSOR_OPTIONS.items()}}


def draw_spec() -> dict[str, tf.TensorSpec]:
    return {"seed": tf.TensorSpec([2], tf.int64), **{name: tf.TensorSpec([], dtype) for name, dtype in
                                                      TENSOR_OPTIONS.items()}}


class Sampler:
    """Generates text from a `CharRNN` and its vocabulary.

    Generation is two compiled functions, shared by `generate`, `stream` and the SavedModel
    export (which traces the same bodies, see `sample_ids`): the prime's pass, which draws
    the first character, and a chunk loop that continues from a state.

    A `model` that computes in another precision than GENERATION_PRECISION (a mixed
    bfloat16 or float16 run) is sampled through a float32 copy of it (`self.model`), whose
    weights are refreshed from `model` at each call: a model that trains on still samples
    its current weights.
    """

    def __init__(self, model: CharRNN, vocab: Vocabulary, device: str = "auto"):
        if model.vocab_size != len(vocab):
            raise CharRNNError(f"the model has {model.vocab_size} output classes but the vocabulary "
                               f"{len(vocab)} characters")
        self._source = model
        self.device = resolve_device(device)
        with tf.device(self.device):
            self.model = model if model.state_dtype == GENERATION_PRECISION else model.float32_copy()
        self.vocab = vocab
        # One compiled pair per combination of (filtering, stopping): the per-step ops of an
        # option that is off are then absent, not skipped at run time.
        self._compiled: dict[tuple[bool, bool], tuple] = {}

    @classmethod
    def from_checkpoint(cls, run_dir: str, device: str = "auto", which: str | None = None) -> Sampler:
        """Loads the model of `run_dir`; only the run directory is needed.

        `which` is `best` (lowest validation loss), `latest`, or None: best when the run has one.
        """
        model, _, vocab, _ = load_model(run_dir, which, resolve_device(device), precision=GENERATION_PRECISION)
        return cls(model, vocab, device)

    def generate(self, prime: str, num_chars: int = 500, temperature: float = 0.5, num_samples: int = 1,
                 seed: int | None = None, **options: Any) -> str | list[str]:
        """Returns `prime` followed by up to `num_chars` sampled characters (a list if num_samples > 1).

        `options` are the other fields of `SampleOptions` (top_k, top_p, greedy, stop_at, ...),
        by name; generation stops once every sample has reached `stop_at`. The same `seed`
        and arguments give the same text; without one a random seed is drawn.
        """
        asked = SampleOptions.of(temperature=temperature, **options)
        check_request(prime, num_chars, num_samples, seed)
        if num_chars == 0:
            self.vocab.encode(prime)  # its characters checked (_begin does it otherwise)
            texts = [prime] * num_samples
        else:
            ids, more = self._begin(prime, num_samples, asked, seed)
            columns = np.concatenate([ids[None, :], more(1, num_chars - 1)])  # time-major: a column per sample
            texts = [self.vocab.decode(row) for row in columns.T]
            if asked.stop_at:
                texts = [text.split(asked.stop_at, 1)[0] for text in texts]
            texts = [prime + text for text in texts]
        return texts if num_samples > 1 else texts[0]

    def stream(self, prime: str, num_chars: int = 500, temperature: float = 0.5, seed: int | None = None, *,
               chunk: int = 32, **options: Any) -> Iterator[str]:
        """Yields the text that `generate(prime, ...)` returns after the prime, piece by piece
        as it is produced: compiled chunks of `chunk` steps, the state carried between them.
        The same seed and options give exactly `generate`'s text (one sample)."""
        asked = SampleOptions.of(temperature=temperature, **options)
        check_request(prime, num_chars, 1, seed)
        if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
            raise CharRNNError(f"chunk must be an integer of at least 1, got {chunk!r}")
        if num_chars == 0:
            self.vocab.encode(prime)  # its characters checked (_begin does it otherwise)
            return
        ids, more = self._begin(prime, 1, asked, seed)
        text, emitted, produced = self.vocab.decode(ids), 0, 1
        # Held back: the end of the text that could be the start of stop_at.
        stop_at = asked.stop_at
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
            text += self.vocab.decode(more(produced, count)[:, 0])
            produced += count

    def _begin(self, prime: str, rows: int, options: SampleOptions,
               seed: int | None) -> tuple[np.ndarray, Callable[[int, int], np.ndarray]]:
        """What generate() and stream() share: runs `prime` through the model for `rows`
        samples; returns the first sampled id of each, and `more(produced, count)`, which
        samples the next `count` ids of each (time-major), the state carried from call to call."""
        self._refresh()
        first, chunk = self._functions(options)
        draw = draw_of(options, secrets.randbits(63) if seed is None else seed)
        stop_ids = tf.constant(self.vocab.encode(options.stop_at) if options.stop_at else np.zeros([0], np.int32))
        ids, *carried = first(tf.tile(tf.constant(self.vocab.encode(prime)[None, :]), [rows, 1]), stop_ids, draw)
        carried = [ids, *carried]  # the last ids, the state, the recent ids, which samples are done

        def more(produced: int, count: int) -> np.ndarray:
            new_ids, *carried[:] = chunk(*carried, tf.constant(produced), tf.constant(count), stop_ids, draw)
            return new_ids.numpy()

        return ids.numpy(), more

    def _refresh(self) -> None:
        """Copies the weights of the model sampled into its float32 copy, if it has one."""
        if self.model is not self._source:
            self.model.copy_weights(self._source)

    def _functions(self, options: SampleOptions) -> tuple:
        """The compiled (first, chunk) pair for `options`' filtering and stopping."""
        key = (options.filtering, options.stop_at is not None)
        if key not in self._compiled:
            filtering, stopping = key
            ids, stop_ids = tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32)
            carried = [ids, self.model.state_spec(), tf.TensorSpec([None, None], tf.int32),
                       tf.TensorSpec([None], tf.bool)]

            def first(prime_ids, stop_ids, draw):
                with tf.device(self.device):
                    return self._first(prime_ids, stop_ids, draw, filtering=filtering, stopping=stopping)

            def chunk(*args):
                with tf.device(self.device):
                    return self._chunk(*args, filtering=filtering, stopping=stopping)

            self._compiled[key] = (
                tf.function(first, input_signature=[tf.TensorSpec([None, None], tf.int32), stop_ids, draw_spec()],
                            autograph=False),
                tf.function(chunk, input_signature=[*carried, tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int32),
                                                    stop_ids, draw_spec()], autograph=False))
        return self._compiled[key]

    def _first(self, prime_ids: tf.Tensor, stop_ids: tf.Tensor, draw: Draw, *, filtering: bool,
               stopping: bool) -> tuple:
        """The prime's pass: the first ids drawn [batch], the state after them, and the
        stop_at bookkeeping (the last len(stop_at) ids of each sample; whether it ended)."""
        logits, state = self.model(prime_ids, last_only=True)
        ids = _draw(logits[:, -1, :], 0, draw, filtering)
        batch = tf.shape(prime_ids)[0]
        recent = tf.fill([batch, tf.shape(stop_ids)[0]], -1)
        recent, done = _advance(ids, recent, tf.zeros([batch], tf.bool), stop_ids, stopping)
        return ids, state, recent, done

    def _chunk(self, ids: tf.Tensor, state: tuple, recent: tf.Tensor, done: tf.Tensor, start: tf.Tensor,
               count: tf.Tensor, stop_ids: tf.Tensor, draw: Draw, *, filtering: bool, stopping: bool) -> tuple:
        """The sampling loop: `count` more characters after `ids`, the `start`-th onwards (the
        index seeds each draw). Returns them time-major [count, batch] (fewer once every
        sample has produced stop_at) and the carried (ids, state, recent, done). Time-major
        because an integer Transpose inside the compiled loop goes to oneDNN, which logs an
        error for int32 and falls back; callers transpose outside."""
        def more(i: tf.Tensor, ids: tf.Tensor, state: tuple, recent: tf.Tensor, done: tf.Tensor,
                 out: tf.TensorArray) -> tf.Tensor:
            return i < count if not stopping else (i < count) & ~tf.reduce_all(done)

        def step(i: tf.Tensor, ids: tf.Tensor, state: tuple, recent: tf.Tensor, done: tf.Tensor,
                 out: tf.TensorArray) -> tuple:
            logits, state = self.model.step(ids, state)
            ids = _draw(logits, start + i, draw, filtering)
            recent, done = _advance(ids, recent, done, stop_ids, stopping)
            return i + 1, ids, state, recent, done, out.write(i, ids)

        # An explicit loop, compiled without AutoGraph: converting this code (and Keras') to a
        # graph cost the first sample 0.7 s. The array grows as it is written, so that
        # stopping early leaves no unwritten rows.
        out = tf.TensorArray(tf.int32, size=0, dynamic_size=True, element_shape=tf.TensorShape([None]))
        _, ids, state, recent, done, out = tf.while_loop(more, step, (tf.constant(0), ids, state, recent, done, out))
        # An empty TensorArray of unknown element shape cannot be stacked.
        stacked = tf.cond(out.size() > 0, out.stack, lambda: tf.zeros([0, tf.shape(ids)[0]], tf.int32))
        return stacked, ids, state, recent, done

    def sample_ids(self, prime_ids: tf.Tensor, num_chars: tf.Tensor, draw: Draw,
                   stop_ids: tf.Tensor | None = None, *, filtering: bool = False, stopping: bool = False) -> tf.Tensor:
        """`generate`'s two steps in one graph, for callers that compile them into their own
        function (the SavedModel export): ids [num_chars, batch] (time-major) generated after
        `prime_ids` [batch, length] (>= 1 id each), drawn as `draw` says.
        The same seed gives `generate`'s ids."""
        if stop_ids is None:
            stop_ids = tf.zeros([0], tf.int32)
        ids, state, recent, done = self._first(prime_ids, stop_ids, draw, filtering=filtering, stopping=stopping)
        rest, *_ = self._chunk(ids, state, recent, done, tf.constant(1), num_chars - 1, stop_ids, draw,
                               filtering=filtering, stopping=stopping)
        return tf.concat([ids[None, :], rest], 0)


class TrainingSamples:
    """The samples shown while a model trains: `at(step)` is `prime` continued for
    `num_chars` characters at `temperature` by `generate` (Sampler.generate's arguments),
    seeded by the run's `seed` and the step, so that a resumed run shows the samples an
    uninterrupted one does, and the training RNG is not touched. The last one is kept: the
    console and TensorBoard show the same sample for one generation."""

    def __init__(self, generate: Callable[..., str | list[str]], prime: str, num_chars: int, temperature: float,
                 seed: int):
        self._generate, self.prime, self.num_chars, self.temperature, self.seed = (
            generate, prime, num_chars, temperature, seed)
        self._last: tuple[int, str] | None = None

    def at(self, step: int) -> str:
        if self._last is None or self._last[0] != step:
            text = self._generate(self.prime, self.num_chars, self.temperature, seed=mix_seed(self.seed, step))
            assert isinstance(text, str)  # one sample
            self._last = (step, text)
        return self._last[1]


def _advance(ids: tf.Tensor, recent: tf.Tensor, done: tf.Tensor, stop_ids: tf.Tensor,
             stopping: bool) -> tuple[tf.Tensor, tf.Tensor]:
    """Appends `ids` to each sample's last len(stop_at) ids and notes which produced stop_at."""
    if not stopping:
        return recent, done
    recent = tf.concat([recent, ids[:, None]], 1)[:, 1:]
    return recent, done | tf.reduce_all(tf.equal(recent, stop_ids), axis=1)


def _draw(logits: tf.Tensor, i: tf.Tensor, draw: Draw, filtering: bool) -> tf.Tensor:
    """The ids drawn from `logits` [batch, vocab] as the `i`-th generated characters."""
    logits = logits / draw["temperature"]
    if filtering:
        logits = filter_logits(logits, draw["top_k"], draw["top_p"])
    seed = tf.random.experimental.stateless_fold_in(draw["seed"], i)
    drawn = tf.random.stateless_categorical(logits, 1, seed=seed)[:, 0]
    # Non-finite logits (a diverged model) make the draw return vocab_size: keep it an id.
    drawn = tf.minimum(drawn, tf.cast(tf.shape(logits)[-1] - 1, drawn.dtype))
    return tf.cast(tf.where(draw["greedy"], tf.argmax(logits, -1), drawn), tf.int32)


def filter_logits(logits: tf.Tensor, top_k: tf.Tensor, top_p: tf.Tensor) -> tf.Tensor:
    """Sets to -inf the logits outside the `top_k` largest (0: none dropped) and outside the
    smallest set of largest ones whose softmax probability sums to at least `top_p`."""
    vocab = tf.shape(logits)[-1]
    k = tf.where(top_k > 0, tf.minimum(top_k, vocab), vocab)
    sorted_logits = tf.sort(logits, direction="DESCENDING", axis=-1)
    # Nucleus: keep a character while the probability of the more likely ones is below p;
    # the most likely one is always kept.
    before = tf.math.cumsum(tf.nn.softmax(sorted_logits), axis=-1, exclusive=True)
    # top_p = 1 keeps every character exactly (the cumulative sum may round past 1).
    keep = tf.where(top_p < 1, tf.minimum(k, tf.reduce_sum(tf.cast(before < top_p, tf.int32), axis=-1, keepdims=True)),
                    k)
    threshold = tf.gather(sorted_logits, tf.maximum(keep, 1) - 1, batch_dims=1)
    return tf.where(logits < threshold, tf.constant(-float("inf"), logits.dtype), logits)
