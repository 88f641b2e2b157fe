"""What a sample may ask for, declared once: `SampleOptions` (how each next character is
drawn) and the limits of a request, checked without TensorFlow, so that the tools refuse a
bad option before it loads.

Each option is a field whose metadata says everything its users need: its help text (the
`charrnn-sample` flag and the REPL's `:help` read it), an example value (the REPL's
command), its range (checked here, and asserted by the SavedModel export), the dtype the
compiled loop takes it as (charrnn.generation.sampler's `Draw`; the export's signature inputs), and
whether it filters the logits (the value it has by default keeps every character). A new
way of drawing is a field here and its arithmetic in charrnn.generation.sampler's `_draw`.
"""

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
class Range:
    """The values an option may take: from `low` (excluded where `low_open`) to `high`."""

    low: float
    high: float
    low_open: bool = False

    def holds(self, value: Any) -> Any:
        """Whether `value` is in the range: a bool, or a bool tensor for a tensor."""
        return ((value > self.low) if self.low_open else (value >= self.low)) & (value <= self.high)

    def __str__(self) -> str:
        return self.describe()

    def describe(self, most: float | None = None) -> str:
        """The range in words; the upper bound left out where it is `most` or more (the
        largest value of the type that holds it: no value can pass it)."""
        low, high = (f"{x:g}" if isinstance(x, float) else str(x) for x in (self.low, self.high))
        if most is not None and self.high >= most:
            return f"{'>' if self.low_open else '>='} {low}"
        return f"in ({low}, {high}]" if self.low_open else f"between {low} and {high}"


def _short(number: float) -> str:
    """1e-06 written as 1e-6, 1e+06 as 1e6 (as the docs write them)."""
    return f"{number:g}".replace("e-0", "e-").replace("e+0", "e").replace("e+", "e")


def _option(default: Any, help: str, *, example: str | None = None, valid: Range | None = None,
            note: str = "", dtype: str | None = None, filters: bool = False) -> Any:
    """A sampling option: its default and `help`; the REPL's `example` of a value (None: no
    REPL command); the range `valid` and the `note` its refusal adds; the `dtype` the
    compiled loop takes it as (None: used outside the loop); whether it `filters` the logits."""
    return dataclasses.field(default=default, metadata={
        "help": help, "example": example, "valid": valid, "note": note, "dtype": dtype, "filters": filters})


@dataclasses.dataclass(frozen=True)
class SampleOptions:
    """How each next character is drawn: from softmax(logits / temperature), restricted to
    the `top_k` most likely characters (0: all) and to the smallest set whose probability
    reaches `top_p` (1: all); `greedy` takes the most likely one instead. A sample ends just
    before the first occurrence of `stop_at` in its generated text. Checked when built."""

    temperature: float = _option(
        0.5, f"Sampling temperature, in [{_short(MIN_TEMPERATURE)}, {_short(MAX_TEMPERATURE)}]: lower is more "
        "conservative.", example="0.8", valid=Range(MIN_TEMPERATURE, MAX_TEMPERATURE),
        note=" (for the most likely character every time, use greedy)", dtype="float32")
    top_k: int = _option(0, "Sample only from the k most likely characters (0: all).", example="10",
                         valid=Range(0, MAX_TOP_K), note=" (0 keeps every character)", dtype="int32", filters=True)
    top_p: float = _option(1.0, "Sample only from the smallest set of characters whose probability reaches p (1: all).",
                           example="0.9", valid=Range(0.0, 1.0, low_open=True), note=" (1 keeps every character)",
                           dtype="float32", filters=True)
    greedy: bool = _option(False, "Always take the most likely character (no sampling).", example="on", dtype="bool")
    stop_at: str | None = _option(None, "End a sample just before this text first appears in what it generated.")

    def __post_init__(self) -> None:
        check_types(self, lambda name: name)
        for field in dataclasses.fields(self):
            valid, value = field.metadata["valid"], getattr(self, field.name)
            if valid is not None and not valid.holds(value):  # NaN holds nowhere
                raise CharRNNError(f"{field.name} must be {valid}{field.metadata['note']}, got {value}")
        if self.stop_at == "":
            raise CharRNNError("stop_at is empty; pass the text that should end a sample, or leave it unset")

    @classmethod
    def of(cls, **options: Any) -> SampleOptions:
        """The options named (the rest at their defaults); a name that is no option is a TypeError."""
        unknown = sorted(set(options) - set(NAMES))
        if unknown:
            raise TypeError(f"unknown sampling option(s) {', '.join(unknown)}; the options are {', '.join(NAMES)}")
        return cls(**options)

    @property
    def filtering(self) -> bool:
        """Whether an option that filters the logits is set to anything but its default (which keeps all)."""
        return any(field.metadata["filters"] and getattr(self, field.name) != field.default for field in OPTIONS)


OPTIONS = dataclasses.fields(SampleOptions)
NAMES = tuple(field.name for field in OPTIONS)
# The options the compiled loop takes as tensors (name -> dtype), in declaration order.
TENSOR_OPTIONS = {field.name: field.metadata["dtype"] for field in OPTIONS if field.metadata["dtype"]}
# What a request sets: its length, its seed and the options (the tools' settings).
SETTINGS = ("num_chars", "seed", *NAMES)


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
