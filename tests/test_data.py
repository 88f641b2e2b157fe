"""Corpus resolution, text decoding, vocabulary and windowing."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from charrnn import CharRNNError, Vocabulary, data


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


def test_read_text_drops_bom_and_keeps_line_endings(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("\ufeffa\r\nb\nc".encode("utf-8"))
    assert data.read_text(str(path)) == "a\r\nb\nc"


@pytest.mark.parametrize("payload, message", [
    (b"", "is empty"),
    (b"abc\x00def", "looks binary (NUL byte at offset 3)"),
    (b"ok text \xff more", "not valid UTF-8 (bad byte 0xff at offset 8)"),
])
def test_read_text_rejects_bad_files(tmp_path, payload, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(payload)
    with pytest.raises(CharRNNError, match=message.replace("(", r"\(").replace(")", r"\)")):
        data.read_text(str(path))


def test_resolve_corpus_paths_and_names(tmp_path, corpus_cache):
    plain = tmp_path / "mine.txt"
    plain.write_text("hello")
    assert data.resolve_corpus(str(plain)) == str(plain)
    assert data.resolve_corpus("tinyshakespeare") == str(corpus_cache / "tinyshakespeare.txt")
    with pytest.raises(CharRNNError, match="is a directory"):
        data.resolve_corpus(str(tmp_path))
    with pytest.raises(CharRNNError, match="neither an existing file nor a registered corpus"):
        data.resolve_corpus(str(tmp_path / "missing.txt"))


def _register(monkeypatch, source, sha256):
    monkeypatch.setitem(data.CORPORA, "testcorpus", data.Corpus(url=source.as_uri(), sha256=sha256))


def test_download_verifies_checksum_and_caches(tmp_path, monkeypatch):
    source = tmp_path / "remote.txt"
    source.write_text("to be or not to be")
    cache = tmp_path / "cache"
    monkeypatch.setenv("CHARRNN_DATA_DIR", str(cache))
    _register(monkeypatch, source, hashlib.sha256(source.read_bytes()).hexdigest())
    path = data.resolve_corpus("testcorpus")
    assert path == str(cache / "testcorpus.txt")
    assert data.read_text(path) == "to be or not to be"
    source.unlink()  # served from the cache from now on
    assert data.resolve_corpus("testcorpus") == path


def test_download_with_wrong_checksum_keeps_nothing(tmp_path, monkeypatch):
    source = tmp_path / "remote.txt"
    source.write_text("tampered")
    cache = tmp_path / "cache"
    monkeypatch.setenv("CHARRNN_DATA_DIR", str(cache))
    _register(monkeypatch, source, "0" * 64)
    with pytest.raises(CharRNNError, match="has sha256 .* expected 0000"):
        data.resolve_corpus("testcorpus")
    assert list(cache.iterdir()) == []


def test_offline_with_empty_cache_says_where_to_put_the_file(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CHARRNN_DATA_DIR", str(cache))
    _register(monkeypatch, tmp_path / "not-there.txt", None)
    with pytest.raises(CharRNNError, match="could not be downloaded") as info:
        data.resolve_corpus("testcorpus")
    assert str(cache / "testcorpus.txt") in str(info.value) and "--data" in str(info.value)
