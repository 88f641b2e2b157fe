"""charrnn-sample --interactive: a prompt where each line typed is a prime the model continues.

On a terminal: a banner once the model is loaded and compiled, a `> ` prompt with
readline's line editing and history (up-arrow), the answer streamed right after the prime
typed; Ctrl-C stops an answer (or, at the prompt, ends the session), Ctrl-D ends it. Lines
typed or pasted while an answer streams are kept and answered in order, each after a
prompt of its own (an unfinished one waits at the next prompt); so are the lines of a
paste readline takes at once. From a pipe: one prime per line, each answered with the
prime and its continuation, no prompt.

Lines starting with `:` are commands (`:help` lists them); a prime that starts with `:` is
written with two (`::`). Each answer gets a seed of its own: random, or, once a seed is set
(`--seed`, `:seed N`), the n-th answer since then gets `mix_seed(N, n)`, so that a session
replays exactly and `:seed N` followed by the same prime gives the same answer again.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import termios
import textwrap
import typing
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, TextIO

from charrnn.errors import CharRNNError
from charrnn.generation.sampler import Sampler
from charrnn.sampling import NAMES, OPTIONS, SampleOptions, check_settings
from charrnn.text.data import mix_seed


def _number(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    return parse


def _switch(text: str) -> bool:
    if text.lower() not in ("on", "off"):
        raise ValueError(f"{text!r} is neither on nor off")
    return text.lower() == "on"


class _Setting(NamedTuple):
    key: str  # the setting the command changes
    parse: Callable[[str], Any]  # how its argument is read
    argument: str  # the argument, as :help shows it
    example: str  # an example of one
    help: str  # what it does


_READ = {int: (_number(int), "N"), float: (_number(float), "X"), bool: (_switch, "on|off")}
_KINDS = typing.get_type_hints(SampleOptions)
# Command -> what it sets: the length, and each sampling option that declares an example
# (charrnn.sampling, in its order).
_SETTINGS: dict[str, _Setting] = {
    "length": _Setting("num_chars", _number(int), "N", "300", "Characters per answer."),
    **{field.name: _Setting(field.name, *_READ[_KINDS[field.name]], field.metadata["example"], field.metadata["help"])
       for field in OPTIONS if field.metadata["example"] is not None},
}


def _listed(command: str, text: str) -> list[str]:
    return textwrap.wrap(text, width=88, initial_indent=f"  {command:<17} ", subsequent_indent=" " * 20)


_OPTION_LINES = [_listed(f":{name} {setting.argument}", setting.help) for name, setting in _SETTINGS.items()
                 if name != "length"]
# In the settings line's order: the first option (the temperature), the length, the seed, the rest.
HELP = "\n".join([
    "Type a prime and press Enter: the model continues it. Commands:",
    *_OPTION_LINES[0], *_listed(":length N", _SETTINGS["length"].help),
    *_listed(":seed N|random", "Replay from seed N (each answer then has its own seed derived from N), or a random "
             "seed per answer."),
    *(line for lines in _OPTION_LINES[1:] for line in lines),
    *_listed(":settings", "Show the settings."),
    *_listed(":help", "This text."),
    *_listed(":quit", "End the session (also Ctrl-D; Ctrl-C stops an answer, or ends at the prompt)."),
    "A prime that starts with ':' is written with two (::)."])


class Session:
    """The state of an interactive session: the sampling settings and the seed sequence."""

    def __init__(self, sampler: Sampler, settings: dict[str, Any], out: TextIO, terminal: bool):
        self.sampler, self.out, self.terminal = sampler, out, terminal
        self.settings = dict(settings)
        self.seed: int | None = self.settings.pop("seed")
        self.answers = 0  # since the seed was set
        self.keys = _Keys()  # what was typed while answers streamed, not yet handled

    def handle(self, line: str, echoed: bool = False) -> bool:
        """Handles one line; `echoed`: the terminal shows it on the line above (typed at the
        prompt). False when the session should end."""
        if line.startswith(":") and not line.startswith("::"):
            if self.terminal and not echoed:  # undecodable bytes shown escaped
                self.out.write(f"{_PROMPT}{line.encode('utf-8', 'backslashreplace').decode()}\n")
            return self._command(line[1:].split())
        prime = line[1:] if line.startswith("::") else line
        if prime:
            return self._answer(prime, echoed)
        return True

    def _command(self, words: list[str]) -> bool:
        name, args = (words[0].lower(), words[1:]) if words else ("help", [])
        if name in ("quit", "exit", "q"):
            return False
        if name == "help":
            _say(HELP)
        elif name == "settings":
            _say(self._settings_line())
        elif name == "seed" and len(args) == 1:
            try:
                seed = None if args[0].lower() == "random" else int(args[0])
                check_settings({**self.settings, "seed": seed})
            except (ValueError, CharRNNError) as e:
                _say(f"error: :seed takes an integer or 'random' ({e})")
                return True
            self.seed, self.answers = seed, 0
            _say(self._settings_line())
        elif name in _SETTINGS and len(args) != 1:
            _say(f"error: :{name} takes one value, as in :{name} {_SETTINGS[name].example}")
        elif name in _SETTINGS:
            setting = _SETTINGS[name]
            try:
                changed = {**self.settings, setting.key: setting.parse(args[0])}
                check_settings(changed)
            except (ValueError, KeyError, CharRNNError) as e:
                _say(f"error: :{name} {args[0]}: {e}")
                return True
            self.settings = changed
            _say(self._settings_line())
        else:
            _say(f"error: unknown command :{' '.join([name, *args])}; :help lists the commands")
        return True

    def _settings_line(self) -> str:
        """The settings as their commands set them: the first option (the temperature), the
        length and the seed, then the other options."""
        seed = "random per answer" if self.seed is None else f"{self.seed} (answer {self.answers + 1} next)"
        first, *others = [f"{name} {_shown(self.settings[name])}" for name in _SETTINGS
                          if name in NAMES and name in self.settings]
        return ", ".join([first, f"length {self.settings['num_chars']}", f"seed {seed}", *others])

    def _answer(self, prime: str, echoed: bool) -> bool:
        """Streams the answer to `prime`; False when Ctrl-D was typed during it (the session ends)."""
        seed = None if self.seed is None else mix_seed(self.seed, self.answers)
        try:
            pieces = self.sampler.stream(prime, seed=seed, **self.settings)
            first = next(pieces, "")  # checks the prime before anything is printed
        except CharRNNError as e:  # a bad prime does not end the session (nor use a seed)
            _say(f"error: {e}")
            return True
        self.answers += 1
        if not self.terminal:
            self.out.write(prime)
        elif echoed and _moves_cursor() and len(_PROMPT + prime) < shutil.get_terminal_size().columns:
            # Continue on the line the prime was typed on, rather than printing it again.
            self.out.write(f"\033[F{_PROMPT}{prime}")
        else:  # typed ahead (not echoed), or a terminal that cannot move the cursor up
            self.out.write(f"{_PROMPT}{prime}")
        ended = False
        with _keys_typed(self.terminal, self.keys) as typed:
            try:
                self.out.write(first)
                self.out.flush()
                for piece in pieces:
                    self.out.write(piece)
                    self.out.flush()
                    if typed.end_of_input():  # Ctrl-D: this answer stops, and the session ends
                        ended = True
                        break
            except KeyboardInterrupt:  # stops this answer only
                self.out.write(" [stopped]")
        self.out.write("\n")
        self.out.flush()
        return not ended


_PROMPT = "> "


def _shown(value: Any) -> str:
    return ("on" if value else "off") if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) \
        else str(value)


def _moves_cursor() -> bool:
    """Whether the terminal takes escape sequences (not TERM=dumb, which prints them raw)."""
    return os.environ.get("TERM", "dumb") != "dumb"


class _Keys:
    """The keys typed on the terminal while answers stream, read without waiting (the
    terminal is out of canonical mode, without echo, meanwhile; `fd` is set then): Ctrl-D
    among them ends the session; each complete line is handed out in order (`next_line`),
    and an unfinished one waits at the next prompt (`offer_rest`)."""

    def __init__(self) -> None:
        self.fd: int | None = None
        self.typed, self.eof = b"", False

    def end_of_input(self) -> bool:
        if self.fd is not None and not self.eof:
            try:
                data = os.read(self.fd, 4096)
            except OSError:
                data = b""
            self.eof = b"\x04" in data
            self.typed += data.split(b"\x04")[0]
        return self.eof

    def next_line(self) -> str | None:
        """The oldest complete line typed ahead (Enter arrives as CR or LF), or None; edited
        as the terminal would have (Backspace, Ctrl-U), cursor keys and other control
        characters left out (out of canonical mode, the terminal applied none of them)."""
        parts = re.split(rb"\r\n|\r|\n", self.typed, maxsplit=1)
        if len(parts) == 1:
            return None
        self.typed = parts[1]
        return _edited(parts[0].decode("utf-8", "surrogateescape"))

    def offer_rest(self) -> None:
        """Puts the unfinished line typed ahead, if any, at the next prompt (readline's line)."""
        ahead, self.typed = _edited(self.typed.decode("utf-8", "ignore")), b""
        if ahead.isprintable() and ahead:
            import readline

            def insert() -> None:
                readline.insert_text(ahead)
                readline.redisplay()
                readline.set_pre_input_hook(None)

            readline.set_pre_input_hook(insert)


def _edited(typed: str) -> str:
    """`typed` as the line it makes: each Backspace (DEL or ^H) takes back a character, ^U the
    line; escape sequences (cursor keys) and other control characters are left out."""
    line: list[str] = []
    for c in re.sub(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|O.|.)?", "", typed):
        if c in "\x7f\b":
            line = line[:-1]
        elif c == "\x15":
            line = []
        elif c.isprintable() or c == "\t" or "\udc80" <= c <= "\udcff":  # undecodable bytes: refused by name
            line.append(c)
    return "".join(line)


@contextlib.contextmanager
def _keys_typed(terminal: bool, keys: _Keys) -> Iterator[_Keys]:
    if not terminal:
        yield keys
        return
    fd = sys.stdin.fileno()
    before = termios.tcgetattr(fd)
    reading = termios.tcgetattr(fd)
    reading[3] &= ~(termios.ICANON | termios.ECHO)  # ISIG stays: Ctrl-C still interrupts
    reading[6][termios.VMIN], reading[6][termios.VTIME] = 0, 0
    termios.tcsetattr(fd, termios.TCSANOW, reading)
    keys.fd = fd
    try:
        yield keys
    finally:
        keys.fd = None
        termios.tcsetattr(fd, termios.TCSANOW, before)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run(sampler: Sampler, settings: dict[str, Any], source: str) -> None:
    """The session over `sampler` (loaded from `source`) with the sampling `settings`
    (num_chars, temperature, seed, top_k, top_p, greedy, stop_at), until :quit or the end of
    the input."""
    terminal = sys.stdin.isatty() and sys.stdout.isatty()
    # Bytes that are not text in the input's encoding become lone surrogates, which the
    # vocabulary then refuses by name for that line only (a decoding error would end the session).
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="surrogateescape")
    session = Session(sampler, settings, sys.stdout, terminal)
    if not terminal:
        for line in sys.stdin:
            if not session.handle(line.rstrip("\r\n")):  # CRLF ends a line as LF does
                return
        return
    import readline  # noqa: F401 - importing it gives input() line editing and history

    # The first answer compiles the sampling loop: done before the banner, which then means it.
    sampler.generate(sampler.vocab.default_prime, **{**session.settings, "num_chars": 1})
    _say(f"charrnn-sample: {source} is ready ({len(sampler.vocab)} characters). Type a prime and press Enter; "
         ":help lists the commands, Ctrl-D ends.")
    while True:
        if (ahead := session.keys.next_line()) is not None:  # typed while an answer streamed
            if not session.handle(ahead):
                return
            continue
        session.keys.offer_rest()
        try:
            typed = input(_PROMPT)
        except (EOFError, KeyboardInterrupt):
            sys.stdout.write("\n")
            return
        # A paste readline took at once (bracketed paste) holds several lines: each a prime.
        lines = re.split(r"\r\n|\r|\n", typed)  # newlines only: a form feed may be in a prime
        for line in lines:
            if not session.handle(line, echoed=len(lines) == 1):
                return
