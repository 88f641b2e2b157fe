"""What the command-line tools share: flags from a dataclass, presets, --help, --version,
refusals before TensorFlow loads, a quiet TensorFlow start-up, one-line error exits.

Nothing here imports TensorFlow: the tools parse their flags (and answer --help) first,
and import what needs TensorFlow inside their `main`.

$CHARRNN_EXTRA_FLAGS holds flags appended to every tool's command line (those the tool
defines; the last value of a flag wins), so that the tests run the commands of the README
and docs/ as written, on tiny settings.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import os
import resource
import shlex
import shutil
import sys
import textwrap
import types
import typing
from collections.abc import Callable
from typing import Any, NoReturn

from absl import app, flags, logging

from charrnn import __version__, storage
from charrnn.config import PRESETS
from charrnn.errors import CharRNNError, one_line, print_causes
from charrnn.log import install_console
from charrnn.quiet import start_tensorflow
from charrnn.run import preflight, which
from charrnn.run.rundir import RunDir, RunFiles
from charrnn.training.stopping import Preempted

FLAGS = flags.FLAGS
# Flag name -> the heading --help lists it under (flags a tool defines itself go under the
# tool's own heading).
_GROUPS: dict[str, str] = {}
_GENERAL = "General"


class _OrOff(flags.ArgumentParser):
    """A number, or `off` (also `none`): the setting unset, as if the flag were not given,
    so that a number a preset sets can be turned off from the command line."""

    def __init__(self, number: flags.ArgumentParser):
        self._number = number

    def parse(self, argument: Any) -> Any:
        if isinstance(argument, str) and argument.strip().lower() in ("off", "none"):
            return None
        return self._number.parse(argument)

    def flag_type(self) -> str:
        return self._number.flag_type()


def define_dataclass_flags(cls: type) -> None:
    """Defines one absl flag per field of `cls`, with the field's default, `help` and `group`
    metadata (none: the tool's own group); a number that may be None also takes `off`."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        optional = typing.get_origin(kind) in (typing.Union, types.UnionType)  # `T | None`
        if optional:
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        default: Any = field.default
        if field.metadata.get("choices"):
            flags.DEFINE_enum(field.name, default, list(field.metadata["choices"]), field.metadata["help"])
        elif optional and kind in (int, float):
            number = flags.IntegerParser() if kind is int else flags.FloatParser()
            flags.DEFINE(_OrOff(number), field.name, default, field.metadata["help"],
                         serializer=flags.ArgumentSerializer())
        else:
            defines: dict[Any, Callable[..., Any]] = {int: flags.DEFINE_integer, float: flags.DEFINE_float,
                                                      str: flags.DEFINE_string, bool: flags.DEFINE_boolean}
            defines[kind](field.name, default, field.metadata["help"])
        if "group" in field.metadata:
            _GROUPS[field.name] = field.metadata["group"]


def _valid_which(value: str) -> bool:
    try:
        which.check_which(value)
    except CharRNNError:
        return False
    return True


def define_checkpoint_flags(device: bool = True) -> None:
    """The flags of the tools that read a trained run: --run_dir, --which (and --device)."""
    flags.DEFINE_string("run_dir", "runs/charrnn", "Run directory written by charrnn-train.")
    flags.DEFINE_string("which", None, "Checkpoint: best (lowest validation loss), latest, a step number (of a "
                        "checkpoint the run keeps) or a checkpoint's path (.../ckpt-N) (default: best when the run "
                        "has one); list: print the steps the run keeps, and do nothing else.")
    flags.register_validator("which", lambda value: value is None or _valid_which(value),
                             "must be best, latest, list, a step number or a checkpoint's path (.../ckpt-N)")
    names = ["run_dir", "which"]
    if device:
        flags.DEFINE_string("device", "auto",
                            "Device: auto (first GPU, else CPU) or a TensorFlow device name such as /GPU:1.")
        names.append("device")
    _GROUPS.update(dict.fromkeys(names, "Run to read"))


_PRESET_HELP = {
    "seed": "the case study's", "cpu_small": "3 minutes of training on a laptop's CPU",
    "cpu_medium": "10 minutes on a CPU", "gpu": "10 minutes on one GPU",
}


def define_preset_flag() -> None:
    """--preset, offering only the presets that set one of the flags defined so far (so that
    charrnn-sample, say, does not accept a training recipe that would change nothing)."""
    defined = set(FLAGS)
    choices = sorted(name for name, values in PRESETS.items() if defined & set(values))
    described = "; ".join(f"{name} ({_PRESET_HELP[name]}): {preset_flags(name, defined)}" for name in choices)
    flags.DEFINE_enum("preset", None, choices, f"Named set of settings, each flag of which an explicit flag "
                      f"overrides. {described}.")
    _GROUPS["preset"] = _GENERAL


def preset_flags(name: str, defined: set[str] | None = None) -> str:
    """The flags preset `name` sets (of those `defined`, by default all), as a command line would."""
    return " ".join(f"--{flag}={_shown(value).strip(chr(39))}" for flag, value in PRESETS[name].items()
                    if defined is None or flag in defined)


flags.DEFINE_boolean("tf_logs", False, "Show TensorFlow's own start-up and C++ log lines (hidden by default; "
                     "a TF_CPP_MIN_LOG_LEVEL of your own also shows them, at the level it sets).")
_GROUPS["tf_logs"] = _GENERAL


def apply_preset() -> None:
    """Gives the flags that the command line left unset --preset's values (an explicit flag
    wins), so that every flag reads as FLAGS.<name>, preset or not. The tools call it once
    their flags are parsed."""
    preset = PRESETS.get(FLAGS.preset or "", {}) if "preset" in FLAGS else {}
    for name, value in preset.items():
        if name in FLAGS and not FLAGS[name].present:
            FLAGS[name].value = value


def local_run() -> RunFiles | None:
    """The run files of the trained run --run_dir names, and the checkpoint --which names,
    checked before TensorFlow loads; None for a run directory elsewhere (gs://, ...), which
    the tool's own load checks. With --which=list, prints the steps the run keeps and ends
    the tool."""
    rundir = RunDir(FLAGS.run_dir)
    if FLAGS.which == which.LIST:
        preflight.check_run(rundir)
        print(which.kept(rundir))
        sys.exit(0)
    if not storage.is_local(rundir.path):
        return None
    files = preflight.check_run(rundir)
    which.resolve_which(rundir, FLAGS.which)
    return files


def command(name: str) -> str:
    """How to run this installation's tool `name` from here: its name where PATH finds it,
    else its path (after `./run.sh demo`, .venv/bin is not on PATH until activated)."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    found = shutil.which(name)
    if not os.path.exists(beside) or (found is not None and os.path.samefile(found, beside)):
        return name
    relative = os.path.relpath(beside)
    return shlex.quote(relative if not relative.startswith("..") else beside)


def dataclass_from_flags(cls: type) -> Any:
    return cls(**{f.name: FLAGS[f.name].value for f in dataclasses.fields(cls)})


class OutputFailed(Exception):
    """Standard output cannot take what a tool writes (see _Console); `closed` when its reader
    went away (a pipe to `head`)."""

    def __init__(self, cause: OSError | UnicodeEncodeError):
        super().__init__(cause)
        self.closed = isinstance(cause, BrokenPipeError)
        self.reason = (f"its encoding, {cause.encoding}, cannot show {cause.object[cause.start:cause.end]!r}; set "
                       "PYTHONIOENCODING=utf-8" if isinstance(cause, UnicodeEncodeError)
                       else cause.strerror or str(cause))


class _Console:
    """A standard stream as the tools write to it. When it fails (its reader went away, or
    it is full: /dev/full, a full disk), the tool's writing ends: with `keep_going` it goes
    on without it (a training run trains on: its checkpoints, logs and metrics are files),
    else OutputFailed stops the tool (what it writes is its result). With `keep_going`,
    characters its encoding cannot show are written escaped (\\u6771). Either way the file
    descriptor is pointed at /dev/null, so that nothing written later, nor the
    interpreter's last flush, fails again."""

    def __init__(self, stream: Any, keep_going: bool, on_failure: Callable[[str], None] = lambda reason: None):
        self._stream, self._keep_going, self._on_failure, self.failed = stream, keep_going, on_failure, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def write(self, text: str) -> int:
        if not self.failed:
            try:
                self._stream.write(text)
            except UnicodeEncodeError as e:
                if not self._keep_going:
                    raise OutputFailed(e) from None
                encoding = self._stream.encoding
                self._guarded(self._stream.write, text.encode(encoding, "backslashreplace").decode(encoding))
            except OSError as e:
                self._lost(e)
        return len(text)

    def flush(self) -> None:
        if not self.failed:
            self._guarded(self._stream.flush)

    def _guarded(self, write: Callable[..., Any], *args: Any) -> None:
        try:
            write(*args)
        except OSError as e:
            self._lost(e)

    def _lost(self, error: OSError) -> None:
        self.failed = True
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
        except (OSError, ValueError):  # no file descriptor (a test's stream)
            pass
        if not self._keep_going:
            raise OutputFailed(error) from None
        if not isinstance(error, BrokenPipeError):  # a reader that left wants no word of it
            self._on_failure(error.strerror or str(error))


def run(main: Callable[[], None], doc: str, check: Callable[[], None] | None = None,
        keep_going: bool = False) -> None:
    """Runs `check` (what can be refused without TensorFlow, see charrnn.run.preflight), then
    starts TensorFlow and runs `main`, under absl; a CharRNNError becomes a one-line message
    and its exit status (2, or 75 for a TryAgain). --version prints the version.

    `doc` (the tool's module docstring, which starts with the tool's name) heads --help,
    which lists the tool's own flags by group. A preempted training run (SIGTERM, Ctrl-C)
    exits with EXIT_PREEMPTED after its message. Standard output that fails (see _Console)
    ends the tool quietly when its reader went away (exit status 0), with one line on
    standard error otherwise (2); with `keep_going`, the tool goes on without it.
    """
    prog = doc.split(":", 1)[0]
    _fill_closed_streams(prog, keep_going)
    if sys.stdout is not None:
        sys.stdout = _Console(sys.stdout, keep_going, lambda reason: print(
            f"{prog}: standard output failed ({reason}); going on without it", file=sys.stderr))
    if sys.stderr is not None:
        sys.stderr = _Console(sys.stderr, keep_going=True)
    install_console()  # the library's warnings and progress lines, as `charrnn: ...` on stderr
    if any(arg in ("-h", "-?", "--help", "--helpshort") for arg in sys.argv[1:]):
        print(_help(prog, doc), end="")
        sys.exit(0)
    if "--version" in sys.argv[1:]:
        print(f"{prog} (charrnn) {__version__}")
        sys.exit(0)

    app.run(functools.partial(_main, prog, main, check), flags_parser=functools.partial(_parse, prog))


def _fill_closed_streams(prog: str, keep_going: bool) -> None:
    """A standard stream closed by the caller (`>&-`, `2>&-`): its file descriptor gets
    /dev/null, so that no file the tool opens later takes its number (TensorFlow's C++ logs
    would write into a checkpoint). A closed standard output ends a tool whose output is its
    result (sample, eval, export) in one line, as nothing would be kept; training goes on."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the rest of the process
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the rest of the process
        if not keep_going:
            _fail(prog, "standard output is closed, so what this tool prints would be lost; redirect it (> out.txt)")
        print(f"{prog}: standard output is closed; going on without it", file=sys.stderr)


def _main(prog: str, main: Callable[[], None], check: Callable[[], None] | None, argv: list[str]) -> None:
    """The tool under absl: checks, TensorFlow, `main`, and each way it can end (see run)."""
    if len(argv) > 1:
        _fail(prog, f"unexpected arguments {' '.join(argv[1:])!r}; all settings are --flags (see --help)")
    if not FLAGS["verbosity"].present:
        # TensorFlow logs routine INFO lines (e.g. on every checkpoint save) through absl.
        logging.set_verbosity(logging.WARNING)
    try:
        _check_limits()
        if check is not None:
            check()
        start_tensorflow(quiet=False if FLAGS.tf_logs else None)
        main()
    except Preempted as e:  # not an error: the run stopped to be continued
        print(f"{prog}: {e}", file=sys.stderr)
        sys.exit(e.exit_status)
    except OutputFailed as e:
        if e.closed:
            sys.exit(0)
        _fail(prog, f"cannot write to standard output ({e.reason})")
    except CharRNNError as e:
        _fail(prog, str(e), e.exit_status, e)
    except KeyboardInterrupt:  # Ctrl-C outside training (which stops with a checkpoint)
        print(f"\n{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as e:
        if e.errno != errno.EMFILE:
            raise
        _fail(prog, f"too many open files ({e.filename or e.strerror}): this process may open "
              f"{resource.getrlimit(resource.RLIMIT_NOFILE)[0]}; raise the limit (ulimit -n 1024)", error=e)
    except MemoryError as e:
        _fail(prog, "out of memory; free some, or raise this process's memory limit (ulimit -v)", error=e)


def _parse(prog: str, argv: list[str]) -> list[str]:
    """The flags of `argv` and $CHARRNN_EXTRA_FLAGS; a bad one ends the tool in one line."""
    extra = shlex.split(os.environ.get("CHARRNN_EXTRA_FLAGS", ""))
    try:
        rest = FLAGS(argv + [f for f in extra if f.lstrip("-").split("=")[0] in FLAGS])
        apply_preset()
        return rest
    except flags.UnrecognizedFlagError as e:
        ours = _FOREIGN.get(e.flagname)
        if ours is not None and ours.split("=")[0] in FLAGS:
            _fail(prog, f"unknown flag --{e.flagname}; charrnn's is --{ours} (see --help)")
        _fail(prog, f"{e}; see --help")
    except flags.Error as e:  # absl would print two lines and exit 1
        _fail(prog, f"{e}; see --help")


# The names karpathy/char-rnn and nanoGPT give settings charrnn has under another name.
_FOREIGN = {
    "rnn_size": "rnn_units", "model": "cell", "max_epochs": "epochs", "data_dir": "data", "checkpoint_dir": "run_dir",
    "eval_val_every": "eval_every", "train_frac": "val_fraction", "learning_rate_decay": "lr_decay",
    "length": "num_chars", "primetext": "prime", "sample": "greedy", "gpuid": "device",
    "n_layer": "num_layers", "n_embd": "embedding_dim", "block_size": "seq_length", "max_iters": "max_steps",
    "eval_interval": "eval_every", "out_dir": "run_dir", "dataset": "data", "warmup_iters": "warmup_steps",
    "decay_lr": "lr_schedule", "start": "prime", "max_new_tokens": "num_chars", "compile": "jit_compile",
    "dtype": "mixed_precision",
}

# What a tool needs of its process's limits: TensorFlow opens dozens of files (its
# libraries, Python's modules) and reserves far more address space than it uses (a tiny
# training run starts at 2.5 GiB of address space, and crashes at 2 GiB).
_MIN_OPEN_FILES, _MIN_ADDRESS_SPACE = 64, 3 << 30


def _check_limits() -> None:
    """Raises the open-file limit to what the hard limit allows where it is low (as any
    process may), and refuses in one line limits a tool cannot start under, before
    TensorFlow would fail (a traceback, or a crash) partway."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 1024:
        soft = 1024 if hard == resource.RLIM_INFINITY else min(1024, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft < _MIN_OPEN_FILES:
        raise CharRNNError(f"this process may open only {soft} files (ulimit -n); charrnn needs at least "
                           f"{_MIN_OPEN_FILES}: raise the limit (ulimit -n 1024)")
    space = resource.getrlimit(resource.RLIMIT_AS)[0]
    if space != resource.RLIM_INFINITY and space < _MIN_ADDRESS_SPACE:
        raise CharRNNError(f"this process may use only {space >> 20:,} MiB of address space (ulimit -v); TensorFlow "
                           f"needs about {_MIN_ADDRESS_SPACE >> 20:,} MiB to start (it reserves more than it uses): "
                           "raise the limit (ulimit -v 8000000), or lift it")


def _help(prog: str, doc: str) -> str:
    """The tool's docstring, then its flags by group, each with its default."""
    # charrnn's flags: defined in a charrnn module (named as a path when run with python -m).
    own = [name for name, flag in FLAGS._flags().items()  # noqa: SLF001 - absl has no public listing
           if name == flag.name and "charrnn" in (FLAGS.find_module_defining_flag(name) or "")]
    title = f"{prog} options"
    groups: dict[str, list[str]] = {}
    for name in own:
        groups.setdefault(_GROUPS.get(name, title), []).append(name)
    order = sorted(groups, key=lambda g: (g == _GENERAL, g != title))
    lines = [doc.strip(), "", f"usage: {prog} [--flag=value ...]   (--helpfull: every flag, TensorFlow's too)"]
    for group in order:
        lines += ["", f"{group}:"]
        for name in groups[group]:
            flag = FLAGS[name]
            lines.append(f"  --{name} (default: {_shown(flag.default)})")
            lines += textwrap.wrap(flag.help, width=88, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines) + "\n"


def _shown(default: Any) -> str:
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return str(default).lower()
    return repr(default) if isinstance(default, str) else str(default)


def _fail(prog: str, message: str, status: int = 2, error: BaseException | None = None) -> NoReturn:
    """Ends the tool with `message` in one line; with $CHARRNN_TRACEBACK set, the traceback of
    `error` and of every error that led to it comes first."""
    if error is not None and os.environ.get("CHARRNN_TRACEBACK", "") not in ("", "0"):
        print_causes(error)
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr)
    # Objects torn down at exit (e.g. a half-restored checkpoint) may log warnings that would
    # bury the one line that matters.
    logging.set_verbosity(logging.ERROR)
    sys.exit(status)
