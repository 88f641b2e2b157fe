"""Corpora: what --data names, the streaming encoder and its id cache."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading

import numpy as np
import pytest

from charrnn import CharRNNError, TryAgain, corpus, idcache
from charrnn.vocab import fingerprint


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 7 bytes: every multi-byte character and BOM meets a chunk boundary somewhere."""
    monkeypatch.setattr(corpus, "CHUNK", 7)


def test_encoding_streams_in_chunks_and_matches_the_whole_text(tmp_path, small_chunks):
    text = "¿Qué tal? Ça va, 東京 ✓ — ok\r\nnext line\n" * 5
    path = tmp_path / "t.txt"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())  # with a byte-order mark
    encoded = idcache.encode(str(path))
    assert encoded.vocab.chars == tuple(sorted(set(text)))
    assert encoded.ids.dtype == np.uint8 and isinstance(encoded.ids, np.memmap)
    np.testing.assert_array_equal(encoded.ids, encoded.vocab.encode(text))
    assert encoded.fingerprint == fingerprint(text)  # as earlier versions recorded it in checkpoints
    assert corpus.read_text(str(path)) == text


def test_the_id_cache_is_keyed_by_content_and_reused(tmp_path, monkeypatch):
    path = tmp_path / "t.txt"
    path.write_text("abcabc" * 100)
    first = idcache.encode(str(path))
    files = sorted(p.name for p in (tmp_path.parent / "data_cache" / "ids").glob("*"))

    def no_second_encode(*args):
        raise AssertionError("encoded again")

    monkeypatch.setattr(idcache, "_write", no_second_encode)
    again = idcache.encode(str(path))
    np.testing.assert_array_equal(first.ids, again.ids)
    path.write_text("abcabd" * 100)  # same size, other content: not the cached ids
    with pytest.raises(AssertionError, match="encoded again"):
        idcache.encode(str(path))
    assert files and all(not name.endswith(".part") for name in files)


def test_wide_vocabularies_get_wider_ids(tmp_path):
    path = tmp_path / "wide.txt"
    text = "".join(chr(0x4E00 + i) for i in range(300)) * 2
    path.write_text(text, encoding="utf-8")
    encoded = idcache.encode(str(path))
    assert encoded.ids.dtype == np.uint16 and len(encoded.vocab) == 300
    np.testing.assert_array_equal(encoded.ids, encoded.vocab.encode(text))


def test_data_takes_files_directories_globs_and_lists_joined_as_cat_joins_them(tmp_path):
    books = tmp_path / "books"
    books.mkdir()
    (books / "b.txt").write_text("second\n")
    (books / "a.txt").write_bytes(b"\xef\xbb\xbffirst ")  # each file's BOM is dropped
    (books / ".hidden").write_text("never")
    (books / "sub").mkdir()
    (tmp_path / "c.md").write_text("third")
    assert corpus.read_text(str(books)) == "first second\n"
    assert corpus.read_text(str(books / "*.txt")) == "first second\n"
    assert corpus.read_text(f"{tmp_path / 'c.md'},{books}") == "thirdfirst second\n"
    joined = idcache.encode(f"{books / 'a.txt'}, {books / 'b.txt'}")
    assert joined.fingerprint == fingerprint("first second\n")
    for data, message in [(str(tmp_path / "nothing*.txt"), "matches no file"),
                          (f"{books},", "has an empty entry"),
                          (str(tmp_path / "missing.txt"), "neither an existing file, directory or glob"),
                          (str(books / "sub"), "holds no files"),
                          ("", "--data is empty")]:
        with pytest.raises(CharRNNError, match=message):
            corpus.resolve_sources(data)


@pytest.mark.parametrize("payload, message", [
    (b"", "holds no text"),
    (b"\xef\xbb\xbf", "holds no text"),
    (b"abc\x00def", "looks binary (NUL byte at offset 3)"),
    (b"ok text \xff more", "not valid UTF-8 (bad byte 0xff at offset 8)"),
    (b"ends inside \xc3", "ends inside a character"),
])
def test_bad_text_is_refused_with_where(tmp_path, small_chunks, payload, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(payload)
    for read in (corpus.read_text, idcache.encode):
        with pytest.raises(CharRNNError, match=message.replace("(", r"\(").replace(")", r"\)")):
            read(str(path))


def _register(monkeypatch, source, sha256):
    monkeypatch.setitem(corpus.CORPORA, "testcorpus", corpus.Corpus(url=source.as_uri(), sha256=sha256))


def test_registered_corpora_are_downloaded_once_and_checked_at_every_use(tmp_path, monkeypatch, corpus_cache):
    assert corpus.resolve_sources("tinyshakespeare") == [str(corpus_cache / "tinyshakespeare.txt")]
    source = tmp_path / "remote.txt"
    source.write_text("to be or not to be")
    _register(monkeypatch, source, hashlib.sha256(source.read_bytes()).hexdigest())
    (path,) = corpus.resolve_sources("testcorpus")
    assert path == str(corpus_cache / "testcorpus.txt") and corpus.read_text("testcorpus") == "to be or not to be"
    source.unlink()  # served from the cache from now on
    assert corpus.resolve_sources("testcorpus") == [path]
    with open(path, "r+") as f:  # a truncated cache file is caught
        f.truncate(5)
    with pytest.raises(CharRNNError, match=r"the cached copy .*testcorpus.txt .* has sha256 .*; the file was removed"):
        corpus.resolve_sources("testcorpus")


def test_a_download_with_the_wrong_checksum_keeps_nothing(tmp_path, monkeypatch, corpus_cache):
    source = tmp_path / "remote.txt"
    source.write_text("tampered")
    _register(monkeypatch, source, "0" * 64)
    with pytest.raises(CharRNNError, match="has sha256 .* expected 0000"):
        corpus.resolve_sources("testcorpus")
    assert not (corpus_cache / "testcorpus.txt").exists()


def test_offline_with_an_empty_cache_says_where_to_put_the_file(tmp_path, monkeypatch, corpus_cache):
    _register(monkeypatch, tmp_path / "not-there.txt", None)
    with pytest.raises(CharRNNError, match="could not be downloaded") as info:
        corpus.resolve_sources("testcorpus")
    assert str(corpus_cache / "testcorpus.txt") in str(info.value) and "--data" in str(info.value)


def test_urls_are_downloaded_once_and_checked_when_a_hash_is_given(tmp_path, corpus_cache):
    source = tmp_path / "remote.txt"
    source.write_text("from afar")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert corpus.read_text(f"{source.as_uri()}#sha256={digest}") == "from afar"
    source.unlink()
    assert corpus.read_text(source.as_uri()) == "from afar"  # the cached copy
    with pytest.raises(CharRNNError, match=r"has sha256 .*, expected 1111"):
        corpus.resolve_sources(f"{source.as_uri()}#sha256={'1' * 64}")
    with pytest.raises(CharRNNError, match="could not download"):
        corpus.resolve_sources((tmp_path / "elsewhere.txt").as_uri())


@pytest.fixture
def cut_short_server():
    """A local HTTP server that announces 1000 bytes and sends 400, then hangs up (a
    connection lost, or a download killed, halfway)."""

    class CutShort(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the handler's name
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"to be or not to be\n" * 21)
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), CutShort)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_download_cut_short_is_never_a_corpus(tmp_path, monkeypatch, corpus_cache, cut_short_server):
    monkeypatch.setitem(corpus.CORPORA, "testcorpus", corpus.Corpus(url=f"{cut_short_server}/text", sha256=None))
    for data in ("testcorpus", f"{cut_short_server}/other.txt"):
        with pytest.raises(TryAgain, match=r"could not be downloaded|could not download") as info:
            corpus.resolve_sources(data)
        assert "run again to retry" in str(info.value) and info.value.exit_status == 75
    assert not (corpus_cache / "testcorpus.txt").exists()
    assert [p.name for p in corpus_cache.rglob("*") if p.is_file()] == ["tinyshakespeare.txt"]  # no part left


def test_a_dead_downloads_part_is_removed_and_the_download_done_again(tmp_path, monkeypatch, corpus_cache):
    source = tmp_path / "remote.txt"
    source.write_text("to be or not to be")
    _register(monkeypatch, source, hashlib.sha256(source.read_bytes()).hexdigest())
    dead = corpus_cache / f"testcorpus.txt.{socket.gethostname()}.{2**22 + 777}.part"  # a writer that is gone
    dead.write_text("to be or")
    assert corpus.read_text("testcorpus") == "to be or not to be"
    assert not dead.exists() and (corpus_cache / "testcorpus.txt").read_text() == "to be or not to be"
