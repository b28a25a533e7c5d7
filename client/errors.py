"""Typed errors of the client: one class per RFC 6749 §5.2 / RFC 8707 error code, carrying the
code, description and HTTP status as attributes so callers can branch without parsing text.

A class names its code in its header (``class InvalidScopeError(OAuthError,
code="invalid_scope")``): one that only stands for a code is its name, code and docstring –
a real class statement, so type checkers, ``except`` clauses and pickling see it as written."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from ._untrusted import printable

__all__ = [
    "INVALID_TOKEN_REASONS",
    "DiscoveryError",
    "InsufficientScopeError",
    "IntrospectionError",
    "InvalidClientError",
    "InvalidGrantError",
    "InvalidRequestError",
    "InvalidScopeError",
    "InvalidTargetError",
    "InvalidTokenError",
    "JWKSError",
    "OAuthError",
    "ServerError",
    "TemporarilyUnavailableError",
    "TransportError",
    "UnauthorizedClientError",
    "UnsupportedGrantTypeError",
    "error_class",
]

#: Longest server-supplied text kept in a message; a hostile or broken server could otherwise
#: flood logs with a huge description.
_MAX_TEXT = 300


def root_cause(exc: BaseException) -> str:
    """The root cause of a network failure in a few words (e.g. 'Connection refused'), for
    messages: library exception texts can be long and name internals."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return str(current.strerror)
        nested = getattr(current, "reason", None)
        if isinstance(nested, BaseException):
            current = nested
            continue
        args_exc = next((a for a in current.args if isinstance(a, BaseException)), None)
        current = args_exc or current.__cause__ or current.__context__
    return type(exc).__name__


def transport_error(exc: BaseException, url: str, *, timeout: float, timed_out: bool,
                    fetching: str | None = None) -> TransportError:
    """The :class:`TransportError` for a request to ``url`` that got no response: ``exc``, the
    HTTP library's exception, is a timeout (``timed_out``) or another failure to connect.
    ``fetching`` names what was being fetched, for the message (else it is a request to
    ``url``). Raise it ``from exc``."""
    if fetching is None:
        doing, failed = f"waiting for {url}", f"Cannot reach {url}"
    else:
        doing, failed = f"fetching {fetching} from {url}", f"Cannot fetch {fetching} from {url}"
    if timed_out:
        return TransportError(error_description=f"Timed out after {timeout} s {doing}.")
    return TransportError(error_description=f"{failed}: {root_cause(exc)}.")


def again(error: OAuthError, note: str | None = None) -> OAuthError:
    """A copy of ``error`` to raise in another caller (one exception object raised in several
    threads would collect all their tracebacks), with ``note`` added to its description."""
    twin = copy.copy(error)
    twin.__cause__ = error.__cause__  # the network failure underneath, if any
    if note:
        twin.error_description = f"{error.error_description or error.error} ({note})"
    return twin


class OAuthError(Exception):
    """An OAuth 2.0 error response from a token endpoint, or a failure to get one.

    ``error`` is the RFC error code, ``status`` the HTTP status (None when no response arrived),
    ``retry_after`` the seconds a ``Retry-After`` header asked to wait (for retry logic).
    Messages never contain a client secret, private key or token.
    """

    #: The error code this class stands for; instances may carry a different (unknown) code.
    #: A subclass names its own in its header: ``class X(OAuthError, code="x")``.
    code: str = "oauth_error"

    def __init_subclass__(cls, code: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code

    def __init__(
        self,
        error: str | None = None,
        error_description: str | None = None,
        error_uri: str | None = None,
        status: int | None = None,
        *,
        retry_after: float | None = None,
    ) -> None:
        self.error: str = printable(error, 100) or self.code
        self.error_description: str | None = printable(error_description, _MAX_TEXT)
        self.error_uri: str | None = printable(error_uri, _MAX_TEXT)
        self.status: int | None = status
        self.retry_after: float | None = retry_after
        #: How many requests were made before this error was raised (retries give up > 1).
        self.attempts: int = 1
        super().__init__(self.error, self.error_description, self.error_uri, status)

    def __str__(self) -> str:
        text = self.error
        if self.error_description:
            text += f": {self.error_description}"
        if self.status is not None:
            text += f" (HTTP {self.status})"
        if self.attempts > 1:
            text += f" [gave up after {self.attempts} attempts]"
        return text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(error={self.error!r}, "
            f"error_description={self.error_description!r}, status={self.status!r})"
        )


class InvalidRequestError(OAuthError, code="invalid_request"):
    """``invalid_request``: missing, repeated or malformed parameter."""


class InvalidClientError(OAuthError, code="invalid_client"):
    """``invalid_client``: client authentication failed."""


class InvalidGrantError(OAuthError, code="invalid_grant"):
    """``invalid_grant``: the grant or assertion is invalid."""


class UnauthorizedClientError(OAuthError, code="unauthorized_client"):
    """``unauthorized_client``: the client may not use this grant type."""


class UnsupportedGrantTypeError(OAuthError, code="unsupported_grant_type"):
    """``unsupported_grant_type``: the server does not support the grant type."""


class InvalidScopeError(OAuthError, code="invalid_scope"):
    """``invalid_scope``: a requested scope is unknown, malformed or not allowed."""


class InvalidTargetError(OAuthError, code="invalid_target"):
    """``invalid_target`` (RFC 8707): a requested resource/audience is not allowed."""


class TemporarilyUnavailableError(OAuthError, code="temporarily_unavailable"):
    """``temporarily_unavailable``: retryable later."""


class ServerError(OAuthError, code="server_error"):
    """``server_error``: the server failed; retryable."""


class TransportError(OAuthError, code="transport_error"):
    """No usable response: connection failure, timeout, or a body that is not an OAuth
    response (not JSON, or JSON of the wrong shape)."""


class DiscoveryError(OAuthError, code="discovery_error"):
    """Authorization-server metadata (RFC 8414) cannot be fetched, is malformed, or names a
    different issuer than the one asked for."""


_BY_CODE: Mapping[str, type[OAuthError]] = MappingProxyType({
    cls.code: cls
    for cls in (
        InvalidRequestError, InvalidClientError, InvalidGrantError, UnauthorizedClientError,
        UnsupportedGrantTypeError, InvalidScopeError, InvalidTargetError,
        TemporarilyUnavailableError, ServerError,
    )
})


def error_class(error: str | None) -> type[OAuthError]:
    """The exception class for an RFC error code; :class:`OAuthError` for unknown codes."""
    return _BY_CODE.get(error or "", OAuthError)


# -- resource-server side (RFC 6750 §3.1) ---------------------------------------------------

#: Why :class:`InvalidTokenError` was raised: ``exc.reason`` is one of these.
INVALID_TOKEN_REASONS = frozenset({
    "malformed",          # not a compact JWS of three base64url segments, bad JSON, bad header
    "too_large",          # longer than the validator's max_token_bytes (checked first)
    "bad_signature",      # the signature does not verify with the issuer's key
    "unknown_key",        # no key with the token's kid in the issuer's JWKS (or it was retired)
    "key_mismatch",       # the kid names a key of another type/curve/alg than the token's alg
    "algorithm_not_allowed",  # alg "none", HMAC without a configured secret, or off the list
    "unsupported_crit",   # a "crit" header (RFC 7515 §4.1.11) the validator does not implement
    "wrong_type",         # typ is not at+jwt (an ID token or another JWT), or is missing
    "expired",            # exp is in the past by more than the leeway
    "not_yet_valid",      # nbf or iat is in the future by more than the leeway
    "wrong_issuer",       # iss is not exactly the configured issuer
    "wrong_audience",     # aud does not contain this API's identifier
    "missing_claim",      # a claim RFC 9068 §2.2 requires is absent
    "invalid_claim",      # a claim has the wrong JSON type (e.g. exp as a string)
    "inactive",           # the issuer's introspection endpoint answered active: false
                          # (RFC 7662: expired, revoked, unknown, not its own – it says no more)
})


class InvalidTokenError(OAuthError, code="invalid_token"):
    """RFC 6750 ``invalid_token`` (HTTP 401): the bearer token cannot be accepted.

    ``reason`` is a machine-readable cause from :data:`INVALID_TOKEN_REASONS`;
    ``error_description`` a short human text safe for a ``WWW-Authenticate`` header (no
    quotes, backslashes or control characters; never the token itself); ``claim`` names
    the claim concerned, when there is one.
    """

    def __init__(self, reason: str, description: str | None = None, *,
                 claim: str | None = None) -> None:
        if reason not in INVALID_TOKEN_REASONS:
            raise ValueError(f"unknown invalid_token reason {reason!r}")
        super().__init__(self.code, description or reason.replace("_", " "), status=401)
        self.reason = reason
        self.claim = claim

    def __reduce__(self):  # pickling/copying: the constructor's arguments differ from .args
        return (type(self), (self.reason, self.error_description), {"claim": self.claim})

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(reason={self.reason!r}, "
                f"error_description={self.error_description!r})")


class InsufficientScopeError(OAuthError, code="insufficient_scope"):
    """RFC 6750 ``insufficient_scope`` (HTTP 403): a valid token without the scopes this
    request needs. ``required`` are all scopes the resource asked for (what a
    ``WWW-Authenticate`` ``scope="..."`` attribute lists), ``granted`` the token's,
    ``missing`` the required ones it lacks. ``scope`` is ``required`` space-separated."""

    def __init__(self, required: tuple[str, ...] | list[str],
                 granted: tuple[str, ...] | list[str] | frozenset[str]) -> None:
        self.required: tuple[str, ...] = tuple(required)
        self.granted: tuple[str, ...] = tuple(sorted(granted))
        have = set(self.granted)
        self.missing: tuple[str, ...] = tuple(s for s in self.required if s not in have)
        self.scope: str = " ".join(self.required)
        shown = " ".join(self.missing)
        super().__init__(self.code, f"the token lacks scope {printable(shown, 200)}", status=403)

    def __reduce__(self):
        return (type(self), (self.required, self.granted))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(required={self.required!r}, "
                f"granted={self.granted!r})")


class JWKSError(OAuthError, code="jwks_unavailable"):
    """The issuer's signing keys (JWKS) cannot be had: the fetch failed, or the document is
    malformed, and no earlier key set may still be used (or a kid the cached set lacks could
    not be looked up). Not the token's fault: a resource server answers 503, not 401."""


class IntrospectionError(OAuthError, code="introspection_failed"):
    """The issuer's introspection endpoint (RFC 7662) gave no usable answer, and no cached one
    may stand in: it could not be reached or timed out, answered 5xx or a malformed body, or
    refused this resource server's own credentials (``error`` is then the code it answered:
    ``invalid_client``, ``unauthorized_client`` ...; ``status`` its HTTP status; the error
    underneath is ``__cause__``). Not the token's fault: a resource server answers 503."""
