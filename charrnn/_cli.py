"""Shared plumbing of the command-line tools: flags from a dataclass, presets, error exits."""

from __future__ import annotations

import dataclasses
import os
import sys
import types
import typing
from typing import Any, Callable

from absl import app, flags, logging

from charrnn.checkpoint import WHICH
from charrnn.config import PRESETS
from charrnn.errors import CharRNNError
from charrnn.preemption import EXIT_PREEMPTED, Preempted

FLAGS = flags.FLAGS


def define_dataclass_flags(cls: type) -> None:
    """Defines one absl flag per field of `cls`, with the field's default and `help` metadata."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # `T | None`
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        define = {int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string,
                  bool: flags.DEFINE_boolean}[kind]
        define(field.name, field.default, field.metadata["help"])


def define_checkpoint_flags(device: bool = True) -> None:
    """The flags of the tools that read a trained run: --run_dir, --which (and --device)."""
    flags.DEFINE_string("run_dir", "runs/charrnn", "Run directory written by charrnn-train.")
    flags.DEFINE_enum("which", None, list(WHICH), "Checkpoint: best (lowest validation loss) or latest "
                      "(default: best when the run has one).")
    if device:
        flags.DEFINE_string("device", "auto",
                            "Device: auto (first GPU, else CPU) or a TensorFlow device name such as /GPU:1.")


def define_preset_flag() -> None:
    flags.DEFINE_enum("preset", None, sorted(PRESETS),
                      "Named set of settings (seed: the case study; cpu_small, gpu: the quality benchmark's recipes); "
                      "explicit flags override it.")


def flag_value(name: str) -> Any:
    """The flag's value: explicit on the command line, else from --preset, else its default."""
    preset = PRESETS.get(FLAGS.preset or "", {})
    if not FLAGS[name].present and name in preset:
        return preset[name]
    return FLAGS[name].value


def dataclass_from_flags(cls: type) -> Any:
    return cls(**{f.name: flag_value(f.name) for f in dataclasses.fields(cls)})


def run(main: Callable[[], None]) -> None:
    """Runs `main` under absl; a CharRNNError becomes a one-line message and exit status 2.

    A preempted training run (SIGTERM, Ctrl-C) exits with EXIT_PREEMPTED after its message.
    """
    prog = os.path.basename(sys.argv[0])
    if prog in ("__main__.py", "train.py", "sample.py", "eval.py", "export_cli.py"):
        prog = "charrnn"

    def wrapped(argv: list[str]) -> None:
        if len(argv) > 1:
            _fail(prog, f"unexpected arguments {' '.join(argv[1:])!r}; all settings are --flags (see --help)")
        if not FLAGS["verbosity"].present:
            # TensorFlow logs routine INFO lines (e.g. on every checkpoint save) through absl.
            logging.set_verbosity(logging.WARNING)
        try:
            main()
        except Preempted as e:
            print(f"{prog}: {e}", file=sys.stderr)
            sys.exit(EXIT_PREEMPTED)
        except CharRNNError as e:
            _fail(prog, str(e))

    app.run(wrapped)


def _fail(prog: str, message: str) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)
    # Objects torn down at exit (e.g. a half-restored checkpoint) may log warnings that would
    # bury the one line that matters.
    logging.set_verbosity(logging.ERROR)
    sys.exit(2)
