"""RFC 7523 client assertions for ``private_key_jwt`` and ``client_secret_jwt``, made with PyJWT.

Deliberately independent of the server's JOSE stack (Authlib/joserfc): a format mistake on
either side then shows up as a failing end-to-end test instead of being hidden by shared code.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ._algorithms import CURVE_NAMES, DEFAULT_ALGORITHMS, EC_ALGORITHMS, signing_algorithm

__all__ = [
    "ASSERTION_LIFETIME",
    "ASSERTION_TYPE",
    "PrivateKey",
    "client_secret_jwt_assertion",
    "key_algorithm",
    "load_private_key",
    "private_key_jwt_assertion",
]

#: ``client_assertion_type`` for JWT client authentication (RFC 7523 §2.2).
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Seconds an assertion is valid: short, since it is used once, right away.
ASSERTION_LIFETIME = 60

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
Clock = Callable[[], float]


def load_private_key(key: PrivateKey | str | bytes, password: bytes | None = None) -> PrivateKey:
    """A private key object from a PEM string/bytes (unencrypted PKCS#8 or traditional), or
    ``key`` itself if it already is one.

    Parsing an RSA PEM costs tens of milliseconds, so callers that sign often should load the
    key once with this function and pass the object around.
    """
    if isinstance(key, PrivateKey):
        return key
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(key, bytes):
        raise TypeError("private key: expected a PEM string/bytes or a cryptography key object")
    try:
        loaded = serialization.load_pem_private_key(key, password=password)
    except (ValueError, TypeError) as exc:
        # The library's message never includes key material, but keep ours fixed anyway.
        raise ValueError(f"private key: cannot load PEM ({type(exc).__name__})") from None
    if not isinstance(loaded, PrivateKey):
        raise ValueError(f"private key: unsupported key type {type(loaded).__name__}")
    return loaded


def key_algorithm(key: PrivateKey) -> str:
    """The JWS algorithm for a key type: RSA→RS256, EC P-256→ES256, Ed25519→EdDSA (the first
    of the algorithms m2mauth signs with that the key fits)."""
    curve = crv = None
    if isinstance(key, rsa.RSAPrivateKey):
        kty = "RSA"
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        kty, curve = "EC", key.curve.name
        crv = CURVE_NAMES.get(curve)
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        kty, crv = "OKP", "Ed25519"
    else:
        raise ValueError(f"private key: unsupported key type {type(key).__name__}")
    alg = signing_algorithm(kty, crv)
    if alg is None:  # only a curve can miss: every RSA and Ed25519 key fits
        usable = ", ".join(c for c, a in EC_ALGORITHMS.items() if a in DEFAULT_ALGORITHMS)
        raise ValueError(f"private key: unsupported EC curve {curve} (use {usable})")
    return alg


def _claims(client_id: str, audience: str, clock: Clock | None, lifetime: int) -> dict[str, Any]:
    now = int((clock or time.time)())
    return {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": now,
        "exp": now + lifetime,
        "jti": secrets.token_urlsafe(16),
    }


def private_key_jwt_assertion(
    client_id: str,
    audience: str,
    private_key: PrivateKey | str | bytes,
    *,
    kid: str | None = None,
    clock: Clock | None = None,
    lifetime: int = ASSERTION_LIFETIME,
) -> str:
    """A ``private_key_jwt`` assertion: iss = sub = ``client_id``, aud = ``audience`` (the token
    endpoint URL), short exp, unique jti; signed with ``private_key`` (alg from its type)."""
    key = load_private_key(private_key)
    headers = {"kid": kid} if kid else None
    return jwt.encode(_claims(client_id, audience, clock, lifetime), key,
                      algorithm=key_algorithm(key), headers=headers)


def client_secret_jwt_assertion(
    client_id: str,
    audience: str,
    client_secret: str | bytes,
    *,
    clock: Clock | None = None,
    lifetime: int = ASSERTION_LIFETIME,
) -> str:
    """A ``client_secret_jwt`` assertion: the same claims, HMAC-SHA256 with the client secret.

    PyJWT warns (``InsecureKeyLengthWarning``) when the secret is shorter than 32 bytes; the
    secret is the server's choice, so the warning is left for the user to see or filter.
    """
    if not client_secret:
        raise ValueError("client_secret_jwt needs a client secret")
    key = client_secret.encode("utf-8") if isinstance(client_secret, str) else client_secret
    return jwt.encode(_claims(client_id, audience, clock, lifetime), key, algorithm="HS256")
