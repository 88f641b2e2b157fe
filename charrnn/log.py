"""`logger`: the `charrnn` logger, through which the library reports what is neither a result
nor an error: warnings, the progress of long phases, downloads, checkpoints passed over.

The library installs no handler (a program decides where its logs go; Python shows warnings
on stderr by default). The tools call `install_console()`, which prints each record as
`charrnn: <message>` (`charrnn: warning: <message>` for warnings) on stderr. To silence or
redirect the library: `logging.getLogger("charrnn")`, as for any logger.
"""

from __future__ import annotations

import logging
import sys

from charrnn.errors import one_line

logger = logging.getLogger("charrnn")


class _Console(logging.Handler):
    """Writes to whatever sys.stderr is at each record (a tool's wrapped stream, a test's
    capture); a message that starts with a newline keeps it before the prefix (it ends a
    live progress line first)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            lead, message = ("\n", message[1:]) if message.startswith("\n") else ("", message)
            kind = "warning: " if record.levelno == logging.WARNING else "error: " if record.levelno > logging.WARNING \
                else ""
            sys.stderr.write(f"{lead}charrnn: {kind}{one_line(message)}\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging's contract: a failing handler reports, never raises
            self.handleError(record)


def install_console() -> None:
    """Shows the library's records of level INFO and above on stderr, as the tools do, and
    only there (not also through the root logger's handlers). Calling it again changes nothing."""
    if not any(isinstance(h, _Console) for h in logger.handlers):
        logger.addHandler(_Console())
    logger.setLevel(logging.INFO)
    logger.propagate = False
