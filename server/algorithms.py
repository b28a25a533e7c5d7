"""The signing algorithms the server knows, and which keys fit each: the one place for the
algorithm list and the key type ↔ algorithm mapping on the server side."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

__all__ = [
    "ALGORITHMS", "ASSERTION_ALGORITHMS", "ED25519_NAMES", "KEY_TYPES", "fits",
    "generate_private_key", "key_type", "one_of",
]

#: Signing algorithms the server can issue tokens with (and accepts in private_key_jwt).
ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")
#: The two names of one signature: EdDSA on an Ed25519 key. RFC 9864 deprecates the
#: polymorphic "EdDSA" for the fully specified "Ed25519", which clients such as openid-client 6
#: send; tokens are still signed "EdDSA", the name PyJWT and most validators know today.
ED25519_NAMES = ("EdDSA", "Ed25519")
#: Algorithms accepted in private_key_jwt client assertions: ALGORITHMS and RFC 9864's name.
ASSERTION_ALGORITHMS = (*ALGORITHMS, "Ed25519")
#: The JWK key type (RFC 7518 ``kty``) of each algorithm's keys.
KEY_TYPES = {"RS256": "RSA", "PS256": "RSA", "ES256": "EC", "EdDSA": "OKP", "Ed25519": "OKP"}
_MIN_RSA_BITS = 2048


def one_of(value: object, choices: tuple[str, ...] = ALGORITHMS) -> str:
    """The message for a value outside ``choices``."""
    return f"{value!r} is not one of {', '.join(choices)}"


def key_type(key: Any) -> str:
    """``RSA``, ``EC`` or ``OKP`` for a cryptography key object, private or public."""
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return "RSA"
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return "EC"
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return "OKP"
    raise ValueError(f"unsupported key type {type(key).__name__}")


def fits(alg: str, key: Any) -> bool:
    """Whether ``key`` can sign ``alg``: RSA of 2048 bits or more, EC on P-256, Ed25519."""
    try:
        kty = key_type(key)
    except ValueError:
        return False
    if kty != KEY_TYPES.get(alg):
        return False
    if kty == "RSA":
        return bool(key.key_size >= _MIN_RSA_BITS)
    if kty == "EC":
        return isinstance(key.curve, ec.SECP256R1)
    return True


def generate_private_key(alg: str) -> Any:
    """A new cryptography private key for ``alg``."""
    kty = KEY_TYPES.get(alg)
    if kty == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=_MIN_RSA_BITS)
    if kty == "EC":
        return ec.generate_private_key(ec.SECP256R1())
    if kty == "OKP":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unsupported algorithm {alg!r} (supported: {', '.join(ALGORITHMS)})")
