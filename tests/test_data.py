"""The vocabulary and the input pipelines (corpora: test_corpus.py)."""

from __future__ import annotations

import numpy as np
import pytest

from charrnn import CharRNNError, Vocabulary
from charrnn.text import data


def test_windows_are_consecutive_and_target_is_input_shifted_by_one():
    ids = np.arange(53, dtype=np.int32)  # 5 windows of 10 + 1 and 2 ids left over
    batches = list(data.make_dataset(ids, seq_length=10, batch_size=2).as_numpy_iterator())
    assert len(batches) == 2  # 5 windows -> 2 full batches, the remainder dropped
    inputs, targets = batches[0]
    assert inputs.shape == targets.shape == (2, 10)
    np.testing.assert_array_equal(inputs[0], np.arange(0, 10))
    np.testing.assert_array_equal(targets[0], np.arange(1, 11))
    np.testing.assert_array_equal(inputs[1], np.arange(11, 21))  # windows do not overlap


def test_shuffle_order_depends_only_on_seed():
    ids = np.arange(11 * 40, dtype=np.int32)

    def first_inputs(seed):
        ds = data.make_dataset(ids, seq_length=10, batch_size=4, shuffle_buffer=100, seed=seed)
        return np.concatenate([x[:, 0] for x, _ in ds.as_numpy_iterator()])

    np.testing.assert_array_equal(first_inputs(1), first_inputs(1))
    assert not np.array_equal(first_inputs(1), first_inputs(2))
    assert sorted(first_inputs(1)) == list(range(0, 11 * 40, 11)[:40])  # a permutation of all windows


def test_vocabulary_round_trip_with_non_ascii_text():
    text = "naïve café — 日本語 😀\r\nzebra"
    vocab = Vocabulary.from_text(text)
    assert list(vocab.chars) == sorted(set(text))
    assert "😀" in vocab.chars and "\r" in vocab.chars  # multi-byte characters are single entries
    ids = vocab.encode(text)
    assert ids.dtype == np.int32 and len(ids) == len(text)
    assert vocab.decode(ids) == text
    assert Vocabulary.from_json(vocab.to_json()) == vocab


def test_encode_names_unknown_characters():
    vocab = Vocabulary.from_text("abc")
    with pytest.raises(CharRNNError, match=r"2 character\(s\) not in the model's vocabulary: 'x', 'é'"):
        vocab.encode("abxé")


def test_split_takes_validation_from_the_end():
    train, val = data.split_ids(np.arange(100), 0.1)
    np.testing.assert_array_equal(val, np.arange(90, 100))
    np.testing.assert_array_equal(train, np.arange(90))
    train, val = data.split_ids(np.arange(100), 0.0)
    assert len(train) == 100 and len(val) == 0
    # nanoGPT's cut, int(n * 0.9), on tiny-shakespeare's length: 1,003,854 training characters.
    train, val = data.split_ids(np.arange(1_115_394), 0.1)
    assert len(train) == 1_003_854 and len(val) == 111_540


def test_stream_batches_continue_each_row_from_the_previous_batch():
    ids = np.arange(2 * 23)  # two streams of 23 ids
    batches = data.stream_batches(ids, seq_length=5, batch_size=2)
    assert len(batches) == data.num_stream_batches(len(ids), 5, 2) == 4  # (23 - 1) // 5
    for inputs, targets in batches:
        np.testing.assert_array_equal(targets, inputs + 1)
    rows = np.concatenate([inputs for inputs, _ in batches], axis=1)
    np.testing.assert_array_equal(rows, [np.arange(20), 23 + np.arange(20)])  # row j is stream j, in order
    # For evaluation, a shorter last batch covers each stream to its end.
    kept = data.stream_batches(ids, seq_length=5, batch_size=2, drop_remainder=False)
    assert [b[0].shape[1] for b in kept] == [5, 5, 5, 5, 2]
    np.testing.assert_array_equal(np.concatenate([t for _, t in kept], axis=1)[1], 23 + np.arange(1, 23))
    inputs, targets = next(iter(data.make_stream_dataset(ids, 5, 2)))
    np.testing.assert_array_equal(inputs, batches[0][0])


def test_pipelines_read_any_id_array_and_start_without_reading_what_they_skip(tmp_path):
    """A memory-mapped uint8 id file gives the int32 pipeline's batches; `start` equals
    skipping, but reads only the batches it returns."""
    ids = np.random.RandomState(0).randint(0, 200, 5_000).astype(np.int32)
    path = tmp_path / "ids.u8"
    ids.astype(np.uint8).tofile(path)
    mapped = np.memmap(path, dtype=np.uint8, mode="r", shape=(len(ids),))
    for make, kwargs in ((data.make_dataset, dict(shuffle_buffer=50, seed=3)), (data.make_stream_dataset, {})):
        plain = [b for b in make(ids, 10, 4, **kwargs).as_numpy_iterator()]
        from_file = [b for b in make(mapped, 10, 4, **kwargs).as_numpy_iterator()]
        assert len(plain) == len(from_file) > 20
        for (x, y), (u, v) in zip(plain, from_file):
            assert u.dtype == np.int32
            np.testing.assert_array_equal(x, u)
            np.testing.assert_array_equal(y, v)
        started = list(make(mapped, 10, 4, start=7, **kwargs).as_numpy_iterator())
        assert len(started) == len(plain) - 7
        np.testing.assert_array_equal(started[0][0], plain[7][0])

    reads = []
    windows = ids[: data.num_windows(len(ids), 10) * 11].reshape(-1, 11)

    class Counting(np.ndarray):  # counts the rows the pipeline reads
        def __getitem__(self, item):
            if isinstance(item, np.ndarray):
                reads.append(len(item))
            return super().__getitem__(item)

    counted = ids.view(Counting)
    list(data.make_dataset(counted, 10, 4, shuffle_buffer=50, seed=3, start=100).as_numpy_iterator())
    assert sum(reads) == len(windows) - 4 * 100  # the 100 skipped batches were never read


def test_pipelines_run_without_tf_data_autotuning():
    """Autotuning's thread made dropping a finished epoch's iterator wait for it to wake
    (seconds per epoch end); the pipelines prefetch a fixed number of batches instead."""
    ids = np.arange(5_000, dtype=np.int32) % 60
    for ds in (data.make_dataset(ids, 10, 4, shuffle_buffer=50, seed=3), data.make_stream_dataset(ids, 10, 4)):
        assert ds.options().autotune.enabled is False
        assert ds.take(3).options().autotune.enabled is False  # what the trainer iterates
