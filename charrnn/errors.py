"""The exceptions charrnn raises for problems the user can fix.

A message is a single line that says what is wrong and what to do about it; the
command-line tools print it without a traceback and exit with the error's `exit_status`.
"""


class CharRNNError(Exception):
    """Bad input, bad configuration or an unusable run directory (exit status 2)."""

    exit_status = 2


class TryAgain(CharRNNError):
    """A refusal that the same command will most likely not meet again: a text that changed
    while it was read, a download cut short, a run stopped to be continued. Exit status 75
    (EX_TEMPFAIL of sysexits.h), which schedulers read as "retry"."""

    exit_status = 75
