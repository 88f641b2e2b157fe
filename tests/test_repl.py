"""charrnn-sample --interactive: the session's commands and seeds in process, and the
terminal (banner, prompt, line editing and history, Ctrl-C, Ctrl-D) under a pseudo-terminal."""

from __future__ import annotations

import fcntl
import io
import os
import re
import select
import subprocess
import sys
import termios
import time

import pytest

from charrnn import Sampler
from charrnn.cli.repl import Session
from charrnn.text.data import mix_seed
from conftest import sigint_as_usual

SETTINGS = dict(num_chars=12, temperature=1.0, seed=None, top_k=0, top_p=1.0, greedy=False, stop_at=None)


@pytest.fixture(scope="module")
def sampler(trained_run):
    return Sampler.from_checkpoint(str(trained_run))


def _session(sampler, **settings):
    out = io.StringIO()
    return Session(sampler, {**SETTINGS, **settings}, out, terminal=False), out


def _answer(session: Session, out: io.StringIO, line: str) -> str:
    """What the session printed for `line` (an answer ends with a newline of its own)."""
    before = len(out.getvalue())
    session.handle(line)
    return out.getvalue()[before:]


def test_a_seeded_session_gives_each_answer_a_seed_of_its_own_and_replays(sampler):
    session, out = _session(sampler, seed=9)
    first = _answer(session, out, "The ")
    assert _answer(session, out, "bad ~") == ""
    second = _answer(session, out, "The ")
    assert first == sampler.generate("The ", 12, 1.0, seed=mix_seed(9, 0)) + "\n"  # the bad line used no seed
    assert second == sampler.generate("The ", 12, 1.0, seed=mix_seed(9, 1)) + "\n" != first
    session.handle(":seed 9")
    assert _answer(session, out, "The ") == first
    session.handle(":seed random")
    fresh = [_answer(session, out, "The ") for _ in range(2)]
    assert all(a.startswith("The ") and len(a) == 17 for a in fresh)


def test_commands_change_what_follows_and_bad_ones_change_nothing(sampler, capsys):
    session, out = _session(sampler, seed=3)
    for line in [":length 5", ":temperature 0.000001", ":top_k 1", ":greedy on", ":temperature -1",
                 ":length many", ":greedy maybe", ":bogus", ":settings", "::x"]:
        assert session.handle(line)
    assert session.settings["num_chars"] == 5 and session.settings["greedy"] is True
    assert session.settings["temperature"] == 0.000001 and session.settings["top_k"] == 1
    said = capsys.readouterr().err
    for expected in ("error: :temperature -1: temperature must be between", "error: :length many:",
                     "error: :greedy maybe:", "error: unknown command :bogus",
                     "temperature 1e-06, length 5, seed 3 (answer 1 next), top_k 1, top_p 1, greedy on"):
        assert expected in said, said
    # "::x" is the prime ":x", whose ':' the trained run's text does not have.
    assert out.getvalue() == "" and "not in the model's vocabulary: ':'" in said
    assert not session.handle(":quit")


def test_a_greedy_answer_is_the_most_likely_continuation(sampler):
    session, out = _session(sampler)
    session.handle(":greedy on")
    assert _answer(session, out, "The ") == sampler.generate("The ", 12, greedy=True) + "\n"


class _Terminal:
    """charrnn-sample --interactive with a pseudo-terminal as its controlling terminal."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None):
        master, slave = os.openpty()

        def controlling_terminal() -> None:
            sigint_as_usual()
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.process = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                                        env={**os.environ, **(env or {})}, preexec_fn=controlling_terminal)  # noqa: PLW1509 - no threads here
        os.close(slave)
        self.master, self.seen = master, b""

    def expect(self, pattern: str, timeout: float = 300) -> str:
        """What the terminal showed up to the end of `pattern` (read as it comes, no sleeps)."""
        deadline = time.monotonic() + timeout
        while not (match := re.search(pattern.encode(), self.seen)):
            if time.monotonic() > deadline or self.process.poll() is not None and not select.select(
                    [self.master], [], [], 0)[0]:
                raise AssertionError(f"waited for {pattern!r}; the terminal shows {self.seen[-2000:]!r}")
            if select.select([self.master], [], [], 1)[0]:
                try:
                    self.seen += os.read(self.master, 65536)
                except OSError:  # the other side closed
                    pass
        shown, self.seen = self.seen[:match.end()], self.seen[match.end():]
        return shown.decode("utf-8", "replace")

    def reading(self, timeout: float = 60) -> None:
        """Waits until readline waits for a key: it turned canonical mode off and the main
        thread sleeps in its select() (/proc's wchan). A Ctrl-C typed before then would reach
        Python before readline listens for it, or wait for the next key."""
        deadline = time.monotonic() + timeout
        wchan = f"/proc/{self.process.pid}/task/{self.process.pid}/wchan"
        while termios.tcgetattr(self.master)[3] & termios.ICANON or not re.search(r"select|poll", open(wchan).read()):
            assert time.monotonic() < deadline, "readline never started reading"
            select.select([], [], [], 0.01)

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())


def _answer_shown(shown: str) -> str:
    """The answer on the line the prime was typed on (after the cursor moved back to it)."""
    return shown.split("\x1b[F> ", 1)[1].split("\r\n", 1)[0]


def test_the_terminal_session(trained_run):
    term = _Terminal([sys.executable, "-m", "charrnn.cli.sample", f"--run_dir={trained_run}", "--interactive",
                      "--num_chars=15", "--temperature=1.0"])
    assert "loading" in term.expect(r"is ready \(\d+ characters\)")
    term.expect(r"> ")
    term.type(":seed 4\r")
    assert "seed 4 (answer 1 next)" in term.expect(r"\n> ")
    term.type("The \r")
    first = _answer_shown(term.expect(r"\n> "))
    assert first.startswith("The ") and len(first) == 19
    term.type(":seed 4\r")
    term.expect(r"\n> ")
    term.type("\x1b[A\x1b[A\r")  # up twice: "The " from readline's history
    assert _answer_shown(term.expect(r"\n> ")) == first
    term.type(":length 100000\r")
    term.expect(r"\n> ")
    term.type("The \r")
    term.expect(r"\x1b\[F> The .")  # the answer has started
    term.type("\x03")  # Ctrl-C stops the answer, not the session
    assert term.expect(r"\n> ").rstrip().endswith("[stopped]\r\n>")
    term.reading()  # readline waits in its select(), where it notices a SIGINT
    term.type("\x03")  # at the prompt, Ctrl-C ends the session
    assert term.process.wait(timeout=60) == 0
    assert "Traceback" not in term.seen.decode("utf-8", "replace")


def test_ctrl_d_ends_the_terminal_session(trained_run):
    term = _Terminal([sys.executable, "-m", "charrnn.cli.sample", f"--run_dir={trained_run}", "--interactive"])
    term.expect(r"is ready")
    term.expect(r"> ")
    term.reading()
    term.type("\x04")
    assert term.process.wait(timeout=60) == 0


def test_a_line_starting_with_two_colons_is_a_prime_starting_with_one():
    """"::" escapes a prime that starts with ':' (one colon of it kept); a single ':' starts a
    command. A vocabulary with ':' in it, so the prime is answered, not refused."""
    from charrnn import CharRNN, Vocabulary

    vocab = Vocabulary.from_text(":quit help\n")
    model = CharRNN(len(vocab), embedding_dim=4, rnn_units=8, seed=0)
    model.build_for_vocab()
    sampler = Sampler(model, vocab, device="/CPU:0")
    session, out = _session(sampler, seed=1)
    assert _answer(session, out, "::quit") == sampler.generate(":quit", 12, 1.0, seed=mix_seed(1, 0)) + "\n"
    assert session.handle("::help") and out.getvalue().splitlines()[-1].startswith(":help")
    assert not session.handle(":quit")  # the command


def test_commands_with_a_missing_or_unreadable_value_say_so_and_change_nothing(sampler, capsys):
    session, _ = _session(sampler, seed=3)
    for line in (":temperature", ":temperature abc", ":length 1e3", ":top_k 18446744073709551616", ":greedy maybe",
                 ":top_k 4294967297"):
        assert session.handle(line)
    said = capsys.readouterr().err
    for expected in ("error: :temperature takes one value, as in :temperature 0.8",
                     "error: :temperature abc: 'abc' is not a number", "error: :length 1e3: '1e3' is not an integer",
                     "error: :top_k 18446744073709551616: top_k must be between 0 and 2147483647",
                     "error: :greedy maybe: 'maybe' is neither on nor off",
                     "error: :top_k 4294967297: top_k must be between 0 and 2147483647"):
        assert expected in said, said
    assert session.settings == {k: v for k, v in SETTINGS.items() if k != "seed"}


def test_from_a_pipe_crlf_lines_are_primes_and_quit_ends_the_session(trained_run):
    primes = "The \r\n:quit\r\nThe quick\r\n"
    proc = subprocess.run([sys.executable, "-m", "charrnn.cli.sample", f"--run_dir={trained_run}", "--interactive",
                           "--num_chars=10", "--seed=2"], input=primes, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    answers = proc.stdout.splitlines()
    assert len(answers) == 1 and answers[0].startswith("The ") and len(answers[0]) == 14  # :quit ended it


def test_from_a_pipe_a_line_that_is_not_utf8_is_refused_and_the_session_goes_on(trained_run):
    primes = b"The \xff\xfe\nThe \n"
    proc = subprocess.run([sys.executable, "-m", "charrnn.cli.sample", f"--run_dir={trained_run}", "--interactive",
                           "--num_chars=10", "--seed=2"], input=primes, capture_output=True, timeout=300,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8", "LC_ALL": "C.UTF-8"})
    stderr = proc.stderr.decode()
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr
    assert "not in the model's vocabulary" in stderr and "\\udcff" in stderr
    answers = proc.stdout.decode().splitlines()
    assert len(answers) == 1 and answers[0].startswith("The ") and len(answers[0]) == 14  # the second line's


def test_interactive_with_standard_input_closed_is_one_line(trained_run):
    proc = subprocess.run([sys.executable, "-m", "charrnn.cli.sample", f"--run_dir={trained_run}", "--interactive"],
                          stdin=None, capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: os.close(0))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "charrnn-sample: error: --interactive reads primes from standard input, which is closed; give it input, "
        "or pass --prime instead")


def test_ctrl_d_typed_during_an_answer_stops_it_and_ends_the_session(trained_run):
    term = _Terminal([sys.executable, "-m", "charrnn.cli.sample", f"--run_dir={trained_run}", "--interactive",
                      "--num_chars=200000"])
    term.expect(r"is ready")
    term.expect(r"> ")
    term.reading()
    term.type("The \r")
    term.expect(r"\x1b\[F> The .")  # the answer has started
    term.type("\x04")
    assert term.process.wait(timeout=120) == 0
    assert "Traceback" not in term.seen.decode("utf-8", "replace")


def test_lines_pasted_at_once_are_each_answered_in_order_on_a_dumb_terminal(trained_run):
    """Four lines pasted at the prompt: the first is read by readline, the others arrive
    while its answer streams (read then, unechoed); each is answered in order after a prompt
    of its own, the answers are those of the same seeds typed one by one, and TERM=dumb
    gets no escape sequence (the prime is written again rather than the cursor moved up)."""
    term = _Terminal([sys.executable, "-m", "charrnn.cli.sample", f"--run_dir={trained_run}", "--interactive",
                      "--num_chars=300", "--seed=5"], env={"TERM": "dumb"})
    term.expect(r"is ready")
    term.expect(r"> ")
    term.reading()
    term.type("The \rfox \r:seed 7\rdog\r")
    shown = term.expect(r"> dog") + term.expect(r"\n> ")  # the fourth answer, then the prompt
    term.type("\x04")
    assert term.process.wait(timeout=60) == 0
    # The typed line's echo, then each answer after a prompt ('>' is not in the vocabulary).
    echo, *answers, rest = shown.replace("\r\n", "\n").split("\n> ")
    sampler = Sampler.from_checkpoint(str(trained_run))
    assert echo == "The " and rest == "" and len(answers) == 4, shown
    assert answers[0] == sampler.generate("The ", 300, seed=mix_seed(5, 0))
    assert answers[1] == sampler.generate("fox ", 300, seed=mix_seed(5, 1))
    assert answers[2].startswith(":seed 7\n") and "seed 7 (answer 1 next)" in answers[2]
    assert answers[3] == sampler.generate("dog", 300, seed=mix_seed(7, 0))
    assert b"\x1b" not in term.seen and "\x1b" not in shown


def test_a_line_typed_ahead_is_edited_as_the_terminal_would_have():
    """Out of canonical mode the terminal applies no Backspace: the line is edited here, and
    cursor keys and other control characters are left out of it."""
    from charrnn.cli.repl import _Keys

    keys = _Keys()
    keys.typed = b"helxy\x7f\x7flo\r\x1b[Ax\x08\x15ab\x01\n\xffq"
    assert keys.next_line() == "hello" and keys.next_line() == "ab" and keys.next_line() is None
    assert keys.typed == b"\xffq"  # unfinished: it waits at the next prompt
