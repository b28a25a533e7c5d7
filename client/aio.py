"""The asyncio side of the client, on httpx: ``afetch_token`` and ``AsyncTokenProvider``.
They run the very flows of the threaded :func:`~m2mauth.client.fetch_token` and
:class:`~m2mauth.client.TokenProvider` – same arguments, cache keys, timing, retries and
single flight (per asyncio task) – on the asyncio driver. Needs ``pip install m2mauth[httpx]``."""

from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import httpx

from ._arguments import takes
from ._flow import Flow, arun
from .provider import _ProviderBase
from .tokens import Token, TokenRequest

__all__ = ["AsyncTokenProvider", "afetch_token"]

_T = TypeVar("_T")


@dataclass(frozen=True, kw_only=True, eq=False, repr=False)
class _AsyncFetchArguments(TokenRequest):
    client: httpx.AsyncClient | None = None


@takes(_AsyncFetchArguments)
async def afetch_token(request: _AsyncFetchArguments) -> Token:
    """:func:`~m2mauth.client.fetch_token` for asyncio, over ``httpx``; same arguments with
    ``client`` (an ``httpx.AsyncClient``) in place of ``session``."""
    return await arun(request.flow(), client=request.client)


@dataclass(eq=False, repr=False)
class AsyncTokenProvider(_ProviderBase):
    """:class:`~m2mauth.client.TokenProvider` for asyncio: ``await get_token()``. Concurrent
    tasks asking for the same cache key cause one token request; different keys never wait
    for each other. Same arguments, with ``client`` (an ``httpx.AsyncClient``; else one per
    token request) in place of ``session`` – ``dpop=True`` / ``dpop_key=`` included: DPoP-bound
    tokens for :class:`~m2mauth.client.HttpxBearerAuth` on an ``httpx.AsyncClient``."""

    _kind: ClassVar[str] = "AsyncTokenProvider"

    client: httpx.AsyncClient | None = field(default=None, kw_only=True)

    async def get_token(self) -> str:
        """The access token string, from the cache while it is fresh."""
        entry = self._fresh()
        return entry.token.access_token if entry is not None else (await self.get()).access_token

    async def get(self) -> Token:
        """The whole :class:`Token`, fetching one if the cached one is due for refresh."""
        entry = self._fresh()
        if entry is not None:
            return entry.token
        async with self._cache.lock(self._key):
            return await self._drive(self._refresh())

    def _drive(self, flow: Flow[_T]) -> Coroutine[Any, Any, _T]:
        return arun(flow, client=self.client, sleep=self._retry.async_sleep)
