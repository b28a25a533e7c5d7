"""DPoP proofs at the token endpoint (RFC 9449): the §4.3 checks of a ``DPoP`` header, the
server nonces of §8, and the errors of §5 (``invalid_dpop_proof``, ``use_dpop_nonce``).

The checks run in the RFC's order, one small function per concern; joserfc verifies the
signature, everything around it (the header's bounds, the allow-list, the shape of the
``jwk``, the claims) is checked here because no library checks a DPoP proof: Authlib has no
DPoP support (its PR #808 is open) and joserfc knows only JWS/JWT in general.

Time is the issuer's clock (the lab moves it): a proof's ``iat`` may be at most
:data:`DPOP_MAX_AGE` seconds old and :data:`DPOP_LEEWAY` seconds ahead. Each ``jti`` is kept
in the store's replay cache (the client-assertion one, in a namespace of its own per client,
bounded per client) until the proof would be too old anyway. Nonces are an HMAC of the time
window (:data:`NONCE_WINDOW` seconds) under a secret kept in the store, so every process
sharing the store issues and accepts the same ones; the current and the previous window's
nonce are accepted.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import math
import re
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from authlib.oauth2.rfc6749 import OAuth2Error
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.util import urlsafe_b64decode, urlsafe_b64encode

from .algorithms import KEY_TYPES, fits
from .clock import Clock
from .store import StateStore
from .verification import QuietJWSRegistry

__all__ = [
    "DPOP_ALGORITHMS",
    "DPOP_LEEWAY",
    "DPOP_MAX_AGE",
    "MAX_JTI_CHARS",
    "MAX_PROOF_BYTES",
    "NONCE_WINDOW",
    "DPoPGrantExtension",
    "DPoPProof",
    "DPoPVerifier",
    "InvalidDPoPProofError",
    "UseDPoPNonceError",
    "proof_header",
    "same_htu",
]

#: Asymmetric algorithms a proof may be signed with (``dpop_signing_alg_values_supported``):
#: the server's algorithms and RFC 9864's ``Ed25519``; never ``none``, never an HMAC.
DPOP_ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA", "Ed25519")
#: Largest ``DPoP`` header accepted, checked before anything is decoded (an RSA-4096 proof
#: is about 2.5 KiB).
MAX_PROOF_BYTES = 8 * 1024
#: Longest ``jti`` kept in the replay cache (RFC 9449 §4.2 suggests 96 random bits or more).
MAX_JTI_CHARS = 256
#: How old a proof's ``iat`` may be, in seconds of the issuer's clock.
DPOP_MAX_AGE = 60
#: How far ahead of the issuer's clock a proof's ``iat`` may be (the client's clock skew).
DPOP_LEEWAY = 5
#: Seconds one nonce window lasts; a nonce is accepted in its window and the next.
NONCE_WINDOW = 60
#: The store's value names: the nonce secret, and the lab's run-time nonce switch.
NONCE_SECRET = "dpop_nonce_secret"
NONCE_SWITCH = "dpop_nonce"

#: JWK members that only a private (or symmetric) key has (RFC 7518 §6.2.2, 6.3.2, 6.4.1;
#: RFC 8037 §2).
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_CURVES = {"ES256": ("EC", "P-256"), "EdDSA": ("OKP", "Ed25519"),
           "Ed25519": ("OKP", "Ed25519")}
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")


class _ProofRegistry(QuietJWSRegistry):
    """joserfc's JWS registry with room for a proof's header: joserfc caps a header at 512
    bytes, and a header carrying an RSA-2048 ``jwk`` is about 600 (the whole proof is
    bounded by MAX_PROOF_BYTES before this)."""

    max_header_length = 4096
    max_signature_length = 1024  # RSA-4096 signatures are 683 base64url characters


_REGISTRY = _ProofRegistry(algorithms=list(DPOP_ALGORITHMS))
_KEY_CLASSES = {"RSA": RSAKey, "EC": ECKey, "OKP": OKPKey}


class InvalidDPoPProofError(OAuth2Error):
    """RFC 9449 §5 and §7.1: the DPoP proof is missing, malformed or fails a check."""

    error = "invalid_dpop_proof"
    status_code = 400


class UseDPoPNonceError(OAuth2Error):
    """RFC 9449 §8: the proof must carry the server's current nonce; the answer gives one
    in a ``DPoP-Nonce`` header."""

    error = "use_dpop_nonce"
    status_code = 400

    def __init__(self, nonce: str, description: str) -> None:
        super().__init__(description)
        self.nonce = nonce

    def get_headers(self) -> list[tuple[str, str]]:
        return [*super().get_headers(), ("DPoP-Nonce", self.nonce)]


@dataclass(frozen=True)
class DPoPProof:
    """A verified proof: its key's RFC 7638 thumbprint (``cnf.jkt``), its ``jti`` and
    ``alg``, and the public key as a JWK."""

    jkt: str
    jti: str
    alg: str
    jwk: Mapping[str, Any]


def proof_header(headers: Mapping[str, str]) -> str | None:
    """The one ``DPoP`` header's value, None without one. Repeated headers arrive joined
    with commas (WSGI servers join repeated fields), which no compact JWS contains."""
    value = headers.get("DPoP")
    if value is None:
        return None
    if "," in value:
        raise InvalidDPoPProofError("Send exactly one DPoP header (RFC 9449 section 4.3).")
    return value.strip()


def same_htu(htu: str, url: str) -> bool:
    """Whether ``htu`` names ``url`` (RFC 9449 §4.3 step 9): query and fragment ignored,
    scheme and host compared without case, percent-encoding normalised, a default port the
    same as none (RFC 3986 §6.2.2-6.2.3; dot segments are not removed)."""
    normal = _normal_url(url)
    return normal is not None and _normal_url(htu) == normal


def _normal_url(url: str) -> tuple[str, str, int | None, str] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    # Userinfo makes another URI (RFC 3986 section 3.2): never the request's.
    if scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        return None
    if port == {"http": 80, "https": 443}[scheme]:
        port = None
    return scheme, parts.hostname.lower(), port, _PERCENT.sub(_unescape, parts.path) or "/"


def _unescape(match: re.Match[str]) -> str:
    # RFC 3986 section 6.2.2.1-6.2.2.2: %xx of an unreserved character is that character,
    # any other %xx is compared in upper case.
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else "%" + match.group(1).upper()


def _b64_json(segment: str, what: str) -> dict[str, Any]:
    try:
        raw = urlsafe_b64decode(segment.encode("ascii"))  # _split checked the alphabet
        value = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        raise InvalidDPoPProofError(f"The DPoP proof's {what} is not base64url JSON.") from None
    if not isinstance(value, dict):
        raise InvalidDPoPProofError(f"The DPoP proof's {what} is not a JSON object.")
    return value


def _split(proof: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a compact JWS of bounded size, not yet verified."""
    if len(proof) > MAX_PROOF_BYTES:
        raise InvalidDPoPProofError(f"The DPoP proof is longer than {MAX_PROOF_BYTES} bytes.")
    parts = proof.split(".")
    if len(parts) != 3 or not all(_B64URL.fullmatch(p) for p in parts[:2]) or \
            (parts[2] and not _B64URL.fullmatch(parts[2])):
        raise InvalidDPoPProofError("The DPoP proof is not a compact JWS (RFC 9449 section 4.2).")
    return _b64_json(parts[0], "header"), _b64_json(parts[1], "payload")


def _check_typ(header: Mapping[str, Any]) -> None:
    if header.get("typ") != "dpop+jwt":
        raise InvalidDPoPProofError("The DPoP proof's typ must be dpop+jwt.")


def _check_no_extensions(header: Mapping[str, Any]) -> None:
    # joserfc honours RFC 7797 (crit b64: false) and then verifies the payload segment as
    # raw bytes, while the claims here are that segment decoded: a proof's payload is its
    # JSON claims, so no critical extension (and no b64) is accepted.
    if "crit" in header or "b64" in header:
        raise InvalidDPoPProofError(
            "The DPoP proof's header must not have crit or b64 (no JWS extensions).")


def _check_alg(header: Mapping[str, Any]) -> str:
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in DPOP_ALGORITHMS:
        raise InvalidDPoPProofError(
            "The DPoP proof's alg must be an asymmetric algorithm, one of "
            f"{', '.join(DPOP_ALGORITHMS)} (never none or an HMAC).")
    return alg


def _check_jwk(header: Mapping[str, Any], alg: str) -> dict[str, Any]:
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        raise InvalidDPoPProofError("The DPoP proof's header has no jwk (a public key).")
    if _PRIVATE_MEMBERS & set(jwk):
        raise InvalidDPoPProofError("The DPoP proof's jwk holds private or symmetric key "
                                    "material; send the public key only.")
    kty = jwk.get("kty")
    if kty != KEY_TYPES[alg]:
        raise InvalidDPoPProofError(f"The DPoP proof's jwk is not a key for {alg}.")
    curve = _CURVES.get(alg)
    if curve is not None and jwk.get("crv") != curve[1]:
        raise InvalidDPoPProofError(f"The DPoP proof's jwk is not a {curve[1]} key.")
    return jwk


def _import_public(jwk: dict[str, Any], alg: str) -> Any:
    try:
        key = _KEY_CLASSES[KEY_TYPES[alg]].import_key(jwk)
    except (JoseError, ValueError, TypeError, KeyError):
        raise InvalidDPoPProofError("The DPoP proof's jwk is not a valid public key.") from None
    if not fits(alg, key.raw_value):  # the server's own rule: RSA of 2048 bits or more
        raise InvalidDPoPProofError(
            f"The DPoP proof's jwk is too weak for {alg} (RSA keys need 2048 bits or more).")
    return key


def _check_signature(proof: str, key: Any, alg: str) -> None:
    try:
        jws.deserialize_compact(proof, key, algorithms=[alg], registry=_REGISTRY)
    except (JoseError, ValueError, TypeError):
        raise InvalidDPoPProofError(
            "The DPoP proof's signature does not verify with its jwk.") from None


def _check_jti(claims: Mapping[str, Any]) -> str:
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_CHARS:
        raise InvalidDPoPProofError(
            f"The DPoP proof needs a jti: a string of 1 to {MAX_JTI_CHARS} characters.")
    return jti


def _check_htm(claims: Mapping[str, Any], method: str) -> None:
    if claims.get("htm") != method:
        raise InvalidDPoPProofError(f"The DPoP proof's htm must be {method}.")


def _check_htu(claims: Mapping[str, Any], url: str) -> None:
    htu = claims.get("htu")
    if not isinstance(htu, str) or len(htu) > MAX_PROOF_BYTES or not same_htu(htu, url):
        raise InvalidDPoPProofError(f"The DPoP proof's htu must be {url}.")


def _check_iat(claims: Mapping[str, Any], now: float, max_age: int, leeway: int) -> float:
    iat = claims.get("iat")
    if not isinstance(iat, (int, float)) or isinstance(iat, bool) or not _finite(iat):
        raise InvalidDPoPProofError("The DPoP proof needs a numeric iat.")
    if iat < now - max_age:
        raise InvalidDPoPProofError(
            f"The DPoP proof is too old: its iat is more than {max_age} s ago.")
    if iat > now + leeway:
        raise InvalidDPoPProofError("The DPoP proof's iat is in the future.")
    return float(iat)


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


class DPoPVerifier:
    """The issuer's DPoP checks and nonces, over its clock and its store."""

    def __init__(self, *, clock: Clock, store: StateStore, require_nonce: bool = False,
                 max_age: int = DPOP_MAX_AGE, leeway: int = DPOP_LEEWAY) -> None:
        self.clock = clock
        self.store = store
        #: The issuer's setting (``dpop_nonce``); the lab may switch it at run time.
        self.require_nonce_setting = require_nonce
        self.max_age = max_age
        self.leeway = leeway

    # -- nonces (RFC 9449 section 8) ----------------------------------------------------

    def nonce_required(self) -> bool:
        """Whether proofs need a nonce now: the lab's run-time switch, else the setting."""
        switch = self.store.issuer_value(NONCE_SWITCH)
        if switch is None:
            return self.require_nonce_setting
        return switch == "on"

    def set_nonce_required(self, required: bool | None) -> None:
        """Require nonces (True), not (False), or as the setting says (None), in every
        process sharing the store."""
        self.store.set_issuer_value(
            NONCE_SWITCH, None if required is None else ("on" if required else "off"))

    def _secret(self) -> bytes:
        secret = self.store.issuer_value(NONCE_SECRET)
        if secret is None:
            secret = self.store.set_issuer_value(NONCE_SECRET, secrets.token_urlsafe(32),
                                                 only_if_absent=True)
        return str(secret).encode()

    def _nonce_for(self, window: int, secret: bytes) -> str:
        mac = hmac.new(secret, f"m2mauth dpop nonce {window}".encode(), hashlib.sha256)
        tag = urlsafe_b64encode(mac.digest()[:18]).decode()
        return f"{window}.{tag}"

    def current_nonce(self) -> str:
        """The nonce of the current window (what a ``DPoP-Nonce`` header gives)."""
        return self._nonce_for(int(self.clock.now() // NONCE_WINDOW), self._secret())

    def nonce_is_current(self, nonce: object) -> bool:
        """Whether ``nonce`` is this window's or the previous one's (constant time)."""
        if not isinstance(nonce, str) or len(nonce) > 64:
            return False
        window_text, _, _ = nonce.partition(".")
        if not window_text.isdigit() or not window_text.isascii():
            return False
        window = int(window_text)
        current = int(self.clock.now() // NONCE_WINDOW)
        if window not in (current, current - 1):
            return False
        return hmac.compare_digest(nonce.encode(), self._nonce_for(window, self._secret()).encode())

    # -- proofs (RFC 9449 section 4.3) --------------------------------------------------

    def verify(self, proof: str, *, method: str, url: str, client_id: str,
               nonce_required: bool | None = None) -> DPoPProof:
        """Check ``proof`` for a ``method`` request to ``url`` by ``client_id`` (whose
        replay-cache share keeps the jti); ``nonce_required`` None: as :meth:`nonce_required`
        says. A token-endpoint proof has no ``ath`` to check (no access token is presented).
        Raises :class:`InvalidDPoPProofError` or :class:`UseDPoPNonceError`."""
        header, claims = _split(proof)
        _check_typ(header)
        _check_no_extensions(header)
        alg = _check_alg(header)
        jwk = _check_jwk(header, alg)
        key = _import_public(jwk, alg)
        _check_signature(proof, key, alg)
        jti = _check_jti(claims)
        _check_htm(claims, method)
        _check_htu(claims, url)
        now = self.clock.now()
        iat = _check_iat(claims, now, self.max_age, self.leeway)
        if nonce_required is None:
            nonce_required = self.nonce_required()
        if nonce_required and not self.nonce_is_current(claims.get("nonce")):
            raise UseDPoPNonceError(
                self.current_nonce(),
                "The DPoP proof must carry the nonce of the DPoP-Nonce header."
                if "nonce" not in claims else "The DPoP proof's nonce is stale or unknown.")
        # Kept until the proof is too old anyway; a namespace no client id can take (ids
        # are printable ASCII), so proofs and assertions never collide.
        if not self.store.remember_jti(f"dpop\n{client_id}", jti,
                                       iat + self.max_age + self.leeway, now):
            raise InvalidDPoPProofError("The DPoP proof's jti was used before (a replay).")
        # _check_jwk refused private members: the header's jwk is the public key.
        return DPoPProof(jkt=str(key.thumbprint()), jti=jti, alg=alg, jwk=jwk)


class DPoPGrantExtension:
    """An Authlib grant extension (``register_grant(grant, [DPoPGrantExtension(...)])``):
    after the grant's ``validate_token_request`` (the client authenticated), the request's
    proof is checked and kept on the request as ``dpop``; a client whose ``dpop`` setting
    is "required" gets no token without one (RFC 9449 sections 5 and 7)."""

    def __init__(self, verifier: DPoPVerifier) -> None:
        self.verifier = verifier

    def __call__(self, grant: Any) -> None:
        grant.register_hook("after_validate_token_request", self._check)

    def _check(self, grant: Any, _result: object) -> None:
        request = grant.request
        proof = proof_header(request.headers)
        client = request.client
        if proof is None:
            if client.settings.dpop == "required":
                raise InvalidDPoPProofError(
                    "DPoP proof required: this client gets DPoP-bound tokens only "
                    "(RFC 9449 section 5).")
            return
        request.dpop = self.verifier.verify(
            proof, method=request.method, url=request.uri, client_id=client.get_client_id(),
            nonce_required=True if client.settings.dpop_nonce else None)
