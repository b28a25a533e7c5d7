"""When and how long to retry a token request: only what can succeed later (429, 5xx,
``temporarily_unavailable``, ``server_error``, no response at all), with exponential backoff
and full jitter, honouring ``Retry-After``, bounded in attempts and in total time."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from ._flow import Flow, Wait, arun, called, run
from .errors import OAuthError, TransportError

__all__ = ["RetryPolicy"]

_RETRYABLE_ERRORS = frozenset({"temporarily_unavailable", "server_error"})
_T = TypeVar("_T")


@dataclass(frozen=True)
class RetryPolicy:
    """Retry settings for token requests. ``sleep``/``async_sleep`` and ``random`` are
    injectable so tests neither wait nor depend on chance. ``max_attempts=1`` disables it."""

    max_attempts: int = 4
    #: First backoff ceiling in seconds; doubles per attempt (full jitter: 0 .. ceiling).
    base_delay: float = 0.5
    #: Longest single wait, also the cap on a server's ``Retry-After``.
    max_delay: float = 30.0
    #: Longest time from the first request to giving up, waits included.
    total_timeout: float = 60.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    async_sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep, repr=False)
    random: Callable[[], float] = field(default=random.random, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if min(self.base_delay, self.max_delay, self.total_timeout) < 0:
            raise ValueError("delays and total_timeout must not be negative")

    @staticmethod
    def is_retryable(exc: OAuthError) -> bool:
        """429, 5xx, ``temporarily_unavailable``, ``server_error``, or no response; never an
        error the client must fix (``invalid_client``, ``invalid_scope`` ...)."""
        if exc.error in _RETRYABLE_ERRORS:
            return True
        if exc.status is not None:
            return exc.status == 429 or exc.status >= 500
        return isinstance(exc, TransportError)

    def delay(self, attempt: int, exc: OAuthError) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if exc.retry_after is not None:
            return min(max(exc.retry_after, 0.0), self.max_delay)
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return self.random() * ceiling

    def _next_wait(self, attempt: int, exc: OAuthError, started: float, now: float,
                   ) -> float | None:
        """The wait before the next attempt, or None to give up (and mark ``exc``)."""
        if attempt >= self.max_attempts or not self.is_retryable(exc):
            exc.attempts = attempt
            return None
        wait = self.delay(attempt, exc)
        if now + wait - started > self.total_timeout:
            exc.attempts = attempt
            return None
        return wait

    def flow(self, attempt: Callable[[], Flow[_T]], clock: Callable[[], float]) -> Flow[_T]:
        """The retries as a sans-I/O flow: runs the flow ``attempt()`` makes until one
        succeeds or the policy gives up (re-raising the last error), yielding a
        :class:`~m2mauth.client._flow.Wait` between attempts. ``clock`` times the
        ``total_timeout``."""
        started = clock()
        attempt_number = 0
        while True:
            attempt_number += 1
            try:
                return (yield from attempt())
            except OAuthError as exc:
                wait = self._next_wait(attempt_number, exc, started, clock())
                if wait is None:
                    raise
            yield Wait(wait)

    def call(self, fn: Callable[[], _T], clock: Callable[[], float]) -> _T:
        """``fn()`` until it succeeds or the policy gives up (re-raising the last error)."""
        return run(self.flow(lambda: called(fn), clock), sleep=self.sleep)

    async def acall(self, fn: Callable[[], Awaitable[_T]], clock: Callable[[], float]) -> _T:
        """The asyncio form of :meth:`call`: ``await fn()``, waits with ``async_sleep``."""
        return await arun(self.flow(lambda: called(fn), clock), sleep=self.async_sleep)
