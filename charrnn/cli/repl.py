"""charrnn-sample --interactive: a prompt where each line typed is a prime the model continues.

On a terminal: a banner once the model is loaded and compiled, a `> ` prompt with
readline's line editing and history (up-arrow), the answer streamed right after the prime
typed; Ctrl-C stops an answer (or, at the prompt, ends the session), Ctrl-D ends it. From
a pipe: one prime per line, each answered with the prime and its continuation, no prompt.

Lines starting with `:` are commands (`:help` lists them); a prime that starts with `:` is
written with two (`::`). Each answer gets a seed of its own: random, or, once a seed is set
(`--seed`, `:seed N`), the n-th answer since then gets `mix_seed(N, n)`, so that a session
replays exactly and `:seed N` followed by the same prime gives the same answer again.
"""

from __future__ import annotations

import shutil
import sys
from typing import Any, Callable, TextIO

from charrnn.data import mix_seed
from charrnn.errors import CharRNNError
from charrnn.sampler import Sampler
from charrnn.sampling import check_settings

HELP = """Type a prime and press Enter: the model continues it. Commands:
  :temperature T    how adventurous each draw is (lower: more conservative)
  :length N         characters per answer
  :seed N|random    replay from seed N (each answer then has its own seed derived from N), or
                    a random seed per answer
  :top_k K          draw only from the K most likely characters (0: all)
  :top_p P          draw only from the most likely characters that make up probability P (1: all)
  :greedy on|off    always take the most likely character
  :settings         show the settings
  :help             this text
  :quit             end the session (also Ctrl-D; Ctrl-C stops an answer, or ends at the prompt)
A prime that starts with ':' is written with two (::)."""

# Command -> (the setting it changes, how its argument is read).
_SETTINGS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "temperature": ("temperature", float), "length": ("num_chars", int), "top_k": ("top_k", int),
    "top_p": ("top_p", float), "greedy": ("greedy", lambda v: {"on": True, "off": False}[v.lower()]),
}


class Session:
    """The state of an interactive session: the sampling settings and the seed sequence."""

    def __init__(self, sampler: Sampler, settings: dict[str, Any], out: TextIO, terminal: bool):
        self.sampler, self.out, self.terminal = sampler, out, terminal
        self.settings = dict(settings)
        self.seed: int | None = self.settings.pop("seed")
        self.answers = 0  # since the seed was set

    def handle(self, line: str) -> bool:
        """Handles one line typed; False when the session should end."""
        if line.startswith(":") and not line.startswith("::"):
            return self._command(line[1:].split())
        prime = line[1:] if line.startswith("::") else line
        if prime:
            self._answer(prime)
        return True

    def _command(self, words: list[str]) -> bool:
        name, args = (words[0].lower(), words[1:]) if words else ("help", [])
        if name in ("quit", "exit", "q"):
            return False
        if name == "help":
            _say(HELP)
        elif name == "settings":
            _say(self._describe())
        elif name == "seed" and len(args) == 1:
            try:
                seed = None if args[0].lower() == "random" else int(args[0])
                check_settings({**self.settings, "seed": seed})
            except (ValueError, CharRNNError) as e:
                _say(f"error: :seed takes an integer or 'random' ({e})")
                return True
            self.seed, self.answers = seed, 0
            _say(self._describe())
        elif name in _SETTINGS and len(args) == 1:
            key, parse = _SETTINGS[name]
            try:
                changed = {**self.settings, key: parse(args[0])}
                check_settings(changed)
            except (ValueError, KeyError, CharRNNError) as e:
                _say(f"error: :{name} {args[0]}: {e}")
                return True
            self.settings = changed
            _say(self._describe())
        else:
            _say(f"error: unknown command :{' '.join([name, *args])}; :help lists the commands")
        return True

    def _describe(self) -> str:
        s = self.settings
        seed = "random per answer" if self.seed is None else f"{self.seed} (answer {self.answers + 1} next)"
        return (f"temperature {s['temperature']:g}, length {s['num_chars']}, seed {seed}, top_k {s['top_k']}, "
                f"top_p {s['top_p']:g}, greedy {'on' if s['greedy'] else 'off'}")

    def _answer(self, prime: str) -> None:
        seed = None if self.seed is None else mix_seed(self.seed, self.answers)
        try:
            pieces = self.sampler.stream(prime, seed=seed, **self.settings)
            first = next(pieces, "")  # checks the prime before anything is printed
        except CharRNNError as e:  # a bad prime does not end the session (nor use a seed)
            _say(f"error: {e}")
            return
        self.answers += 1
        width = shutil.get_terminal_size().columns
        if self.terminal and len(_PROMPT + prime) < width:
            # Continue on the line the prime was typed on, rather than printing it again.
            self.out.write(f"\033[F{_PROMPT}{prime}")
        elif not self.terminal:
            self.out.write(prime)
        try:
            self.out.write(first)
            self.out.flush()
            for piece in pieces:
                self.out.write(piece)
                self.out.flush()
        except KeyboardInterrupt:  # stops this answer only
            self.out.write(" [stopped]")
        self.out.write("\n")
        self.out.flush()


_PROMPT = "> "


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run(sampler: Sampler, settings: dict[str, Any], source: str) -> None:
    """The session over `sampler` (loaded from `source`) with the sampling `settings`
    (num_chars, temperature, seed, top_k, top_p, greedy, stop_at), until :quit or the end of
    the input."""
    terminal = sys.stdin.isatty() and sys.stdout.isatty()
    session = Session(sampler, settings, sys.stdout, terminal)
    if not terminal:
        for line in sys.stdin:
            session.handle(line.rstrip("\n"))
        return
    import readline  # noqa: F401 - importing it gives input() line editing and history

    # The first answer compiles the sampling loop: done before the banner, which then means it.
    sampler.generate(sampler.vocab.default_prime, **{**session.settings, "num_chars": 1})
    _say(f"charrnn-sample: {source} is ready ({len(sampler.vocab)} characters). Type a prime and press Enter; "
         ":help lists the commands, Ctrl-D ends.")
    while True:
        try:
            line = input(_PROMPT)
        except (EOFError, KeyboardInterrupt):
            sys.stdout.write("\n")
            return
        if not session.handle(line):
            return
