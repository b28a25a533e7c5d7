"""DPoP proofs for tests (RFC 9449): a valid proof for a request, or one with a chosen
defect – each a proof the token endpoint (and a resource server) must refuse. Signed with
joserfc; the defects joserfc will not produce (``alg: none``, an HMAC "signature" by a
public key) are assembled by hand, as a negative test needs exactly those bytes."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey
from joserfc.jws import JWSRegistry
from joserfc.util import json_b64encode, urlsafe_b64encode

from ..dpop import DPOP_LEEWAY, DPOP_MAX_AGE

__all__ = ["DPOP_DEFECTS", "DPoPKey", "MintedProof", "dpop_key", "mint_proof"]

#: The deliberately bad proofs :func:`mint_proof` makes, by ``defect=`` name.
DPOP_DEFECTS = ("wrong_htm", "wrong_htu", "stale_iat", "future_iat", "replayed_jti",
                "wrong_ath", "other_key", "private_key", "alg_none", "hs256", "wrong_typ")
_ALG_OF = {"EC": "ES256", "OKP": "EdDSA", "RSA": "RS256"}
_KEY_CLASSES = {"EC": ECKey, "OKP": OKPKey, "RSA": RSAKey}
_ALGS_OF_KTY = {"EC": ("ES256",), "OKP": ("EdDSA", "Ed25519"), "RSA": ("RS256", "PS256")}


class _MintingRegistry(JWSRegistry):
    """joserfc's registry with room for a header carrying an RSA ``jwk`` (joserfc caps
    headers at 512 bytes)."""

    max_header_length = 8192
    max_signature_length = 2048


@dataclass(frozen=True)
class DPoPKey:
    """A client's DPoP key: the joserfc private key, its algorithm and thumbprint."""

    key: Key = field(repr=False)
    alg: str
    jkt: str

    @property
    def public_jwk(self) -> dict[str, Any]:
        return dict(self.key.as_dict(private=False))

    @property
    def private_jwk(self) -> dict[str, Any]:
        return dict(self.key.as_dict(private=True))


@dataclass(frozen=True)
class MintedProof:
    """A proof as sent in the ``DPoP`` header, with what went into it."""

    proof: str = field(repr=False)
    jti: str
    jkt: str
    htm: str
    htu: str
    iat: int
    defect: str | None = None
    #: The key whose public part is in the header (reuse it for the next proofs).
    key: DPoPKey | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """The admin API's answer: the proof, its parts, and the key as a private JWK."""
        return {"proof": self.proof, "jti": self.jti, "jkt": self.jkt, "htm": self.htm,
                "htu": self.htu, "iat": self.iat, "defect": self.defect,
                "key": self.key.private_jwk if self.key is not None else None,
                "alg": self.key.alg if self.key is not None else None}


def dpop_key(key: Key | Mapping[str, Any] | None = None, alg: str | None = None) -> DPoPKey:
    """``key`` (a joserfc private key or a private JWK) as a :class:`DPoPKey`; a new P-256
    key (ES256) when None. ValueError says what is wrong with it."""
    if key is None:
        key = ECKey.generate_key("P-256", auto_kid=False)
    elif isinstance(key, Mapping):
        kty = key.get("kty")
        if kty not in _KEY_CLASSES:
            raise ValueError("must be a private JWK of kty EC, OKP or RSA")
        try:
            key = _KEY_CLASSES[kty].import_key(dict(key))
        except (JoseError, ValueError, TypeError) as exc:
            raise ValueError(f"not a usable JWK ({exc})") from None
    if not isinstance(key, (ECKey, OKPKey, RSAKey)) or not key.is_private:
        raise ValueError("must be a private EC, OKP or RSA key")
    kty = key.key_type
    alg = alg or _ALG_OF[kty]
    if alg not in _ALGS_OF_KTY[kty]:
        raise ValueError(f"{alg} does not fit a {kty} key ({', '.join(_ALGS_OF_KTY[kty])})")
    return DPoPKey(key, alg, str(key.thumbprint()))


def _b64(data: bytes) -> str:
    return urlsafe_b64encode(data).decode()


def _json_b64(value: dict[str, Any]) -> str:
    return json_b64encode(value).decode()


def token_hash(token: str) -> str:
    """RFC 9449 section 4.2's ``ath``: base64url of the SHA-256 of the access token."""
    return _b64(hashlib.sha256(token.encode("ascii")).digest())


def mint_proof(key: DPoPKey, *, method: str, url: str, now: int, token: str | None = None,
               nonce: str | None = None, defect: str | None = None,
               previous_jti: str | None = None, claims: Mapping[str, Any] | None = None,
               ) -> MintedProof:
    """A proof for a ``method`` request to ``url`` at ``now`` (the issuer's clock), with
    ``ath`` for ``token`` and ``nonce`` when given; ``defect`` (one of
    :data:`DPOP_DEFECTS`) makes it one the server must refuse (``replayed_jti`` reuses
    ``previous_jti``). ``claims`` add or replace claims (None removes one)."""
    if defect is not None and defect not in DPOP_DEFECTS:
        raise ValueError(f"{defect!r} is not one of {', '.join(DPOP_DEFECTS)}")
    if defect == "replayed_jti" and previous_jti is None:
        raise ValueError("replayed_jti needs an earlier proof (mint one first)")
    htm = method if defect != "wrong_htm" else ("GET" if method != "GET" else "POST")
    htu = url if defect != "wrong_htu" else url.rstrip("/") + "/not-this-endpoint"
    iat = {"stale_iat": now - DPOP_MAX_AGE - 60, "future_iat": now + DPOP_LEEWAY + 60}.get(
        defect or "", now)
    jti = previous_jti if defect == "replayed_jti" and previous_jti else secrets.token_urlsafe(16)
    payload: dict[str, Any] = {"jti": jti, "htm": htm, "htu": htu, "iat": iat}
    if token is not None or defect == "wrong_ath":
        payload["ath"] = token_hash("not-the-token" if defect == "wrong_ath" else token or "")
    if nonce is not None:
        payload["nonce"] = nonce
    for name, value in (claims or {}).items():
        if value is None:
            payload.pop(name, None)
        else:
            payload[name] = value
    header: dict[str, Any] = {"typ": "JWT" if defect == "wrong_typ" else "dpop+jwt",
                              "alg": key.alg,
                              "jwk": key.private_jwk if defect == "private_key" else key.public_jwk}
    proof = _signed(header, payload, key, defect)
    return MintedProof(proof, jti, key.jkt, htm, htu, iat, defect, key)


def _signed(header: dict[str, Any], payload: dict[str, Any], key: DPoPKey,
            defect: str | None) -> str:
    body = json.dumps(payload, separators=(",", ":")).encode()
    if defect == "alg_none":
        return f"{_json_b64({**header, 'alg': 'none'})}.{_b64(body)}."
    if defect == "hs256":
        # Key confusion: an HMAC "signature" keyed with the public JWK's JSON, which a
        # server that let the header's alg pick the verification would accept.
        header = {**header, "alg": "HS256"}
        signing_input = f"{_json_b64(header)}.{_b64(body)}"
        secret = json.dumps(key.public_jwk, separators=(",", ":"), sort_keys=True).encode()
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64(mac)}"
    signer = key.key
    if defect == "other_key":  # same kind of key, not the one in the header
        signer = dpop_key(None if key.key.key_type == "EC" else _fresh(key), key.alg).key
    registry = _MintingRegistry(algorithms=[key.alg])
    with warnings.catch_warnings():  # joserfc's notice on each EdDSA signature
        warnings.simplefilter("ignore")
        return jws.serialize_compact(header, body, signer, registry=registry)


def _fresh(key: DPoPKey) -> Key:
    if key.key.key_type == "OKP":
        return OKPKey.generate_key("Ed25519", auto_kid=False)
    return RSAKey.generate_key(2048, auto_kid=False)
