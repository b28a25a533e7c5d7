"""m2mauth's OAuth 2.0 client side: get client-credentials tokens (:func:`fetch_token`), look up
authorization-server metadata (:func:`discover`), and typed errors (:class:`OAuthError`).

Independent of :mod:`m2mauth.server` by design: it never imports it.
"""

from .assertions import (
    client_secret_jwt_assertion,
    key_algorithm,
    load_private_key,
    private_key_jwt_assertion,
)
from .discovery import MetadataCache, discover, metadata_urls
from .errors import (
    DiscoveryError,
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    InvalidTargetError,
    OAuthError,
    ServerError,
    TemporarilyUnavailableError,
    TransportError,
    UnauthorizedClientError,
    UnsupportedGrantTypeError,
    error_class,
)
from .provider import TokenCache, TokenProvider
from .retry import RetryPolicy
from .tokens import AUTH_METHODS, Token, fetch_token

__all__ = [
    "AUTH_METHODS",
    "AsyncTokenProvider",
    "DiscoveryError",
    "InvalidClientError",
    "InvalidGrantError",
    "InvalidRequestError",
    "InvalidScopeError",
    "InvalidTargetError",
    "MetadataCache",
    "OAuthError",
    "RetryPolicy",
    "ServerError",
    "TemporarilyUnavailableError",
    "Token",
    "TokenCache",
    "TokenProvider",
    "TransportError",
    "UnauthorizedClientError",
    "UnsupportedGrantTypeError",
    "afetch_token",
    "client_secret_jwt_assertion",
    "discover",
    "error_class",
    "fetch_token",
    "key_algorithm",
    "load_private_key",
    "metadata_urls",
    "private_key_jwt_assertion",
]


def __getattr__(name: str):
    # The asyncio side needs httpx (an optional dependency): imported on first use.
    if name in ("AsyncTokenProvider", "afetch_token"):
        from . import aio

        return getattr(aio, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# Resource-server side: access-token validation (RFC 9068) and the issuer's JWKS cache.
from .errors import (  # noqa: E402
    INVALID_TOKEN_REASONS,
    InsufficientScopeError,
    InvalidTokenError,
    JWKSError,
)
from .jwks import JWKSCache  # noqa: E402
from .validator import TokenValidator, ValidatedToken  # noqa: E402

__all__ += [
    "INVALID_TOKEN_REASONS",
    "InsufficientScopeError",
    "InvalidTokenError",
    "JWKSCache",
    "JWKSError",
    "TokenValidator",
    "ValidatedToken",
]
