"""Getting an access token with the client-credentials grant (RFC 6749 §4.4): one request,
every client authentication method, typed errors.

The request is written once, as the sans-I/O flow :meth:`TokenRequest.flow`;
:func:`fetch_token` runs it with ``requests``, :func:`~m2mauth.client.afetch_token` with httpx,
and the providers once per attempt."""

from __future__ import annotations

import base64
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import quote_plus, urlsplit

import requests

from ._arguments import as_list, takes
from ._flow import Discover, Flow, Request, run
from ._http import DEFAULT_MAX_BYTES
from .assertions import (
    ASSERTION_TYPE,
    PrivateKey,
    client_secret_jwt_assertion,
    private_key_jwt_assertion,
)
from .discovery import MetadataCache
from .dpop import DPoPKey, DPoPNonceStore, DPoPTokenTypeError
from .errors import DiscoveryError, OAuthError, TransportError, error_class

__all__ = ["AUTH_METHODS", "AuthMethod", "Token", "fetch_token"]

log = logging.getLogger("m2mauth.client")

AuthMethod = Literal[
    "client_secret_basic", "client_secret_post", "client_secret_jwt", "private_key_jwt"
]
#: Client authentication methods at the token endpoint (RFC 6749 §2.3, RFC 7523 §2.2).
AUTH_METHODS: tuple[str, ...] = (
    "client_secret_basic", "client_secret_post", "client_secret_jwt", "private_key_jwt"
)
#: Parameters fetch_token sets itself; extra_params may not replace them.
_RESERVED = frozenset({
    "grant_type", "client_id", "client_secret", "client_assertion", "client_assertion_type",
    "scope", "resource",
})


def _mask(token: str) -> str:
    """Enough of a token to tell two apart in a log, never enough to use it."""
    return f"{token[:8]}...({len(token)} chars)" if len(token) > 8 else "***"


@dataclass(frozen=True)
class Token:
    """A token response (RFC 6749 §5.1). ``repr()`` masks the access token.

    ``expires_at`` is absolute (seconds on the clock fetch_token was given, taken before the
    request was sent, so it errs early); None when the server sent no ``expires_in``.
    ``scope`` is the granted scope, or the requested one when the response omits it
    (RFC 6749 §5.1: the server may omit it when identical). ``raw`` is the whole response.
    """

    access_token: str
    token_type: str
    expires_in: int | None
    expires_at: float | None
    scope: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"Token(access_token={_mask(self.access_token)!r}, token_type={self.token_type!r}, "
            f"expires_in={self.expires_in!r}, expires_at={self.expires_at!r}, "
            f"scope={self.scope!r})"
        )

    __str__ = __repr__

    def expires_within(self, seconds: float, now: float) -> bool:
        """Whether the token expires within ``seconds`` of ``now``; False if it never says."""
        return self.expires_at is not None and self.expires_at - seconds <= now


def _basic_header(client_id: str, client_secret: str) -> str:
    # RFC 6749 §2.3.1: form-urlencode id and secret, then Base64 "id:secret".
    pair = f"{quote_plus(client_id, safe='')}:{quote_plus(client_secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode("ascii")).decode("ascii")


def is_http_url(url: object) -> bool:
    if not isinstance(url, str):
        return False
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _retry_after(response: Any, now: float) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True, kw_only=True, eq=False, repr=False)
class TokenRequest:
    """One client-credentials token request: the arguments :func:`fetch_token` and
    :func:`~m2mauth.client.afetch_token` take (documented there), checked when it is made,
    and :meth:`flow`, the request as a sans-I/O flow. Secrets stay out of ``repr()``."""

    token_url: str | None = field(default=None, kw_only=False)
    issuer: str | None = None
    client_id: str
    client_secret: str | None = None
    private_key: PrivateKey | str | bytes | None = None
    kid: str | None = None
    scope: str | Sequence[str] | None = None
    resource: str | Sequence[str] | None = None
    auth_method: AuthMethod | str = "client_secret_basic"
    timeout: float = 10
    clock: Callable[[], float] | None = None
    extra_params: Mapping[str, str | Sequence[str]] | None = None
    metadata_cache: MetadataCache | None = None
    #: Token and metadata responses larger than this are refused (``TransportError``).
    max_response_bytes: int = DEFAULT_MAX_BYTES
    #: A DPoP key (RFC 9449): each request carries a proof of it, the token must be DPoP.
    dpop_key: DPoPKey | None = None
    #: Where the token endpoint's ``DPoP-Nonce`` is kept between requests (else per request).
    dpop_nonces: DPoPNonceStore | None = None

    def __post_init__(self) -> None:
        if self.dpop_key is not None and not isinstance(self.dpop_key, DPoPKey):
            raise TypeError("dpop_key must be a DPoPKey")
        check_arguments(self.token_url, self.issuer, self.client_id, self.client_secret,
                        self.private_key, self.auth_method)

    def flow(self) -> Flow[Token]:
        """The request, without I/O: discovers the token endpoint when given an issuer, sends
        the authenticated POST, returns the :class:`Token` or raises the typed error."""
        now = self.clock or time.time
        params, scopes = form_parameters(self.scope, self.resource, self.extra_params)
        token_url = self.token_url
        if token_url is None:
            assert self.issuer is not None
            metadata = yield Discover(self.issuer, self.timeout, self.metadata_cache,
                                      self.max_response_bytes)
            token_url = metadata.get("token_endpoint")
            if not is_http_url(token_url):
                raise DiscoveryError("discovery_error", f"The metadata of {self.issuer} has "
                                     "no http(s) token_endpoint.")
        elif not is_http_url(token_url):
            raise ValueError("token_url must be an absolute http(s) URL")
        assert isinstance(token_url, str)
        log.debug("token request to %s client_id=%s auth_method=%s scope=%s dpop=%s", token_url,
                  self.client_id, self.auth_method, " ".join(scopes) or "-",
                  "no" if self.dpop_key is None else self.dpop_key.thumbprint)
        nonces = self.dpop_nonces if self.dpop_nonces is not None else DPoPNonceStore(1)
        started = now()
        response = yield self._request(token_url, list(params), now, nonces)
        if self.dpop_key is not None and _wants_nonce(response, nonces, token_url):
            # RFC 9449 §8: the server wants a nonce and gave one; once, with a new proof and a
            # new client authentication (an assertion's jti may be used only once).
            started = now()
            response = yield self._request(token_url, list(params), now, nonces)
            nonces.update(token_url, response.headers.get("DPoP-Nonce"))
        token = parse_response(response, token_url, requested_scope=scopes, started=started,
                               now=now())
        if self.dpop_key is not None and token.token_type.lower() != "dpop":
            raise DPoPTokenTypeError(token.token_type, token_url, response.status_code)
        log.debug("token received from %s client_id=%s token=%s expires_in=%s", token_url,
                  self.client_id, _mask(token.access_token), token.expires_in)
        return token

    def _request(self, token_url: str, params: list[tuple[str, str]],
                 now: Callable[[], float], nonces: DPoPNonceStore) -> Request:
        """The authenticated POST, with a fresh DPoP proof when there is a key."""
        headers = authenticate(params, self.auth_method, self.client_id, self.client_secret,
                               self.private_key, self.kid, token_url, now)
        if self.dpop_key is not None:
            headers["DPoP"] = self.dpop_key.proof("POST", token_url, nonce=nonces.get(token_url),
                                                  now=now())
        return Request("POST", token_url, headers, tuple(params), self.timeout,
                       self.max_response_bytes)


def _wants_nonce(response: Any, nonces: DPoPNonceStore, token_url: str) -> bool:
    """Remember the response's ``DPoP-Nonce`` (any answer may carry one, §8.2); whether it is
    a ``400 use_dpop_nonce`` that gave a usable nonce to retry with."""
    nonce = nonces.update(token_url, response.headers.get("DPoP-Nonce"))
    if nonce is None or response.status_code != 400:
        return False
    try:
        body = response.json()
    except (ValueError, RecursionError):
        return False
    return isinstance(body, dict) and body.get("error") == "use_dpop_nonce"


@dataclass(frozen=True, kw_only=True, eq=False, repr=False)
class _FetchArguments(TokenRequest):
    session: requests.Session | None = None


@takes(_FetchArguments)
def fetch_token(request: _FetchArguments) -> Token:
    """Request a token with the client-credentials grant and return it.

    Give ``token_url``, or ``issuer`` to look the token endpoint up (RFC 8414; through
    ``metadata_cache`` when given). ``scope`` is a space-separated string or a list;
    ``resource`` (RFC 8707) one URI or several, sent as repeated parameters. ``extra_params``
    adds form parameters (a list value repeats the parameter, e.g. ``{"audience": [...]}``).
    ``private_key`` (for ``private_key_jwt``) may be PEM or a key object; load PEM once with
    :func:`m2mauth.client.assertions.load_private_key` when calling often. ``clock`` (seconds)
    times the token's ``expires_at``; ``session`` is the ``requests.Session`` to use.
    ``dpop_key`` (a :class:`~m2mauth.client.DPoPKey`): send a DPoP proof (RFC 9449) and
    require a DPoP-bound token; a ``400 use_dpop_nonce`` with a ``DPoP-Nonce`` is retried
    once with that nonce (kept in ``dpop_nonces`` when given).

    Raises the :class:`OAuthError` subclass for the server's error code (with ``status``),
    :class:`TransportError` when no usable response arrived, :class:`DiscoveryError` when the
    issuer's metadata is unusable, :class:`~m2mauth.client.DPoPTokenTypeError` when a proof
    was answered with a token that is not DPoP, and ``ValueError`` for inconsistent
    arguments.
    """
    return run(request.flow(), session=request.session)


def check_arguments(
    token_url: str | None, issuer: str | None, client_id: str, client_secret: str | None,
    private_key: object, auth_method: str,
) -> None:
    """``ValueError`` for arguments that cannot make a token request (before any I/O)."""
    check_credentials(client_id, client_secret, private_key, auth_method)
    if (token_url is None) == (issuer is None):
        raise ValueError("give either token_url or issuer, not both or neither")


def check_credentials(client_id: str, client_secret: str | None, private_key: object,
                      auth_method: str) -> None:
    """``ValueError`` for client credentials that ``auth_method`` cannot authenticate with:
    the check of every endpoint a client authenticates at (token, introspection, revocation)."""
    if auth_method not in AUTH_METHODS:
        raise ValueError(f"auth_method must be one of {', '.join(AUTH_METHODS)}")
    if not client_id:
        raise ValueError("client_id is required")
    if auth_method == "private_key_jwt":
        if private_key is None:
            raise ValueError("private_key_jwt needs private_key")
    elif not client_secret:
        raise ValueError(f"{auth_method} needs client_secret")


def form_parameters(
    scope: str | Sequence[str] | None, resource: str | Sequence[str] | None,
    extra_params: Mapping[str, str | Sequence[str]] | None,
) -> tuple[list[tuple[str, str]], list[str]]:
    """The token request's form parameters (without client authentication) and the scopes."""
    scopes = as_list(scope, split=True)
    params: list[tuple[str, str]] = [("grant_type", "client_credentials")]
    if scopes:
        params.append(("scope", " ".join(scopes)))
    params += [("resource", r) for r in as_list(resource, split=False)]
    for name, value in (extra_params or {}).items():
        if name in _RESERVED:
            raise ValueError(f"extra_params may not set {name!r}; use the matching argument")
        params += [(name, v) for v in as_list(value, split=False)]
    return params, scopes


def authenticate(
    params: list[tuple[str, str]], auth_method: str, client_id: str,
    client_secret: str | None, private_key: PrivateKey | str | bytes | None, kid: str | None,
    endpoint: str, now: Callable[[], float],
) -> dict[str, str]:
    """Add the client authentication of ``auth_method`` to ``params``; return the headers.
    ``endpoint`` is the URL the request goes to: a client assertion's ``aud``."""
    headers = {"Accept": "application/json"}
    if auth_method == "client_secret_basic":
        assert client_secret is not None
        headers["Authorization"] = _basic_header(client_id, client_secret)
    elif auth_method == "client_secret_post":
        assert client_secret is not None
        params += [("client_id", client_id), ("client_secret", client_secret)]
    else:
        if auth_method == "private_key_jwt":
            assert private_key is not None
            assertion = private_key_jwt_assertion(client_id, endpoint, private_key, kid=kid,
                                                  clock=now)
        else:
            assert client_secret is not None
            assertion = client_secret_jwt_assertion(client_id, endpoint, client_secret,
                                                    clock=now)
        params += [("client_id", client_id), ("client_assertion_type", ASSERTION_TYPE),
                   ("client_assertion", assertion)]
    return headers


def parse_response(
    response: Any, token_url: str, *, requested_scope: list[str], started: float, now: float,
) -> Token:
    """A :class:`Token` from a response (a flow's :class:`~m2mauth.client._flow.Response`,
    or a ``requests`` or ``httpx`` one: they read alike), or the typed error."""
    status = response.status_code
    try:
        body: Any = response.json()
    except (ValueError, RecursionError):
        body = None
    retry_after = _retry_after(response, now)

    if isinstance(body, dict) and isinstance(body.get("error"), str):
        # An error response (RFC 6749 §5.2); also when mislabelled HTTP 200.
        raise oauth_error(body, status, retry_after)
    if 300 <= status < 400:
        raise TransportError(
            error_description=f"{token_url} answered with a redirect (HTTP {status}); token "
                              "requests are not redirected, since that would resend the "
                              "credentials.",
            status=status,
        )
    if status != 200:
        content_type = response.headers.get("Content-Type", "no content type")
        kind = "an OAuth error" if isinstance(body, dict) else "JSON"
        raise TransportError(
            error_description=f"{token_url} answered HTTP {status} that is not {kind} "
                              f"({content_type}).",
            status=status, retry_after=retry_after,
        )

    if not isinstance(body, dict):
        content_type = response.headers.get("Content-Type", "no content type")
        raise TransportError(
            error_description=f"{token_url} answered HTTP 200 with a body that is not a "
                              f"JSON object ({content_type}).",
            status=status,
        )
    access_token = body.get("access_token")
    token_type = body.get("token_type")
    problems = []
    if not isinstance(access_token, str) or not access_token:
        problems.append("no access_token")
    if not isinstance(token_type, str) or not token_type:
        problems.append("no token_type")
    expires_in = _expires_in(body.get("expires_in"))
    if expires_in is False:
        problems.append("expires_in is not a non-negative integer")
    scope = body.get("scope")
    if scope is not None and not isinstance(scope, str):
        problems.append("scope is not a string")
    if problems:
        raise TransportError(
            error_description=f"Malformed token response from {token_url}: "
                              f"{', '.join(problems)}.",
            status=status,
        )
    assert isinstance(access_token, str) and isinstance(token_type, str)
    assert expires_in is not False
    return Token(
        access_token=access_token,
        token_type=token_type,
        expires_in=expires_in,
        expires_at=None if expires_in is None else started + expires_in,
        scope=scope.split() if isinstance(scope, str) else list(requested_scope),
        raw=body,
    )


def oauth_error(body: dict[str, Any], status: int, retry_after: float | None) -> OAuthError:
    description = body.get("error_description")
    uri = body.get("error_uri")
    return error_class(body["error"])(
        body["error"],
        description if isinstance(description, str) else None,
        uri if isinstance(uri, str) else None,
        status,
        retry_after=retry_after,
    )


def _expires_in(value: object) -> int | Literal[False] | None:
    """``expires_in`` as int, None when absent, False when malformed (some servers send a
    numeric string, which is accepted)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return False
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, float) and math.isfinite(value) and value >= 0:
        return int(value)
    return False

