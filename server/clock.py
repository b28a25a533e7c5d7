"""The server's one clock: every timestamp the server issues or checks is read here.

Tests freeze, advance or offset it instead of sleeping; the default follows real time.
"""

from __future__ import annotations

import threading
import time


class Clock:
    """Wall-clock time in seconds, with a settable offset and an optional frozen instant."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._offset = 0.0
        self._frozen: float | None = None

    def now(self) -> float:
        """The current time as a POSIX timestamp, as this server sees it."""
        frozen = self._frozen
        if frozen is not None:
            return frozen
        return time.time() + self._offset

    def __call__(self) -> int:
        """Whole seconds, the unit of JWT NumericDate claims."""
        return int(self.now())

    @property
    def offset(self) -> float:
        """Seconds this clock runs ahead of (positive) or behind (negative) real time."""
        return self._offset

    @property
    def frozen(self) -> bool:
        return self._frozen is not None

    def set_offset(self, seconds: float) -> None:
        """Run ahead of (positive) or behind (negative) real time – the clock-skew cases."""
        with self._lock:
            self._offset = float(seconds)
            if self._frozen is not None:
                self._frozen = time.time() + self._offset

    def freeze(self, at: float | None = None) -> None:
        """Stop the clock at ``at`` (a POSIX timestamp) or at the current time."""
        with self._lock:
            self._frozen = self.now() if at is None else float(at)

    def unfreeze(self) -> None:
        """Run again from the frozen instant (the offset keeps the time continuous)."""
        with self._lock:
            if self._frozen is not None:
                self._offset = self._frozen - time.time()
                self._frozen = None

    def advance(self, seconds: float) -> None:
        """Move time forward (or back, with a negative value), frozen or not."""
        with self._lock:
            if self._frozen is not None:
                self._frozen += seconds
            else:
                self._offset += seconds

    def reset(self) -> None:
        """Back to real time."""
        with self._lock:
            self._offset = 0.0
            self._frozen = None

    def __repr__(self) -> str:
        if self._frozen is not None:
            return f"<Clock frozen at {self._frozen}>"
        return f"<Clock offset {self._offset:+g}s>"
