"""RFC 9068 access tokens through Authlib's ``JWTBearerTokenGenerator``: its ``generate()``
makes the token response and its hooks supply audience, jti and claims; only the signing step
is m2mauth's (joserfc's default registry refuses PS256 and EdDSA, see
``access_token_generator``).

Authlib's generator API passes no request, so the per-request inputs (audience, lifetime,
the instant from the server's clock) are fixed on a short-lived generator for each token.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from joserfc import jwt
from joserfc.jwk import Key
from joserfc.jws import JWSRegistry
from joserfc.registry import check_registry_header
from joserfc.util import json_b64encode, urlsafe_b64decode, urlsafe_b64encode

from .clients import Client
from .clock import Clock
from .errors import TemporarilyUnavailableError
from .keys import KeyStore
from .signing import CompactSigner, Signers
from .store import StateStore

__all__ = ["ACTIVE_KEY", "IssuedToken", "TokenIssuer", "tampered"]


class _Active:
    def __repr__(self) -> str:
        return "ACTIVE_KEY"


#: ``TokenIssuer.issue(key=...)`` default: the active signing key of the algorithm.
ACTIVE_KEY = _Active()

#: Claims m2mauth sets itself; a client's static claims cannot replace them.
REGISTERED_CLAIMS = frozenset(
    {"iss", "sub", "aud", "exp", "iat", "nbf", "jti", "client_id", "scope", "cnf"}
)


@dataclass(frozen=True)
class IssuedToken:
    """A token response body (RFC 6749 §5.1) and what was put into the token."""

    response: dict[str, Any]
    jti: str
    kid: str | None
    alg: str
    audience: list[str]
    scope: list[str]
    #: The DPoP key's thumbprint the token is bound to (``cnf.jkt``), or None (Bearer).
    jkt: str | None = None

    @property
    def access_token(self) -> str:
        return str(self.response["access_token"])


class _Generator(JWTBearerTokenGenerator):
    """One token's worth of RFC 9068 generator: Authlib drives it, the hooks below supply what
    m2mauth decides (clock, audience, lifetime, static claims), and ``overrides`` let a test
    mint deliberately wrong tokens (a value of None removes an entry)."""

    def __init__(
        self, issuer: str, alg: str, key: Key | None, now: int, lifetime: int,
        audience: list[str], jti: str, overrides: _Overrides | None = None,
        opaque: Callable[[dict[str, Any]], str] | None = None,
        signer: CompactSigner | None = None, jkt: str | None = None,
    ) -> None:
        super().__init__(issuer, alg=alg, expires_generator=lifetime)
        self._jkt = jkt
        self._opaque = opaque
        self._key = key
        self._signer = signer
        self._now = now
        self._lifetime = lifetime
        self._audience = audience
        self._jti = jti
        self._overrides = overrides or _Overrides()

    def get_jwks(self) -> Key | None:
        return self._key

    def get_audiences(self, client, user, scope) -> str | list[str]:
        # RFC 9068 §3: aud is one resource indicator or several.
        return self._audience[0] if len(self._audience) == 1 else list(self._audience)

    def get_allowed_scope(self, client, scope) -> str:
        # The scope is decided before a token is made (the grant checks it against the
        # client; a minted test token may carry any scope, for any client id): Authlib's
        # version re-checks it against the client, a 500 for an unregistered client id.
        return scope or ""

    def get_jti(self, client, grant_type, user, scope) -> str:
        return self._jti

    def get_extra_claims(self, client, grant_type, user, scope) -> dict[str, Any]:
        # Authlib reads time.time(); these override its iat/exp with the server's clock.
        static = {k: v for k, v in client.extra_claims.items() if k not in REGISTERED_CLAIMS}
        claims = {**static, "iat": self._now, "nbf": self._now, "exp": self._now + self._lifetime}
        if self._jkt is not None:  # RFC 9449 section 6.1: bound to the proof's key
            claims["cnf"] = {"jkt": self._jkt}
        return claims

    def access_token_generator(self, client, grant_type, user, scope) -> str:
        # Authlib's version signs through joserfc's default registry, which refuses every
        # algorithm outside joserfc's "recommended" list (PS256 and EdDSA among them) and
        # offers no hook for an allow-list. Same hooks and claims for a client-credentials
        # token (no user), signed with the one algorithm this token is meant to use.
        client_id = client.get_client_id()
        claims = _overlay({
            "iss": self.issuer, "sub": client_id, "client_id": client_id,
            "aud": self.get_audiences(client, user, scope),
            # RFC 9068 §2.2.3: scope when one was granted; an empty one is left out.
            "jti": self.get_jti(client, grant_type, user, scope), "scope": scope or None,
            **self.get_extra_claims(client, grant_type, user, scope),
        }, self._overrides.claims)
        if self._opaque is not None:
            return self._opaque(claims)
        if self._signer is not None and not self._overrides.headers:
            # The token endpoint's path: the header joserfc would get below, precomputed
            # (signing.py says why the bytes are the same).
            return self._signer.sign(claims)
        key = self.get_jwks()
        header = {"alg": self.alg, "typ": "at+jwt"}
        if key is not None:
            header["kid"] = key.kid
        header = _overlay(header, self._overrides.headers)
        if key is None:
            return _unsigned(header, claims)
        algorithms = [header.get("alg", self.alg)]
        if self._overrides.headers:
            # Only a test's header overrides get here: joserfc refuses unregistered header
            # names and any "crit" it does not implement, and a negative test needs exactly
            # such tokens, correctly signed (e.g. an unknown crit a validator must refuse).
            registry = _MintingRegistry(algorithms=algorithms)
            return jwt.encode(header, claims, key, registry=registry, default_type=None)
        # default_type=None: joserfc would put back a typ that a test removed ("JWT").
        return jwt.encode(header, claims, key, algorithms=algorithms, default_type=None)


class _MintingRegistry(JWSRegistry):
    """joserfc's JWS registry that signs headers with unregistered names and any ``crit``:
    for minting deliberately unusual test tokens only; the token endpoint never uses it.
    Registered names must still have their types (a ``kid`` is a string)."""

    def check_header(self, header) -> None:
        check_registry_header(self.header_registry, header)


@dataclass(frozen=True)
class _Overrides:
    claims: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, Any] = field(default_factory=dict)


_NO_OVERRIDES = _Overrides()


def _overlay(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    merged = {**base, **changes}
    return {k: v for k, v in merged.items() if v is not None}


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    # An "alg": "none" token for negative tests, built by hand: joserfc would warn on every
    # call, and the server's signing path must never be able to produce one.
    return f"{json_b64encode(header).decode()}.{json_b64encode(claims).decode()}."


def tampered(token: str) -> str:
    """``token`` with one signature bit flipped: well-formed, but the signature is wrong."""
    head, _, signature = token.rpartition(".")
    if not signature:
        raise ValueError("the token has no signature to tamper with")
    raw = bytearray(urlsafe_b64decode(signature.encode()))
    raw[len(raw) // 2] ^= 0x01
    return f"{head}.{urlsafe_b64encode(bytes(raw)).decode()}"


class TokenIssuer:
    """Issues access tokens for clients of one issuer: signed JWTs, or opaque tokens whose
    claims the state store holds (under the token's hash) for introspection."""

    def __init__(self, issuer: str, keys: KeyStore, clock: Clock, *, algorithm: str,
                 token_lifetime: int, store: StateStore | None = None,
                 token_format: str = "jwt") -> None:  # noqa: S107 - a format, not a secret
        self.issuer = issuer
        self.keys = keys
        self.clock = clock
        self.algorithm = algorithm
        self.token_lifetime = token_lifetime
        self.store = store if store is not None else keys.store
        self.token_format = token_format
        self._signers = Signers()

    def _keep_opaque(self, claims: dict[str, Any]) -> str:
        """A new opaque token for ``claims``: 256 random bits; the store keeps the claims under
        the token's hash until they expire."""
        from .introspection import opaque_key

        token = secrets.token_urlsafe(32)
        if not self.store.add_opaque_token(opaque_key(token), claims, float(claims["exp"]),
                                           self.clock()):
            raise TemporarilyUnavailableError(
                "Too many live opaque tokens; try again when some expire.")
        return token

    def issue(
        self, client: Client, *, scope: list[str], audience: list[str],
        lifetime: int | None = None, claims: Mapping[str, Any] | None = None,
        headers: Mapping[str, Any] | None = None, alg: str | None = None,
        key: Key | _Active | None = ACTIVE_KEY, token_format: str | None = None,
        jkt: str | None = None,
    ) -> IssuedToken:
        """Sign a token for ``client`` with the already-validated ``scope`` and ``audience``.

        ``claims``/``headers`` add or override entries (None removes one), ``alg`` and ``key``
        choose the signature (``key=None`` makes an unsigned ``alg: none`` token): the knobs
        for deliberately bad tokens. The token endpoint uses none of them. ``token_format``:
        "jwt" or "opaque"; default the client's, else the issuer's. ``jkt``: bind the token
        to a DPoP key (RFC 9449: ``cnf.jkt``, ``token_type`` DPoP).
        """
        token_format = token_format or client.settings.token_format or self.token_format
        alg = alg or client.settings.algorithm or self.algorithm
        if lifetime is None:
            lifetime = client.settings.token_lifetime or self.token_lifetime
        if key is ACTIVE_KEY:
            key = self.keys.active(alg).key
        elif key is None:
            alg = "none"
        overrides = (_Overrides(dict(claims or {}), dict(headers or {}))
                     if claims or headers else _NO_OVERRIDES)  # the endpoint: none to build
        jti = secrets.token_urlsafe(16)
        generator = _Generator(
            self.issuer, alg, key, self.clock(), lifetime, audience, jti, overrides,
            opaque=self._keep_opaque if token_format == "opaque" else None,
            signer=self._signers.get(alg, key) if key is not None and not overrides.headers
            else None, jkt=jkt,
        )
        response = generator.generate(
            "client_credentials", client, scope=" ".join(scope), include_refresh_token=False
        )
        if jkt is not None:
            response["token_type"] = "DPoP"  # RFC 9449 section 5
        if token_format == "opaque":
            return IssuedToken(response, jti, None, "opaque", list(audience), list(scope), jkt)
        kid = key.kid if key is not None else None
        return IssuedToken(response, jti, kid, alg, list(audience), list(scope), jkt)
