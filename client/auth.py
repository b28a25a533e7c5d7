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
drops the token and resends once, as for Bearer.

Both schemes' exchange is written once, as the sans-I/O generator :func:`_auth_steps`, which
the ``requests`` hook and httpx's sync and async auth flows drive. With DPoP, a redirect is
followed by the library, not the adapter: ``requests`` goes on without the proof (the adapter
drops it), httpx with the proof of the first URL; either is refused by a DPoP resource
server. Call the final URL.

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


def _auth_steps(key: DPoPKey | None, clock: Callable[[], float], nonces: DPoPNonceStore,
                method: str, url: str) -> _Steps:
    """One request with a token, without I/O – a Bearer token, or with ``key`` a DPoP-bound
    one and a proof per send: at most one resend for a rejected token (:func:`should_refetch`
    of the scheme used) and, with DPoP, one for a nonce (``use_dpop_nonce`` with a usable
    ``DPoP-Nonce``)."""
    scheme = "bearer" if key is None else "dpop"

    def headers(token: str) -> dict[str, str]:
        if key is None:
            return {"Authorization": _bearer(token)}
        proof = key.proof(method, url, access_token=token, nonce=nonces.get(url), now=clock())
        return {"Authorization": f"DPoP {token}", "DPoP": proof}

    token: str = yield _GetToken()
    response = yield _Send(headers(token))
    nonce_retried = token_retried = False
    while True:
        nonce = None if key is None else nonces.update(url, response.headers.get("DPoP-Nonce"))
        status, challenges = response.status_code, _www_authenticate(response)
        if not nonce_retried and nonce is not None and dpop_nonce_requested(status, challenges):
            nonce_retried = True
        elif not token_retried and should_refetch(status, challenges, scheme=scheme):
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
        assert r.method is not None and r.url is not None
        steps = _auth_steps(_dpop_key(self.provider), _clock(self.provider), self.dpop_nonces,
                            r.method, r.url)
        first = self._next_send(steps, None, resendable=True)
        assert first is not None
        r.headers.update(first.headers)
        # Per-request state in the hook's closure: what was sent last. Redirect hops share
        # the hook: a redirect passes through, the answer at its end is judged (one retry in
        # all, for the last hop, whose request requests copied from ours).
        state: dict[str, Any] = {"sent": first}

        def handle(response: requests.Response, **kwargs: Any) -> requests.Response:
            if response.is_redirect:
                # requests builds the next hop from a copy of this request and strips only
                # Authorization: a proof made for this URL is no use anywhere else, so it
                # does not travel either (to another origin it would tell who we are).
                response.request.headers.pop("DPoP", None)
                return response
            sent: _Send | None = state.pop("sent", None)
            while sent is not None:
                prep = response.request
                # Only an answer to what we sent: a cross-host redirect has had the
                # Authorization header stripped, and that host must not get a token from us.
                if prep.headers.get("Authorization") != sent.headers["Authorization"]:
                    return response
                try:
                    sent = self._next_send(steps, response, resendable=_resendable(prep))
                except BaseException:
                    response.close()
                    raise
                if sent is None:
                    return response
                resent = self._resend(response, prep, sent.headers, **kwargs)
                if resent is response:  # its body could not be rewound
                    return response
                response = resent
            return response

        r.register_hook("response", handle)
        return r

    def _next_send(self, steps: _Steps, response: Any, *, resendable: bool) -> _Send | None:
        """Drive ``steps`` on from ``response`` to its next send; None when it is done or
        the next send would need a body that cannot be sent again."""
        try:
            action = steps.send(response)
            while isinstance(action, _GetToken):
                if action.stale is not None:
                    self.provider.invalidate(action.stale)
                    if not resendable:
                        log.info("401 from the resource server; the request body cannot be "
                                 "resent, so the 401 is returned (the next request gets a "
                                 "fresh token)")
                        steps.close()
                        return None
                action = steps.send(_sync_token(self.provider))
        except StopIteration:
            return None
        if not resendable:
            steps.close()
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
        # requests follows a redirect of the resent response from a copy of the *original*
        # request: give it the fresh headers too, or the next hop would carry the rejected
        # token. (So, as with httpx, the first response's ``.request`` shows the fresh ones.)
        sent.headers.update(headers)
        retried.history.append(r)
        retried.request = prep
        return retried


def _answers(response: httpx.Response, sent: _Send) -> bool:
    """Whether ``response`` answers what was sent: its request is the last hop, and after a
    cross-origin redirect httpx has stripped the header; a 401 from there says nothing about
    our token."""
    return response.request.headers.get("Authorization") == sent.headers["Authorization"]


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

    def _steps(self, request: httpx.Request) -> _Steps:
        return _auth_steps(_dpop_key(self.provider), _clock(self.provider), self.dpop_nonces,
                           request.method, str(request.url))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.provider).__name__})"

    def sync_auth_flow(self, request: httpx.Request,
                       ) -> Generator[httpx.Request, httpx.Response, None]:
        request.read()
        steps = self._steps(request)
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
            if not _answers(value, action):
                return

    async def async_auth_flow(self, request: httpx.Request,
                              ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        await request.aread()
        steps = self._steps(request)
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
            if not _answers(value, action):
                return

    async def _async_token(self) -> str:
        get = self.provider.get_token
        if inspect.iscoroutinefunction(get):
            token: object = await get()
        else:
            token = await asyncio.to_thread(get)
            if inspect.isawaitable(token):
                token = await token
        return _check_token(token)

