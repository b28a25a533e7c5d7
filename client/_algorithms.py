"""The JWS algorithms the client knows (RFC 7518 §3, RFC 8037) and which key fits which: the
one list the validator's allow-list, the JWKS cache's key parsing and the client assertions'
choice of algorithm are derived from."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

#: An RSA key may be used with any of these (RFC 7518 §3.3, §3.5).
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
#: RFC 7518 §3.4: an EC key's curve fixes its algorithm.
EC_ALGORITHMS: Mapping[str, str] = MappingProxyType(
    {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"})
#: RFC 8037 §3.1: EdDSA, with either curve.
OKP_CURVES = ("Ed25519", "Ed448")
#: The JWK ``crv`` of cryptography's curve names.
CURVE_NAMES: Mapping[str, str] = MappingProxyType(
    {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"})

#: Asymmetric JWS algorithms a JWKS key may be used with.
ASYMMETRIC_ALGORITHMS = frozenset({*RSA_ALGORITHMS, *EC_ALGORITHMS.values(), "EdDSA"})
#: The asymmetric algorithms m2mauth's server signs with: the validator's and the JWKS
#: cache's default allow-list, and the ones client assertions are signed with.
DEFAULT_ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")
#: RFC 7518 §3.2: an HMAC key at least as long as the hash.
HMAC_MIN_BYTES: Mapping[str, int] = MappingProxyType({"HS256": 32, "HS384": 48, "HS512": 64})
HMAC_ALGORITHMS = frozenset(HMAC_MIN_BYTES)


def algorithms_for(kty: object, crv: object) -> frozenset[str]:
    """The algorithms a key of type ``kty`` (and curve ``crv``) can be used with;
    ``ValueError`` saying why for one the client does not support."""
    if kty == "RSA":
        return frozenset(RSA_ALGORITHMS)
    if kty == "EC":
        if not isinstance(crv, str) or crv not in EC_ALGORITHMS:
            raise ValueError(f"unsupported EC curve {crv!r}")
        return frozenset({EC_ALGORITHMS[crv]})
    if kty == "OKP":
        if crv not in OKP_CURVES:
            raise ValueError(f"unsupported OKP curve {crv!r}")
        return frozenset({"EdDSA"})
    raise ValueError(f"unsupported key type {kty!r}")


def signing_algorithm(kty: str, crv: str | None) -> str | None:
    """What m2mauth signs with a key of this type: the first of :data:`DEFAULT_ALGORITHMS`
    it fits (RSA: RS256, EC P-256: ES256, Ed25519: EdDSA); None when it fits none."""
    try:
        fits = algorithms_for(kty, crv)
    except ValueError:
        return None
    return next((alg for alg in DEFAULT_ALGORITHMS if alg in fits), None)
