"""m2mauth's OAuth 2.0 client side, for both ends of a call:

- getting tokens: :func:`fetch_token`, :class:`TokenProvider` (cached, single flight, retries),
  :class:`AsyncTokenProvider`, and the ``requests``/``httpx`` adapters that attach them –
  as Bearer tokens, or DPoP-bound ones with proofs of a :class:`DPoPKey` (RFC 9449);
- checking them in a resource server: :class:`TokenValidator` with its :class:`JWKSCache`
  (DPoP-bound tokens and their proofs with :meth:`TokenValidator.validate_dpop`, judged by
  a :class:`DPoPPolicy`), or by asking the issuer: :class:`IntrospectionValidator`
  (RFC 7662), and :func:`introspect_token` / :func:`revoke_token` (RFC 7009) underneath;
- typed errors: :class:`OAuthError` and one subclass per error code.

Independent of :mod:`m2mauth.server` by design: it never imports it.
"""

import typing

from . import errors
from .assertions import (
    client_secret_jwt_assertion,
    key_algorithm,
    load_private_key,
    private_key_jwt_assertion,
)
from .auth import HttpxBearerAuth, RequestsBearerAuth
from .challenge import Challenge, dpop_nonce_requested, parse_challenges, should_refetch
from .discovery import MetadataCache, discover, metadata_urls
from .dpop import DPOP_KEY_ALGORITHMS, DPoPKey, DPoPNonceStore, DPoPTokenTypeError
from .dpop_validation import (
    DPOP_PROOF_REASONS,
    DPoPNonces,
    DPoPPolicy,
    DPoPProof,
    DPoPProofChecker,
    DPoPReplayCache,
    InvalidDPoPProofError,
    UseDPoPNonceError,
    jwk_thumbprint,
)
from .errors import *  # noqa: F403 - the names errors.__all__ lists, and only those
from .introspection import IntrospectionValidator, introspect_token, revoke_token
from .jwks import JWKSCache
from .provider import TokenCache, TokenProvider
from .retry import RetryPolicy
from .tokens import AUTH_METHODS, Token, fetch_token
from .validator import TokenValidator, ValidatedToken

if typing.TYPE_CHECKING:  # at run time imported on first use, by __getattr__ below
    from .aio import AsyncTokenProvider, afetch_token

__all__ = [
    "AUTH_METHODS",
    "DPOP_KEY_ALGORITHMS",
    "DPOP_PROOF_REASONS",
    "AsyncTokenProvider",
    "Challenge",
    "DPoPKey",
    "DPoPNonceStore",
    "DPoPNonces",
    "DPoPPolicy",
    "DPoPProof",
    "DPoPProofChecker",
    "DPoPReplayCache",
    "DPoPTokenTypeError",
    "HttpxBearerAuth",
    "IntrospectionValidator",
    "InvalidDPoPProofError",
    "JWKSCache",
    "MetadataCache",
    "RequestsBearerAuth",
    "RetryPolicy",
    "Token",
    "TokenCache",
    "TokenProvider",
    "TokenValidator",
    "UseDPoPNonceError",
    "ValidatedToken",
    "afetch_token",
    "client_secret_jwt_assertion",
    "discover",
    "dpop_nonce_requested",
    "fetch_token",
    "introspect_token",
    "jwk_thumbprint",
    "key_algorithm",
    "load_private_key",
    "metadata_urls",
    "parse_challenges",
    "private_key_jwt_assertion",
    "revoke_token",
    "should_refetch",
]
#: Every error class and what goes with them, as errors.py lists them.
__all__ += errors.__all__


def __getattr__(name: str):
    # The asyncio side needs httpx (an optional dependency): imported on first use.
    if name in ("AsyncTokenProvider", "afetch_token"):
        from . import aio

        return getattr(aio, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
