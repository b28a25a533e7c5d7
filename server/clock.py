"""The issuer's one clock: every timestamp the server issues or checks is read here.

It is real time, moved by the offset or freeze kept in the state store; the core only reads
it. The lab's clock controls (:class:`m2mauth.server.lab.LabClock`) change that state, so a
test that moves time moves it for issuing and validating alike, in every worker that shares
the store.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .store import ClockState

if TYPE_CHECKING:
    from .store import StateStore

__all__ = ["Clock"]

_REAL_TIME = ClockState()


class Clock:
    """Seconds since the epoch as this issuer sees them; ``Clock()`` alone is real time."""

    def __init__(self, store: StateStore | None = None) -> None:
        self._store = store

    def state(self) -> ClockState:
        return self._store.clock_state() if self._store is not None else _REAL_TIME

    def now(self) -> float:
        """The current time as a POSIX timestamp, as this server sees it."""
        state = self.state()
        if state.frozen_at is not None:
            return state.frozen_at
        return time.time() + state.offset

    def __call__(self) -> int:
        """Whole seconds, the unit of JWT NumericDate claims."""
        return int(self.now())

    @property
    def offset(self) -> float:
        """Seconds this clock runs ahead of (positive) or behind (negative) real time."""
        return self.state().offset

    @property
    def frozen(self) -> bool:
        return self.state().frozen_at is not None

    def __repr__(self) -> str:
        state = self.state()
        if state.frozen_at is not None:
            return f"<{type(self).__name__} frozen at {state.frozen_at}>"
        return f"<{type(self).__name__} offset {state.offset:+g}s>"
