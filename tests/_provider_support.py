"""What the threaded and the asyncio provider tests share (not a test module: no ``test_``).

Most of what a provider does – caching, timing, single flight, retries, failed refreshes,
every auth method, secrets kept out of logs – both kinds must do alike, so those tests are
written once and run for each :class:`Kind`: ``threads`` (:class:`TokenProvider`) and
``asyncio`` (:class:`AsyncTokenProvider`, behind the same blocking face through
:class:`Blocking`). Nothing here sleeps: the retry sleep records and moves the test clock.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from m2mauth.client import AsyncTokenProvider, RetryPolicy, TokenProvider

T0 = 1_800_000_000.0  # an integer instant, so the JWT's exp equals iat + lifetime exactly
BOUND = 20.0  # only a bound for a broken implementation; passing tests never wait on it


class Sleeps:
    """A retry sleep that records the waits and, given a clock, moves it instead of waiting.
    ``blocking=False`` refuses the blocking form: an asyncio provider must await
    :meth:`asleep`."""

    def __init__(self, clock=None, *, blocking: bool = True) -> None:
        self.calls: list[float] = []
        self._clock = clock
        self._blocking = blocking

    def __call__(self, seconds: float) -> None:
        if not self._blocking:
            raise AssertionError("the async provider must use async_sleep")
        self._pass(seconds)

    async def asleep(self, seconds: float) -> None:
        self._pass(seconds)

    def _pass(self, seconds: float) -> None:
        self.calls.append(seconds)
        if self._clock is not None:
            self._clock.advance(seconds)


def policy(sleeps: Sleeps, *, random=lambda: 1.0, **options) -> RetryPolicy:
    """A policy that sleeps with ``sleeps`` and, by default, always waits the full ceiling."""
    return RetryPolicy(sleep=sleeps, async_sleep=sleeps.asleep, random=random, **options)


def run(coro):
    """``asyncio.run(coro)``, bounded so that a hang fails instead of blocking the suite."""
    async def bounded():
        return await asyncio.wait_for(coro, BOUND)

    return asyncio.run(bounded())


def run_threads(n: int, target: Callable[[], Any]) -> list:
    """Start ``n`` threads that wait at a barrier and then call ``target``; their results."""
    return run_all([target] * n)


def run_all(targets: list[Callable[[], Any]]) -> list:
    """One thread per target, all started together at a barrier; their results, in order."""
    barrier = threading.Barrier(len(targets))
    results: list = [None] * len(targets)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            barrier.wait(timeout=BOUND)
            results[i] = targets[i]()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(targets))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(BOUND)
    assert not any(t.is_alive() for t in threads), "threads hung"
    assert errors == []
    return results


class Blocking:
    """An :class:`AsyncTokenProvider` with a :class:`TokenProvider`'s blocking face: each
    ``get_token()``/``get()`` runs in its own ``asyncio.run`` (the provider must outlive event
    loops anyway); everything else is the provider's own."""

    def __init__(self, provider: AsyncTokenProvider) -> None:
        self.provider = provider

    def get_token(self) -> str:
        return run(self.provider.get_token())

    def get(self):
        return run(self.provider.get())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.provider, name)

    def __repr__(self) -> str:
        return repr(self.provider)

    __str__ = __repr__


@dataclass(frozen=True)
class Kind:
    """One kind of provider, for the tests both kinds must pass."""

    name: str  # "threads" or "asyncio"

    def __str__(self) -> str:
        return self.name

    def sleeps(self, clock=None) -> Sleeps:
        """A recording sleep this kind's provider must use (the asyncio one: only awaited)."""
        return Sleeps(clock, blocking=self.name == "threads")

    def provider(self, *args: Any, **kwargs: Any) -> TokenProvider | Blocking:
        """``TokenProvider(*args, **kwargs)``, or the asyncio one behind :class:`Blocking`."""
        if self.name == "threads":
            return TokenProvider(*args, **kwargs)
        return Blocking(AsyncTokenProvider(*args, **kwargs))

    def provider_for(self, idp, client, sleeps: Sleeps, *, scope="read", **options):
        """A provider for a registered ``client`` on ``idp``'s clock, retrying with
        ``sleeps``."""
        options.setdefault("retry", policy(sleeps))
        return self.provider(idp.token_endpoint, client.client_id, client.client_secret, scope,
                             clock=idp.clock.now, **options)

    def at_once(self, n: int, *providers) -> list[str]:
        """``n`` ``get_token()`` calls made at once – threads at a barrier, or tasks gathered
        on one loop – spread over ``providers`` in turn; the tokens, in order."""
        chosen = list(itertools.islice(itertools.cycle(providers), n))
        if self.name == "threads":
            return run_all([p.get_token for p in chosen])

        async def gather() -> list[str]:
            return await asyncio.gather(*(p.provider.get_token() for p in chosen))

        return run(gather())


KINDS = [Kind("threads"), Kind("asyncio")]
