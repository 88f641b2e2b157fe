"""The id cache never hands out the wrong text: an entry holds the text that was encoded,
is checked before every use (a damaged one is encoded again), leaves no parts behind, and
a cache on another filesystem is used through a checked local copy."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import tensorflow as tf

from charrnn import CharRNNError, TryAgain, Vocabulary, storage
from charrnn.text import idcache
from charrnn.text.corpus import local_cache_dir

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 30


@pytest.fixture
def text(tmp_path, monkeypatch) -> str:
    """The text, with an id cache of this test's own."""
    monkeypatch.setenv("CHARRNN_DATA_DIR", str(tmp_path / "cache"))
    path = tmp_path / "t.txt"
    path.write_text(TEXT)
    return str(path)


def _entry(suffix: str) -> list[str]:
    return sorted(p for p in os.listdir(os.path.join(local_cache_dir(), "ids")) if p.endswith(suffix))


def _ids_of(text: str) -> np.ndarray:
    return Vocabulary.from_text(text).encode(text)


@pytest.mark.parametrize("appended", ["ÄÖÜ: new characters\n", "to be or not to be\n"])
def test_a_text_that_changes_while_it_is_encoded_is_refused_and_nothing_is_kept(text, monkeypatch, appended):
    real = idcache._vocabulary

    def then_appended(*args):  # a writer appends to the file after the characters were collected
        result = real(*args)
        with open(text, "a") as f:
            f.write(appended)
        return result

    monkeypatch.setattr(idcache, "_vocabulary", then_appended)
    with pytest.raises(TryAgain, match="changed while it was being encoded .* nothing was kept: run again") as info:
        idcache.encode(text)
    assert info.value.exit_status == 75
    assert _entry(".ids") == [] and _entry(".part") == []
    monkeypatch.undo()
    with open(text, "w") as f:
        f.write(TEXT)  # the original text again: its entry is what it says
    np.testing.assert_array_equal(idcache.encode(text).ids, _ids_of(TEXT))


@pytest.mark.parametrize("damage", ["in-range bytes", "an id outside the vocabulary", "truncated", "header edited",
                                    "header of an older charrnn"])
def test_a_damaged_entry_is_encoded_again_with_a_message(text, capsys, damage):
    first = idcache.encode(text)
    (ids_name,) = _entry(".ids")
    ids_path = os.path.join(local_cache_dir(), "ids", ids_name)
    header_path = ids_path[:-4] + ".json"
    del first
    if damage == "in-range bytes":
        raw = bytearray(open(ids_path, "rb").read())
        raw[10], raw[11] = raw[11], raw[10] + 1 if raw[10] == raw[11] else raw[10]
        open(ids_path, "wb").write(bytes(raw))
    elif damage == "an id outside the vocabulary":
        raw = bytearray(open(ids_path, "rb").read())
        raw[5] = 250
        open(ids_path, "wb").write(bytes(raw))
    elif damage == "truncated":
        os.truncate(ids_path, 100)
    else:
        header = json.loads(open(header_path, encoding="utf-8").read())
        if damage == "header edited":
            header["chars"] = header["chars"].replace("W", "X")  # still sorted: a valid vocabulary
        else:
            del header["check"], header["ids_crc32"]
        open(header_path, "w", encoding="utf-8").write(json.dumps(header, ensure_ascii=False))
    capsys.readouterr()
    again = idcache.encode(text)
    assert f"the id cache entry {ids_path[:-4]} is damaged (" in capsys.readouterr().err
    np.testing.assert_array_equal(again.ids, _ids_of(TEXT))
    assert again.vocab == Vocabulary.from_text(TEXT)
    assert idcache.encode(text).ids is not None and capsys.readouterr().err == ""  # the new entry is whole


def test_parts_of_dead_writers_and_of_failed_writes_are_removed(text, monkeypatch, capsys):
    directory = os.path.join(local_cache_dir(), "ids")
    os.makedirs(directory, exist_ok=True)
    dead = os.path.join(directory, f"x.ids.{socket.gethostname()}.{2**22 + 12345}.part")  # no such process
    alive = os.path.join(directory, f"y.ids.{socket.gethostname()}.{os.getpid()}.part")  # another encode of ours
    for path in (dead, alive):
        open(path, "wb").write(b"\0" * 1000)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    real_ids_pass = idcache._ids_pass

    def fills_the_disk(sources, table, size, key, data, sink):
        if sink.__name__ == "sink":  # writing the file: the disk fills up halfway
            sink(table[np.zeros(10, np.uint8)])
            disk_full()
        return real_ids_pass(sources, table, size, key, data, sink)

    monkeypatch.setattr(idcache, "_ids_pass", fills_the_disk)
    encoded = idcache.encode(text)  # no cache: the ids in memory, with a warning
    assert "cannot write the id cache" in capsys.readouterr().err
    np.testing.assert_array_equal(encoded.ids, _ids_of(TEXT))
    assert not os.path.exists(dead) and os.path.exists(alive)  # a live writer's part is left alone
    assert [p for p in os.listdir(directory) if p.endswith(".part")] == [os.path.basename(alive)]


def test_a_cache_on_another_filesystem_is_used_through_a_checked_local_copy(text, monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("CHARRNN_DATA_DIR", f"ram://{tmp_path}/cache")
    first = idcache.encode(text)
    assert isinstance(first.ids, np.memmap)  # memory-mapped, from the local disk
    assert tf.io.gfile.glob(f"ram://{tmp_path}/cache/ids/*.ids")  # and shared
    local = local_cache_dir()
    assert local.startswith(str(tmp_path / "keras"))
    for name in os.listdir(os.path.join(local, "ids")):  # another machine: nothing local yet
        os.remove(os.path.join(local, "ids", name))

    def no_encoding(*args):
        raise AssertionError("encoded again instead of copying the shared entry")

    monkeypatch.setattr(idcache, "_write", no_encoding)
    copied = idcache.encode(text)
    assert isinstance(copied.ids, np.memmap)
    np.testing.assert_array_equal(copied.ids, _ids_of(TEXT))
    shared = tf.io.gfile.glob(f"ram://{tmp_path}/cache/ids/*.ids")[0]
    with tf.io.gfile.GFile(shared, "wb") as f:  # the shared copy is damaged: caught in the local copy
        f.write(b"\x01" * len(TEXT))
    for name in os.listdir(os.path.join(local, "ids")):
        os.remove(os.path.join(local, "ids", name))
    monkeypatch.undo()
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("CHARRNN_DATA_DIR", f"ram://{tmp_path}/cache")
    np.testing.assert_array_equal(idcache.encode(text).ids, _ids_of(TEXT))


def test_characters_outside_the_vocabulary_are_named_or_skipped_and_counted(text):
    """charrnn-eval's text: refused naming the characters the model does not know, or with
    skip_unknown scored without them, each counted; a vocabulary with more characters than
    the text gives the text's ids in it."""
    vocab = Vocabulary.from_text(TEXT.replace("W", "").replace("h", ""))
    with pytest.raises(CharRNNError, match=r"2 character\(s\) of .*t.txt are not in the model's vocabulary: 'W', 'h'; "
                                           "pass --unknown_chars=skip"):
        idcache.ids_in(text, vocab)
    skipped = idcache.ids_in(text, vocab, skip_unknown=True)
    without = TEXT.replace("W", "").replace("h", "")
    np.testing.assert_array_equal(skipped.ids, vocab.encode(without))
    assert skipped.skipped == {"W": TEXT.count("W"), "h": TEXT.count("h")}
    assert skipped.fingerprint == idcache.encode(text).fingerprint  # of the text as it is
    wider = Vocabulary.from_text(TEXT + "#")
    np.testing.assert_array_equal(idcache.ids_in(text, wider).ids, wider.encode(TEXT))
    assert storage.glob(os.path.join(local_cache_dir(), "ids", "*.part")) == []


def test_a_character_missing_from_the_vocabulary_pass_is_caught_even_when_the_hash_matches(text, monkeypatch):
    """The text changed between the pass that collects its characters and the one that writes
    its ids, and back: the hash cannot see it, the ids' range does."""
    real = idcache._vocabulary
    monkeypatch.setattr(idcache, "_vocabulary", lambda *args: Vocabulary(
        [c for c in real(*args).chars if c != "W"]))
    with pytest.raises(TryAgain, match="changed while it was being encoded"):
        idcache.encode(text)
    assert _entry(".ids") == [] and _entry(".part") == []


@pytest.mark.parametrize("size, itemsize", [(255, 1), (256, 2), (257, 2)])
def test_ids_take_the_smallest_type_with_room_for_the_out_of_vocabulary_id(tmp_path, monkeypatch, size, itemsize):
    """At 255, 256 and 257 distinct characters: ids 0..size-1 and the id `size` for a
    character outside the vocabulary must all fit, so 256 characters need 16 bits. Each size
    round-trips, and a character left out of the vocabulary pass is caught."""
    monkeypatch.setenv("CHARRNN_DATA_DIR", str(tmp_path / "cache"))
    chars = [chr(0x4E00 + i) for i in range(size)]  # CJK: more than a byte's worth of code points
    text = "".join(chars[(i * 7) % size] for i in range(4 * size))
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    encoded = idcache.encode(str(path))
    assert len(encoded.vocab) == size and encoded.ids.dtype.itemsize == itemsize
    assert encoded.vocab.decode(encoded.ids) == text and int(encoded.ids.max()) == size - 1
    real = idcache._vocabulary
    last = max(chars)  # its id would be the largest: leaving it out makes the sentinel size - 1
    monkeypatch.setattr(idcache, "_vocabulary", lambda *args: Vocabulary([c for c in real(*args).chars if c != last]))
    other = tmp_path / "u.txt"
    other.write_text(text + "!", encoding="utf-8")  # another text: its own entry
    with pytest.raises(TryAgain, match="changed while it was being encoded"):
        idcache.encode(str(other))


def test_long_phases_show_progress_on_standard_error(tmp_path, monkeypatch, capsys):
    """Encoding (its three passes over the text) and evaluating show a line each time the
    reporter's interval passes (set to 0 here: every chunk, every batch), with what is being
    done and how far; with the usual interval, short work shows none."""
    from charrnn import progress
    from charrnn.nn.model import CharRNN
    from charrnn.text.data import Layout
    from charrnn.training.evaluator import Evaluator

    monkeypatch.setenv("CHARRNN_DATA_DIR", str(tmp_path / "cache"))
    path = tmp_path / "t.txt"
    path.write_text("abcd" * 300_000)  # 1.2 MB
    encoded = idcache.encode(str(path))
    assert capsys.readouterr().err == ""  # under FIRST_AFTER seconds: nothing
    monkeypatch.setattr(progress, "FIRST_AFTER", 0.0)
    monkeypatch.setattr(progress, "EVERY", 0.0)
    path.write_text("abcd" * 300_000 + "e")  # another text: encoded again, its three passes shown
    idcache.encode(str(path))
    lines = capsys.readouterr().err.splitlines()
    for doing in ("hashing", "reading the characters of", "encoding"):
        assert f"charrnn: {doing} {path}: 1 of 1 MB (100%), 0:00:00 left" in lines, lines
    model = CharRNN(len(encoded.vocab), 4, 8)
    seen = []
    Evaluator(model, Layout(20, 4, False)).loss(np.asarray(encoded.ids[:2000]), progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 95 * 20  # every window of 21 characters: 20 predictions each
    shown = progress.Progress("evaluating t.txt", 2000, unit="characters", scale=1)
    shown.update(500)
    assert capsys.readouterr().err == "charrnn: evaluating t.txt: 500 of 2,000 characters (25%), 0:00:00 left\n"
