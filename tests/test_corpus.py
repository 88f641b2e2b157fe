"""Corpora: what --data names, the streaming encoder and its id cache."""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import socket
import threading
import time

import numpy as np
import pytest

from charrnn import CharRNNError, TryAgain
from charrnn.text import corpus, download, idcache
from charrnn.text.vocab import fingerprint


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
    with open(path, "r+") as f:  # a truncated cache file is caught, and left as it is
        f.truncate(5)
    with pytest.raises(CharRNNError, match=r"testcorpus.txt is not 'testcorpus' as published \(sha256 .*; it was left "
                                           r"as it is: replace it with the file from file://.*, or pass --data="):
        corpus.resolve_sources("testcorpus")
    assert open(path).read() == "to be"


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


def test_a_copy_the_user_placed_in_the_cache_is_refused_and_never_removed(corpus_cache):
    """tinyshakespeare.txt with Windows line ends, placed where the README says: not the
    registered text, so not used as it; but the user's file, so left exactly as it is."""
    placed = corpus_cache / "tinyshakespeare.txt"
    crlf = placed.read_bytes().replace(b"\n", b"\r\n")
    placed.write_bytes(crlf)
    with pytest.raises(CharRNNError, match=r"is not 'tinyshakespeare' as published .* Windows line ends.*left as it "
                                           r"is") as info:
        corpus.resolve_sources("tinyshakespeare")
    assert info.value.exit_status == 2 and placed.read_bytes() == crlf
    assert corpus.resolve_sources(str(placed)) == [str(placed)]  # as a text of the user's own, as it says


@pytest.fixture
def web(tmp_path):
    """A local HTTP server of the files in a directory (with Last-Modified and conditional
    requests, as Python's file server answers them); yields (directory, base URL, hits)."""
    root = tmp_path / "www"
    root.mkdir()
    hits: list[str] = []

    class Files(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def send_response(self, code, message=None):
            hits.append(f"{self.command} {self.path} {code}")
            super().send_response(code, message)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}", hits, server
    server.shutdown()
    server.server_close()


def test_a_url_whose_text_changed_is_downloaded_again(web, corpus_cache, capsys):
    root, base, hits, server = web
    (root / "t.txt").write_text("first text")
    assert corpus.read_text(f"{base}/t.txt") == "first text"
    assert corpus.read_text(f"{base}/t.txt") == "first text"  # asked, not downloaded again
    assert hits[-1] == "GET /t.txt 304"
    (root / "t.txt").write_text("second text, longer")
    later = os.stat(root / "t.txt").st_mtime + 10
    os.utime(root / "t.txt", (later, later))
    assert corpus.read_text(f"{base}/t.txt") == "second text, longer"
    assert "changed since it was downloaded" in capsys.readouterr().err
    server.shutdown()  # offline: the copy, with a word
    server.server_close()
    assert corpus.read_text(f"{base}/t.txt") == "second text, longer"
    assert "could not check" in capsys.readouterr().err


@pytest.fixture
def trickle_server():
    """A server that announces 10,000 bytes and sends one every 50 ms."""

    class Trickle(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", "10000")
            self.end_headers()
            try:
                for _ in range(10000):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:  # the client gave up
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_download_that_stalls_is_given_up_and_leaves_nothing(trickle_server, corpus_cache, monkeypatch):
    monkeypatch.setattr(download, "_STALL_SECONDS", 0.5)
    monkeypatch.setattr(download, "_STALL_BYTES", 1000)  # at most 20 bytes a second come
    with pytest.raises(TryAgain, match=r"could not download .* \(the download stalled: \d+ bytes in the last 0.5 s"):
        corpus.resolve_sources(f"{trickle_server}/slow.txt")
    assert [p.name for p in corpus_cache.rglob("*") if p.is_file()] == ["tinyshakespeare.txt"]


def test_what_a_rerun_cannot_fix_exits_2_and_what_it_can_75(web, tmp_path, corpus_cache):
    root, base, _, _ = web
    cases = {f"{base}/missing.txt": "HTTP 404", (tmp_path / "missing.txt").as_uri(): "No such file or directory"}
    for url, reason in cases.items():
        with pytest.raises(CharRNNError, match=re.escape(reason)) as info:
            corpus.resolve_sources(url)
        assert info.value.exit_status == 2 and "run again" not in str(info.value)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: a connection refused may be a server restarting
    with pytest.raises(TryAgain, match="run again to retry") as info:
        corpus.resolve_sources(f"http://127.0.0.1:{port}/t.txt")
    assert info.value.exit_status == 75


def test_redirect_loops_and_bad_lengths_are_one_line(corpus_cache):
    class Odd(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path == "/loop":
                self.send_response(302)
                self.send_header("Location", "/loop")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", "twelve")
            self.end_headers()
            self.wfile.write(b"odd lengths\n")
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Odd)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(CharRNNError, match=r"could not download .*/loop \(HTTP 302") as info:
            corpus.resolve_sources(f"{base}/loop")
        assert info.value.exit_status == 2
        assert corpus.read_text(f"{base}/length.txt") == "odd lengths\n"  # a length that is none: not checked
        long_name = "a" * 300 + ".txt"  # longer than a file name may be: kept under a shorter one
        assert corpus.read_text(f"{base}/{long_name}") == "odd lengths\n"
    finally:
        server.shutdown()
        server.server_close()


def test_a_private_text_stays_private_in_the_cache(tmp_path, corpus_cache):
    """A text readable only by its owner: its id entry (the text again) and, for a file://
    URL, its downloaded copy are no more readable than it."""
    private = tmp_path / "diary.txt"
    private.write_text("dear diary, nobody reads this\n" * 20)
    private.chmod(0o600)
    idcache.encode(str(private))
    (path,) = corpus.resolve_sources(private.as_uri())
    idcache.encode(private.as_uri())
    kept = [path, *(p for p in (corpus_cache / "ids").iterdir()), *(corpus_cache / "downloads").glob(".*")]
    assert len(kept) == 4  # the copy, what was said of it, and the text's one entry (its .ids and .json)
    for file in kept:
        assert os.stat(file).st_mode & 0o077 == 0, (file, oct(os.stat(file).st_mode))


def test_a_bad_byte_right_after_a_chunk_boundary_is_placed_exactly(tmp_path, small_chunks):
    """A character that starts in one 7-byte chunk and breaks in the next: the offset is its
    first byte's in the file."""
    path = tmp_path / "bad.txt"
    path.write_bytes(b"abcde\xe6\x9dXYZ more text")  # the lead byte 0xe6 at offset 5, broken at offset 7
    with pytest.raises(CharRNNError, match=r"bad byte 0xe6 at offset 5\)"):
        corpus.read_text(str(path))


def test_a_cache_that_is_a_file_or_cannot_be_made_is_one_line(tmp_path, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    monkeypatch.setenv("CHARRNN_DATA_DIR", str(afile))
    with pytest.raises(CharRNNError, match=r"the corpus cache .*afile is a file"):
        corpus.resolve_sources("tinyshakespeare")
    monkeypatch.delenv("CHARRNN_DATA_DIR")
    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.setenv("HOME", str(afile))  # the Keras cache under a HOME that cannot hold it
    with pytest.raises(CharRNNError, match=r"cannot create the corpus cache .*; set \$CHARRNN_DATA_DIR"):
        corpus.resolve_sources("tinyshakespeare")


def test_a_cache_every_user_can_write_is_warned_about_once(tmp_path, monkeypatch, caplog):
    """A world-writable $CHARRNN_DATA_DIR (or its ids/): an entry planted there with matching
    checksums would be trained on; one warning a process, naming the directory and the fix."""
    import logging

    shared = tmp_path / "shared-cache"
    shared.mkdir()
    shared.chmod(0o777)
    text = tmp_path / "t.txt"
    text.write_text("to be or not to be\n" * 50)
    monkeypatch.setenv("CHARRNN_DATA_DIR", str(shared))
    corpus._warn_if_others_can_write.cache_clear()
    with caplog.at_level(logging.WARNING, logger="charrnn"):
        idcache.encode(str(text))
        idcache.encode(str(text))
    warnings = [r.getMessage() for r in caplog.records if "can be written by every user" in r.getMessage()]
    assert warnings == [f"the corpus cache directory {shared} can be written by every user (mode 777): a text or an "
                        f"id file there could be replaced by someone else; make it yours alone (chmod o-w {shared}) "
                        "or set $CHARRNN_DATA_DIR to a directory of yours"]
    private = tmp_path / "private-cache"
    private.mkdir(mode=0o700)
    monkeypatch.setenv("CHARRNN_DATA_DIR", str(private))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="charrnn"):
        idcache.encode(str(text))
    assert not [r for r in caplog.records if "every user" in r.getMessage()]
