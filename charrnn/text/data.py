"""How a text's ids become batches: `Layout` and its tf.data pipelines, and when a carried
stream starts over (`restart_streams`).

The ids may be any NumPy integer array, also a memory-mapped id file (charrnn.text.idcache):
the pipelines slice windows out of it batch by batch, so the text is never copied whole.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
import tensorflow as tf

# With carry_state, each stream starts over from a zero state once every this many steps,
# the streams in turn (stream j at the steps s with (s + j) % CARRY_RESTART_EVERY == 0).
# Sampling and evaluation start from a zero state; a model whose carried state is never
# zero learns to lean on it: through its first epoch (cpu_small: 156 steps) a few cell
# units charge to large, nearly constant values the rest treats as biases, and from a
# zero state some inputs never charge them again, so the samples shown then are garbage
# (32 of 32 from "\n" at step 156; 7 of 64 validation streams near 8 nats/char). 2% of
# the stream-batches from zero removes that (none of either) for +0.006 to +0.019 nats in
# the best loss of 1,100 steps (cpu_small, two seeds: benchmarks/RESULTS.md).
CARRY_RESTART_EVERY = 50


def restart_streams(state: tuple, step: tf.Variable) -> tuple:
    """`state` (each tensor [batch, units], a row per carried stream) with the rows that
    start over at `step` zeroed (see CARRY_RESTART_EVERY)."""
    def restart(s: tf.Tensor) -> tf.Tensor:
        rows = tf.range(tf.shape(s, out_type=tf.int64)[0], dtype=tf.int64)
        keep = tf.math.floormod(step + rows, CARRY_RESTART_EVERY) != 0
        return s * tf.cast(keep, s.dtype)[:, None]
    return tf.nest.map_structure(restart, state)


def mix_seed(seed: int, index: int) -> int:
    """A seed of its own for each epoch's data order or each step's sample, a pure function of
    the run's seed and the index (so a resumed run draws what an uninterrupted one would)."""
    return (seed * 1_000_003 + index) % 2**63


def split_ids(ids: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The first `1 - val_fraction` of the ids for training, the rest for validation.

    The cut is nanoGPT's, `int(n * 0.9)` training ids for val_fraction=0.1, so that
    validation losses are measured on the same characters.
    """
    cut = int(len(ids) * (1 - val_fraction))
    return ids[:cut], ids[cut:]


def num_windows(num_ids: int, seq_length: int) -> int:
    """How many non-overlapping windows of `seq_length + 1` ids fit in `num_ids` ids."""
    return num_ids // (seq_length + 1)


def make_dataset(
    ids: np.ndarray,
    seq_length: int,
    batch_size: int,
    *,
    shuffle_buffer: int = 0,
    seed: int | None = None,
    drop_remainder: bool = True,
    start: int = 0,
) -> tf.data.Dataset:
    """Batches of (input, target) id pairs, the target shifted by one character.

    As in the case study, the text is cut into consecutive windows of `seq_length + 1`
    ids (a trailing partial window is dropped); the input is a window without its last id
    and the target the window without its first. With `shuffle_buffer`, windows are
    shuffled with a buffer of that size; the order is a pure function of `seed`. `start`
    skips that many batches without reading them (a resume's place in the epoch).

    The pipeline shuffles window numbers, then reads the windows of `_READ_BATCHES`
    batches at a time from `ids` in one slice (fewer Python calls), and batches them: the
    same order as shuffling the windows themselves.
    """
    width = seq_length + 1
    windows = ids[: num_windows(len(ids), seq_length) * width].reshape(-1, width)  # a view: no copy
    ds = tf.data.Dataset.range(len(windows))
    if shuffle_buffer > 0:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=False)

    def read(numbers: tf.Tensor) -> tf.Tensor:
        rows = tf.numpy_function(lambda n: windows[n].astype(np.int32), [numbers], tf.int32, stateful=False)
        rows.set_shape([None, width])
        return rows

    ds = ds.skip(start * batch_size).batch(batch_size * _READ_BATCHES).map(read).unbatch()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return _fixed_prefetch(ds.map(lambda rows: (rows[:, :-1], rows[:, 1:])))


# Batches read from the ids per Python call of the pipeline.
_READ_BATCHES = 8
# Batches read ahead of the train step.
_PREFETCH = 4


def _fixed_prefetch(ds: tf.data.Dataset) -> tf.data.Dataset:
    """`ds` read `_PREFETCH` batches ahead, with tf.data's autotuning off. The pipelines
    are a slice per batch, nothing to tune; and a finished epoch's iterator, dropped when
    the next epoch starts, waited for the autotuning thread to wake up before it could be
    deleted: up to 19 s at an epoch end of a 10-minute run (benchmarks/RESULTS.md)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(_PREFETCH).with_options(options)


def num_stream_batches(num_ids: int, seq_length: int, batch_size: int) -> int:
    """How many full batches `stream_batches` makes of `num_ids` ids."""
    return max(num_ids // batch_size - 1, 0) // seq_length


def _streams(ids: np.ndarray, batch_size: int) -> np.ndarray:
    """`ids` as `batch_size` contiguous rows (a view: no copy)."""
    length = len(ids) // batch_size
    return ids[: length * batch_size].reshape(batch_size, length)


def stream_batches(ids: np.ndarray, seq_length: int, batch_size: int, *,
                   drop_remainder: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    """(inputs, targets) batches of shape [batch_size, seq_length] for stateful training.

    The ids are cut into `batch_size` contiguous streams, as karpathy/char-rnn's loader
    does, so that row j of batch i continues row j of batch i - 1 and a state carried from
    one batch to the next belongs to the text that precedes it. A trailing part of each
    stream shorter than `seq_length` is dropped, or with `drop_remainder=False` kept as a
    last batch that is shorter in time (for evaluation). The batches are views of `ids`.
    """
    streams = _streams(ids, batch_size)
    last = streams.shape[1] - 1  # an input needs the id after it as its target
    stop = last if not drop_remainder else num_stream_batches(len(ids), seq_length, batch_size) * seq_length
    return [(streams[:, i : min(i + seq_length, last)], streams[:, i + 1 : min(i + seq_length, last) + 1])
            for i in range(0, stop, seq_length)]


def make_stream_dataset(ids: np.ndarray, seq_length: int, batch_size: int, *, start: int = 0) -> tf.data.Dataset:
    """The batches of `stream_batches` in order from batch `start`, as a dataset (no
    shuffling: order is the point), each read from `ids` when it is needed."""
    streams = _streams(ids, batch_size)

    def read(i: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        def window(i: np.int64) -> np.ndarray:
            return streams[:, i * seq_length: (i + 1) * seq_length + 1].astype(np.int32)

        batch = tf.numpy_function(window, [i], tf.int32, stateful=False)
        batch.set_shape([batch_size, seq_length + 1])
        return batch[:, :-1], batch[:, 1:]

    ds = tf.data.Dataset.range(start, num_stream_batches(len(ids), seq_length, batch_size))
    return _fixed_prefetch(ds.map(read))


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a text becomes batches of `batch_size` rows of `seq_length` steps, for training and
    for evaluation alike.

    Windows (the case study's): the text cut into windows of seq_length + 1 ids, each read
    from a zero state; training shuffles them in an order of each epoch's own (a pure
    function of `seed` and the epoch). With `carry_state`: `batch_size` contiguous streams
    read in order, the state carried from one batch to the next (karpathy/char-rnn's).
    """

    seq_length: int
    batch_size: int
    carry_state: bool = False
    shuffle_buffer: int = 0
    seed: int = 0

    def num_batches(self, num_ids: int) -> int:
        """Full training batches (steps) in an epoch of `num_ids` ids."""
        if self.carry_state:
            return num_stream_batches(num_ids, self.seq_length, self.batch_size)
        return num_windows(num_ids, self.seq_length) // self.batch_size

    def training(self, ids: np.ndarray, epoch: int, start: int = 0) -> tf.data.Dataset:
        """The batches of `epoch` from batch `start` on (the ones before are skipped unread)."""
        if self.carry_state:
            return make_stream_dataset(ids, self.seq_length, self.batch_size, start=start)
        return make_dataset(ids, self.seq_length, self.batch_size, shuffle_buffer=self.shuffle_buffer,
                            seed=mix_seed(self.seed, epoch), start=start)

    def evaluation(self, ids: np.ndarray) -> Iterable[tuple[np.ndarray, np.ndarray]]:
        """Every window, or every stream to its end (at most one stream per window of text), in
        order, the last batch possibly smaller (or shorter in time)."""
        if self.carry_state:
            streams = max(1, min(self.batch_size, len(ids) // (self.seq_length + 1)))
            return stream_batches(ids, self.seq_length, streams, drop_remainder=False)
        return make_dataset(ids, self.seq_length, self.batch_size, drop_remainder=False).as_numpy_iterator()
