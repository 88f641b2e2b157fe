"""What a sample may ask for: `SampleOptions` (how each next character is drawn) and the
limits of a request, checked without TensorFlow, so that the tools refuse a bad option
before it loads. charrnn.sampler draws; the SavedModel export checks the same limits."""

from __future__ import annotations

import dataclasses
from typing import Any

from charrnn.errors import CharRNNError
from charrnn.validate import check_types

MAX_NUM_CHARS = 1_000_000
# The prime runs through the model in one pass, whose memory grows with its length (the
# layer keeps each step's gates): a prime is the start of a text, not a corpus.
MAX_PRIME_CHARS = 50_000
MAX_NUM_SAMPLES = 4096
# Below MIN_TEMPERATURE, logits / temperature overflow float32 (use greedy instead); above
# MAX_TEMPERATURE every character is equally likely anyway.
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-6, 1e6
SEED_RANGE = (-(2**63), 2**63 - 1)  # int64
MAX_TOP_K = 2**31 - 1  # an int32 in the compiled loop


@dataclasses.dataclass(frozen=True)
class SampleOptions:
    """How each next character is drawn: from softmax(logits / temperature), restricted to
    the `top_k` most likely characters (0: all) and to the smallest set whose probability
    reaches `top_p` (1: all); `greedy` takes the most likely one instead. A sample ends just
    before the first occurrence of `stop_at` in its generated text. Checked when built."""

    temperature: float = 0.5
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False
    stop_at: str | None = None

    def __post_init__(self) -> None:
        check_types(self, lambda name: name)
        if not MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE:
            raise CharRNNError(f"temperature must be between {MIN_TEMPERATURE:g} and {MAX_TEMPERATURE:g}, got "
                               f"{self.temperature} (for the most likely character every time, use greedy)")
        if not 0 <= self.top_k <= MAX_TOP_K:
            raise CharRNNError(f"top_k must be between 0 and {MAX_TOP_K} (0 keeps every character), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise CharRNNError(f"top_p must be in (0, 1] (1 keeps every character), got {self.top_p}")
        if self.stop_at == "":
            raise CharRNNError("stop_at is empty; pass the text that should end a sample, or leave it unset")

    @property
    def filtering(self) -> bool:
        return self.top_k > 0 or self.top_p < 1


def check_settings(settings: dict[str, Any], prime: str = "x", num_samples: int = 1) -> None:
    """Checks a request's settings as `Sampler.generate` takes them as keywords (num_chars,
    seed and the fields of SampleOptions), before anything is loaded."""
    SampleOptions(**{k: v for k, v in settings.items() if k not in ("num_chars", "seed")})
    check_request(prime, settings["num_chars"], num_samples, settings.get("seed"))


def check_request(prime: str, num_chars: int, num_samples: int, seed: int | None) -> None:
    if not isinstance(prime, str):
        hint = "; decode bytes first: prime.decode('utf-8')" if isinstance(prime, bytes) else ""
        raise CharRNNError(f"the prime must be a string (str), got {type(prime).__name__}{hint}")
    for name, value in (("num_chars", num_chars), ("num_samples", num_samples), ("seed", seed)):
        if not (isinstance(value, int) and not isinstance(value, bool)) and not (name == "seed" and value is None):
            raise CharRNNError(f"{name} must be an integer{' or None' if name == 'seed' else ''}, got {value!r}")
    if not prime:
        raise CharRNNError("the prime is empty; pass at least one character to start from")
    if len(prime) > MAX_PRIME_CHARS:
        raise CharRNNError(f"the prime has {len(prime):,} characters, more than the {MAX_PRIME_CHARS:,} a prime may "
                           "have (it runs through the model in one pass); pass the end of the text instead")
    if seed is not None and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise CharRNNError(f"seed must be a 64-bit integer, between {SEED_RANGE[0]} and {SEED_RANGE[1]}, got {seed}")
    if not 0 <= num_chars <= MAX_NUM_CHARS:
        raise CharRNNError(f"num_chars must be between 0 and {MAX_NUM_CHARS:,}, got {num_chars}")
    if not 1 <= num_samples <= MAX_NUM_SAMPLES:
        raise CharRNNError(f"num_samples must be between 1 and {MAX_NUM_SAMPLES}, got {num_samples}")
