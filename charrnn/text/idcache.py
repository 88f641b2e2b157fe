"""The id cache: a corpus encoded once into an id file, checked before every use.

An entry is named by the sha256 of the text (and, for fine-tuning, by the base vocabulary's
fingerprint) and is two files of `<cache_dir>/ids/`: `<name>.ids`, the ids (one byte per
character up to 256 characters, two up to 65,536, else four), and `<name>.json`, its header:
the text's sha256, the characters, the id type, the length, a crc32 of the ids, and a
checksum of the header itself.

- An entry holds the text that was encoded. The text is read three times (to name it, to
  collect its characters, to write its ids); the pass that writes the ids hashes the text
  and collects its characters again, and a text that changed in between (a file still
  being written) is refused with `TryAgain`, keeping nothing.
- It is checked before every use: the header's checksum and name, the length, the crc32
  of the ids and that every id is within the vocabulary (benchmarks/RESULTS.md says what
  that costs); a damaged entry is removed and encoded again, with a message.
- It is written into `.part` files of this process (charrnn.storage.part_name), renamed
  once complete, the ids before the header; a failed write removes its parts at once, and
  the parts of a writer that died are removed by the next encode on that host.
- A cache on another filesystem ($CHARRNN_DATA_DIR=gs://...) keeps the shared copy; each
  entry is copied to the local cache once, checked, and memory-mapped from there, as a
  local entry is, so that memory does not grow with the corpus on any worker.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zlib
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from charrnn import storage
from charrnn.errors import CharRNNError, TryAgain
from charrnn.log import logger
from charrnn.storage import part_name, remove_dead_parts
from charrnn.text.corpus import CHUNK, cache_dir, decoded, empty_text, local_cache_dir, raw_chunks, resolve_sources
from charrnn.text.vocab import Vocabulary

_MAX_CODEPOINT = 0x110000


@dataclasses.dataclass(frozen=True)
class Encoded:
    """A corpus as ids: `ids` (a read-only NumPy array, memory-mapped from the id cache when
    it could be written), its `vocab` and the `fingerprint` of its text."""

    ids: np.ndarray
    vocab: Vocabulary
    fingerprint: str
    num_files: int = 1  # the files the text was joined from


def encode(data: str, base: Vocabulary | None = None) -> Encoded:
    """The ids of the text `data` names, from the id cache or encoded into it (see module).

    The vocabulary is the text's characters, or with `base` (fine-tuning), the union of
    `base`'s characters and the text's.
    """
    sources = resolve_sources(data)
    digest = hashlib.sha256()
    for _, _, chunk in raw_chunks(sources, f"hashing {data}"):
        digest.update(chunk)
    key = digest.hexdigest()
    name = key[:32] if base is None else f"{key[:32]}-{base.fingerprint[:8]}"
    local, shared = f"{local_cache_dir()}/ids/{name}", f"{cache_dir().rstrip('/')}/ids/{name}"
    try:
        storage.makedirs(os.path.dirname(local))
        remove_dead_parts(os.path.dirname(local))
    except OSError:
        pass  # an unwritable cache: encoded in memory below
    found = _load(local, key, data)
    if found is None and shared != local and _copy_entry(shared, local):
        found = _load(local, key, data)
    if found is not None:
        return dataclasses.replace(found, num_files=len(sources))
    vocab = _vocabulary(sources, base, data)
    # The smallest id type with room for one more id: characters not in the vocabulary map
    # to it, so that the ids' maximum shows a text that changed since its characters were read.
    dtype = np.uint8 if len(vocab) < 256 else np.uint16 if len(vocab) < 65536 else np.uint32
    table = np.full(_MAX_CODEPOINT, len(vocab), dtype)
    table[[ord(c) for c in vocab.chars]] = np.arange(len(vocab), dtype=dtype)
    try:
        _write(local, key, data, sources, vocab, table)
    except OSError as e:
        logger.warning(f"cannot write the id cache {local}.ids ({e.strerror or e}); keeping the ids in "
                       "memory")
        parts: list[np.ndarray] = []
        _ids_pass(sources, table, len(vocab), key, data, parts.append)
        return Encoded(np.concatenate(parts), vocab, key[:16], len(sources))
    if shared != local:
        _share(local, shared)
    found = _load(local, key, data)
    if found is None:
        raise TryAgain(f"the id cache entry {local} changed while it was read; run again")
    return dataclasses.replace(found, num_files=len(sources))


# The largest header an entry can have (its characters: every code point is about 4.5 MB).
_HEADER_LIMIT = 16 << 20


class UnknownCharacters(CharRNNError):
    """A text holds characters outside a trained run's vocabulary (see ids_in)."""


class TextIds(NamedTuple):
    """A text as the ids of a trained run's vocabulary (see ids_in)."""

    ids: np.ndarray
    fingerprint: str  # of the text as it is, characters outside the vocabulary included
    skipped: dict[str, int]  # characters outside the vocabulary that were left out, and how often


def ids_in(data: str, vocab: Vocabulary, skip_unknown: bool = False) -> TextIds:
    """The text `data` names as ids of `vocab` (charrnn-eval's text). Characters outside
    `vocab` are refused in one UnknownCharacters error naming them, or with `skip_unknown` left out
    (and counted). No TensorFlow: a tool checks a text before TensorFlow loads."""
    corpus = encode(data, base=vocab)  # the union of vocab and the text: vocab itself if it holds them all
    unknown = sorted(set(corpus.vocab.chars) - set(vocab.chars))
    if not unknown:
        return TextIds(corpus.ids, corpus.fingerprint, {})
    if not skip_unknown:
        shown = ", ".join(repr(c) for c in unknown[:20]) + (" ..." if len(unknown) > 20 else "")
        raise UnknownCharacters(f"{len(unknown)} character(s) of {data} are not in the model's vocabulary: {shown}; "
                                "pass --unknown_chars=skip to score the rest, or use only characters of the "
                                "training text")
    own = {c: i for i, c in enumerate(vocab.chars)}
    table = np.array([own.get(c, -1) for c in corpus.vocab.chars], np.int64)
    counts = np.zeros(len(corpus.vocab), np.int64)
    kept = []
    for start in range(0, len(corpus.ids), CHUNK):  # chunks: the ids may be a memory-mapped corpus
        chunk = table[corpus.ids[start:start + CHUNK]]
        counts += np.bincount(corpus.ids[start:start + CHUNK], minlength=len(corpus.vocab))
        kept.append(chunk[chunk >= 0].astype(corpus.ids.dtype))
    skipped = {c: int(counts[i]) for i, c in enumerate(corpus.vocab.chars) if c in unknown}
    return TextIds(np.concatenate(kept), corpus.fingerprint, skipped)


def _vocabulary(sources: list[str], base: Vocabulary | None, data: str) -> Vocabulary:
    """The text's characters (with `base`'s)."""
    seen = np.zeros(_MAX_CODEPOINT, bool)
    for chunk, cps in decoded(sources, f"reading the characters of {data}"):
        counts = np.bincount(np.frombuffer(chunk, np.uint8) if cps is None else cps)
        seen[:len(counts)] |= counts > 0
    if not seen.any():
        raise empty_text(data)
    if base is not None:
        seen[[ord(c) for c in base.chars]] = True
    return Vocabulary([chr(c) for c in np.flatnonzero(seen)])


def _ids_pass(sources: list[str], table: np.ndarray, size: int, key: str, data: str,
              sink: Callable[[np.ndarray], None]) -> None:
    """Maps the text to ids with `table` (`size` characters; those outside map to `size`),
    giving them to `sink` chunk by chunk, and checks that the text is the one named `key`
    and has no character outside the vocabulary; TryAgain if it changed since."""
    digest, beyond = hashlib.sha256(), False
    for chunk, cps in decoded(sources, f"encoding {data}"):
        digest.update(chunk)
        ids = table[np.frombuffer(chunk, np.uint8) if cps is None else cps]
        beyond = beyond or (len(ids) > 0 and int(ids.max()) >= size)
        sink(ids)
    if digest.hexdigest() != key or beyond:
        raise TryAgain(f"{data} changed while it was being encoded (is it still being written?); nothing was kept: "
                       "run again once it is complete")


def _write(base: str, key: str, data: str, sources: list[str], vocab: Vocabulary, table: np.ndarray) -> None:
    """Writes the entry `base` (its .ids, then its .json) through .part files (see module)."""
    ids_part, header_part = part_name(f"{base}.ids"), part_name(f"{base}.json")
    length, crc = 0, 0
    try:
        with open(ids_part, "wb") as f:
            def sink(ids: np.ndarray) -> None:
                nonlocal length, crc
                f.write(ids.tobytes())
                crc = zlib.crc32(ids.data, crc)
                length += len(ids)

            _ids_pass(sources, table, len(vocab), key, data, sink)
            f.flush()
            os.fsync(f.fileno())
        header = {"chars": "".join(vocab.chars), "dtype": np.dtype(table.dtype).name, "length": length,
                  "sha256": key, "ids_crc32": crc}
        with open(header_part, "w", encoding="utf-8") as text:
            text.write(json.dumps(header | {"check": _check(header)}, ensure_ascii=False))
        mode = storage.common_mode(sources)  # the ids are the text again: no more readable than it
        if mode is not None:
            for part in (ids_part, header_part):
                os.chmod(part, os.stat(part).st_mode & mode & 0o777 | 0o600)
        os.replace(ids_part, f"{base}.ids")
        os.replace(header_part, f"{base}.json")
    finally:
        for part in (ids_part, header_part):
            if os.path.exists(part):
                os.remove(part)


def _check(header: dict) -> int:
    return zlib.crc32(json.dumps(header, sort_keys=True, ensure_ascii=False).encode("utf-8"))


def _load(base: str, key: str, data: str) -> Encoded | None:
    """The local entry `base` of the text named `key`, checked; None if there is none, or if it
    was damaged (then it is removed, with a message, to be encoded again)."""
    try:
        raw = storage.read_bytes(f"{base}.json", _HEADER_LIMIT)
    except (OSError, CharRNNError):  # unreadable: encoded again below, as a damaged entry
        raw = b"{}"
    if raw is None:
        return None
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict) or "check" not in header:
            raise ValueError("it has no checksums: an older charrnn wrote it")
        check = header.pop("check")
        dtype, length = np.dtype(header["dtype"]), int(header["length"])
        if check != _check(header) or header["sha256"] != key:
            raise ValueError("its header does not match its checksum")
        vocab = Vocabulary(list(header["chars"]))
        if os.path.getsize(f"{base}.ids") != length * dtype.itemsize:
            raise ValueError(f"its ids are {os.path.getsize(f'{base}.ids'):,} bytes, not {length * dtype.itemsize:,}")
        crc, largest = 0, 0
        with open(f"{base}.ids", "rb") as f:  # read, not mapped: the check adds no resident memory
            while chunk := f.read(CHUNK):
                crc = zlib.crc32(chunk, crc)
                largest = max(largest, int(np.frombuffer(chunk, dtype).max()))
        if crc != header["ids_crc32"]:
            raise ValueError("its ids do not match their checksum")
        if largest >= len(vocab):
            raise ValueError("it holds ids outside its vocabulary")
        ids = np.memmap(f"{base}.ids", dtype=dtype, mode="r", shape=(length,))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, CharRNNError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        logger.info(f"the id cache entry {base} is damaged ({reason}); encoding {data} again")
        for suffix in (".json", ".ids"):
            storage.remove(base + suffix)
        return None
    return Encoded(ids, vocab, key[:16])


def _copy_entry(shared: str, local: str) -> bool:
    """Copies the entry `shared` (on another filesystem) to the local `local`, header last;
    whether there was one."""
    if not storage.exists(f"{shared}.json"):
        return False
    import tensorflow as tf

    for suffix in (".ids", ".json"):
        part = part_name(local + suffix)
        try:
            tf.io.gfile.copy(shared + suffix, part, overwrite=True)
            os.replace(part, local + suffix)
        except (OSError, tf.errors.OpError):
            if os.path.exists(part):
                os.remove(part)
            return False
    return True


def _share(local: str, shared: str) -> None:
    """Puts the local entry `local` in the shared cache too (header last), for other machines;
    a failure only costs them an encode of their own."""
    import tensorflow as tf

    try:
        tf.io.gfile.makedirs(os.path.dirname(shared))
        for suffix in (".ids", ".json"):
            part = f"{shared}{suffix}.{os.getpid()}.part"
            tf.io.gfile.copy(local + suffix, part, overwrite=True)
            tf.io.gfile.rename(part, shared + suffix, overwrite=True)
    except (OSError, tf.errors.OpError) as e:
        logger.warning(f"cannot put the id cache entry in {shared} ({e}); other machines will encode the "
                       "text themselves")
