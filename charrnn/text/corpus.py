"""Corpora: what `--data` names, downloads, and reading the text it names, checked.

`--data` is a registered name (`CORPORA`), a URL (`https://...`, `file://...`; append
`#sha256=<hex>` to have the download checked), a text file, a directory (its files in
sorted order, hidden ones skipped), a glob (matches in sorted order), or a
comma-separated list of any of these. Paths may be on any TensorFlow filesystem
(`gs://`, `ram://`, ...). The files are joined as `cat` joins them (nothing in between),
each one's leading byte-order mark dropped; the fingerprint of the corpus is that of the
joined text.

Downloads go through charrnn.text.download into the cache (`cache_dir()`). A file of the cache
that charrnn did not download (a copy the user placed there) is used as it is, or refused,
never removed.
`decoded(sources)` streams the joined text in checked chunks, never holding it whole;
charrnn.text.idcache turns it into ids once.
"""

from __future__ import annotations

import codecs
import dataclasses
import functools
import os
import stat
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

import numpy as np

from charrnn import storage
from charrnn.errors import CharRNNError
from charrnn.log import logger
from charrnn.progress import Progress
from charrnn.storage import is_local
from charrnn.text import download
from charrnn.text.download import DATA_DIR_ENV
from charrnn.validate import check_utf8


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

CHUNK = 16 << 20  # bytes read at a time
_BOM = codecs.BOM_UTF8


def cache_dir() -> str:
    """Where registered corpora, downloads and id files are kept: $CHARRNN_DATA_DIR (local, or
    on any TensorFlow filesystem), else the Keras dataset cache. A one-line error if it is a file."""
    path = os.environ.get(DATA_DIR_ENV) or _keras_cache()
    if is_local(path) and os.path.exists(path) and not os.path.isdir(path):
        raise CharRNNError(f"the corpus cache {path} is a file (${DATA_DIR_ENV} or the Keras cache); point "
                           f"${DATA_DIR_ENV} at a directory")
    if is_local(path):
        for directory in (path, os.path.join(path, "ids"), os.path.join(path, "downloads")):
            _warn_if_others_can_write(directory)
    return path


@functools.cache
def _warn_if_others_can_write(directory: str) -> None:
    """Warns, once a process, that `directory` of the cache can be written by every user: an
    entry planted or replaced there, with checksums made to match, would be trained on."""
    try:
        mode = os.stat(directory).st_mode
    except OSError:
        return
    if mode & stat.S_IWOTH:
        logger.warning(f"the corpus cache directory {directory} can be written by every user (mode "
                       f"{stat.S_IMODE(mode):o}): a text or an id file there could be replaced by someone else; "
                       f"make it yours alone (chmod o-w {directory}) or set ${DATA_DIR_ENV} to a directory of yours")


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
        return [download.download(data, cache_dir())] if fetch else []
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
        download.fetch(corpus.url, path, corpus.sha256, f"corpus {name!r} is not in the cache and could not be "
                       f"downloaded from {corpus.url}", hint)
    elif corpus.sha256 is not None:
        digest = download.sha256_of(path)
        if digest != corpus.sha256:
            # Downloads are checked before they are kept: this is a file placed there, the user's.
            raise CharRNNError(f"{path} is not {name!r} as published (sha256 {digest}, expected {corpus.sha256}: "
                               "another text, or another copy such as one with Windows line ends); it was left as "
                               f"it is: replace it with the file from {corpus.url}, or pass --data={path} to train on "
                               "it as a text of your own")
    else:
        download.revalidate(corpus.url, path, hint)
    return path


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
