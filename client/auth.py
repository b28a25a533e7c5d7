"""Bearer-token auth for ``requests`` and ``httpx``: attach ``Authorization: Bearer <token>``
from a token provider and, when the resource server rejects that token (a 401 whose challenge
is ``invalid_token`` or carries no error, see :func:`~m2mauth.client.challenge.should_refetch`),
drop exactly that token, get a fresh one and resend the request once. Never on a 403, never
twice: a second 401 is returned as it is.

Dropping "exactly that token" (``provider.invalidate(sent_token)``) matters under concurrency:
when many requests fail with the same stale token, the first refetch replaces it and the
others find the replacement instead of throwing it away again.

The token never appears in a ``repr``, log line or exception raised here.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncGenerator, Generator
from typing import Any, Protocol, runtime_checkable

import requests
from requests.auth import AuthBase
from requests.cookies import extract_cookies_to_jar
from requests.exceptions import UnrewindableBodyError
from requests.utils import rewind_body

from .challenge import should_refetch

try:
    import httpx

    _HttpxAuth: type = httpx.Auth
except ImportError:  # pragma: no cover - httpx is the optional extra m2mauth[httpx]
    httpx = None  # type: ignore[assignment]
    _HttpxAuth = object

__all__ = ["HttpxBearerAuth", "RequestsBearerAuth"]

log = logging.getLogger("m2mauth.client")


@runtime_checkable
class SyncTokenSource(Protocol):
    """What the adapters need from a :class:`~m2mauth.client.TokenProvider`."""

    def get_token(self) -> str: ...

    def invalidate(self, access_token: str | None = None) -> None: ...


@runtime_checkable
class AsyncTokenSource(Protocol):
    """What the adapters need from an :class:`~m2mauth.client.AsyncTokenProvider`."""

    async def get_token(self) -> str: ...

    def invalidate(self, access_token: str | None = None) -> Any: ...


def _bearer(token: str) -> str:
    return f"Bearer {token}"


def _check_token(token: object) -> str:
    if not isinstance(token, str) or not token:
        raise TypeError(f"the token provider returned a {type(token).__name__}, not a token "
                        "string")
    return token


def _sync_token(provider: SyncTokenSource | AsyncTokenSource) -> str:
    get = provider.get_token
    if inspect.iscoroutinefunction(get):
        raise TypeError(f"{type(provider).__name__} is asynchronous: use it with an "
                        "httpx.AsyncClient, or use a TokenProvider")
    token = get()
    if inspect.iscoroutine(token):
        token.close()  # no "never awaited" warning
        raise TypeError(f"{type(provider).__name__}.get_token() is asynchronous: use it with "
                        "an httpx.AsyncClient, or use a TokenProvider")
    return _check_token(token)


class RequestsBearerAuth(AuthBase):
    """``requests`` auth: ``session.auth = RequestsBearerAuth(provider)`` with a
    :class:`~m2mauth.client.TokenProvider` (or anything with ``get_token()`` and
    ``invalidate(access_token)``).

    On a 401 that :func:`should_refetch` accepts, the token that was sent is invalidated, a
    fresh one fetched and the request resent once over the same connection adapter, like
    requests' own ``HTTPDigestAuth``: the first response is consumed and closed and kept in
    ``response.history``. A body that cannot be rewound (a generator, a file whose position
    is unknown) is not resent: the 401 is returned and the next request gets a fresh token.
    """

    def __init__(self, provider: SyncTokenSource) -> None:
        self.provider = provider

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.provider).__name__})"

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        token = _sync_token(self.provider)
        r.headers["Authorization"] = _bearer(token)
        # Per-request state in the hook's closure: the token this request carried, and whether
        # it has been retried (redirect hops share the hook; one retry in all).
        state = {"retried": False}

        def handle_401(response: requests.Response, **kwargs: Any) -> requests.Response:
            if state["retried"]:
                return response
            result = self._handle_401(token, response, **kwargs)
            state["retried"] = result is not response
            return result

        r.register_hook("response", handle_401)
        return r

    def _handle_401(self, token: str, r: requests.Response, **kwargs: Any) -> requests.Response:
        sent = r.request
        # Only a response to a request that carried our token: a cross-host redirect has had
        # the Authorization header stripped, and that host must not get a token from us.
        if sent.headers.get("Authorization") != _bearer(token):
            return r
        if not should_refetch(r.status_code, r.headers.get("WWW-Authenticate")):
            return r
        self.provider.invalidate(token)
        if not _resendable(sent):
            log.info("401 from the resource server; the request body cannot be resent, so the "
                     "401 is returned (the next request gets a fresh token)")
            return r
        try:
            fresh = _sync_token(self.provider)
        except BaseException:
            r.close()
            raise
        if fresh == token:
            return r  # the server handed back the rejected token: resending cannot help
        prep = sent.copy()
        if prep.body is not None and not isinstance(prep.body, (bytes, str)):
            try:
                rewind_body(prep)
            except UnrewindableBodyError:
                return r
        # Consume and release the first response so that the connection can be reused.
        _ = r.content
        r.close()
        extract_cookies_to_jar(prep._cookies, sent, r.raw)  # type: ignore[attr-defined]
        prep.prepare_cookies(prep._cookies)  # type: ignore[attr-defined]
        prep.headers["Authorization"] = _bearer(fresh)
        retried = r.connection.send(prep, **kwargs)  # type: ignore[attr-defined]
        # requests follows a redirect of the resent response from a copy of the *original*
        # request: give it the fresh token too, or the next hop would carry the rejected one.
        # (So, as with httpx, the first response's ``.request`` shows the fresh header.)
        sent.headers["Authorization"] = _bearer(fresh)
        retried.history.append(r)
        retried.request = prep
        return retried


def _resendable(prep: requests.PreparedRequest) -> bool:
    """Whether ``prep``'s body can be sent again: none, bytes/str, or a seekable file whose
    starting position requests recorded (``_body_position``)."""
    body = prep.body
    if body is None or isinstance(body, (bytes, str)):
        return True
    position = getattr(prep, "_body_position", None)
    return (hasattr(body, "seek") and isinstance(position, int)
            and not isinstance(position, bool))


class HttpxBearerAuth(_HttpxAuth):  # type: ignore[misc]
    """``httpx`` auth: ``httpx.Client(auth=HttpxBearerAuth(provider))`` with a
    :class:`~m2mauth.client.TokenProvider`, or ``httpx.AsyncClient(auth=...)`` with an
    :class:`~m2mauth.client.AsyncTokenProvider` (awaited) or a ``TokenProvider`` (run in a
    worker thread via ``asyncio.to_thread`` so that a token request never blocks the loop).

    On a 401 that :func:`should_refetch` accepts, the token that was sent is invalidated, a
    fresh one fetched and the request resent once; httpx keeps the first response in
    ``response.history``. The body is read up front (``requires_request_body``) so that it can
    be resent, streamed bodies included.
    """

    requires_request_body = True

    def __init__(self, provider: SyncTokenSource | AsyncTokenSource) -> None:
        if httpx is None:  # pragma: no cover
            raise ImportError("HttpxBearerAuth needs httpx: pip install m2mauth[httpx]")
        self.provider = provider

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.provider).__name__})"

    def sync_auth_flow(self, request: httpx.Request,
                       ) -> Generator[httpx.Request, httpx.Response, None]:
        request.read()
        token = _sync_token(self.provider)
        request.headers["Authorization"] = _bearer(token)
        response = yield request
        if not self._rejected(token, response):
            return
        self.provider.invalidate(token)
        fresh = _sync_token(self.provider)
        if fresh == token:
            return
        request.headers["Authorization"] = _bearer(fresh)
        yield request

    async def async_auth_flow(self, request: httpx.Request,
                              ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        await request.aread()
        token = await self._async_token()
        request.headers["Authorization"] = _bearer(token)
        response = yield request
        if not self._rejected(token, response):
            return
        result = self.provider.invalidate(token)
        if inspect.isawaitable(result):
            await result
        fresh = await self._async_token()
        if fresh == token:
            return
        request.headers["Authorization"] = _bearer(fresh)
        yield request

    @staticmethod
    def _rejected(token: str, response: httpx.Response) -> bool:
        # response.request is the last hop: after a cross-origin redirect httpx has stripped
        # the header, and a 401 from there says nothing about our token.
        if response.request.headers.get("Authorization") != _bearer(token):
            return False
        return should_refetch(response.status_code,
                              response.headers.get_list("WWW-Authenticate"))

    async def _async_token(self) -> str:
        get = self.provider.get_token
        if inspect.iscoroutinefunction(get):
            token: object = await get()
        else:
            token = await asyncio.to_thread(get)
            if inspect.isawaitable(token):
                token = await token
        return _check_token(token)

