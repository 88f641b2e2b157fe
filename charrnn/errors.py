"""The exceptions charrnn raises for problems the user can fix.

A message is a single line that says what is wrong and what to do about it; the
command-line tools print it without a traceback and exit with the error's `exit_status`
(with $CHARRNN_TRACEBACK set, `print_causes` shows what led to it first).
"""

from __future__ import annotations

import re
import sys
import traceback

# Characters a terminal acts on instead of showing: C0 and C1 controls, DEL, and the line and
# paragraph separators. A file name holding them would end a message's line early (a forged
# second line) or move the cursor.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class CharRNNError(Exception):
    """Bad input, bad configuration or an unusable run directory (exit status 2)."""

    exit_status = 2


class TryAgain(CharRNNError):
    """A refusal that the same command will most likely not meet again: a text that changed
    while it was read, a download cut short, a run stopped to be continued. Exit status 75
    (EX_TEMPFAIL of sysexits.h), which schedulers read as "retry"."""

    exit_status = 75


def one_line(message: str) -> str:
    """`message` as one line a terminal shows as it is: each control character as its Python
    escape (a newline in a file name prints as \\n, an escape sequence as \\x1b[...)."""
    return _CONTROLS.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), message)


def print_causes(error: BaseException) -> None:
    """Prints `error`'s traceback on stderr with every cause and context, those that `raise
    ... from None` hides from a user's view included: what a maintainer needs behind a
    one-line error."""
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.__suppress_context__ = False
        link = link.__cause__ or link.__context__
    traceback.print_exception(error, file=sys.stderr)
