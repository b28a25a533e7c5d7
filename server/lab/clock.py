"""The lab's clock controls: freeze, advance or offset the issuer's clock from a test.

They change the clock state in the issuer's state store, which the core's
:class:`~m2mauth.server.Clock` reads for every timestamp it issues or checks.
"""

from __future__ import annotations

import time
from dataclasses import replace

from ..clock import Clock
from ..store import ClockState

__all__ = ["LabClock"]


class LabClock(Clock):
    """The issuer's clock, with controls. Tests freeze, advance or offset it instead of
    sleeping; :meth:`reset` goes back to real time."""

    def set_offset(self, seconds: float) -> None:
        """Run ahead of (positive) or behind (negative) real time – the clock-skew cases."""
        offset = float(seconds)

        def change(state: ClockState) -> ClockState:
            frozen = None if state.frozen_at is None else time.time() + offset
            return ClockState(offset, frozen)

        self._update(change)

    def freeze(self, at: float | None = None) -> None:
        """Stop the clock at ``at`` (a POSIX timestamp) or at the current time."""
        instant = self.now() if at is None else float(at)
        self._update(lambda state: replace(state, frozen_at=instant))

    def unfreeze(self) -> None:
        """Run again from the frozen instant (the offset keeps the time continuous)."""
        def change(state: ClockState) -> ClockState:
            if state.frozen_at is None:
                return state
            return ClockState(state.frozen_at - time.time(), None)

        self._update(change)

    def advance(self, seconds: float) -> None:
        """Move time forward (or back, with a negative value), frozen or not."""
        def change(state: ClockState) -> ClockState:
            if state.frozen_at is not None:
                return replace(state, frozen_at=state.frozen_at + seconds)
            return replace(state, offset=state.offset + seconds)

        self._update(change)

    def reset(self) -> None:
        """Back to real time."""
        self._update(lambda state: ClockState())

    def _update(self, change):
        if self._store is None:
            raise RuntimeError("a LabClock needs the issuer's state store")
        self._store.update_clock(change)
