"""Corpus resolution, text decoding, the vocabulary and the tf.data input pipeline.

A corpus is named either by a path to a UTF-8 text file or by a registered name
(`CORPORA`). Registered corpora live in a cache directory as `<name>.txt`; a missing
one is downloaded once (and checked against its sha256 where one is published).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
import tempfile
import urllib.error
import urllib.request
from typing import Sequence

import numpy as np
import tensorflow as tf

from charrnn.errors import CharRNNError


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


def cache_dir() -> str:
    """Where registered corpora are kept: $CHARRNN_DATA_DIR, else the Keras dataset cache."""
    if os.environ.get(DATA_DIR_ENV):
        return os.environ[DATA_DIR_ENV]
    keras_home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return os.path.join(keras_home, "datasets", "charrnn")


def resolve_corpus(data: str) -> str:
    """Returns the path of the text file that `data` (a path or a registered name) names."""
    if os.path.exists(data):
        if os.path.isdir(data):
            raise CharRNNError(f"--data {data!r} is a directory; pass a UTF-8 text file or one of: {', '.join(CORPORA)}")
        if not stat.S_ISREG(os.stat(data).st_mode):
            raise CharRNNError(f"--data {data!r} is not a regular file (a device, pipe or socket); pass a UTF-8 "
                               "text file")
        return data
    if data not in CORPORA:
        raise CharRNNError(
            f"--data {data!r} is neither an existing file nor a registered corpus; "
            f"pass a path to a UTF-8 text file or one of: {', '.join(CORPORA)}"
        )
    path = os.path.join(cache_dir(), f"{data}.txt")
    if not os.path.exists(path):
        _download(CORPORA[data], path, data)
    return path


def _download(corpus: Corpus, path: str, name: str) -> None:
    """Fetches `corpus` to `path` atomically, so an interrupted download leaves no partial file."""
    directory = os.path.dirname(path) or "."
    hint = f"pass --data=<path to a text file>, or place the file at {path} (or set ${DATA_DIR_ENV} to a directory holding {name}.txt)"
    try:
        os.makedirs(directory, exist_ok=True)
        with urllib.request.urlopen(corpus.url, timeout=60) as response:
            payload = response.read()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise CharRNNError(f"corpus {name!r} is not in the cache and could not be downloaded from {corpus.url} ({reason}); {hint}") from None
    digest = hashlib.sha256(payload).hexdigest()
    if corpus.sha256 is not None and digest != corpus.sha256:
        raise CharRNNError(
            f"download of corpus {name!r} from {corpus.url} has sha256 {digest}, expected {corpus.sha256}; "
            f"the file was not kept; retry, or {hint}"
        )
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".part")
    with os.fdopen(fd, "wb") as f:
        f.write(payload)
    os.replace(tmp, path)


def read_text(path: str) -> str:
    """Reads a UTF-8 text file exactly: a leading BOM is dropped, line endings are kept."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except IsADirectoryError:
        raise CharRNNError(f"{path} is a directory; pass a UTF-8 text file") from None
    except OSError as e:
        raise CharRNNError(f"cannot read {path}: {e.strerror}; pass a readable UTF-8 text file") from None
    if not raw:
        raise CharRNNError(f"{path} is empty; pass a file with some text in it")
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise CharRNNError(f"{path} looks binary (NUL byte at offset {nul}); pass a UTF-8 text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CharRNNError(
            f"{path} is not valid UTF-8 (bad byte 0x{raw[e.start]:02x} at offset {e.start}); convert it to UTF-8 first"
        ) from None
    text = text.removeprefix("\ufeff")
    if not text:
        raise CharRNNError(f"{path} holds only a byte-order mark; pass a file with some text in it")
    return text


class Vocabulary:
    """The sorted set of a text's characters (Unicode code points) and the id of each."""

    def __init__(self, chars: Sequence[str]):
        chars = list(chars)
        if not chars or any(len(c) != 1 for c in chars) or chars != sorted(set(chars)):
            raise CharRNNError("a vocabulary is a non-empty, sorted list of distinct single characters")
        self.chars: tuple[str, ...] = tuple(chars)
        # Sorted code points let encode() map a whole text with one vectorised search.
        self._codepoints = np.array([ord(c) for c in chars], dtype=np.uint32)

    @property
    def fingerprint(self) -> str:
        """Identifies the vocabulary: the same characters give the same fingerprint."""
        return fingerprint("".join(self.chars))

    @classmethod
    def from_text(cls, text: str) -> Vocabulary:
        return cls(sorted(set(text)))

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.chars == other.chars

    def unknown(self, text: str) -> list[str]:
        """The distinct characters of `text` that are not in the vocabulary, in sorted order."""
        return sorted(set(text) - set(self.chars))

    def encode(self, text: str) -> np.ndarray:
        """Maps `text` to an int32 array of ids; raises CharRNNError naming unknown characters."""
        missing = self.unknown(text)
        if missing:
            shown = ", ".join(repr(c) for c in missing[:20]) + (" ..." if len(missing) > 20 else "")
            raise CharRNNError(
                f"{len(missing)} character(s) not in the model's vocabulary: {shown}; use only characters of the training text"
            )
        codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        return np.searchsorted(self._codepoints, codepoints).astype(np.int32)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return "".join(self.chars[i] for i in np.asarray(ids).reshape(-1))

    def to_json(self) -> str:
        return json.dumps({"chars": "".join(self.chars)}, ensure_ascii=False)

    @classmethod
    def from_json(cls, payload: str) -> Vocabulary:
        record = json.loads(payload)
        if not isinstance(record, dict) or not isinstance(record.get("chars"), str):
            raise ValueError('expected {"chars": "<the characters>"}')
        return cls(list(record["chars"]))


def fingerprint(text: str) -> str:
    """A short hash of `text` that tells two texts (or vocabularies) apart."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def split_ids(ids: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The first `1 - val_fraction` of the ids for training, the rest for validation.

    The cut is nanoGPT's, `int(n * 0.9)` training ids for val_fraction=0.1, so that
    validation losses are measured on the same characters.
    """
    cut = int(len(ids) * (1 - val_fraction))
    return ids[:cut], ids[cut:]


def num_windows(num_ids: int, seq_length: int) -> int:
    """How many non-overlapping windows of `seq_length + 1` ids fit in `num_ids` ids."""
    return num_ids // (seq_length + 1)


def make_dataset(
    ids: np.ndarray,
    seq_length: int,
    batch_size: int,
    *,
    shuffle_buffer: int = 0,
    seed: int | None = None,
    drop_remainder: bool = True,
) -> tf.data.Dataset:
    """Batches of (input, target) id pairs, the target shifted by one character.

    As in the case study, the text is cut into consecutive windows of `seq_length + 1`
    ids (a trailing partial window is dropped); the input is a window without its last id
    and the target the window without its first. With `shuffle_buffer`, windows are
    shuffled with a buffer of that size; the order is a pure function of `seed`.
    """
    count = num_windows(len(ids), seq_length)
    # Reshaping in NumPy is the same as Dataset.batch(seq_length + 1, drop_remainder=True)
    # on single ids, without a per-id tf.data element.
    windows = np.asarray(ids[: count * (seq_length + 1)], dtype=np.int32).reshape(count, seq_length + 1)
    ds = tf.data.Dataset.from_tensor_slices(windows)
    if shuffle_buffer > 0:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=False)
    ds = ds.map(lambda w: (w[:-1], w[1:]), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def num_stream_batches(num_ids: int, seq_length: int, batch_size: int) -> int:
    """How many full batches `stream_batches` makes of `num_ids` ids."""
    return max(num_ids // batch_size - 1, 0) // seq_length


def stream_batches(ids: np.ndarray, seq_length: int, batch_size: int, *,
                   drop_remainder: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    """(inputs, targets) batches of shape [batch_size, seq_length] for stateful training.

    The ids are cut into `batch_size` contiguous streams, as karpathy/char-rnn's loader
    does, so that row j of batch i continues row j of batch i - 1 and a state carried from
    one batch to the next belongs to the text that precedes it. A trailing part of each
    stream shorter than `seq_length` is dropped, or with `drop_remainder=False` kept as a
    last batch that is shorter in time (for evaluation).
    """
    length = len(ids) // batch_size
    streams = np.asarray(ids[: length * batch_size], dtype=np.int32).reshape(batch_size, length)
    last = length - 1  # an input needs the id after it as its target
    stop = last if not drop_remainder else num_stream_batches(len(ids), seq_length, batch_size) * seq_length
    return [(streams[:, i : min(i + seq_length, last)], streams[:, i + 1 : min(i + seq_length, last) + 1])
            for i in range(0, stop, seq_length)]


def make_stream_dataset(ids: np.ndarray, seq_length: int, batch_size: int) -> tf.data.Dataset:
    """The batches of `stream_batches` in order, as a dataset (no shuffling: order is the point)."""
    batches = stream_batches(ids, seq_length, batch_size)
    inputs = np.stack([b[0] for b in batches]) if batches else np.zeros([0, batch_size, seq_length], np.int32)
    targets = np.stack([b[1] for b in batches]) if batches else inputs
    return tf.data.Dataset.from_tensor_slices((inputs, targets)).prefetch(tf.data.AUTOTUNE)
