"""Authorization-server metadata lookup (RFC 8414, with the OpenID Connect discovery URL as a
fallback), and a small per-issuer cache that lives on an object, never in the module: one
fetch in flight per issuer, failures backed off."""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

from ._http import (
    DEFAULT_MAX_BYTES,
    BodyTooLarge,
    DeadlinePassed,
    close,
    read_body,
    remaining,
)
from .errors import DiscoveryError, OAuthError, TransportError, again, transport_error

__all__ = ["MetadataCache", "discover", "metadata_urls"]

_OAUTH = "/.well-known/oauth-authorization-server"
_OIDC = "/.well-known/openid-configuration"


def metadata_urls(issuer: str) -> list[str]:
    """Where ``issuer``'s metadata may be, in the order tried.

    RFC 8414 §3.1 inserts the well-known segment between host and path; OpenID Connect
    Discovery appends it to the issuer. Both coincide for an issuer without a path.
    """
    parts = urlsplit(issuer)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise DiscoveryError("discovery_error", "The issuer must be an absolute http(s) URL.")
    if parts.query or parts.fragment:
        raise DiscoveryError("discovery_error",
                             "The issuer must not have a query or fragment (RFC 8414 section 2).")
    path = parts.path.rstrip("/")
    urls = [
        urlunsplit((parts.scheme, parts.netloc, _OAUTH + path, "", "")),
        urlunsplit((parts.scheme, parts.netloc, path + _OIDC, "", "")),
        # Some servers with a path in the issuer publish RFC 8414 metadata appended too.
        urlunsplit((parts.scheme, parts.netloc, path + _OAUTH, "", "")),
    ]
    return list(dict.fromkeys(urls))


def _get_json(url: str, session: requests.Session, timeout: float, *,
              deadline: float | None = None,
              max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[int, Any]:
    """(status, parsed body or None when the body is not JSON), read before ``deadline``
    (``time.monotonic``; else ``timeout`` from now) and at most ``max_bytes`` long."""
    if deadline is None:
        deadline = time.monotonic() + timeout
    try:
        response = session.get(url, timeout=remaining(deadline), stream=True,
                               allow_redirects=False, headers={"Accept": "application/json"})
        try:
            body = read_body(response, max_bytes=max_bytes, deadline=deadline)
        finally:
            close(response)
    except BodyTooLarge:
        raise DiscoveryError("discovery_error", f"Metadata at {url} is larger than {max_bytes} "
                             "bytes; reading stopped there.") from None
    except (requests.RequestException, DeadlinePassed) as exc:
        raise transport_error(exc, url, timeout=timeout, fetching="metadata", timed_out=isinstance(
            exc, (requests.Timeout, DeadlinePassed))) from exc
    try:
        return response.status_code, json.loads(body)
    except (ValueError, RecursionError):
        return response.status_code, None


def discover(
    issuer: str,
    *,
    session: requests.Session | None = None,
    timeout: float = 10,
    cache: MetadataCache | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> dict[str, Any]:
    """The metadata document of ``issuer`` (a fresh copy the caller may change).

    Tries the RFC 8414 URL, then OpenID Connect's, all within ``timeout`` seconds in total;
    a document over ``max_bytes`` is refused. The document's ``issuer`` must equal the
    requested one exactly (RFC 8414 §3.3), else :class:`DiscoveryError`: a look-alike issuer
    could otherwise point the client at another server's token endpoint and keys. Without
    ``cache`` every call fetches; pass a :class:`MetadataCache` to reuse results, share one
    fetch between concurrent callers and back off after a failure.
    """
    if cache is not None:
        return cache.get(issuer, session=session, timeout=timeout, max_bytes=max_bytes)
    return _fetch(issuer, session=session, timeout=timeout, max_bytes=max_bytes)


def _fetch(issuer: str, *, session: requests.Session | None, timeout: float,
           max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    urls = metadata_urls(issuer)
    http = session or requests.Session()
    deadline = time.monotonic() + timeout
    tried: list[str] = []
    try:
        for url in urls:
            status, body = _get_json(url, http, timeout, deadline=deadline, max_bytes=max_bytes)
            if status != 200 or not isinstance(body, dict):
                why = f"HTTP {status}" if status != 200 else "not a JSON object"
                tried.append(f"{url} ({why})")
                continue
            found = body.get("issuer")
            if found != issuer:
                raise DiscoveryError(
                    "discovery_error",
                    f"Metadata at {url} names issuer {found!r}, expected {issuer!r} exactly "
                    "(RFC 8414 section 3.3).",
                )
            return body
    finally:
        if session is None:
            http.close()
    raise DiscoveryError("discovery_error", "No metadata found: " + "; ".join(tried))


class _Flight:
    """One fetch in progress for one issuer: its callers wait on ``done`` for its outcome."""

    __slots__ = ("done", "error", "metadata")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.metadata: dict[str, Any] | None = None
        self.error: OAuthError | None = None


class MetadataCache:
    """Metadata per issuer, kept for ``ttl`` seconds of ``clock``; thread-safe.

    One fetch at a time per issuer: concurrent callers share the fetch in flight and its
    outcome – the metadata, or the error – and none waits longer than its own ``timeout``.
    A failure is remembered for ``backoff`` seconds of ``clock``: until then :meth:`get`
    raises it again (a copy, saying so) without a request; the first call after fetches again.
    :meth:`clear` or :meth:`invalidate` drop entries and remembered failures (tests, rotation).
    """

    def __init__(self, ttl: float = 300, clock: Callable[[], float] | None = None,
                 backoff: float = 5) -> None:
        if backoff < 0:
            raise ValueError("backoff must not be negative")
        self.ttl = ttl
        self.backoff = backoff
        self._clock = clock or time.time
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, dict[str, Any]]] = {}
        self._failures: dict[str, tuple[float, OAuthError]] = {}
        self._flights: dict[str, _Flight] = {}

    def get(
        self, issuer: str, *, session: requests.Session | None = None, timeout: float = 10,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> dict[str, Any]:
        """Cached metadata of ``issuer``, fetched when missing or older than ``ttl``; a failure
        of the last ``backoff`` seconds is raised again. A caller that finds a fetch in flight
        waits for it (its ``session`` and ``max_bytes`` are the first caller's) at most
        ``timeout`` seconds."""
        cached = self._fresh(issuer)
        if cached is not None:
            return cached
        with self._lock:
            now = self._clock()
            entry = self._entries.get(issuer)
            if entry is not None and entry[0] > now:  # fetched since _fresh looked
                return copy.deepcopy(entry[1])
            failure = self._failures.get(issuer)
            if failure is not None and failure[0] > now:
                raise again(failure[1], f"a remembered failure: the next fetch in "
                             f"{failure[0] - now:.1f} s at the earliest") from failure[1]
            flight = self._flights.get(issuer)
            if flight is None:
                flight = self._flights[issuer] = _Flight()
                owner = True
            else:
                owner = False
        if owner:
            return self._fly(issuer, flight, session=session, timeout=timeout,
                             max_bytes=max_bytes)
        if not flight.done.wait(timeout):
            raise TransportError(error_description=f"Timed out after {timeout} s waiting for "
                                 f"the metadata of {issuer} (a fetch already in progress).")
        if flight.error is not None:
            raise again(flight.error) from flight.error
        if flight.metadata is None:  # the fetching thread failed with something unexpected
            raise DiscoveryError("discovery_error", f"The metadata fetch of {issuer} this "
                                 "call waited for failed unexpectedly.")
        return copy.deepcopy(flight.metadata)

    def _fly(self, issuer: str, flight: _Flight, *, session: requests.Session | None,
             timeout: float, max_bytes: int) -> dict[str, Any]:
        """Fetch for every caller of ``flight``: record the outcome, then wake them."""
        try:
            metadata = _fetch(issuer, session=session, timeout=timeout, max_bytes=max_bytes)
        except OAuthError as exc:
            # A copy to keep and share: this caller's retry logic may change ``exc`` (attempts).
            flight.error = again(exc)
            with self._lock:
                self._failures[issuer] = (self._clock() + self.backoff, flight.error)
            raise
        else:
            flight.metadata = metadata
            with self._lock:
                self._entries[issuer] = (self._clock() + self.ttl, metadata)
                self._failures.pop(issuer, None)
            return copy.deepcopy(metadata)
        finally:
            with self._lock:
                if self._flights.get(issuer) is flight:
                    del self._flights[issuer]
            flight.done.set()

    def _fresh(self, issuer: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._entries.get(issuer)
        if entry is None or entry[0] <= self._clock():
            return None
        return copy.deepcopy(entry[1])

    def invalidate(self, issuer: str) -> None:
        """Forget ``issuer``'s metadata; the next :meth:`get` fetches it again."""
        with self._lock:
            self._entries.pop(issuer, None)
            self._failures.pop(issuer, None)

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._entries.clear()
            self._failures.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __repr__(self) -> str:
        return f"<MetadataCache ttl={self.ttl}s backoff={self.backoff}s entries={len(self)}>"
