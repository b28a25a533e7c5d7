"""Token auth for ``requests`` and ``httpx``: attach ``Authorization: Bearer <token>``
from a token provider and, when the resource server rejects that token (a 401 whose challenge
is ``invalid_token`` or carries no error, see :func:`~m2mauth.client.challenge.should_refetch`),
drop exactly that token, get a fresh one and resend the request once. Never on a 403, never
twice: a second 401 is returned as it is.

Dropping "exactly that token" (``provider.invalidate(sent_token)``) matters under concurrency:
when many requests fail with the same stale token, the first refetch replaces it and the
others find the replacement instead of throwing it away again.

With a DPoP provider (one with a ``dpop_key``: ``TokenProvider(dpop=True)``) the adapters send
``Authorization: DPoP <token>`` and a fresh ``DPoP`` proof per request (``htm`` the request's
method, ``htu`` its URL, ``ath`` the token's hash; RFC 9449 §7), never the bound token as
Bearer. On a 401 whose DPoP challenge is ``error="use_dpop_nonce"`` with a ``DPoP-Nonce``
header the request is resent once with that nonce; nonces are kept per origin
(``scheme://host:port``, :class:`~m2mauth.client.DPoPNonceStore`) for the next requests, and
a ``DPoP-Nonce`` on any answer updates them. A DPoP challenge ``invalid_token`` (or none)
drops the token and resends once, as for Bearer. That exchange is written once, as the
sans-I/O generator :func:`_dpop_steps`, which the ``requests`` hook and httpx's sync and
async flows drive. A redirect is followed with the proof of the first URL (the library
follows it, not the adapter), which a DPoP resource server refuses; call the final URL.

The token never appears in a ``repr``, log line or exception raised here.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import requests
from requests.auth import AuthBase
from requests.cookies import extract_cookies_to_jar
from requests.exceptions import UnrewindableBodyError
from requests.utils import rewind_body

from .challenge import dpop_nonce_requested, should_refetch
from .dpop import DPoPKey, DPoPNonceStore

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


@dataclass(frozen=True)
class _GetToken:
    """Step: the provider's token (sent back as a string), after invalidating ``stale``."""

    stale: str | None = None


@dataclass(frozen=True)
class _Send:
    """Step: send the request with these ``headers`` set; the response is sent back."""

    headers: dict[str, str]


_Steps = Generator["_GetToken | _Send", Any, None]


def _www_authenticate(response: Any) -> Any:
    headers = response.headers
    get_list = getattr(headers, "get_list", None)  # httpx keeps repeated headers apart
    return get_list("WWW-Authenticate") if get_list else headers.get("WWW-Authenticate")


def _dpop_steps(key: DPoPKey, clock: Callable[[], float], nonces: DPoPNonceStore,
                method: str, url: str) -> _Steps:
    """One request with a DPoP-bound token, without I/O: at most one resend for a nonce
    (``use_dpop_nonce`` with a usable ``DPoP-Nonce``) and one for a rejected token."""

    def headers(token: str) -> dict[str, str]:
        proof = key.proof(method, url, access_token=token, nonce=nonces.get(url), now=clock())
        return {"Authorization": f"DPoP {token}", "DPoP": proof}

    token: str = yield _GetToken()
    response = yield _Send(headers(token))
    nonce_retried = token_retried = False
    while True:
        nonce = nonces.update(url, response.headers.get("DPoP-Nonce"))
        status, challenges = response.status_code, _www_authenticate(response)
        if not nonce_retried and nonce is not None and dpop_nonce_requested(status, challenges):
            nonce_retried = True
        elif not token_retried and should_refetch(status, challenges, scheme="dpop"):
            token_retried = True
            fresh = yield _GetToken(stale=token)
            if fresh == token:
                return  # the server handed back the rejected token: resending cannot help
            token = fresh
        else:
            return
        response = yield _Send(headers(token))


def _dpop_key(provider: object) -> DPoPKey | None:
    key = getattr(provider, "dpop_key", None)
    return key if isinstance(key, DPoPKey) else None


def _clock(provider: object) -> Callable[[], float]:
    clock = getattr(provider, "clock", None)
    return clock if callable(clock) else time.time


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

    With a DPoP provider: DPoP tokens and proofs, nonces per origin in ``dpop_nonces``
    (else a store of this adapter's own), as the module's docstring says.
    """

    def __init__(self, provider: SyncTokenSource, *,
                 dpop_nonces: DPoPNonceStore | None = None) -> None:
        self.provider = provider
        self.dpop_nonces = dpop_nonces if dpop_nonces is not None else DPoPNonceStore()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.provider).__name__})"

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        key = _dpop_key(self.provider)
        if key is not None:
            return self._dpop(r, key)
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


    def _dpop(self, r: requests.PreparedRequest, key: DPoPKey) -> requests.PreparedRequest:
        assert r.method is not None and r.url is not None
        steps = _dpop_steps(key, _clock(self.provider), self.dpop_nonces, r.method, r.url)
        first = self._next_send(steps, None)
        assert first is not None
        r.headers.update(first.headers)
        state: dict[str, Any] = {"sent": first}

        def handle(response: requests.Response, **kwargs: Any) -> requests.Response:
            sent: _Send | None = state.pop("sent", None)  # one pass: redirect hops share hooks
            while sent is not None:
                prep = response.request
                # Only an answer to what we sent (not a hop a redirect took elsewhere).
                if prep.headers.get("Authorization") != sent.headers["Authorization"]:
                    return response
                try:
                    sent = self._next_send(steps, response)
                except BaseException:
                    response.close()
                    raise
                if sent is None or not _resendable(prep):
                    return response
                resent = self._resend(response, prep, sent.headers, **kwargs)
                if resent is response:  # its body could not be rewound
                    return response
                response = resent
            return response

        r.register_hook("response", handle)
        return r

    def _next_send(self, steps: _Steps, response: Any) -> _Send | None:
        """Drive ``steps`` on from ``response`` to its next send; None when it is done."""
        try:
            action = steps.send(response)
            while isinstance(action, _GetToken):
                if action.stale is not None:
                    self.provider.invalidate(action.stale)
                action = steps.send(_sync_token(self.provider))
        except StopIteration:
            return None
        return action

    @staticmethod
    def _resend(r: requests.Response, sent: requests.PreparedRequest, headers: dict[str, str],
                **kwargs: Any) -> requests.Response:
        """``sent`` again with ``headers``, over the connection adapter that answered ``r``
        (which is consumed and kept in the new response's history)."""
        prep = sent.copy()
        if prep.body is not None and not isinstance(prep.body, (bytes, str)):
            try:
                rewind_body(prep)
            except UnrewindableBodyError:
                return r
        _ = r.content
        r.close()
        extract_cookies_to_jar(prep._cookies, sent, r.raw)  # type: ignore[attr-defined]
        prep.prepare_cookies(prep._cookies)  # type: ignore[attr-defined]
        prep.headers.update(headers)
        retried = r.connection.send(prep, **kwargs)  # type: ignore[attr-defined]
        sent.headers.update(headers)  # as in _handle_401: a redirect copies the original
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

    With a DPoP provider: DPoP tokens and proofs, nonces per origin in ``dpop_nonces``
    (else a store of this adapter's own), as the module's docstring says.
    """

    requires_request_body = True

    def __init__(self, provider: SyncTokenSource | AsyncTokenSource, *,
                 dpop_nonces: DPoPNonceStore | None = None) -> None:
        if httpx is None:  # pragma: no cover
            raise ImportError("HttpxBearerAuth needs httpx: pip install m2mauth[httpx]")
        self.provider = provider
        self.dpop_nonces = dpop_nonces if dpop_nonces is not None else DPoPNonceStore()

    def _steps(self, request: httpx.Request, key: DPoPKey) -> _Steps:
        return _dpop_steps(key, _clock(self.provider), self.dpop_nonces, request.method,
                           str(request.url))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.provider).__name__})"

    def sync_auth_flow(self, request: httpx.Request,
                       ) -> Generator[httpx.Request, httpx.Response, None]:
        request.read()
        key = _dpop_key(self.provider)
        if key is not None:
            yield from self._sync_dpop(request, key)
            return
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
        key = _dpop_key(self.provider)
        if key is not None:
            steps = self._steps(request, key)
            value: Any = None
            while True:
                try:
                    action = steps.send(value)
                except StopIteration:
                    return
                if isinstance(action, _GetToken):
                    if action.stale is not None:
                        result = self.provider.invalidate(action.stale)
                        if inspect.isawaitable(result):
                            await result
                    value = await self._async_token()
                    continue
                request.headers.update(action.headers)
                value = yield request
                if value.request.headers.get("Authorization") != action.headers["Authorization"]:
                    return  # a redirect's hop elsewhere: nothing to say about our token
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

    def _sync_dpop(self, request: httpx.Request, key: DPoPKey,
                   ) -> Generator[httpx.Request, httpx.Response, None]:
        steps = self._steps(request, key)
        value: Any = None
        while True:
            try:
                action = steps.send(value)
            except StopIteration:
                return
            if isinstance(action, _GetToken):
                if action.stale is not None:
                    self.provider.invalidate(action.stale)
                value = _sync_token(self.provider)
                continue
            request.headers.update(action.headers)
            value = yield request
            if value.request.headers.get("Authorization") != action.headers["Authorization"]:
                return  # a redirect's hop elsewhere: nothing to say about our token

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

