"""`Progress`: a line on standard error now and then while long work goes on (hashing and
encoding a corpus, evaluating a long text), so that no phase is silent for long. Work that
ends within `FIRST_AFTER` seconds prints nothing."""

from __future__ import annotations

import time

from charrnn.log import logger

# Seconds before the first line, and between lines.
FIRST_AFTER, EVERY = 5.0, 10.0


class Progress:
    """Reports `done` of `total` (in `unit`s of `scale`) for `what`, with the time left at the
    rate so far: `charrnn: encoding big.txt: 120 of 800 MB (15%), 0:00:40 left`."""

    def __init__(self, what: str, total: float, unit: str = "MB", scale: float = 1e6):
        self.what, self.total, self.unit, self.scale = what, total, unit, scale
        self._start = self._last = time.monotonic()
        self._shown = False

    def update(self, done: float) -> None:
        now = time.monotonic()
        if now - self._start < FIRST_AFTER or (self._shown and now - self._last < EVERY) or self.total <= 0:
            return
        self._last, self._shown = now, True
        fraction = min(done / self.total, 1.0)
        left = (now - self._start) * (1 - fraction) / fraction if fraction > 0 else None
        shown = "" if left is None else f", {int(left) // 3600}:{int(left) % 3600 // 60:02d}:{int(left) % 60:02d} left"
        logger.info(f"{self.what}: {done / self.scale:,.0f} of {self.total / self.scale:,.0f} {self.unit} "
                    f"({100 * fraction:.0f}%){shown}")
