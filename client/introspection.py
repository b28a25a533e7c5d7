"""Resource-server side, by asking the issuer: RFC 7662 introspection with
:class:`IntrospectionValidator`, and the two calls underneath it, :func:`introspect_token` and
RFC 7009's :func:`revoke_token`.

``IntrospectionValidator(issuer, audience, client_id=..., client_secret=...)`` has
:class:`~m2mauth.client.TokenValidator`'s contract: ``validate(token, scopes=("read",))``
returns a :class:`~m2mauth.client.ValidatedToken` or raises :class:`InvalidTokenError`
(``exc.reason`` says why) or :class:`InsufficientScopeError`; it works for opaque tokens too,
and sees a revocation as soon as its cache lets it. What it does, in this order:

1. size (``max_token_bytes``) before anything else, then the shape: a bearer token is one
   token68 of ASCII (RFC 6750 §2.1) – anything else is ``malformed`` without a request;
2. the cache, keyed by the token's SHA-256 (the token itself is never kept, logged or shown):
   an active answer is used for ``cache_ttl`` seconds from when it was asked for, never past
   the token's ``exp``; a refusal (``active: false``, or an answer failing step 4) for
   ``inactive_ttl``; least recently used entries leave first when ``cache_max_entries`` or
   ``cache_max_bytes`` is reached;
3. else one POST to the introspection endpoint (``introspection_endpoint``, else the one the
   issuer's RFC 8414 metadata names), authenticated as this resource server's own client
   with any method :func:`~m2mauth.client.fetch_token` has – the same code: the sans-I/O
   flow's :class:`~m2mauth.client._flow.Request` and :func:`~m2mauth.client.tokens.authenticate`
   (the assertion's ``aud`` is the introspection endpoint). Concurrent callers with the same
   uncached token share that one request and its outcome (single flight);
4. the answer: ``active`` must be true (else reason ``inactive``); ``token_type``, when given,
   Bearer or DPoP (a DPoP one with ``cnf.jkt``); a DPoP-bound token (``cnf.jkt``) is refused
   as ``wrong_type`` (sent as Bearer) unless the caller checked its proof (``dpop_proven``,
   as TokenValidator's ``revocation_check``); then exactly TokenValidator's
   claim checks (:func:`~m2mauth.client.validator.check_claims`): the RFC 9068 claims present,
   ``iss`` equal to the issuer, ``aud`` naming this API, ``exp``/``nbf``/``iat`` within
   ``leeway`` of the clock;
5. the required scopes.

When the endpoint fails – no connection, a timeout, 5xx or 429, a malformed answer – an
active answer already cached is served up to ``max_stale`` seconds past its ``cache_ttl``
(never past the token's ``exp``); otherwise :class:`IntrospectionError` is raised (fail
closed), as :class:`~m2mauth.client.JWKSError` is for keys: not the token's fault, so
:func:`~m2mauth.client.flask.require_token` answers 503, not 401. A refusal of this resource
server's own credentials (401 ``invalid_client``, 400 ``unauthorized_client``) is raised at
once, never papered over with a stale answer. After a failure, no new request is made for
``failure_backoff`` seconds: a down endpoint is not hammered by every request (not after an
``invalid_request``: that refuses one request, its token, and not the others).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

import requests

from ._arguments import as_list, takes
from ._flow import Discover, Flow, Request, Response, run
from ._grammar import TOKEN68
from ._http import DEFAULT_MAX_BYTES
from ._untrusted import shown
from .assertions import PrivateKey, load_private_key
from .discovery import MetadataCache
from .errors import (
    DiscoveryError,
    IntrospectionError,
    InvalidTokenError,
    OAuthError,
    TransportError,
    again,
)
from .tokens import (
    AuthMethod,
    _retry_after,
    authenticate,
    check_credentials,
    is_http_url,
    oauth_error,
)
from .validator import ValidatedToken, check_claims, check_scopes

__all__ = ["ClientCredentials", "IntrospectionValidator", "introspect_token", "revoke_token"]

log = logging.getLogger("m2mauth.client")

#: An introspection answer is a small JSON object (ours: about 300 bytes); a larger body is
#: refused while it is read.
MAX_ANSWER_BYTES = 64 * 1024
_INACTIVE = ("the issuer says the token is not active (RFC 7662: expired, revoked, unknown "
             "or not its own)")


# -- the calls ----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, repr=False)
class ClientCredentials:
    """How a resource server authenticates at its issuer's introspection and revocation
    endpoints: a client of its own, with any method :func:`~m2mauth.client.fetch_token` has.
    ``auth_method`` None is ``private_key_jwt`` with a ``private_key`` (PEM, parsed once
    here, or a key object), else ``client_secret_basic``. Checked when made (``ValueError``);
    ``repr()`` shows no secret."""

    client_id: str
    client_secret: str | None = None
    private_key: PrivateKey | str | bytes | None = None
    kid: str | None = None
    auth_method: AuthMethod | str | None = None

    def __post_init__(self) -> None:
        key = self.private_key
        method = self.auth_method or ("private_key_jwt" if key is not None
                                      else "client_secret_basic")
        if isinstance(key, (str, bytes)):
            key = load_private_key(key)  # once, not per assertion
        object.__setattr__(self, "private_key", key)
        object.__setattr__(self, "auth_method", method)
        check_credentials(self.client_id, self.client_secret, key, method)

    def headers(self, form: list[tuple[str, str]], endpoint: str,
                clock: Callable[[], float]) -> dict[str, str]:
        """Add this client's authentication for a request to ``endpoint`` to ``form``;
        return the headers (the token request's code:
        :func:`~m2mauth.client.tokens.authenticate`)."""
        return authenticate(form, str(self.auth_method), self.client_id, self.client_secret,
                            self.private_key, self.kid, endpoint, clock)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"<ClientCredentials client_id={self.client_id!r} auth_method={self.auth_method}>"


def endpoint_url(kind: str, issuer: str, *, timeout: float,
                 metadata_cache: MetadataCache | None) -> Flow[str]:
    """The issuer's ``kind`` endpoint ("introspection" or "revocation") from its RFC 8414
    metadata (``<kind>_endpoint``), as a sans-I/O flow."""
    metadata = yield Discover(issuer, timeout, metadata_cache, DEFAULT_MAX_BYTES)
    url = metadata.get(f"{kind}_endpoint")
    if not is_http_url(url):
        raise DiscoveryError("discovery_error", f"The metadata of {issuer} has no "
                             f"http(s) {kind}_endpoint.")
    return url  # type: ignore[no-any-return]


def endpoint_flow(
    kind: str, endpoint: str | None, issuer: str | None, credentials: ClientCredentials,
    token: str, token_type_hint: str | None, *, timeout: float, clock: Callable[[], float],
    metadata_cache: MetadataCache | None, max_bytes: int,
) -> Flow[tuple[str, Response]]:
    """POST ``token`` to the issuer's ``kind`` endpoint ("introspection" or "revocation"),
    authenticated as ``credentials``: the endpoint URL and the response, as a sans-I/O flow.
    ``endpoint`` None looks it up in ``issuer``'s metadata (:func:`endpoint_url`)."""
    url = endpoint
    if url is None:
        assert issuer is not None
        url = yield from endpoint_url(kind, issuer, timeout=timeout,
                                      metadata_cache=metadata_cache)
    form = [("token", token)]
    if token_type_hint:
        form.append(("token_type_hint", token_type_hint))
    headers = credentials.headers(form, url, clock)
    log.debug("%s request to %s client_id=%s auth_method=%s", kind, url,
              credentials.client_id, credentials.auth_method)
    response = yield Request("POST", url, headers, tuple(form), timeout, max_bytes)
    return url, response


def _body(response: Any) -> Any:
    try:
        return response.json()
    except (ValueError, RecursionError):
        return None


def _not_an_answer(response: Any, url: str, what: str, now: float) -> TransportError:
    content_type = response.headers.get("Content-Type", "no content type")
    return TransportError(error_description=f"{url} answered HTTP {response.status_code} "
                          f"that is not {what} ({content_type}).", status=response.status_code,
                          retry_after=_retry_after(response, now))


def parse_introspection(response: Any, url: str, now: float) -> dict[str, Any]:
    """The RFC 7662 §2.2 answer of ``response`` (a JSON object with a boolean ``active``);
    the typed :class:`OAuthError` for an error response; :class:`TransportError` for
    anything else (a redirect, another status, a malformed body)."""
    body = _body(response)
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        raise oauth_error(body, response.status_code, _retry_after(response, now))
    if response.status_code != 200:
        raise _not_an_answer(response, url, "an OAuth error", now)
    if not isinstance(body, dict) or type(body.get("active")) is not bool:
        raise _not_an_answer(response, url, "an introspection answer (a JSON object with a "
                             "boolean active, RFC 7662 section 2.2)", now)
    return body


def parse_revocation(response: Any, url: str, now: float) -> None:
    """None for RFC 7009 §2.2's 200 (whatever the body; the server answers 200 for a token it
    does not know too); the typed :class:`OAuthError` or :class:`TransportError` else."""
    if response.status_code == 200:
        return
    body = _body(response)
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        raise oauth_error(body, response.status_code, _retry_after(response, now))
    raise _not_an_answer(response, url, "an OAuth error", now)


@dataclass(frozen=True, kw_only=True, eq=False, repr=False)
class _EndpointCall:
    """The arguments :func:`introspect_token` and :func:`revoke_token` share (documented
    there), checked when made; each adds its endpoint's name."""

    _kind: ClassVar[str]

    token: str = field(kw_only=False)
    issuer: str | None = None
    client_id: str
    client_secret: str | None = None
    private_key: PrivateKey | str | bytes | None = None
    kid: str | None = None
    auth_method: AuthMethod | str | None = None
    token_type_hint: str | None = None
    timeout: float = 10
    clock: Callable[[], float] | None = None
    session: requests.Session | None = None
    metadata_cache: MetadataCache | None = None
    max_response_bytes: int = MAX_ANSWER_BYTES

    @property
    def endpoint(self) -> str | None:
        raise NotImplementedError

    def __post_init__(self) -> None:
        if not isinstance(self.token, str) or not self.token:
            raise ValueError("token must be a non-empty string")
        if (self.endpoint is None) == (self.issuer is None):
            raise ValueError(f"give either {self._kind}_endpoint or issuer, not both or "
                             "neither")
        if self.endpoint is not None and not is_http_url(self.endpoint):
            raise ValueError(f"{self._kind}_endpoint must be an absolute http(s) URL")
        object.__setattr__(self, "_credentials", ClientCredentials(
            self.client_id, self.client_secret, self.private_key, self.kid, self.auth_method))

    def flow(self) -> Flow[tuple[str, Response]]:
        return endpoint_flow(
            self._kind, self.endpoint, self.issuer, self._credentials,  # type: ignore[attr-defined]
            self.token, self.token_type_hint, timeout=self.timeout,
            clock=self.clock or time.time, metadata_cache=self.metadata_cache,
            max_bytes=self.max_response_bytes)


@dataclass(frozen=True, kw_only=True, eq=False, repr=False)
class _Introspect(_EndpointCall):
    _kind: ClassVar[str] = "introspection"
    introspection_endpoint: str | None = None

    @property
    def endpoint(self) -> str | None:
        return self.introspection_endpoint


@dataclass(frozen=True, kw_only=True, eq=False, repr=False)
class _Revoke(_EndpointCall):
    _kind: ClassVar[str] = "revocation"
    revocation_endpoint: str | None = None

    @property
    def endpoint(self) -> str | None:
        return self.revocation_endpoint


@takes(_Introspect)
def introspect_token(call: _Introspect) -> dict[str, Any]:
    """Ask the issuer about ``token`` (RFC 7662) and return its answer as it came: a dict
    whose ``active`` says whether the token is active, with the token's claims when it is.
    Nothing in it is checked against an API – :class:`IntrospectionValidator` does that.

    Give ``introspection_endpoint``, or ``issuer`` to look it up (RFC 8414). The caller
    authenticates as ``client_id`` with ``auth_method`` (None: ``private_key_jwt`` with a
    ``private_key``, else ``client_secret_basic``), as for
    :func:`~m2mauth.client.fetch_token`; ``token_type_hint`` is sent when given.

    Raises the :class:`OAuthError` subclass for the server's error code (an unauthorised
    caller: :class:`~m2mauth.client.UnauthorizedClientError`), :class:`TransportError` when
    no usable answer arrived, :class:`DiscoveryError`, and ``ValueError`` for inconsistent
    arguments.
    """
    url, response = run(call.flow(), session=call.session)
    return parse_introspection(response, url, (call.clock or time.time)())


@takes(_Revoke)
def revoke_token(call: _Revoke) -> None:
    """Revoke ``token`` (RFC 7009) – one of the calling client's own. Returns None when the
    server answered 200, which it also does for a token it does not know or that is another
    client's (RFC 7009 §2.2). Same arguments as :func:`introspect_token`, with
    ``revocation_endpoint``; raises the same errors."""
    url, response = run(call.flow(), session=call.session)
    parse_revocation(response, url, (call.clock or time.time)())


# -- the validator ------------------------------------------------------------------------


class _Answer:
    """An introspection outcome in the cache: the checked token, or why it was refused."""

    __slots__ = ("fresh_until", "refusal", "scopes", "size", "stale_until", "token")

    def __init__(self, token: ValidatedToken | None, refusal: tuple[str, str, str | None] | None,
                 fresh_until: float, stale_until: float, size: int) -> None:
        self.token, self.refusal = token, refusal
        self.scopes = frozenset(token.scopes) if token is not None else frozenset()
        self.fresh_until, self.stale_until, self.size = fresh_until, stale_until, size

    def result(self) -> ValidatedToken:
        """The token, or a new :class:`InvalidTokenError` (one per caller) saying why not."""
        if self.token is None:
            reason, description, claim = self.refusal  # type: ignore[misc]
            raise InvalidTokenError(reason, description, claim=claim)
        return self.token


class _Flight:
    """One introspection in progress for one token: its callers wait on ``done``."""

    __slots__ = ("answer", "done", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.answer: _Answer | None = None
        self.error: IntrospectionError | None = None


def _refused(error: OAuthError) -> bool:
    """Whether the endpoint refused this request (a 4xx other than 429: our credentials or
    our request), rather than being unavailable – which waiting may mend."""
    return error.status is not None and 400 <= error.status < 500 and error.status != 429


def _this_request(error: OAuthError) -> bool:
    """Whether the endpoint refused this one request (``invalid_request``: its token, say one
    over the server's size limit), not every request this resource server makes."""
    return _refused(error) and error.error == "invalid_request"


class IntrospectionValidator:
    """Validates access tokens of ``issuer`` for this API (``audience``: its identifier, or
    several accepted ones) by asking the issuer's introspection endpoint (RFC 7662), as this
    resource server's client ``client_id``; see the module docstring for the steps.

    Authentication: ``client_secret``, or ``private_key`` (PEM or key object, with ``kid``)
    for ``private_key_jwt``; ``auth_method`` None picks ``private_key_jwt`` with a key, else
    ``client_secret_basic`` (also ``client_secret_post``, ``client_secret_jwt``).
    ``introspection_endpoint``: None looks it up in the issuer's metadata on first use
    (through ``metadata_cache``, else one of its own), then keeps it.
    ``token_type_hint`` is sent with each request (None: not sent).
    ``leeway``, ``max_token_bytes``, ``clock``, ``timeout``: as for TokenValidator.
    ``cache_ttl``: longest use of an active answer (never past ``exp``); ``inactive_ttl``: of
    a refusal; ``max_stale``: how long past ``cache_ttl`` an active answer may stand in for
    a failing endpoint; ``failure_backoff``: seconds without a request after a failure;
    ``cache_max_entries``/``cache_max_bytes`` bound the cache (0 entries turns it off).
    ``session``: the ``requests.Session`` (else one of its own, kept alive).
    ``max_response_bytes``: a larger answer is refused as malformed.
    """

    def __init__(
        self,
        issuer: str,
        audience: str | Iterable[str],
        *,
        client_id: str,
        client_secret: str | None = None,
        private_key: PrivateKey | str | bytes | None = None,
        kid: str | None = None,
        auth_method: AuthMethod | str | None = None,
        introspection_endpoint: str | None = None,
        token_type_hint: str | None = "access_token",  # noqa: S107 - a hint, not a secret
        leeway: float = 30,
        max_token_bytes: int = 8192,
        cache_ttl: float = 60.0,
        inactive_ttl: float = 5.0,
        max_stale: float = 30.0,
        failure_backoff: float = 1.0,
        cache_max_entries: int = 10_000,
        cache_max_bytes: int = 16 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
        session: requests.Session | None = None,
        timeout: float = 5.0,
        metadata_cache: MetadataCache | None = None,
        max_response_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        if not isinstance(issuer, str) or not issuer:
            raise ValueError("issuer must be a non-empty string")
        audiences = tuple(as_list(audience))
        if not audiences or not all(isinstance(a, str) and a for a in audiences):
            raise ValueError("audience must be a non-empty string or strings")
        if introspection_endpoint is not None and not is_http_url(introspection_endpoint):
            raise ValueError("introspection_endpoint must be an absolute http(s) URL")
        for name, value in (("leeway", leeway), ("cache_ttl", cache_ttl),
                            ("inactive_ttl", inactive_ttl), ("max_stale", max_stale),
                            ("failure_backoff", failure_backoff),
                            ("cache_max_entries", cache_max_entries),
                            ("cache_max_bytes", cache_max_bytes)):
            if value < 0:
                raise ValueError(f"{name} must not be negative")
        if max_token_bytes < 16 or timeout <= 0 or max_response_bytes < 64:
            raise ValueError("max_token_bytes, timeout and max_response_bytes must be positive")
        self.issuer = issuer
        self.audience = audiences
        self.leeway = float(leeway)
        self.max_token_bytes = max_token_bytes
        self.cache_ttl, self.inactive_ttl = float(cache_ttl), float(inactive_ttl)
        self.max_stale, self.failure_backoff = float(max_stale), float(failure_backoff)
        self.cache_max_entries, self.cache_max_bytes = cache_max_entries, cache_max_bytes
        self.clock = clock
        self.timeout = timeout
        self.token_type_hint = token_type_hint
        self.max_response_bytes = max_response_bytes
        self._credentials = ClientCredentials(client_id, client_secret, private_key, kid,
                                              auth_method)
        self._audiences = frozenset(audiences)
        self._endpoint = introspection_endpoint
        self._metadata = metadata_cache if metadata_cache is not None else MetadataCache(
            clock=clock)
        self._session = session if session is not None else requests.Session()
        self._lock = threading.Lock()  # guards the cache, the flights and the failure
        self._cache: OrderedDict[bytes, _Answer] = OrderedDict()
        self._cache_bytes = 0
        self._flights: dict[bytes, _Flight] = {}
        self._failure: tuple[float, IntrospectionError] | None = None  # (no request until, why)
        #: Answers received and failed requests, for tests and metrics.
        self.introspections = 0
        self.failures = 0

    # -- public API ----------------------------------------------------------------------

    @property
    def client_id(self) -> str:
        return self._credentials.client_id

    @property
    def introspection_endpoint(self) -> str | None:
        """The endpoint asked (None until discovered, when not configured)."""
        return self._endpoint

    def validate(self, token: str, scopes: str | Iterable[str] = (), *,
                 dpop_proven: bool = False) -> ValidatedToken:
        """The token's content if the issuer says it is active and it is an access token for
        this API granting all of ``scopes`` (a space-separated string or strings); else
        :class:`InvalidTokenError` or :class:`InsufficientScopeError`.
        :class:`IntrospectionError` means the issuer cannot be asked now (and no answer
        it gave may stand in). A DPoP-bound token (``cnf.jkt`` in the answer, RFC 9449 §6.2)
        is refused (``wrong_type``: sent as Bearer) unless ``dpop_proven`` – the caller has
        checked the request's DPoP proof against it, as
        :meth:`TokenValidator.validate_dpop` does for its ``revocation_check``."""
        text, key = self._key(token)
        answer = self._cached(key, self.clock())
        if answer is None:
            answer = self._introspect(key, text)
        validated = answer.result()
        if validated.jkt is not None and not dpop_proven:
            raise InvalidTokenError("wrong_type", "the token is DPoP-bound (cnf.jkt): a "
                                    "sender-constrained token needs its proof (RFC 9449)")
        check_scopes(scopes, answer.scopes)
        return validated

    def clear_cache(self) -> None:
        """Forget every answer (the endpoint, once discovered, is kept)."""
        with self._lock:
            self._cache.clear()
            self._cache_bytes = 0

    @property
    def cache_size(self) -> tuple[int, int]:
        """(entries, approximate bytes) in the cache of answers."""
        return len(self._cache), self._cache_bytes

    def __repr__(self) -> str:
        return (f"<IntrospectionValidator issuer={self.issuer!r} audience={self.audience!r} "
                f"client_id={self.client_id!r} auth_method={self._credentials.auth_method}>")

    # -- the token, and the cache ----------------------------------------------------------

    def _key(self, token: Any) -> tuple[str, bytes]:
        """(the token as text, its cache key), its size and type checked before any work.
        (Its shape is checked on a cache miss only: what is cached passed that check.)"""
        if isinstance(token, str):
            if len(token) > self.max_token_bytes:
                raise InvalidTokenError("too_large", f"the token is longer than "
                                        f"{self.max_token_bytes} bytes")
            try:
                raw = token.encode("ascii")
            except UnicodeEncodeError:
                raise InvalidTokenError("malformed", "the token is not ASCII") from None
        elif isinstance(token, (bytes, bytearray)):
            if len(token) > self.max_token_bytes:
                raise InvalidTokenError("too_large", f"the token is longer than "
                                        f"{self.max_token_bytes} bytes")
            raw = bytes(token)
            try:
                token = raw.decode("ascii")
            except UnicodeDecodeError:
                raise InvalidTokenError("malformed", "the token is not ASCII") from None
        else:
            raise InvalidTokenError("malformed", "the token is not a string")
        return token, hashlib.sha256(raw).digest()

    def _cached(self, key: bytes, now: float) -> _Answer | None:
        with self._lock:
            answer = self._cache.get(key)
            if answer is None:
                return None
            if now < answer.fresh_until:
                self._cache.move_to_end(key)
                return answer
            if answer.token is None or now >= answer.stale_until:
                del self._cache[key]
                self._cache_bytes -= answer.size
        return None

    def _stale(self, key: bytes, now: float) -> _Answer | None:
        """An active answer that may stand in for a failing endpoint."""
        with self._lock:
            answer = self._cache.get(key)
        if answer is not None and answer.token is not None and now < answer.stale_until:
            return answer
        return None

    def _remember(self, key: bytes, answer: _Answer, now: float) -> None:
        size = answer.size
        if not self.cache_max_entries or size > self.cache_max_bytes or \
                answer.fresh_until <= now:
            return
        with self._lock:
            cache = self._cache
            old = cache.pop(key, None)
            if old is not None:
                self._cache_bytes -= old.size
            while cache and (len(cache) >= self.cache_max_entries
                             or self._cache_bytes + size > self.cache_max_bytes):
                _, gone = cache.popitem(last=False)  # least recently used first
                self._cache_bytes -= gone.size
            cache[key] = answer
            self._cache_bytes += size

    # -- asking the issuer -----------------------------------------------------------------

    def _introspect(self, key: bytes, token: str) -> _Answer:
        """The answer for an uncached token: asked once however many threads want it."""
        if TOKEN68.fullmatch(token) is None:
            raise InvalidTokenError("malformed", "the token is not one token68 string (RFC "
                                    "6750 section 2.1)")
        with self._lock:
            answer = self._cache.get(key)
            if answer is not None and self.clock() < answer.fresh_until:
                return answer  # answered while this caller looked
            flight = self._flights.get(key)
            owner = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if owner:
            return self._fly(key, token, flight)
        # The owner's request (and a first discovery) end within their timeouts.
        if not flight.done.wait(2 * self.timeout):
            error = IntrospectionError(error_description=f"timed out after "
                                       f"{2 * self.timeout:g} s waiting for an introspection "
                                       "of the same token in progress")
            stale = self._stale(key, self.clock())
            if stale is not None:
                return stale
            raise error
        if flight.answer is not None:
            return flight.answer
        if flight.error is not None:
            raise again(flight.error) from flight.error.__cause__
        raise IntrospectionError(error_description="the introspection this call waited for "
                                 "failed unexpectedly")

    def _fly(self, key: bytes, token: str, flight: _Flight) -> _Answer:
        """Ask for every caller of ``flight``: record the outcome, then wake them."""
        try:
            try:
                answer = self._ask(token)
            except IntrospectionError as error:
                now = self.clock()
                stale = None if _refused(error) else self._stale(key, now)
                if stale is None:
                    flight.error = error
                    raise
                log.warning("introspection failed (%s); serving the cached answer for jti %s "
                            "for %.0f s more at most", error, stale.token.jti,  # type: ignore[union-attr]
                            stale.stale_until - now)
                flight.answer = stale
                return stale
            self._remember(key, answer, self.clock())
            flight.answer = answer
            return answer
        finally:
            with self._lock:
                if self._flights.get(key) is flight:
                    del self._flights[key]
            flight.done.set()

    def _ask(self, token: str) -> _Answer:
        """One introspection request, its answer checked; :class:`IntrospectionError` when
        there is no answer (also, without a request, within ``failure_backoff`` of the last
        failure)."""
        started = self.clock()
        failure = self._failure
        if failure is not None and started < failure[0]:
            error = failure[1]
            raise again(error, f"a remembered failure: the next request in "
                        f"{failure[0] - started:.1f} s at the earliest") from error.__cause__
        try:
            if self._endpoint is None:  # discovered once, then kept
                self._endpoint = run(endpoint_url(
                    "introspection", self.issuer, timeout=self.timeout,
                    metadata_cache=self._metadata), session=self._session)
            url, response = run(endpoint_flow(
                "introspection", self._endpoint, self.issuer, self._credentials, token,
                self.token_type_hint, timeout=self.timeout, clock=self.clock,
                metadata_cache=self._metadata, max_bytes=self.max_response_bytes),
                session=self._session)
            body = parse_introspection(response, url, self.clock())
        except OAuthError as exc:
            error = self._error(exc)
            with self._lock:
                self.failures += 1
                if not _this_request(exc):  # else every other token would get its error
                    self._failure = (self.clock() + self.failure_backoff, error)
            raise error from exc
        with self._lock:
            self.introspections += 1
            self._failure = None
        return self._answer(body, started, len(response.content))

    def _error(self, exc: OAuthError) -> IntrospectionError:
        where = self._endpoint or f"the introspection endpoint of {self.issuer}"
        why = f"{exc.error}: {exc.error_description}" if exc.error_description else exc.error
        if _this_request(exc):
            text = f"{where} refused this request (its token): {why}"
        elif _refused(exc):
            text = (f"{where} refused this resource server's client "
                    f"{shown(self.client_id, 60)}: {why}")
        else:
            text = f"introspection at {where} failed: {why}"
        error = IntrospectionError(exc.error, text, exc.error_uri, exc.status,
                                   retry_after=exc.retry_after)
        error.__cause__ = exc
        return error

    def _answer(self, body: dict[str, Any], now: float, size: int) -> _Answer:
        """The cache entry for an answer: the checked token, or the refusal."""
        size = 2 * size + 512
        if body["active"] is not True:
            return _Answer(None, ("inactive", _INACTIVE, None), now + self.inactive_ttl,
                           now + self.inactive_ttl, size)
        try:
            token_type = body.get("token_type")
            kind = token_type.lower() if type(token_type) is str else token_type
            if kind is not None and kind not in ("bearer", "dpop"):
                raise InvalidTokenError("wrong_type", f"token_type is {shown(token_type)}, "
                                        "not Bearer or DPoP: a sender-constrained token "
                                        "needs its proof")
            validated, _ = check_claims(body, MappingProxyType({}), issuer=self.issuer,
                                        audiences=self._audiences, leeway=self.leeway, now=now)
            if kind == "dpop" and validated.jkt is None:  # RFC 9449 §6.2 names the key
                raise InvalidTokenError("wrong_type", "token_type is DPoP, but the answer "
                                        "has no cnf.jkt: the token's binding cannot be "
                                        "checked")
        except InvalidTokenError as exc:
            until = now + self.inactive_ttl
            return _Answer(None, (exc.reason, exc.error_description or exc.reason, exc.claim),
                           until, until, size)
        exp = float(validated.expires_at)
        fresh_until = min(now + self.cache_ttl, exp)
        return _Answer(validated, None, fresh_until, min(fresh_until + self.max_stale, exp),
                       size)

