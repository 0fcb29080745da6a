"""The one-line progress display of a run on a terminal."""

from __future__ import annotations

import math
import shutil
import sys
import time
from typing import IO

__all__ = ["TerminalProgress"]


class TerminalProgress:
    """A one-line progress display on *stream* — only when it is a terminal, so that
    redirected or captured output stays clean."""

    def __init__(self, stream: IO[str] | None = None, interval: float = 0.1) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _isatty(self.stream)
        self.interval = interval
        self._origin = time.monotonic()  # when the first batch began
        self._shown = -math.inf
        self._drawn = False

    def __call__(self, done: int, total: int, what: str) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if done == 0:
            self._origin = now
        if done >= total:
            self.clear()
            return
        if now - self._shown < self.interval:
            return
        self._shown = now
        # Batches take about equal time (--duration) or nearly so (--repeat): extrapolate.
        left = (now - self._origin) / done * (total - done) if done else None
        eta = f", about {left:.0f} s left" if left is not None else ""
        line = f"loopshim bench: {done}/{total} batches{eta} - {what}"
        width = shutil.get_terminal_size((80, 24)).columns - 1
        self.stream.write("\r\x1b[K" + line[:width])
        self.stream.flush()
        self._drawn = True

    def clear(self) -> None:
        """Erase the line, if one is shown."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
