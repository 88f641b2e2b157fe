"""`Vocabulary`: the sorted set of a text's characters and the id of each; and `fingerprint`,
what tells two texts (or vocabularies) apart. NumPy only: the tools read a run's vocabulary
before TensorFlow starts."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np

from charrnn.errors import CharRNNError
from charrnn.validate import json_object


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

    @property
    def default_prime(self) -> str:
        """What samples start from when no prime is given: a newline, or the first character
        of a vocabulary without one."""
        return "\n" if "\n" in self.chars else self.chars[0]

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
                f"{len(missing)} character(s) not in the model's vocabulary: {shown}; use only characters "
                f"of the training text"
            )
        codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        return np.searchsorted(self._codepoints, codepoints).astype(np.int32)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return "".join(self.chars[i] for i in np.asarray(ids).reshape(-1))

    def to_json(self) -> str:
        return json.dumps({"chars": "".join(self.chars)}, ensure_ascii=False)

    @classmethod
    def from_json(cls, payload: str) -> Vocabulary:
        """The vocabulary a run's vocab.json holds (a CharRNNError for anything else)."""
        expected = '{"chars": "<the characters>"}'
        record = json_object(payload, expected)
        if not isinstance(record.get("chars"), str):
            raise CharRNNError(f"expected {expected}")
        return cls(list(record["chars"]))


def fingerprint(text: str) -> str:
    """A short hash of `text` that tells two texts (or vocabularies) apart."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
