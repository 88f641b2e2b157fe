"""Downloads against a test server that behaves as real ones do: an ETag and a Last-Modified
on every answer, 304 when either conditional header matches (the ETag first, as RFC 9110
says), answers that are fast and then stall, and answers that close early; the assertions
are on what the user sees (the text used, the lines logged) as well as on the requests."""

from __future__ import annotations

import email.utils
import hashlib
import http.server
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field

import pytest

from charrnn import CharRNNError, TryAgain
from charrnn.text import corpus, download


@dataclass
class Behaviour:
    """What the server does: the files it serves, whether it sends validators, and, for
    `slow` paths, how many bytes come at once before the rest trickles (one byte every
    `trickle` seconds); `cut` paths announce their length and close after half. A `portal`
    (a network's sign-in page) answers every request with its HTML page, redirected to
    /login first or served in place."""

    files: dict[str, bytes] = field(default_factory=dict)
    modified: dict[str, float] = field(default_factory=dict)
    validators: bool = True
    slow: dict[str, int] = field(default_factory=dict)
    trickle: float = 0.02
    cut: set[str] = field(default_factory=set)
    portal: str | None = None  # None, "redirect" or "in place"
    html: set[str] = field(default_factory=set)  # paths served as text/html
    requests: list[dict] = field(default_factory=list)


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:16] + '"'


@pytest.fixture
def server():
    behaviour = Behaviour()

    class Real(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 - the handler's name
            if behaviour.portal == "redirect" and self.path != "/login":
                self.send_response(302)
                self.send_header("Location", "/login")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if behaviour.portal is not None:
                self._answer(PORTAL, "text/html")
                return
            body = behaviour.files.get(self.path)
            seen = {"path": self.path, "If-None-Match": self.headers.get("If-None-Match"),
                    "If-Modified-Since": self.headers.get("If-Modified-Since")}
            if body is None:
                seen["status"] = 404
                behaviour.requests.append(seen)
                self.send_error(404)
                return
            etag = _etag(body)
            modified = email.utils.formatdate(behaviour.modified.get(self.path, 1_700_000_000), usegmt=True)
            if behaviour.validators:
                match = seen["If-None-Match"]
                since = seen["If-Modified-Since"]
                if (match is not None and etag in [t.strip() for t in match.split(",")]) or (
                        match is None and since is not None and since == modified):
                    seen["status"] = 304
                    behaviour.requests.append(seen)
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return
            seen["status"] = 200
            behaviour.requests.append(seen)
            self._answer(body, "text/html" if self.path in behaviour.html else "text/plain; charset=utf-8",
                         {"ETag": etag, "Last-Modified": modified} if behaviour.validators else {})

        def _answer(self, body: bytes, content_type: str, headers: dict | None = None) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Type", content_type)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            try:
                if self.path in behaviour.cut:
                    self.wfile.write(body[:len(body) // 2])
                    self.close_connection = True
                    return
                fast = behaviour.slow.get(self.path, len(body))
                self.wfile.write(body[:fast])
                self.wfile.flush()
                for i in range(fast, len(body)):
                    time.sleep(behaviour.trickle)
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
            except OSError:  # the client gave up
                self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Real)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield behaviour, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


TEXT = b"to be or not to be, that is the question\n" * 50
PORTAL = b"<html><body><form action=/login>Sign in to use this network</form></body></html>"


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "charrnn" and r.levelno >= logging.WARNING]


def test_a_revalidation_sends_the_etag_it_was_given_and_a_304_is_no_failure(server, corpus_cache, caplog):
    behaviour, base = server
    behaviour.files["/t.txt"] = TEXT
    assert corpus.read_text(f"{base}/t.txt") == TEXT.decode()
    first = behaviour.requests[-1]
    assert first["status"] == 200 and first["If-None-Match"] is None
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="charrnn"):
        assert corpus.read_text(f"{base}/t.txt") == TEXT.decode()
    again = behaviour.requests[-1]
    assert again["If-None-Match"] == _etag(TEXT) and again["status"] == 304
    assert again["If-Modified-Since"] == email.utils.formatdate(1_700_000_000, usegmt=True)
    assert _warnings(caplog) == [] and not any("changed" in r.getMessage() for r in caplog.records)


def test_a_changed_text_behind_the_same_url_is_downloaded_again_by_its_etag(server, corpus_cache, caplog):
    """Same length, same Last-Modified (a server that does not move it): the ETag tells."""
    behaviour, base = server
    behaviour.files["/t.txt"] = TEXT
    corpus.read_text(f"{base}/t.txt")
    behaviour.files["/t.txt"] = TEXT.replace(b"question", b"answer!!")
    with caplog.at_level(logging.INFO, logger="charrnn"):
        assert "answer!!" in corpus.read_text(f"{base}/t.txt")
    assert behaviour.requests[-1]["status"] == 200 and _warnings(caplog) == []
    assert any("changed since it was downloaded" in r.getMessage() for r in caplog.records)


def test_a_server_without_validators_is_asked_again_each_time_and_the_same_text_kept(server, corpus_cache, caplog):
    behaviour, base = server
    behaviour.validators = False
    behaviour.files["/t.txt"] = TEXT
    path = corpus.resolve_sources(f"{base}/t.txt")[0]
    before = (open(path, "rb").read(), os.stat(path).st_mtime_ns)
    with caplog.at_level(logging.INFO, logger="charrnn"):
        assert corpus.resolve_sources(f"{base}/t.txt") == [path]
    assert behaviour.requests[-1]["status"] == 200 and behaviour.requests[-1]["If-None-Match"] is None
    assert (open(path, "rb").read(), os.stat(path).st_mtime_ns) == before  # not rewritten
    assert _warnings(caplog) == []


def test_the_stall_timer_restarts_with_data_so_a_fast_then_stalled_download_is_given_up(server, corpus_cache,
                                                                                       monkeypatch):
    """4,000 bytes at once, then one byte every 20 ms: the first window is busy, the later
    ones are not, and the download is given up in the first of those (a timer that never
    restarted would count the first 4,000 bytes in every window and let it finish)."""
    behaviour, base = server
    behaviour.files["/slow.txt"] = TEXT * 2
    behaviour.slow["/slow.txt"] = 4000
    monkeypatch.setattr(download, "_STALL_SECONDS", 0.3)
    monkeypatch.setattr(download, "_STALL_BYTES", 1000)  # more than the whole trickle: stalled whatever the load
    with pytest.raises(TryAgain, match=r"the download stalled: \d+ bytes in the last 0.3 s, (4,\d{3}) in all"):
        corpus.resolve_sources(f"{base}/slow.txt")
    assert [p.name for p in corpus_cache.rglob("*") if p.is_file()] == ["tinyshakespeare.txt"]


def test_an_answer_that_closes_early_keeps_nothing_and_a_revalidation_cut_short_keeps_the_copy(server,
                                                                                             corpus_cache,
                                                                                             caplog):
    behaviour, base = server
    behaviour.files["/t.txt"] = TEXT
    behaviour.cut.add("/t.txt")
    with pytest.raises(TryAgain, match=f"the download ended after {len(TEXT) // 2:,} of {len(TEXT):,} bytes"):
        corpus.resolve_sources(f"{base}/t.txt")
    assert [p.name for p in corpus_cache.rglob("*") if p.is_file()] == ["tinyshakespeare.txt"]
    behaviour.cut.clear()
    assert corpus.read_text(f"{base}/t.txt") == TEXT.decode()
    behaviour.files["/t.txt"] = TEXT + b"more\n"  # changed, and the new answer is cut short
    behaviour.cut.add("/t.txt")
    with caplog.at_level(logging.INFO, logger="charrnn"):
        assert corpus.read_text(f"{base}/t.txt") == TEXT.decode()  # the complete copy, not half of the new one
    (warning,) = _warnings(caplog)
    assert warning.startswith(f"could not check {base}/t.txt for changes (the download ended after")


def test_a_url_that_is_gone_is_refused_without_a_retry_hint(server, corpus_cache):
    _, base = server
    with pytest.raises(CharRNNError, match=r"could not download .*/gone.txt \(HTTP 404") as info:
        corpus.resolve_sources(f"{base}/gone.txt")
    assert info.value.exit_status == 2 and "run again" not in str(info.value)


@pytest.mark.parametrize("damage", ["cut", "replaced", "edited"])
def test_a_damaged_copy_is_downloaded_again_whatever_the_server_says(server, corpus_cache, caplog, damage):
    """The copy cut to half, replaced by a captive portal's login page, or edited in place
    (same size): the server would answer 304 (its text did not change), but the copy is no
    longer the text downloaded, so it is never used: it is downloaded again, with a word."""
    behaviour, base = server
    behaviour.files["/t.txt"] = TEXT
    (path,) = corpus.resolve_sources(f"{base}/t.txt")
    damaged = {"cut": TEXT[:len(TEXT) // 2], "replaced": b"<html><body>Log in to the hotel Wi-Fi</body></html>\n",
               "edited": TEXT.replace(b"question", b"QUESTION")}[damage]
    with open(path, "wb") as f:
        f.write(damaged)
    with caplog.at_level(logging.INFO, logger="charrnn"):
        assert corpus.read_text(f"{base}/t.txt") == TEXT.decode()
    assert behaviour.requests[-1] == {"path": "/t.txt", "If-None-Match": None, "If-Modified-Since": None,
                                      "status": 200}
    (warning,) = _warnings(caplog)
    assert f"the copy of {base}/t.txt in the cache" in warning and "changed or damaged since" in warning
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="charrnn"):
        assert corpus.read_text(f"{base}/t.txt") == TEXT.decode()  # whole again: revalidated as usual
    assert behaviour.requests[-1]["status"] == 304 and _warnings(caplog) == []


def test_a_damaged_copy_while_the_server_is_away_is_refused_not_used(server, corpus_cache):
    behaviour, base = server
    behaviour.files["/t.txt"] = TEXT
    (path,) = corpus.resolve_sources(f"{base}/t.txt")
    with open(path, "wb") as f:
        f.write(TEXT[:100])
    del behaviour.files["/t.txt"]  # the URL is gone: nothing can replace the copy
    with pytest.raises(CharRNNError, match=rf"could not download {base}/t.txt to replace its damaged copy \(HTTP 404"):
        corpus.resolve_sources(f"{base}/t.txt")
    with open(path, "rb") as f:
        assert f.read() == TEXT[:100]  # left for the user to look at; not used


def test_a_host_name_that_cannot_be_looked_up_says_a_rerun_helps_once_the_network_is_back(corpus_cache,
                                                                                           monkeypatch):
    """Offline (no DNS): exit status 75 as for any passing fault, but the hint says what has to
    change first. The look-up fails in-process (socket.getaddrinfo), no query leaves."""
    import socket

    def offline(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    with pytest.raises(TryAgain, match=r"\(Name or service not known: the host's name could not be looked up\); "
                                       r"run again once the network is back, or") as info:
        corpus.resolve_sources("http://texts.example/t.txt")
    assert info.value.exit_status == 75


@pytest.mark.parametrize("portal", ["redirect", "in place"])
@pytest.mark.parametrize("damaged", [False, True])
def test_a_sign_in_page_answering_the_revalidation_never_replaces_the_text(server, corpus_cache, caplog, portal,
                                                                           damaged):
    """A captive portal answers the conditional request with its HTML page (200, after a
    redirect or in place): an intact copy is used, with a warning saying why; a damaged one
    is refused (it is not the text either), and the page is not kept in its place."""
    behaviour, base = server
    behaviour.files["/t.txt"] = TEXT
    path = download.download(f"{base}/t.txt", str(corpus_cache))
    if damaged:
        with open(path, "r+b") as f:
            f.truncate(len(TEXT) // 2)
    behaviour.portal = portal
    if damaged:
        with pytest.raises(CharRNNError, match=r"to replace its damaged copy \(the answer, from \S+, is an HTML page "
                                               r"where the text was text/plain: a network's sign-in page"):
            download.download(f"{base}/t.txt", str(corpus_cache))
        assert open(path, "rb").read() == TEXT[:len(TEXT) // 2]
        return
    with caplog.at_level(logging.INFO, logger="charrnn"):
        assert corpus.read_text(f"{base}/t.txt") == TEXT.decode()
    assert _warnings(caplog) == [f"could not check {base}/t.txt for changes (the answer, from {base}"
                                 f"{'/login' if portal == 'redirect' else '/t.txt'}, is an HTML page where the text "
                                 f"was text/plain: a network's sign-in page or an error page?); using the copy "
                                 f"downloaded {json.loads(open(download._record_path(path)).read())['downloaded']}"]
    behaviour.portal = None  # the network's sign-in done: the text is checked as before
    assert corpus.read_text(f"{base}/t.txt") == TEXT.decode() and behaviour.requests[-1]["status"] == 304


def test_the_same_text_answered_as_html_is_no_sign_in_page(server, corpus_cache, caplog):
    """A server that starts calling the same text text/html (no validators: a full answer):
    the bytes are the copy's, so it is used without a warning, and its record renewed."""
    behaviour, base = server
    behaviour.files["/t.txt"] = TEXT
    corpus.read_text(f"{base}/t.txt")
    behaviour.validators, behaviour.html = False, {"/t.txt"}
    with caplog.at_level(logging.INFO, logger="charrnn"):
        assert corpus.read_text(f"{base}/t.txt") == TEXT.decode()
    assert _warnings(caplog) == [] and behaviour.requests[-1]["status"] == 200
