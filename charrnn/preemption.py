"""Graceful stops: SIGTERM or Ctrl-C asks training to checkpoint and exit at the next step.

The first signal only sets a flag that the training loop polls between steps (and between
evaluation batches); a second SIGINT falls through to the default action and ends the
process at once, even in the middle of a long TensorFlow call.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Callable

from charrnn.errors import CharRNNError

# EX_TEMPFAIL from sysexits.h: the run stopped cleanly and running it again continues it.
EXIT_PREEMPTED = 75


class Preempted(CharRNNError):
    """Training stopped on a signal after saving the checkpoint `checkpoint`."""

    def __init__(self, message: str, checkpoint: str):
        super().__init__(message)
        self.checkpoint = checkpoint


class StopRequest:
    """Context manager: while active, SIGTERM and SIGINT set `requested` (and call
    `on_signal` with the signal's name) instead of killing.

    Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT),
                 on_signal: Callable[[str], None] | None = None) -> None:
        self.signals = signals
        self.on_signal = on_signal
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        self.requested = signal.Signals(signum).name
        if self.on_signal is not None:
            self.on_signal(self.requested)
        # From now on a second Ctrl-C takes the default action: exit at once.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        print(f"\ncharrnn: {self.requested} received; saving a checkpoint after this step "
              "(Ctrl-C again to quit at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Stopped(Exception):
    """A stop was requested (signal) between steps or evaluation batches; unwinds to the
    caller that owns the checkpoint, which saves it and raises `Preempted`."""
