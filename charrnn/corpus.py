"""Corpora: what `--data` names, downloads, and reading the text it names, checked.

`--data` is a registered name (`CORPORA`), a URL (`https://...`, `file://...`; append
`#sha256=<hex>` to have the download checked), a text file, a directory (its files in
sorted order, hidden ones skipped), a glob (matches in sorted order), or a
comma-separated list of any of these. Paths may be on any TensorFlow filesystem
(`gs://`, `ram://`, ...). The files are joined as `cat` joins them (nothing in between),
each one's leading byte-order mark dropped; the fingerprint of the corpus is that of the
joined text.

Downloads land in a file of their own and are renamed into the cache only once complete
(and checked, when a checksum is known), so a download cut short is never a corpus.
`decoded(sources)` streams the joined text in checked chunks, never holding it whole;
charrnn.idcache turns it into ids once.
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.parse
import urllib.request
from typing import Iterator

import numpy as np

from charrnn import storage
from charrnn.config import check_utf8
from charrnn.errors import CharRNNError, TryAgain
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


def cache_dir() -> str:
    """Where registered corpora, downloads and id files are kept: $CHARRNN_DATA_DIR (local, or
    on any TensorFlow filesystem), else the Keras dataset cache."""
    return os.environ.get(DATA_DIR_ENV) or _keras_cache()


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
            storage.remove(path)
            raise CharRNNError(f"the cached copy {path} of {name!r} has sha256 {digest}, expected {corpus.sha256}; "
                               f"the file was removed; run again to download it, or {hint}")
    return path


def _download(url: str) -> str:
    """A URL's file in the cache, downloaded once (checked when the URL ends in #sha256=<hex>)."""
    parts = urllib.parse.urlsplit(url)
    expected = urllib.parse.parse_qs(parts.fragment).get("sha256", [None])[0]
    origin = urllib.parse.urlunsplit(parts._replace(fragment=""))
    name = os.path.basename(parts.path) or "download.txt"
    path = os.path.join(cache_dir(), "downloads", f"{hashlib.sha256(origin.encode()).hexdigest()[:12]}-{name}")
    if not storage.exists(path):
        _fetch(origin, path, expected and expected.lower(), f"could not download {origin}",
               "check the URL, or download it and pass the file")
    elif expected is not None and (digest := _sha256(path)) != expected.lower():
        storage.remove(path)
        raise CharRNNError(f"the cached download {path} of {origin} has sha256 {digest}, expected {expected}; it was "
                           "removed: run again to download it again")
    return path


def _fetch(url: str, path: str, sha256: str | None, failure: str, hint: str) -> None:
    """Downloads `url` to `path`: into a file of its own (see part_name; on the local disk
    where `path` is elsewhere), checked against the length the server announced and
    against `sha256` when given, then renamed (or copied) into place. A download cut short
    or refused leaves nothing behind."""
    local_dir = os.path.dirname(path) if is_local(path) else tempfile.gettempdir()
    os.makedirs(local_dir, exist_ok=True)
    storage.remove_dead_parts(local_dir)
    part = storage.part_name(os.path.join(local_dir, os.path.basename(path)))
    digest, size = hashlib.sha256(), 0
    print(f"charrnn: downloading {url}", file=sys.stderr, flush=True)
    try:
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as f:  # noqa: S310 - the user's URL
                announced = response.headers.get("Content-Length")
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                f.flush()
                os.fsync(f.fileno())
        except (OSError, http.client.HTTPException, ValueError) as e:  # URLError is an OSError
            reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise TryAgain(f"{failure} ({reason}); run again to retry, or {hint}") from None
        if announced is not None and size != int(announced):
            raise TryAgain(f"{failure} (the download ended after {size:,} of {int(announced):,} bytes); run again to "
                           f"retry, or {hint}")
        if sha256 is not None and digest.hexdigest() != sha256:
            raise CharRNNError(f"the download of {url} has sha256 {digest.hexdigest()}, expected {sha256}; it was not "
                               f"kept; {hint}")
        if is_local(path):
            os.replace(part, path)
        else:
            with open(part, "rb") as f:
                storage.write_atomic(path, f.read())
    finally:
        if os.path.exists(part):
            os.remove(part)
    print(f"charrnn: downloaded {size:,} bytes to {path}", file=sys.stderr, flush=True)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with storage.open_read(path) as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def raw_chunks(sources: list[str]) -> Iterator[tuple[str, int, bytes]]:
    """(source, offset in it, bytes) of the joined text, each source's leading BOM dropped."""
    for source in sources:
        try:
            with storage.open_read(source) as f:
                offset = 0
                while chunk := f.read(CHUNK):
                    if offset == 0 and chunk.startswith(_BOM):
                        chunk, offset = chunk[len(_BOM):], len(_BOM)
                    yield source, offset, chunk
                    offset += len(chunk)
        except CharRNNError:
            raise
        except Exception as e:  # noqa: BLE001 - OSError, or tf.errors.OpError on another filesystem
            cause = e.strerror if isinstance(e, OSError) else str(e).strip().splitlines()[0]
            raise CharRNNError(f"cannot read {source} ({cause}); pass a readable UTF-8 text file") from None


def decoded(sources: list[str]) -> Iterator[tuple[bytes, np.ndarray | None]]:
    """(bytes, code points or None) per chunk of the joined text, checked: no NUL byte, valid
    UTF-8. Pure ASCII chunks are not decoded (their bytes are their code points)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    previous = None
    for source, offset, chunk in raw_chunks(sources):
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
        try:
            text = decoder.decode(chunk)
        except UnicodeDecodeError as e:
            pending = len(decoder.getstate()[0]) if e.start < 0 else 0
            raise CharRNNError(f"{source} is not valid UTF-8 (bad byte 0x{e.object[e.start]:02x} at offset "
                               f"{offset + e.start - pending}); convert it to UTF-8 first") from None
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
