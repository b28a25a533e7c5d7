"""The asyncio side of the client, on httpx: ``afetch_token`` and ``AsyncTokenProvider``,
with the same cache keys, timing, retries and single flight (per asyncio task) as the
threaded :class:`TokenProvider`. Needs ``pip install m2mauth[httpx]``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from .assertions import PrivateKey
from .discovery import MetadataCache, discover
from .errors import DiscoveryError, OAuthError, TransportError, root_cause
from .provider import DEFAULT_REFRESH_MARGIN, TokenCache, _ProviderBase
from .retry import RetryPolicy
from .tokens import (
    AuthMethod,
    Token,
    _is_http_url,
    authenticate,
    check_arguments,
    form_parameters,
    parse_response,
)

__all__ = ["AsyncTokenProvider", "afetch_token"]

log = logging.getLogger("m2mauth.client")


async def afetch_token(
    token_url: str | None = None,
    *,
    issuer: str | None = None,
    client_id: str,
    client_secret: str | None = None,
    private_key: PrivateKey | str | bytes | None = None,
    kid: str | None = None,
    scope: str | Sequence[str] | None = None,
    resource: str | Sequence[str] | None = None,
    auth_method: AuthMethod | str = "client_secret_basic",
    timeout: float = 10,
    client: httpx.AsyncClient | None = None,
    clock: Callable[[], float] | None = None,
    extra_params: Mapping[str, str | Sequence[str]] | None = None,
    metadata_cache: MetadataCache | None = None,
) -> Token:
    """:func:`~m2mauth.client.fetch_token` for asyncio, over ``httpx``; same arguments with
    ``client`` (an ``httpx.AsyncClient``) in place of ``session``."""
    check_arguments(token_url, issuer, client_id, client_secret, private_key, auth_method)
    now = clock or time.time
    params, scopes = form_parameters(scope, resource, extra_params)
    if token_url is None:
        assert issuer is not None
        # Discovery is one cached lookup per issuer: the threaded version, off the loop.
        metadata = await asyncio.to_thread(discover, issuer, timeout=timeout,
                                           cache=metadata_cache)
        token_url = metadata.get("token_endpoint")
        if not _is_http_url(token_url):
            raise DiscoveryError("discovery_error",
                                 f"The metadata of {issuer} has no http(s) token_endpoint.")
    elif not _is_http_url(token_url):
        raise ValueError("token_url must be an absolute http(s) URL")
    assert isinstance(token_url, str)
    headers = authenticate(params, auth_method, client_id, client_secret, private_key, kid,
                           token_url, now)
    form: dict[str, list[str]] = {}
    for name, value in params:  # httpx repeats a form field given a list, not pairs
        form.setdefault(name, []).append(value)
    started = now()
    http = client or httpx.AsyncClient()
    try:
        # No redirects: following one would resend the credentials to another URL.
        response = await http.post(token_url, data=form, headers=headers, timeout=timeout,
                                   follow_redirects=False)
    except httpx.TimeoutException:
        raise TransportError(
            error_description=f"Timed out after {timeout} s waiting for {token_url}."
        ) from None
    except httpx.HTTPError as exc:
        raise TransportError(
            error_description=f"Cannot reach {token_url}: {root_cause(exc)}."
        ) from exc
    finally:
        if client is None:
            await http.aclose()
    return parse_response(response, token_url, requested_scope=scopes, started=started,
                          now=now())


class AsyncTokenProvider(_ProviderBase):
    """:class:`~m2mauth.client.TokenProvider` for asyncio: ``await get_token()``. Concurrent
    tasks asking for the same cache key cause one token request; different keys never wait
    for each other. Same arguments, with ``client`` (an ``httpx.AsyncClient``)."""

    _kind = "AsyncTokenProvider"

    def __init__(
        self,
        token_url: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        scope: str | Sequence[str] | None = None,
        *,
        issuer: str | None = None,
        private_key: PrivateKey | str | bytes | None = None,
        kid: str | None = None,
        resource: str | Sequence[str] | None = None,
        auth_method: AuthMethod | str | None = None,
        extra_params: Mapping[str, str | Sequence[str]] | None = None,
        refresh_margin: float = DEFAULT_REFRESH_MARGIN,
        default_expires_in: float = 300.0,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
        cache: TokenCache[Any] | None = None,
        metadata_cache: MetadataCache | None = None,
    ) -> None:
        super().__init__(
            token_url, client_id, client_secret, scope, issuer=issuer,
            private_key=private_key, kid=kid, resource=resource, auth_method=auth_method,
            extra_params=extra_params, refresh_margin=refresh_margin,
            default_expires_in=default_expires_in, timeout=timeout, retry=retry, clock=clock,
            cache=cache if cache is not None else TokenCache(),
            metadata_cache=metadata_cache,
        )
        self._client = client

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
            entry = self._fresh()
            if entry is not None:
                return entry.token
            entry = self._cache.get(self._key)
            try:
                token = await self._retry.acall(self._fetch, self._clock)
            except OAuthError as exc:
                # Read the clock after the retries, which take time: the cached token may
                # have expired meanwhile, and the next attempt is timed from now.
                if self._keep_serving(entry, self._clock(), exc):
                    assert entry is not None
                    return entry.token
                raise
            # The lifetime counts from the token's arrival, not from before the retries.
            self._store(token, self._clock())
            return token

    async def _fetch(self) -> Token:
        return await afetch_token(client=self._client, clock=self._clock, **self._request)
