"""Checks of values a user gives, shared by the settings (charrnn.config), the sampling
options and the tools: a dataclass's fields against their declared types, text that must
be UTF-8, the cluster TF_CONFIG describes. No TensorFlow here.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Callable
from typing import Any

from charrnn.errors import CharRNNError

MAX_INT = 2**31 - 1  # the largest integer setting: TensorFlow takes sizes and counts as int32


def check_types(instance: Any, flag_of: Callable[[str], str]) -> None:
    """Checks that each field of the frozen dataclass `instance` holds its declared type (int,
    float, str, bool, or one of them or None; an int is accepted for a float, and stored as
    one; a bool is no int), and that its strings are UTF-8. `flag_of` gives the name of a
    field as the one-line CharRNNError shows it."""
    for name, kind in typing.get_type_hints(type(instance)).items():
        if name not in instance.__dataclass_fields__:
            continue
        value = getattr(instance, name)
        optional = typing.get_origin(kind) in (typing.Union, types.UnionType)
        if optional:
            if value is None:
                continue
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            try:
                object.__setattr__(instance, name, float(value))
            except OverflowError:  # beyond every float
                raise CharRNNError(f"{flag_of(name)} must be a finite number, got an integer of "
                                   f"{len(str(abs(value)))} digits") from None
            continue
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            words = {int: "an integer", float: "a number", str: "a string", bool: "True or False"}[kind]
            raise CharRNNError(f"{flag_of(name)} must be {words}{' or None' if optional else ''}, got {value!r}")
        if kind is str:
            check_utf8(flag_of(name), value)


def json_object(payload: str, expected: str) -> dict:
    """`payload` read as a JSON object; for anything else, a CharRNNError that says what was
    `expected` (a run's config.json and vocab.json)."""
    try:
        value = json.loads(payload)
    except ValueError as e:
        raise CharRNNError(f"not JSON ({e})") from None
    if not isinstance(value, dict):
        raise CharRNNError(f"expected {expected}, got {type(value).__name__}")
    return value


def check_utf8(what: str, text: str) -> str:
    """`text`, refused in one line if it cannot be written as UTF-8: a lone surrogate, or a
    command-line argument or file name with bytes that are not UTF-8 (Python keeps those as
    surrogates), which paths and files on every filesystem would fail on later."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        # A byte that was not UTF-8 shows as itself (\xe9); another lone surrogate as \ud800.
        shown = "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF
                        else c.encode("utf-8", "backslashreplace").decode("utf-8") for c in text)
        raise CharRNNError(f"{what} '{shown}' is not valid UTF-8 (at character {e.start}); use a name or text that "
                           "is UTF-8") from None
    return text


def check_tf_config(value: str | None) -> None:
    """Refuses a TF_CONFIG that does not say which member of which cluster this process is
    (TensorFlow would raise a ValueError deep in its start-up, or, for some, train alone)."""
    example = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:port", "host2:port"]}, '
               '"task": {"type": "worker", "index": 0}}\'')
    if value is None:
        raise CharRNNError("--strategy=multi_worker needs the TF_CONFIG environment variable describing the "
                           f"cluster and this worker's task, as {example} (see docs/distributed.md)")
    try:
        config = json.loads(value)
    except ValueError as e:
        raise CharRNNError(f"TF_CONFIG is not valid JSON ({e}); set it as {example}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not cluster or not all(
            isinstance(tasks, list) and tasks and all(isinstance(t, str) for t in tasks) for tasks in cluster.values()):
        raise CharRNNError(f"TF_CONFIG has no \"cluster\" of task lists (got {value[:80]!r}); set it as {example}")
    for address in (a for tasks in cluster.values() for a in tasks):
        host, _, port = address.rpartition(":")
        if not host or not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
            raise CharRNNError(f"TF_CONFIG's address {address!r} is not host:port with a port from 1 to 65535; set "
                               f"it as {example}")
    task = config.get("task")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise CharRNNError(f"TF_CONFIG's \"task\" must name this process's type, one of {sorted(cluster)} (got "
                           f"{task!r}); set it as {example}")
    index = task.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[task["type"]]):
        raise CharRNNError(f"TF_CONFIG's task index must be 0 to {len(cluster[task['type']]) - 1} (its "
                           f"{task['type']!r} list has {len(cluster[task['type']])}), got {index!r}")
