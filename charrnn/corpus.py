"""Corpora: what `--data` names, downloads, and reading the text it names, checked.

`--data` is a registered name (`CORPORA`), a URL (`https://...`, `file://...`; append
`#sha256=<hex>` to have the download checked), a text file, a directory (its files in
sorted order, hidden ones skipped), a glob (matches in sorted order), or a
comma-separated list of any of these. Paths may be on any TensorFlow filesystem
(`gs://`, `ram://`, ...). The files are joined as `cat` joins them (nothing in between),
each one's leading byte-order mark dropped; the fingerprint of the corpus is that of the
joined text.

Downloads land in a file of their own and are renamed into the cache only once complete
(and checked, when a checksum is known), so a download cut short is never a corpus. A
download without a checksum is checked against its URL at each use (a conditional
request: a text that changed there is downloaded again). A file of the cache that charrnn
did not download (a copy the user placed there) is used as it is, or refused, never
removed. Copies in the cache keep the permissions of a local source (a private text stays
private).
`decoded(sources)` streams the joined text in checked chunks, never holding it whole;
charrnn.idcache turns it into ids once.
"""

from __future__ import annotations

import codecs
import dataclasses
import datetime
import errno
import hashlib
import http.client
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

import numpy as np

from charrnn import storage
from charrnn.config import check_utf8
from charrnn.errors import CharRNNError, TryAgain
from charrnn.progress import Progress
from charrnn.storage import is_local


@dataclasses.dataclass(frozen=True)
class Corpus:
    """A downloadable text corpus; `sha256` is None where none is published."""

    url: str
    sha256: str | None


CORPORA: dict[str, Corpus] = {
    "tinyshakespeare": Corpus(
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    ),
    # The case study's own file; its host publishes no checksum.
    "shakespeare": Corpus(url="https://cs.stanford.edu/people/karpathy/char-rnn/shakespear.txt", sha256=None),
}

DATA_DIR_ENV = "CHARRNN_DATA_DIR"
CHUNK = 16 << 20  # bytes read at a time
_BOM = codecs.BOM_UTF8
# A download that brings fewer than _STALL_BYTES in _STALL_SECONDS is given up (a server
# trickling a byte at a time would otherwise hold it forever: the socket's timeout is per read).
_STALL_SECONDS, _STALL_BYTES = 60.0, 16 << 10
# The longest file name a download is kept under (the URL's own name is cut to fit).
_NAME_LIMIT = 100


def cache_dir() -> str:
    """Where registered corpora, downloads and id files are kept: $CHARRNN_DATA_DIR (local, or
    on any TensorFlow filesystem), else the Keras dataset cache. A one-line error if it is a file."""
    path = os.environ.get(DATA_DIR_ENV) or _keras_cache()
    if is_local(path) and os.path.exists(path) and not os.path.isdir(path):
        raise CharRNNError(f"the corpus cache {path} is a file (${DATA_DIR_ENV} or the Keras cache); point "
                           f"${DATA_DIR_ENV} at a directory")
    return path


def local_cache_dir() -> str:
    """Where what must be on the local disk is kept (id files, memory-mapped): the cache, or
    the Keras dataset cache when $CHARRNN_DATA_DIR is elsewhere (gs://, ...)."""
    return cache_dir() if is_local(cache_dir()) else _keras_cache()


def _keras_cache() -> str:
    keras_home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return os.path.join(keras_home, "datasets", "charrnn")


def resolve_sources(data: str, fetch: bool = True) -> list[str]:
    """The text files `data` names, in the order they are joined (see the module docstring).
    Without `fetch`, only what needs neither a download nor TensorFlow is resolved (and
    checked): the local files, directories and globs; the rest is left out."""
    if not check_utf8("--data", data).strip():
        raise CharRNNError("--data is empty; pass a text file, a directory, a glob, a URL or a registered corpus")
    sources = []
    for part in (p.strip() for p in data.split(",")):
        if not part:
            raise CharRNNError(f"--data {data!r} has an empty entry; separate files with single commas")
        sources += _resolve_one(part, fetch)
    return sources


def _resolve_one(data: str, fetch: bool) -> list[str]:
    scheme = urllib.parse.urlsplit(data).scheme
    if scheme in ("http", "https", "file", "ftp"):
        return [_download(data)] if fetch else []
    if not fetch and not is_local(data):
        return []
    if storage.exists(data):
        if storage.isdir(data):
            names = sorted(n for n in storage.listdir(data) if not n.startswith("."))
            files = [f"{data.rstrip('/')}/{n}" for n in names if not storage.isdir(f"{data.rstrip('/')}/{n}")]
            if not files:
                raise CharRNNError(f"--data directory {data} holds no files; put text files in it")
            return [_regular(f) for f in files]
        return [_regular(data)]
    if any(c in data for c in "*?["):
        matches = sorted(m for m in storage.glob(data) if not storage.isdir(m))
        if not matches:
            raise CharRNNError(f"--data pattern {data!r} matches no file")
        return [_regular(m) for m in matches]
    if data in CORPORA:
        return [_registered(data)] if fetch else []
    raise CharRNNError(f"--data {data!r} is neither an existing file, directory or glob nor a registered corpus; "
                       f"pass a UTF-8 text file, a URL or one of: {', '.join(CORPORA)}")


def _regular(path: str) -> str:
    if is_local(path) and not os.path.isfile(path):
        raise CharRNNError(f"--data {path!r} is not a regular file (a device, pipe or socket); pass a UTF-8 text file")
    return path


def _registered(name: str) -> str:
    """The cached copy of corpus `name`, downloaded if missing and checked against its
    sha256 at every use (a truncated or altered copy is caught)."""
    corpus = CORPORA[name]
    path = os.path.join(cache_dir(), f"{name}.txt")
    hint = (f"pass --data=<path to a text file>, or place the file at {path} (or set ${DATA_DIR_ENV} to a directory "
            f"holding {name}.txt)")
    if not storage.exists(path):
        _fetch(corpus.url, path, corpus.sha256, f"corpus {name!r} is not in the cache and could not be downloaded "
               f"from {corpus.url}", hint)
    elif corpus.sha256 is not None:
        digest = _sha256(path)
        if digest != corpus.sha256:
            # Downloads are checked before they are kept: this is a file placed there, the user's.
            raise CharRNNError(f"{path} is not {name!r} as published (sha256 {digest}, expected {corpus.sha256}: "
                               "another text, or another copy such as one with Windows line ends); it was left as "
                               f"it is: replace it with the file from {corpus.url}, or pass --data={path} to train on "
                               "it as a text of your own")
    else:
        _revalidate(corpus.url, path, hint)
    return path


def _download(url: str) -> str:
    """A URL's file in the cache, downloaded once (checked when the URL ends in #sha256=<hex>)."""
    parts = urllib.parse.urlsplit(url)
    expected = urllib.parse.parse_qs(parts.fragment).get("sha256", [None])[0]
    origin = urllib.parse.urlunsplit(parts._replace(fragment=""))
    name = os.path.basename(parts.path) or "download.txt"
    if len(name) > _NAME_LIMIT:
        stem, dot, extension = name.rpartition(".")
        name = (stem[:_NAME_LIMIT - len(extension) - 1] + dot + extension) if dot and len(extension) < 10 else \
            name[:_NAME_LIMIT]
    path = os.path.join(cache_dir(), "downloads", f"{hashlib.sha256(origin.encode()).hexdigest()[:12]}-{name}")
    hint = "check the URL, or download it and pass the file"
    if not storage.exists(path):
        _fetch(origin, path, expected and expected.lower(), f"could not download {origin}", hint)
    elif expected is not None:
        if (digest := _sha256(path)) != expected.lower():  # charrnn's own download, damaged since
            storage.remove(path)
            raise CharRNNError(f"the cached download {path} of {origin} has sha256 {digest}, expected {expected}; it "
                               "was removed: run again to download it again")
    else:
        _revalidate(origin, path, hint)
    return path


def _revalidate(url: str, path: str, hint: str) -> None:
    """Downloads `url` again to `path` if its text changed since charrnn downloaded it there (a
    conditional request with what the server said of that download; a file without that
    record is not charrnn's download and is used as it is). When the server cannot be
    asked, the copy is used, with a warning."""
    record = _read_record(path)
    if record is None:
        return
    headers = {key: record[field] for key, field in (("If-None-Match", "etag"), ("If-Modified-Since",
                                                                                  "last_modified"))
        if record.get(field)}
    try:
        changed = _fetch(url, path, None, f"could not download {url}", hint, headers=headers, quiet_if_same=True)
    except CharRNNError as e:
        print(f"charrnn: warning: could not check {url} for changes ({_reason_of(e)}); using the copy downloaded "
              f"{record.get('downloaded', 'earlier')}", file=sys.stderr)
        return
    if changed:
        print(f"charrnn: {url} changed since it was downloaded {record.get('downloaded', 'earlier')}; "
              f"using its new text", file=sys.stderr)


def _reason_of(error: CharRNNError) -> str:
    message = str(error)
    return message[message.find("(") + 1:message.find(")")] if "(" in message else message


def _fetch(url: str, path: str, sha256: str | None, failure: str, hint: str, headers: dict | None = None,
           quiet_if_same: bool = False) -> bool:
    """Downloads `url` to `path`: into a file of its own (see part_name; on the local disk
    where `path` is elsewhere), checked against the length the server announced and
    against `sha256` when given, then renamed (or copied) into place, with a record of what
    the server said of it (for _revalidate). A download cut short, stalled or refused
    leaves nothing behind. With `headers` (a conditional request) a "not modified" answer,
    or the same text again, leaves `path` as it is. Returns whether `path` changed.

    What a rerun may get past (a lost connection, a server error, a download cut short) is
    a TryAgain (exit 75); what it cannot (a 404, a missing file:// path, a redirect loop, a
    checksum that does not match) a CharRNNError (exit 2)."""
    local_dir = os.path.dirname(path) if is_local(path) else tempfile.gettempdir()
    try:
        os.makedirs(local_dir, exist_ok=True)
    except OSError as e:
        raise CharRNNError(f"cannot create the corpus cache {local_dir} ({e.strerror}); set ${DATA_DIR_ENV} to a "
                           "writable directory") from None
    storage.remove_dead_parts(local_dir)
    part = storage.part_name(os.path.join(local_dir, os.path.basename(path)))
    digest, size = hashlib.sha256(), 0
    if not quiet_if_same:
        print(f"charrnn: downloading {url}", file=sys.stderr, flush=True)
    try:
        try:
            request = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(request, timeout=60) as response, open(part, "wb") as f:  # noqa: S310
                announced = _content_length(response.headers.get("Content-Length"))
                validators = {"etag": response.headers.get("ETag"),
                              "last_modified": response.headers.get("Last-Modified")}
                window_start, window_bytes = time.monotonic(), 0
                progress = Progress(f"downloading {url}", announced or 0)
                while chunk := response.read1(1 << 16):  # what has come: a stall is seen as it happens
                    f.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    window_bytes += len(chunk)
                    progress.update(size)
                    if time.monotonic() - window_start >= _STALL_SECONDS:
                        if window_bytes < _STALL_BYTES:
                            raise TryAgain(f"{failure} (the download stalled: {window_bytes:,} bytes in the last "
                                           f"{_STALL_SECONDS:g} s, {size:,} in all); run again to retry, or {hint}")
                        window_start, window_bytes = time.monotonic(), 0
                f.flush()
                os.fsync(f.fileno())
        except urllib.error.HTTPError as e:
            if e.code == 304 and headers:  # not modified since the download charrnn has
                return False
            error = TryAgain if e.code >= 500 or e.code in (408, 425, 429) else CharRNNError
            again = "run again to retry, or " if error is TryAgain else ""
            raise error(f"{failure} (HTTP {e.code} {e.reason}); {again}{hint}") from None
        except TryAgain:
            raise
        except (OSError, http.client.HTTPException, ValueError) as e:  # URLError is an OSError
            raise _download_error(e, failure, hint) from None
        if announced is not None and size != announced:
            raise TryAgain(f"{failure} (the download ended after {size:,} of {announced:,} bytes); run again to "
                           f"retry, or {hint}")
        if sha256 is not None and digest.hexdigest() != sha256:
            raise CharRNNError(f"the download of {url} has sha256 {digest.hexdigest()}, expected {sha256}; it was not "
                               f"kept; {hint}")
        record = {"url": url, "sha256": digest.hexdigest(), "size": size, **validators,
                  "downloaded": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        previous = _read_record(path)
        source = _local_source(url)
        if previous is not None and previous.get("sha256") == record["sha256"] and storage.exists(path):
            _write_record(path, record, source)  # the same text: what the server says of it now
            return False
        if source is not None:  # a copy of a local file is no more readable than it (its owner's aside)
            os.chmod(part, os.stat(part).st_mode & (storage.common_mode([source]) or 0o777) & 0o777 | 0o600)
        if is_local(path):
            os.replace(part, path)
        else:
            with open(part, "rb") as f:
                storage.write_atomic(path, f.read())
        _write_record(path, record, source)
    finally:
        if os.path.exists(part):
            os.remove(part)
    if not quiet_if_same:
        print(f"charrnn: downloaded {size:,} bytes to {path}", file=sys.stderr, flush=True)
    return True


def _content_length(value: str | None) -> int | None:
    """The length a server announced, or None where it announced none, or none that is a length."""
    try:
        length = int(value) if value is not None else None
    except ValueError:
        return None
    return length if length is not None and length >= 0 else None


def _download_error(error: BaseException, failure: str, hint: str) -> CharRNNError:
    """A failed download's one-line error: TryAgain for what a rerun may get past (a lost or
    refused connection, a timeout, a reply cut short), else a CharRNNError (a missing
    file:// path, a redirect loop, a name the filesystem refuses, a malformed URL)."""
    reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or str(error) or type(error).__name__
    cause = reason if isinstance(reason, BaseException) else error
    permanent = isinstance(error, ValueError) or (
        isinstance(cause, OSError) and cause.errno in (errno.ENOENT, errno.ENAMETOOLONG, errno.EISDIR, errno.ENOTDIR,
                                                      errno.EACCES, errno.EPERM))
    if permanent:
        return CharRNNError(f"{failure} ({getattr(cause, 'strerror', None) or reason}); {hint}")
    return TryAgain(f"{failure} ({getattr(cause, 'strerror', None) or reason}); run again to retry, or {hint}")


def _local_source(url: str) -> str | None:
    """The local file a file:// URL names (None for other URLs)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.request.url2pathname(parts.path) if parts.scheme == "file" else None


def _record_path(path: str) -> str:
    """Where charrnn keeps what the server said of the download at `path`."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.download.json")


def _write_record(path: str, record: dict, source: str | None) -> None:
    """Writes what the server said of the download at `path`, as private as a local source."""
    storage.write_atomic(_record_path(path), json.dumps(record))
    if source is not None and is_local(path):
        os.chmod(_record_path(path), os.stat(_record_path(path)).st_mode & (storage.common_mode([source]) or 0o777)
                 | 0o600)


def _read_record(path: str) -> dict | None:
    try:
        record = json.loads(storage.read_bytes(_record_path(path), 1 << 20) or b"null")
    except (ValueError, CharRNNError, OSError):
        return None
    return record if isinstance(record, dict) else None


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with storage.open_read(path) as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def raw_chunks(sources: list[str], doing: str | None = None) -> Iterator[tuple[str, int, bytes]]:
    """(source, offset in it, bytes) of the joined text, each source's leading BOM dropped;
    a long read shows progress (charrnn.progress) when it says what it is `doing`."""
    progress = Progress(doing, sum(storage.size(s) for s in sources)) if doing else None
    done = 0
    for source in sources:
        try:
            with storage.open_read(source) as f:
                offset = 0
                while chunk := f.read(CHUNK):
                    done += len(chunk)
                    if offset == 0 and chunk.startswith(_BOM):
                        chunk, offset = chunk[len(_BOM):], len(_BOM)
                    yield source, offset, chunk
                    offset += len(chunk)
                    if progress is not None:
                        progress.update(done)
        except CharRNNError:
            raise
        except Exception as e:  # noqa: BLE001 - OSError, or tf.errors.OpError on another filesystem
            cause = e.strerror if isinstance(e, OSError) else str(e).strip().splitlines()[0]
            raise CharRNNError(f"cannot read {source} ({cause}); pass a readable UTF-8 text file") from None


def decoded(sources: list[str], doing: str | None = None) -> Iterator[tuple[bytes, np.ndarray | None]]:
    """(bytes, code points or None) per chunk of the joined text, checked: no NUL byte, valid
    UTF-8. Pure ASCII chunks are not decoded (their bytes are their code points)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    previous = None
    for source, offset, chunk in raw_chunks(sources, doing):
        if source != previous:
            if previous is not None:
                _finish(decoder, previous)
            previous = source
        nul = chunk.find(b"\x00")
        if nul >= 0:
            raise CharRNNError(f"{source} looks binary (NUL byte at offset {offset + nul}); pass a UTF-8 text file")
        if chunk.isascii() and not decoder.getstate()[0]:
            yield chunk, None
            continue
        pending = len(decoder.getstate()[0])  # the bytes of a character the previous chunk began
        try:
            text = decoder.decode(chunk)
        except UnicodeDecodeError as e:  # e.start counts from the first pending byte
            raise CharRNNError(f"{source} is not valid UTF-8 (bad byte 0x{e.object[e.start]:02x} at offset "
                               f"{offset - pending + e.start}); convert it to UTF-8 first") from None
        yield chunk, np.frombuffer(text.encode("utf-32-le"), np.uint32)
    if previous is not None:
        _finish(decoder, previous)


def _finish(decoder: codecs.IncrementalDecoder, source: str) -> None:
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise CharRNNError(f"{source} is not valid UTF-8 (it ends inside a character); convert it to UTF-8 "
                           "first") from None
    decoder.reset()


def read_text(data: str) -> str:
    """The whole joined text `data` names (for small texts: evaluation, tests)."""
    sources = resolve_sources(data)
    parts = [chunk.decode("ascii") if cps is None else cps.tobytes().decode("utf-32-le")
             for chunk, cps in decoded(sources)]
    text = "".join(parts)
    if not text:
        raise empty_text(data)
    return text


def empty_text(data: str) -> CharRNNError:
    """The error for a text that holds nothing."""
    return CharRNNError(f"{data} holds no text (empty, or only a byte-order mark); pass a file with some text in it")
