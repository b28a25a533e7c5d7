"""Typed errors of the client: one class per RFC 6749 §5.2 / RFC 8707 error code, carrying the
code, description and HTTP status as attributes so callers can branch without parsing text."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = [
    "DiscoveryError",
    "InvalidClientError",
    "InvalidGrantError",
    "InvalidRequestError",
    "InvalidScopeError",
    "InvalidTargetError",
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


def _clean(value: object, limit: int = _MAX_TEXT) -> str | None:
    """Server-supplied text made printable and short (no control characters in log lines)."""
    if value is None:
        return None
    text = str(value)
    cleaned = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return cleaned + ("..." if len(text) > limit else "")


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


class OAuthError(Exception):
    """An OAuth 2.0 error response from a token endpoint, or a failure to get one.

    ``error`` is the RFC error code, ``status`` the HTTP status (None when no response arrived),
    ``retry_after`` the seconds a ``Retry-After`` header asked to wait (for retry logic).
    Messages never contain a client secret, private key or token.
    """

    #: The error code this class stands for; instances may carry a different (unknown) code.
    code: str = "oauth_error"

    def __init__(
        self,
        error: str | None = None,
        error_description: str | None = None,
        error_uri: str | None = None,
        status: int | None = None,
        *,
        retry_after: float | None = None,
    ) -> None:
        self.error: str = _clean(error, 100) or self.code
        self.error_description: str | None = _clean(error_description)
        self.error_uri: str | None = _clean(error_uri)
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


class InvalidRequestError(OAuthError):
    """``invalid_request``: missing, repeated or malformed parameter."""

    code = "invalid_request"


class InvalidClientError(OAuthError):
    """``invalid_client``: client authentication failed."""

    code = "invalid_client"


class InvalidGrantError(OAuthError):
    """``invalid_grant``: the grant or assertion is invalid."""

    code = "invalid_grant"


class UnauthorizedClientError(OAuthError):
    """``unauthorized_client``: the client may not use this grant type."""

    code = "unauthorized_client"


class UnsupportedGrantTypeError(OAuthError):
    """``unsupported_grant_type``: the server does not support the grant type."""

    code = "unsupported_grant_type"


class InvalidScopeError(OAuthError):
    """``invalid_scope``: a requested scope is unknown, malformed or not allowed."""

    code = "invalid_scope"


class InvalidTargetError(OAuthError):
    """``invalid_target`` (RFC 8707): a requested resource/audience is not allowed."""

    code = "invalid_target"


class TemporarilyUnavailableError(OAuthError):
    """``temporarily_unavailable``: retryable later."""

    code = "temporarily_unavailable"


class ServerError(OAuthError):
    """``server_error``: the server failed; retryable."""

    code = "server_error"


class TransportError(OAuthError):
    """No usable response: connection failure, timeout, or a body that is not an OAuth
    response (not JSON, or JSON of the wrong shape)."""

    code = "transport_error"


class DiscoveryError(OAuthError):
    """Authorization-server metadata (RFC 8414) cannot be fetched, is malformed, or names a
    different issuer than the one asked for."""

    code = "discovery_error"


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
