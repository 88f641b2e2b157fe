"""How a run stops before its end, in one vocabulary.

- `trainer.stop_training = True` asks for a stop (a callback, or `SignalStop`); the loop
  stops at the next chunk boundary, saves a checkpoint, and says why in `stop_reason`.
- `SignalStop` turns SIGTERM and Ctrl-C into such a request; a second Ctrl-C falls through
  to the default action and ends the process at once, even inside a long TensorFlow call.
- `Stopped` unwinds the loop from inside an evaluation to the place that saves.
- `Preempted` is what `fit()` raises when the run stopped for a signal, a preempted worker
  or a lost one: running the same command again continues it; the tools exit with
  `EXIT_PREEMPTED`.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from charrnn.errors import TryAgain
from charrnn.log import logger
from charrnn.training.callbacks import Callback

# EX_TEMPFAIL from sysexits.h: the run stopped cleanly and running it again continues it.
EXIT_PREEMPTED = TryAgain.exit_status


class Preempted(TryAgain):
    """Training stopped on a signal (or a worker's preemption or loss) after the checkpoint
    `checkpoint` was saved; running the same command again continues it."""

    def __init__(self, message: str, checkpoint: str | None):
        super().__init__(message)
        self.checkpoint = checkpoint


class Stopped(Exception):
    """A stop was requested between evaluation batches: unwinds to the loop, which saves."""


class SignalStop(Callback):
    """While the run lasts, `signals` (SIGTERM and SIGINT) ask it to stop, instead of killing
    it; `requested` names the first one received. Outside the main thread (where Python
    cannot install handlers) it does nothing."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = signals
        self.requested: str | None = None
        self._trainer: Any = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        self.requested = signal.Signals(signum).name
        if self._trainer is not None:
            self._trainer.stop_training, self._trainer.stop_reason = True, self.requested
        # From now on a second Ctrl-C takes the default action: exit at once.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        logger.info(f"\n{self.requested} received; saving a checkpoint after this step "
                    "(Ctrl-C again to quit at once)")

    def on_train_begin(self, trainer: Any) -> None:
        self._trainer = trainer
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)

    def on_train_end(self, logs: dict[str, float]) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
