"""Corpora: what `--data` names, and its text encoded once into a cached id file.

`--data` is a registered name (`CORPORA`), a URL (`https://...`, `file://...`; append
`#sha256=<hex>` to have the download checked), a text file, a directory (its files in
sorted order, hidden ones skipped), a glob (matches in sorted order), or a
comma-separated list of any of these. Paths may be on any TensorFlow filesystem
(`gs://`, `ram://`, ...). The files are joined as `cat` joins them (nothing in between),
each one's leading byte-order mark dropped; the fingerprint of the corpus is that of the
joined text.

`encode(data)` streams the text in chunks, never holding it whole: a hash pass names it;
if the id cache (`<cache_dir>/ids/`) holds that text, its ids are used as they are; else
one pass checks the text and collects its characters (the vocabulary) and one writes the
ids (one byte per character up to 256 characters, two up to 65,536, else four). Local id
files are memory-mapped, so memory does not grow with the corpus.
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import urllib.parse

import keras
import numpy as np
import tensorflow as tf

from charrnn.data import Vocabulary
from charrnn.errors import CharRNNError
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
_CHUNK = 16 << 20  # bytes read at a time
_BOM = codecs.BOM_UTF8
_MAX_CODEPOINT = 0x110000


def cache_dir() -> str:
    """Where registered corpora, downloads and id files are kept: $CHARRNN_DATA_DIR, else
    the Keras dataset cache."""
    if os.environ.get(DATA_DIR_ENV):
        return os.environ[DATA_DIR_ENV]
    keras_home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return os.path.join(keras_home, "datasets", "charrnn")


def resolve_sources(data: str) -> list[str]:
    """The text files `data` names, in the order they are joined (see the module docstring)."""
    if not data.strip():
        raise CharRNNError("--data is empty; pass a text file, a directory, a glob, a URL or a registered corpus")
    sources = []
    for part in (p.strip() for p in data.split(",")):
        if not part:
            raise CharRNNError(f"--data {data!r} has an empty entry; separate files with single commas")
        sources += _resolve_one(part)
    return sources


def _resolve_one(data: str) -> list[str]:
    scheme = urllib.parse.urlsplit(data).scheme
    if scheme in ("http", "https", "file", "ftp"):
        return [_download(data)]
    if tf.io.gfile.exists(data):
        if tf.io.gfile.isdir(data):
            names = sorted(n.rstrip("/") for n in tf.io.gfile.listdir(data) if not n.startswith("."))
            files = [f"{data.rstrip('/')}/{n}" for n in names if not tf.io.gfile.isdir(f"{data.rstrip('/')}/{n}")]
            if not files:
                raise CharRNNError(f"--data directory {data} holds no files; put text files in it")
            return [_regular(f) for f in files]
        return [_regular(data)]
    if any(c in data for c in "*?["):
        matches = sorted(m for m in tf.io.gfile.glob(data) if not tf.io.gfile.isdir(m))
        if not matches:
            raise CharRNNError(f"--data pattern {data!r} matches no file")
        return [_regular(m) for m in matches]
    if data in CORPORA:
        return [_registered(data)]
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
    fresh = not tf.io.gfile.exists(path)
    if fresh:
        _fetch(corpus.url, path, f"corpus {name!r} is not in the cache and could not be downloaded from "
               f"{corpus.url}", hint)
    if corpus.sha256 is not None:
        digest = _sha256(path)
        if digest != corpus.sha256:
            tf.io.gfile.remove(path)
            what = f"download of corpus {name!r} from {corpus.url}" if fresh else f"the cached copy {path} of {name!r}"
            raise CharRNNError(f"{what} has sha256 {digest}, expected {corpus.sha256}; the file was removed; run "
                               f"again to download it, or {hint}")
    return path


def _download(url: str) -> str:
    """A URL's file in the cache, downloaded once (checked when the URL ends in #sha256=<hex>)."""
    parts = urllib.parse.urlsplit(url)
    expected = urllib.parse.parse_qs(parts.fragment).get("sha256", [None])[0]
    origin = urllib.parse.urlunsplit(parts._replace(fragment=""))
    name = os.path.basename(parts.path) or "download.txt"
    path = os.path.join(cache_dir(), "downloads", f"{hashlib.sha256(origin.encode()).hexdigest()[:12]}-{name}")
    if not tf.io.gfile.exists(path):
        _fetch(origin, path, f"could not download {origin}", "check the URL, or download it and pass the file")
    if expected is not None:
        digest = _sha256(path)
        if digest != expected.lower():
            tf.io.gfile.remove(path)
            raise CharRNNError(f"{origin} has sha256 {digest}, expected {expected}; the file was not kept")
    return path


def _fetch(url: str, path: str, failure: str, hint: str) -> None:
    """Downloads `url` to `path` with keras.utils.get_file, which leaves no partial file
    (on a local disk first where `path` is on another filesystem)."""
    local = is_local(path)
    directory = os.path.dirname(path) if local else tempfile.mkdtemp(prefix="charrnn_download_")
    try:
        os.makedirs(directory, exist_ok=True)  # get_file writes elsewhere if it does not exist
        got = keras.utils.get_file(fname=os.path.basename(path), origin=url, cache_dir=directory, cache_subdir="")
        if not local:
            tf.io.gfile.makedirs(path.rsplit("/", 1)[0])
            tf.io.gfile.copy(got, path, overwrite=True)
    except Exception as e:  # noqa: BLE001 - get_file raises bare Exceptions for network failures
        reason = str(e).split(" -- ")[-1] or type(e).__name__
        raise CharRNNError(f"{failure} ({reason}); {hint}") from None
    finally:
        if not local:
            shutil.rmtree(directory, ignore_errors=True)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _chunks(sources: list[str]):
    """(source, offset in it, bytes) of the joined text, each source's leading BOM dropped."""
    for source in sources:
        try:
            with tf.io.gfile.GFile(source, "rb") as f:
                offset = 0
                while chunk := f.read(_CHUNK):
                    if offset == 0 and chunk.startswith(_BOM):
                        chunk, offset = chunk[len(_BOM):], len(_BOM)
                    yield source, offset, chunk
                    offset += len(chunk)
        except tf.errors.OpError as e:
            raise CharRNNError(f"cannot read {source} ({e.message.splitlines()[0]}); pass a readable UTF-8 text "
                               "file") from None


def _decoded(sources: list[str]):
    """(bytes, codepoints or None) per chunk, checked: no NUL byte, valid UTF-8. Pure ASCII
    chunks are not decoded (their bytes are their code points)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    previous = None
    for source, offset, chunk in _chunks(sources):
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
             for chunk, cps in _decoded(sources)]
    return _nonempty("".join(parts), data, sources)


def _nonempty(text: str, data: str, sources: list[str]) -> str:
    if not text:
        raise CharRNNError(f"{data} holds no text (empty{', or only a byte-order mark' if sources else ''}); pass a "
                           "file with some text in it")
    return text


@dataclasses.dataclass(frozen=True)
class Encoded:
    """A corpus as ids: `ids` (a read-only NumPy array, memory-mapped when the id cache is
    local), its `vocab` and the `fingerprint` of its text."""

    ids: np.ndarray
    vocab: Vocabulary
    fingerprint: str


def encode(data: str, base: Vocabulary | None = None) -> Encoded:
    """The ids of the text `data` names, from the id cache or encoded into it (see module).

    The vocabulary is the text's characters, or with `base` (fine-tuning), the union of
    `base`'s characters and the text's.
    """
    sources = resolve_sources(data)
    digest = hashlib.sha256()
    for _, _, chunk in _chunks(sources):
        digest.update(chunk)
    key = digest.hexdigest()
    name = key[:32] if base is None else f"{key[:32]}-{base.fingerprint[:8]}"
    path = f"{cache_dir().rstrip('/')}/ids/{name}"
    cached = _load(path, key)
    if cached is not None:
        return cached
    seen = np.zeros(_MAX_CODEPOINT, bool)
    empty = True
    for chunk, cps in _decoded(sources):
        counts = np.bincount(np.frombuffer(chunk, np.uint8) if cps is None else cps)
        seen[:len(counts)] |= counts > 0
        empty = empty and not len(chunk)
    if empty:
        _nonempty("", data, sources)
    if base is not None:
        seen[[ord(c) for c in base.chars]] = True
    chars = [chr(c) for c in np.flatnonzero(seen)]
    vocab = Vocabulary(chars)
    dtype = np.uint8 if len(chars) <= 256 else np.uint16 if len(chars) <= 65536 else np.uint32
    table = np.zeros(_MAX_CODEPOINT, dtype)
    table[np.flatnonzero(seen)] = np.arange(len(chars), dtype=dtype)
    try:
        return _write(path, key, sources, vocab, table)
    except (OSError, tf.errors.OpError) as e:
        # No writable cache: the ids in memory, as one array.
        print(f"charrnn: warning: cannot write the id cache {path}.ids ({e}); keeping the ids in memory",
              file=sys.stderr)
        ids = np.concatenate([table[np.frombuffer(chunk, np.uint8) if cps is None else cps]
                              for chunk, cps in _decoded(sources)])
        return Encoded(ids, vocab, key[:16])


def _write(base: str, key: str, sources: list[str], vocab: Vocabulary, table: np.ndarray) -> Encoded:
    tf.io.gfile.makedirs(base.rsplit("/", 1)[0])
    part = f"{base}.ids.{os.getpid()}.part"  # two processes may encode the same text at once
    length = 0
    with tf.io.gfile.GFile(part, "wb") as f:
        for chunk, cps in _decoded(sources):
            ids = table[np.frombuffer(chunk, np.uint8) if cps is None else cps]
            f.write(ids.tobytes())
            length += len(ids)
    tf.io.gfile.rename(part, f"{base}.ids", overwrite=True)
    header = {"chars": "".join(vocab.chars), "dtype": np.dtype(table.dtype).name, "length": length, "sha256": key}
    with tf.io.gfile.GFile(f"{part}.json", "w") as f:
        f.write(json.dumps(header, ensure_ascii=False))
    tf.io.gfile.rename(f"{part}.json", f"{base}.json", overwrite=True)
    return _load(base, key)


def _load(base: str, key: str) -> Encoded | None:
    """The cached ids of the text with sha256 `key`, or None (missing, or not whole)."""
    try:
        with tf.io.gfile.GFile(f"{base}.json", "r") as f:
            header = json.loads(f.read())
        dtype, length = np.dtype(header["dtype"]), int(header["length"])
        if header["sha256"] != key or tf.io.gfile.stat(f"{base}.ids").length != length * dtype.itemsize:
            return None
        vocab = Vocabulary(list(header["chars"]))
    except (OSError, tf.errors.OpError, ValueError, KeyError, TypeError, CharRNNError):
        return None
    if is_local(base):
        ids = np.memmap(f"{base}.ids", dtype=dtype, mode="r", shape=(length,))
    else:
        with tf.io.gfile.GFile(f"{base}.ids", "rb") as f:
            ids = np.frombuffer(f.read(), dtype)
    return Encoded(ids, vocab, key[:16])
