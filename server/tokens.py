"""RFC 9068 access tokens, made by Authlib's ``JWTBearerTokenGenerator`` through its hooks.

Authlib's generator API passes no request, so the per-request inputs (audience, lifetime,
the instant from the server's clock) are fixed on a short-lived generator for each token.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from joserfc import jwt
from joserfc.jwk import KeySet

from .clients import Client
from .clock import Clock
from .keys import KeyStore

__all__ = ["IssuedToken", "TokenIssuer"]

#: Claims m2mauth sets itself; a client's static claims cannot replace them.
REGISTERED_CLAIMS = frozenset(
    {"iss", "sub", "aud", "exp", "iat", "nbf", "jti", "client_id", "scope"}
)


@dataclass(frozen=True)
class IssuedToken:
    """A token response body (RFC 6749 §5.1) and what was put into the token."""

    response: dict[str, Any]
    jti: str
    kid: str
    alg: str
    audience: list[str]
    scope: list[str]

    @property
    def access_token(self) -> str:
        return str(self.response["access_token"])


class _Generator(JWTBearerTokenGenerator):
    """One token's worth of RFC 9068 generator: Authlib builds the claims and signs, the
    hooks below supply what m2mauth decides (clock, audience, lifetime, static claims)."""

    def __init__(
        self, issuer: str, alg: str, keyset: KeySet, now: int, lifetime: int,
        audience: list[str], jti: str,
    ) -> None:
        super().__init__(issuer, alg=alg, expires_generator=lifetime)
        self._keyset = keyset
        self._now = now
        self._lifetime = lifetime
        self._audience = audience
        self._jti = jti

    def get_jwks(self) -> KeySet:
        return self._keyset

    def get_audiences(self, client, user, scope) -> str | list[str]:
        # RFC 9068 §3: aud is one resource indicator or several.
        return self._audience[0] if len(self._audience) == 1 else list(self._audience)

    def get_jti(self, client, grant_type, user, scope) -> str:
        return self._jti

    def get_extra_claims(self, client, grant_type, user, scope) -> dict[str, Any]:
        # Authlib reads time.time(); these override its iat/exp with the server's clock.
        static = {k: v for k, v in client.extra_claims.items() if k not in REGISTERED_CLAIMS}
        return {**static, "iat": self._now, "nbf": self._now, "exp": self._now + self._lifetime}

    def access_token_generator(self, client, grant_type, user, scope) -> str:
        # Authlib's version signs through joserfc's default registry, which refuses every
        # algorithm outside joserfc's "recommended" list (PS256 and EdDSA among them) and
        # offers no hook for an allow-list. Same hooks and claims for a client-credentials
        # token (no user), signed with the one algorithm this token is meant to use.
        client_id = client.get_client_id()
        claims = {
            "iss": self.issuer, "sub": client_id, "client_id": client_id,
            "aud": self.get_audiences(client, user, scope),
            "jti": self.get_jti(client, grant_type, user, scope), "scope": scope,
            **self.get_extra_claims(client, grant_type, user, scope),
        }
        header = {"alg": self.alg, "typ": "at+jwt"}
        return jwt.encode(header, claims, self.get_jwks(), algorithms=[self.alg])


class TokenIssuer:
    """Issues signed access tokens for clients of one issuer."""

    def __init__(self, issuer: str, keys: KeyStore, clock: Clock, *, algorithm: str,
                 token_lifetime: int) -> None:
        self.issuer = issuer
        self.keys = keys
        self.clock = clock
        self.algorithm = algorithm
        self.token_lifetime = token_lifetime

    def issue(
        self, client: Client, *, scope: list[str], audience: list[str],
        lifetime: int | None = None,
    ) -> IssuedToken:
        """Sign a token for ``client`` with the already-validated ``scope`` and ``audience``."""
        alg = client.settings.algorithm or self.algorithm
        lifetime = lifetime or client.settings.token_lifetime or self.token_lifetime
        keyset = self.keys.signing_keyset(alg)
        jti = secrets.token_urlsafe(16)
        generator = _Generator(
            self.issuer, alg, keyset, self.clock(), lifetime, audience, jti
        )
        response = generator.generate(
            "client_credentials", client, scope=" ".join(scope), include_refresh_token=False
        )
        kid = str(keyset.keys[0].kid)
        return IssuedToken(response, jti, kid, alg, list(audience), list(scope))
