"""The client's protocols as sans-I/O flows, and the two drivers that run them.

A flow is a generator, as in httpx's ``Auth.auth_flow``: it yields what it needs done and is
sent the result –

=====================  ==========================================================
it yields              it is sent
=====================  ==========================================================
:class:`Request`       a :class:`Response`; a failure to get one is thrown in as a
                       :class:`~m2mauth.client.TransportError`
:class:`Wait`          None, once the time has passed (retry backoff)
:class:`Discover`      the issuer's metadata (RFC 8414), or its error thrown in
:class:`Call`          what the function returned (awaited on the asyncio side), or
                       its exception thrown in
=====================  ==========================================================

– and returns its result (or raises). The token request, the retries and the provider's
refresh are each written once that way; :func:`run` drives a flow with ``requests`` and a
blocking sleep, :func:`arun` with ``httpx.AsyncClient`` and an asyncio sleep. Only they do
I/O.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Awaitable, Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import requests

from ._http import (
    DEFAULT_MAX_BYTES,
    BodyTooLarge,
    DeadlinePassed,
    close,
    read_body,
)
from .discovery import MetadataCache, discover
from .errors import TransportError, transport_error

if TYPE_CHECKING:
    import httpx

__all__ = ["Call", "Discover", "Flow", "Request", "Response", "Wait", "arun", "called", "run"]

_T = TypeVar("_T")


@dataclass(frozen=True)
class Request:
    """An HTTP request to send. Never redirected: following a redirect would resend the
    credentials it carries to another URL. ``form`` is sent as a form-encoded body (a name
    may repeat). Headers and body stay out of ``repr()``: they hold credentials."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    form: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    #: The whole exchange, not each read: a peer trickling bytes cannot stretch it.
    timeout: float = 10.0
    #: A larger body is refused (``TransportError``) once that much has been read.
    max_bytes: int = DEFAULT_MAX_BYTES


@dataclass(frozen=True)
class Response:
    """What a :class:`Request` got. The names are those of ``requests``' and ``httpx``'
    responses, so code that reads one reads any; ``headers`` look names up in any case.
    The body stays out of ``repr()``: it may be a token."""

    status_code: int
    headers: Mapping[str, str] = field(repr=False)
    content: bytes = field(repr=False)

    def json(self) -> Any:
        """The body parsed as JSON; ``ValueError`` (or ``RecursionError``) when it is not."""
        return json.loads(self.content)


@dataclass(frozen=True)
class Wait:
    """Let ``seconds`` pass (on the retry policy's sleep, so tests need not wait)."""

    seconds: float


@dataclass(frozen=True)
class Discover:
    """The metadata document of ``issuer`` (:func:`~m2mauth.client.discover`, through
    ``cache`` when there is one)."""

    issuer: str
    timeout: float
    cache: MetadataCache | None = None
    max_bytes: int = DEFAULT_MAX_BYTES


@dataclass(frozen=True)
class Call:
    """Call ``fn()`` – and on the asyncio side await what it returns. For a step that has
    its own I/O: one token request of a provider (its ``_fetch``), a caller's function in
    :meth:`~m2mauth.client.RetryPolicy.call`."""

    fn: Callable[[], Any]


Action = Request | Wait | Discover | Call
#: A flow returning ``_T``: yields actions, is sent their results, returns ``_T``.
Flow = Generator[Action, Any, _T]


def called(fn: Callable[[], Any]) -> Flow[Any]:
    """The flow of one step: ``fn()`` called by the driver (see :class:`Call`)."""
    return (yield Call(fn))


class _Steps:
    """A flow as its driver sees it: iterate to get each action, report how it went with
    :meth:`done` or :meth:`failed` before the next; :attr:`result` is what the flow returned."""

    def __init__(self, flow: Flow[Any]) -> None:
        self._flow = flow
        self._value: Any = None
        self._error: Exception | None = None
        self.result: Any = None

    def __iter__(self) -> Iterator[Action]:
        while True:
            value, error = self._value, self._error
            self._value = self._error = None
            try:
                action = self._flow.throw(error) if error is not None else self._flow.send(value)
            except StopIteration as stop:
                self.result = stop.value
                return
            yield action

    def done(self, value: Any) -> None:
        self._value = value

    def failed(self, error: Exception) -> None:
        self._error = error


def run(flow: Flow[_T], *, session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep) -> _T:
    """Run ``flow`` to its end, blocking: requests over ``session`` (or one made for this
    run when a request is sent, and closed at the end), waits with ``sleep``."""
    io = _BlockingIO(session, sleep)
    steps = _Steps(flow)
    try:
        for action in steps:
            try:
                steps.done(io.perform(action))
            except Exception as exc:  # thrown in: the flow decides what a failure means
                steps.failed(exc)
        return steps.result  # type: ignore[no-any-return]
    finally:
        flow.close()
        io.close()


async def arun(flow: Flow[_T], *, client: httpx.AsyncClient | None = None,
               sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> _T:
    """Run ``flow`` to its end on asyncio: requests over ``client`` (or one made for this run
    when a request is sent, and closed at the end), waits with ``sleep``."""
    io = _AsyncIO(client, sleep)
    steps = _Steps(flow)
    try:
        for action in steps:
            try:
                steps.done(await io.perform(action))
            except Exception as exc:  # thrown in: the flow decides what a failure means
                steps.failed(exc)
        return steps.result  # type: ignore[no-any-return]
    finally:
        flow.close()
        await io.aclose()


class _BlockingIO:
    """What :func:`run` does for each action, with ``requests``."""

    def __init__(self, session: requests.Session | None, sleep: Callable[[float], None]) -> None:
        self._session, self._sleep = session, sleep
        self._own: requests.Session | None = None

    def perform(self, action: Action) -> Any:
        match action:
            case Request():
                return self._send(action)
            case Wait(seconds=seconds):
                return self._sleep(seconds)
            case Discover(issuer=issuer, timeout=timeout, cache=cache, max_bytes=max_bytes):
                return discover(issuer, session=self._session, timeout=timeout, cache=cache,
                                max_bytes=max_bytes)
            case Call(fn=fn):
                return fn()
        raise TypeError(f"a flow yielded {action!r}, not an action")

    def _send(self, request: Request) -> Response:
        session = self._session
        if session is None:
            session = self._own = self._own or requests.Session()
        deadline = time.monotonic() + request.timeout
        try:
            response = session.request(
                request.method, request.url, data=list(request.form),
                headers=dict(request.headers), timeout=request.timeout,
                allow_redirects=False, stream=True)
            try:
                content = read_body(response, max_bytes=request.max_bytes, deadline=deadline)
            finally:
                close(response)
        except BodyTooLarge:
            raise _too_large(request) from None
        except (requests.RequestException, DeadlinePassed) as exc:
            raise transport_error(exc, request.url, timeout=request.timeout, timed_out=isinstance(
                exc, (requests.Timeout, DeadlinePassed))) from exc
        return Response(response.status_code, response.headers, content)

    def close(self) -> None:
        if self._own is not None:
            self._own.close()


class _AsyncIO:
    """What :func:`arun` does for each action, with ``httpx``; discovery in a worker thread
    (it is one cached lookup per issuer, done by the threaded code)."""

    def __init__(self, client: httpx.AsyncClient | None,
                 sleep: Callable[[float], Awaitable[None]]) -> None:
        self._client, self._sleep = client, sleep
        self._own: httpx.AsyncClient | None = None

    async def perform(self, action: Action) -> Any:
        match action:
            case Request():
                return await self._send(action)
            case Wait(seconds=seconds):
                return await self._sleep(seconds)
            case Discover(issuer=issuer, timeout=timeout, cache=cache, max_bytes=max_bytes):
                return await asyncio.to_thread(discover, issuer, timeout=timeout, cache=cache,
                                               max_bytes=max_bytes)
            case Call(fn=fn):
                value = fn()
                return await value if inspect.isawaitable(value) else value
        raise TypeError(f"a flow yielded {action!r}, not an action")

    async def _send(self, request: Request) -> Response:
        import httpx  # the optional dependency: only the asyncio side needs it

        client = self._client
        if client is None:
            client = self._own = self._own or httpx.AsyncClient()
        form: dict[str, list[str]] = {}
        for name, item in request.form:  # httpx repeats a form field given a list, not pairs
            form.setdefault(name, []).append(item)
        try:
            async with asyncio.timeout(request.timeout):  # the whole exchange, not each read
                async with client.stream(
                        request.method, request.url, data=form or None,
                        headers=dict(request.headers), timeout=request.timeout,
                        follow_redirects=False) as response:
                    content = bytearray()
                    async for piece in response.aiter_bytes():
                        content += piece
                        if len(content) > request.max_bytes:
                            raise _too_large(request)
        except (httpx.HTTPError, TimeoutError) as exc:
            raise transport_error(exc, request.url, timeout=request.timeout, timed_out=isinstance(
                exc, (httpx.TimeoutException, TimeoutError))) from exc
        return Response(response.status_code, response.headers, bytes(content))

    async def aclose(self) -> None:
        if self._own is not None:
            await self._own.aclose()


def _too_large(request: Request) -> TransportError:
    return TransportError(error_description=f"{request.url} answered with a body larger than "
                          f"{request.max_bytes} bytes; reading stopped there.")
