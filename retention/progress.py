"""Progress on a terminal: repositories read of total, deletions done of planned.

Only on a terminal (stderr is a TTY), one line rewritten in place, and never when piped or
under the daemon: a log file or a CI job's output gets the log events, not a counter.
"""

from __future__ import annotations

import time
from typing import TextIO


class Progress:
    def __init__(self, stream: TextIO, *, interval: float = 0.1):
        self._stream = stream
        self._interval = interval  # seconds between redraws: a redraw per step is noise
        self._shown = 0.0
        self._width = 0

    @classmethod
    def on(cls, stream: TextIO) -> Progress | None:
        """A Progress for ``stream`` when it is a terminal; None (no progress) otherwise."""
        try:
            return cls(stream) if stream.isatty() else None
        except (AttributeError, ValueError):  # closed or not a real stream
            return None

    def step(self, what: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._shown < self._interval:
            return
        self._shown = now
        text = f"{what} {done}/{total}"
        self._stream.write("\r" + text.ljust(self._width))
        self._width = len(text)
        if done >= total:
            self.clear()
        self._stream.flush()

    def clear(self) -> None:
        if self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0
