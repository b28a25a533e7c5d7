"""Resource-server side of DPoP (RFC 9449): checking the proof that comes with a DPoP-bound
access token, and the server nonces a resource server may require.

:class:`~m2mauth.client.TokenValidator` uses this module through
``validate_dpop(token, proof, method=..., url=...)``; :class:`DPoPProofChecker` is the part
that knows nothing of access tokens but their hash and their ``cnf.jkt``. What it checks, in
this order (RFC 9449 §4.3; ``exc.reason`` of :class:`InvalidDPoPProofError` in brackets):

1. exactly one proof (``missing``, ``multiple``), at most ``max_proof_bytes`` long before
   anything is decoded (``too_large``), a compact JWS of canonical base64url (``malformed``);
2. header: ``typ`` is ``dpop+jwt`` (``wrong_type``); ``alg`` on the allow-list – asymmetric
   only, never ``none`` nor HMAC (``algorithm_not_allowed``); no ``crit``; ``jwk`` a public
   key that fits ``alg`` – private members and ``oct`` keys refused, RSA of 2048 bits or more
   (``bad_key``);
3. the signature, verified with that ``jwk`` by PyJWT's algorithm objects (``bad_signature``);
4. claims: ``jti``, ``htm``, ``htu``, ``iat`` present and well typed (``missing_claim``,
   ``invalid_claim``); ``htm`` equal to the request's method (``wrong_method``); ``htu`` equal
   to the request's URL, both without query and fragment and normalised as RFC 3986 §6.2.2
   and §6.2.3 say (``wrong_url``); ``iat`` no older than ``max_age`` and not in the future,
   each with ``leeway`` (``stale``, ``future``); ``ath`` equal to base64url(SHA-256(token))
   (``wrong_token_hash``); the RFC 7638 thumbprint of ``jwk`` equal to the token's ``cnf.jkt``
   (``key_mismatch``);
5. with nonces on: ``nonce`` one this checker issued, current or previous
   (:class:`UseDPoPNonceError`, carrying the nonce to use);
6. ``jti`` not seen before within the ``iat`` window (``replayed``); only a proof that passed
   every other check is remembered, so a forged proof cannot burn a jti nor fill the cache.

The replay cache is bounded (``replay_max_entries``). An entry leaves when its proof could no
longer pass the ``iat`` check anyway. When the cache is full of live entries, new proofs are
refused (``replay_cache_full``; :func:`~m2mauth.client.flask.require_token` answers 503)
rather than forgetting a live jti, which would let that proof be replayed: fail closed. Only
holders of valid DPoP-bound tokens can fill it, at ``replay_max_entries / (max_age + 2 *
leeway)`` proofs per second. Several processes behind one URL need one cache, or a proof
could be replayed once per process: ``DPoPPolicy(replay_cache=...)`` takes any
:class:`DPoPReplayCache` (Redis, a database, the lab's state store).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import math
import os
import re
import string
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol
from urllib.parse import urlsplit

from jwt.algorithms import get_default_algorithms
from jwt.exceptions import PyJWTError

from ._untrusted import shown
from .errors import OAuthError

__all__ = [
    "DPOP_ALGORITHMS",
    "DPOP_PROOF_REASONS",
    "DPoPNonces",
    "DPoPPolicy",
    "DPoPProof",
    "DPoPProofChecker",
    "DPoPReplayCache",
    "InvalidDPoPProofError",
    "UseDPoPNonceError",
    "jwk_thumbprint",
    "normalized_htu",
]

#: The proof algorithms accepted by default: asymmetric only (RFC 9449 §4.3 check 5).
DPOP_ALGORITHMS = ("ES256", "ES384", "ES512", "RS256", "PS256", "EdDSA", "Ed25519")
#: Every algorithm a policy may allow, with the key type (and curves) it needs.
_KEY_TYPES: Mapping[str, tuple[str, frozenset[str] | None]] = {
    **{alg: ("RSA", None) for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    "ES256": ("EC", frozenset({"P-256"})), "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
    "Ed25519": ("OKP", frozenset({"Ed25519"})),  # RFC 9864's fully-specified name
}
#: RFC 9449 §4.2: "typ" is "dpop+jwt".
PROOF_TYPE = "dpop+jwt"

#: Why :class:`InvalidDPoPProofError` was raised: ``exc.reason`` is one of these.
DPOP_PROOF_REASONS = frozenset({
    "missing",            # no DPoP header although the token is DPoP-bound
    "multiple",           # more than one DPoP header (or values joined by commas)
    "too_large",          # longer than max_proof_bytes (checked first)
    "malformed",          # not a compact JWS of base64url JSON, or a bad header member
    "wrong_type",         # typ is not dpop+jwt
    "algorithm_not_allowed",  # alg none, HMAC, or not on the allow-list
    "bad_key",            # jwk missing, private, symmetric, too small, or not for this alg
    "bad_signature",      # the signature does not verify with the jwk
    "missing_claim",      # jti, htm, htu or iat (or ath, with a token) absent
    "invalid_claim",      # a claim of the wrong type or length
    "wrong_method",       # htm is not the request's method
    "wrong_url",          # htu is not the request's URL (query and fragment aside)
    "stale",              # iat older than max_age (+ leeway)
    "future",             # iat later than now + leeway
    "wrong_token_hash",   # ath is not base64url(SHA-256(access token))
    "key_mismatch",       # the jwk's thumbprint is not the token's cnf.jkt
    "replayed",           # the jti was seen before, within the iat window
    "replay_cache_full",  # too many live jtis to remember one more: refused, fail closed
    "use_dpop_nonce",     # nonce missing or not current (UseDPoPNonceError)
})

_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")  # alg none: no sig
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
#: RFC 7638 §3.2: the members a thumbprint is computed over, per key type.
_THUMBPRINT_MEMBERS: Mapping[str, tuple[str, ...]] = {
    "RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}
_MAX_HEADER_BYTES = 4096
_MAX_BRACKETS = 8
_MAX_JTI = 256
_MAX_METHOD = 32
_MIN_RSA_BITS = 2048
_HEADER_CACHE_ENTRIES = 1024
_MAX_CACHED_HEADER = 2048  # base64url characters: an RSA-4096 jwk header fits
_MAX_HTU = 2048
_FULL_SCAN_INTERVAL = 1.0
_DEFAULT_PORTS = {"http": 80, "https": 443}
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")


class InvalidDPoPProofError(OAuthError, code="invalid_dpop_proof"):
    """RFC 9449 §7.1 ``invalid_dpop_proof`` (HTTP 401): the request's DPoP proof cannot be
    accepted. ``reason`` is one of :data:`DPOP_PROOF_REASONS`; ``error_description`` is safe
    for a ``WWW-Authenticate`` header (never the proof, the token or a key)."""

    def __init__(self, reason: str, description: str | None = None) -> None:
        if reason not in DPOP_PROOF_REASONS:
            raise ValueError(f"unknown invalid_dpop_proof reason {reason!r}")
        super().__init__(self.code, description or reason.replace("_", " "), status=401)
        self.reason = reason

    def __reduce__(self):  # pickling/copying: the constructor's arguments differ from .args
        return (type(self), (self.reason, self.error_description))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(reason={self.reason!r}, "
                f"error_description={self.error_description!r})")


class UseDPoPNonceError(InvalidDPoPProofError, code="use_dpop_nonce"):
    """RFC 9449 §8 ``use_dpop_nonce`` (HTTP 401): the proof lacks a nonce this resource server
    issued, or has one that is no longer current. ``nonce`` is the one to use: send it in a
    ``DPoP-Nonce`` header with the ``WWW-Authenticate: DPoP error="use_dpop_nonce"``."""

    def __init__(self, nonce: str, description: str | None = None) -> None:
        super().__init__("use_dpop_nonce", description or "the proof needs the resource "
                         "server's current nonce (DPoP-Nonce)")
        self.nonce = nonce

    def __reduce__(self):
        return (type(self), (self.nonce, self.error_description))


class DPoPReplayCache(Protocol):
    """Where a resource server remembers the proofs it accepted: shared by every process that
    serves the same URLs, bounded, and failing closed (False when full)."""

    def remember(self, jkt: str, jti: str, expires_at: float, now: float) -> bool:
        """Record the proof ``jti`` of key ``jkt`` until ``expires_at``; False if it is still
        recorded from before (a replay) or no room is left for it."""
        ...


@dataclass(frozen=True)
class DPoPPolicy:
    """How DPoP proofs are judged. ``algorithms``: the allow-list (asymmetric only);
    ``max_age``: seconds an ``iat`` may lie in the past; ``leeway``: clock skew allowed on top
    in both directions (None: the validator's ``leeway``); ``require_nonce``: proofs must carry
    a nonce this server issued (RFC 9449 §8), which rotates every ``nonce_lifetime`` seconds
    (the previous one stays good for one more period); ``nonce_secret``: the HMAC key of the
    nonces (None: random per checker – give several workers the same one so they accept each
    other's nonces); ``replay_max_entries``: the bound of the in-process jti cache;
    ``replay_cache``: a shared one instead (several processes behind one URL);
    ``max_proof_bytes``: longer proofs are refused before decoding."""

    algorithms: tuple[str, ...] = DPOP_ALGORITHMS
    max_age: float = 60
    leeway: float | None = None
    require_nonce: bool = False
    nonce_lifetime: float = 300
    nonce_secret: bytes | None = field(default=None, repr=False)
    replay_max_entries: int = 100_000
    max_proof_bytes: int = 8192
    replay_cache: DPoPReplayCache | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        algorithms = tuple(dict.fromkeys(self.algorithms))
        unknown = [a for a in algorithms if a not in _KEY_TYPES]
        if unknown or not algorithms:
            raise ValueError(f"unsupported DPoP algorithm(s) {unknown}: only asymmetric ones "
                             f"({', '.join(sorted(_KEY_TYPES))}), never none or HMAC")
        object.__setattr__(self, "algorithms", algorithms)
        if self.max_age <= 0 or (self.leeway is not None and self.leeway < 0):
            raise ValueError("max_age must be positive and leeway not negative")
        if self.nonce_lifetime <= 0 or self.replay_max_entries < 1:
            raise ValueError("nonce_lifetime and replay_max_entries must be positive")
        if self.max_proof_bytes < 64:
            raise ValueError("max_proof_bytes is too small for any proof")
        if self.nonce_secret is not None and len(self.nonce_secret) < 32:
            raise ValueError("nonce_secret must be at least 32 bytes")


@dataclass(frozen=True, slots=True)
class DPoPProof:
    """A proof that passed every check: its ``jkt`` (the key's RFC 7638 thumbprint), ``jti``,
    ``iat`` and read-only views of the ``header``/``claims`` it carried."""

    jkt: str
    jti: str
    iat: float
    header: Mapping[str, Any] = field(repr=False)
    claims: Mapping[str, Any] = field(repr=False)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public JWK, base64url: what ``cnf.jkt`` holds.
    ``ValueError`` for a key type other than RSA, EC and OKP or a missing member."""
    # By hand: PyJWT has no thumbprint function, and the client must not use the server's
    # JOSE stack (joserfc) – the two sides are independent implementations, so a thumbprint
    # mistake on either side fails an end-to-end test instead of hiding. RFC 7638 §3 is small:
    # the required members, sorted, no whitespace, UTF-8, then SHA-256.
    kty = jwk.get("kty")
    members = _THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise ValueError(f"no thumbprint for key type {shown(kty)}")
    values = {}
    for name in members:
        value = jwk.get(name)
        if type(value) is not str or not value:
            raise ValueError(f"the key's {name} is not a string")
        values[name] = value
    canonical = json.dumps(values, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return _b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def access_token_hash(token: str | bytes) -> str:
    """``ath``: base64url(SHA-256(the ASCII access token)), RFC 9449 §4.2."""
    raw = token.encode("ascii") if isinstance(token, str) else bytes(token)
    return _b64url(hashlib.sha256(raw).digest())


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # a JSON integer too large for a float (JSON bounds no digits)
        return False


def _unescape_unreserved(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else "%" + match.group(1).upper()


@functools.lru_cache(maxsize=1024)  # a pure function of a bounded string; clients repeat URLs
def normalized_htu(url: str) -> str:
    """``url`` as ``htu`` is compared (RFC 9449 §4.3 check 9): query and fragment dropped;
    scheme and host lower-cased, the scheme's default port removed, an empty path made
    ``/`` and percent-encoding normalised (RFC 3986 §6.2.2, §6.2.3). ``ValueError`` for
    anything but an absolute http(s) URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or "@" in parts.netloc:
        raise ValueError("not an absolute http(s) URL without userinfo")
    port = parts.port  # ValueError when not a number in range
    host = parts.hostname  # lower-cased by urllib; IPv6 without brackets
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    path = _PERCENT.sub(_unescape_unreserved, parts.path) or "/"
    return f"{scheme}://{netloc}{path}"


class DPoPNonces:
    """Server nonces for DPoP proofs (RFC 9449 §8), stateless: a nonce is an HMAC of the
    current time window (``lifetime`` seconds long) under ``secret``; the current and the
    previous window's are valid, so a nonce lives ``lifetime`` to ``2 * lifetime`` seconds."""

    def __init__(self, lifetime: float = 300, *, secret: bytes | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if lifetime <= 0:
            raise ValueError("lifetime must be positive")
        self.lifetime = float(lifetime)
        self._secret = secret if secret is not None else os.urandom(32)
        self._clock = clock

    def _nonce(self, window: int) -> str:
        mac = hmac.new(self._secret, b"m2mauth dpop nonce " + str(window).encode(),
                       hashlib.sha256).digest()
        return _b64url(mac[:24])

    def _window(self) -> int:
        return math.floor(self._clock() / self.lifetime)

    def current(self) -> str:
        """The nonce to hand out now (``DPoP-Nonce``)."""
        return self._nonce(self._window())

    def is_valid(self, nonce: object) -> bool:
        """Whether ``nonce`` is the current or the previous window's (constant time)."""
        if type(nonce) is not str or len(nonce) != 32:
            return False
        window = self._window()
        given = nonce.encode("ascii", "replace")
        current = hmac.compare_digest(given, self._nonce(window).encode())
        previous = hmac.compare_digest(given, self._nonce(window - 1).encode())
        return current | previous

    def __repr__(self) -> str:
        return f"<DPoPNonces lifetime={self.lifetime:g}>"


def _b64decode(segment: str, name: str) -> bytes:
    if len(segment) % 4 == 1:
        raise InvalidDPoPProofError("malformed", f"the proof's {name} is not base64url")
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise InvalidDPoPProofError("malformed", f"the proof's {name} is not base64url") from None
    if _b64url(data) != segment:  # canonical only: one encoding per proof
        raise InvalidDPoPProofError("malformed", f"the proof's {name} is not canonical "
                                    "base64url")
    return data


def _json_object(data: bytes, name: str) -> dict[str, Any]:
    if data.count(b"{") + data.count(b"[") > _MAX_BRACKETS:
        raise InvalidDPoPProofError("malformed", f"the proof's {name} is too deeply nested")
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        raise InvalidDPoPProofError("malformed", f"the proof's {name} is not JSON") from None
    if type(value) is not dict:
        raise InvalidDPoPProofError("malformed", f"the proof's {name} is not a JSON object")
    return value


def _one_proof(proof: str | Sequence[str] | None) -> str:
    """RFC 9449 §4.3 check 1: exactly one DPoP header."""
    if proof is None:
        raise InvalidDPoPProofError("missing", "the request has no DPoP proof (DPoP header)")
    if not isinstance(proof, str):
        values = list(proof)
        if not values:
            raise InvalidDPoPProofError("missing", "the request has no DPoP proof (DPoP "
                                        "header)")
        if len(values) > 1:
            raise InvalidDPoPProofError("multiple", "more than one DPoP header")
        proof = values[0]
        if not isinstance(proof, str):
            raise InvalidDPoPProofError("malformed", "the DPoP proof is not a string")
    proof = proof.strip(" \t")
    if not proof:
        raise InvalidDPoPProofError("missing", "the DPoP header is empty")
    if "," in proof:  # repeated headers joined by a server; a JWS has no commas
        raise InvalidDPoPProofError("multiple", "more than one DPoP proof in the DPoP header")
    return proof


class DPoPProofChecker:
    """Checks DPoP proofs for one resource server under ``policy``, on ``clock``; holds the
    replay cache and the nonces. Thread-safe. ``leeway`` is used when the policy has none."""

    def __init__(self, policy: DPoPPolicy | None = None, *,
                 clock: Callable[[], float] = time.time, leeway: float = 30) -> None:
        self.policy = policy = policy if policy is not None else DPoPPolicy()
        self.clock = clock
        self.leeway = float(policy.leeway if policy.leeway is not None else leeway)
        self.algorithms = policy.algorithms
        self.nonces: DPoPNonces | None = (
            DPoPNonces(policy.nonce_lifetime, secret=policy.nonce_secret, clock=clock)
            if policy.require_nonce else None)
        self._allowed = frozenset(policy.algorithms)
        self._pyjwt = get_default_algorithms()
        # A client sends the same header (typ, alg, jwk) with every proof: its checked form,
        # the key's thumbprint and the parsed key are kept by the header's base64url, once a
        # proof with it has verified (so forged proofs cannot fill this bounded cache).
        self._headers: dict[str, tuple[dict[str, Any], str, Any]] = {}
        self._headers_lock = threading.Lock()
        self._seen: dict[tuple[str, str], float] = {}  # (jkt, jti) -> when it may leave
        self._seen_lock = threading.Lock()
        self._next_scan = float("-inf")

    def nonce(self) -> str | None:
        """The nonce to hand out now, None when nonces are off."""
        return self.nonces.current() if self.nonces is not None else None

    @property
    def replay_cache_size(self) -> int:
        """Remembered jtis (live, or expired and not yet dropped)."""
        return len(self._seen)

    def check(self, proof: str | Sequence[str] | None, *, method: str, url: str,
              access_token_hash: str | None = None, jkt: str | None = None,
              now: float | None = None) -> DPoPProof:
        """The checked proof, or :class:`InvalidDPoPProofError` / :class:`UseDPoPNonceError`.

        ``proof``: the DPoP header's value, or every value of it (a list; exactly one must
        be there). ``method`` and ``url``: of the request, as the client sent it (the URL
        the client called – never rebuilt from an untrusted Host header by this code).
        ``access_token_hash`` (``ath``) and ``jkt`` (the token's ``cnf.jkt``): required to
        match when given – a resource server always gives both."""
        if now is None:
            now = self.clock()
        text = _one_proof(proof)
        if len(text) > self.policy.max_proof_bytes:
            raise InvalidDPoPProofError("too_large", f"the DPoP proof is longer than "
                                        f"{self.policy.max_proof_bytes} bytes")
        if _COMPACT.fullmatch(text) is None:
            raise InvalidDPoPProofError("malformed", "the DPoP proof is not a compact JWS")
        head_b64, payload_b64, sig_b64 = text.split(".")
        known = self._headers.get(head_b64)
        if known is None:
            header = self._header(head_b64)
            thumbprint, key = self._key(header["alg"], header["jwk"])
        else:
            header, thumbprint, key = known
        alg: str = header["alg"]
        signature = _b64decode(sig_b64, "signature")
        signing_input = text[: len(head_b64) + 1 + len(payload_b64)].encode("ascii")
        try:
            good = self._pyjwt["EdDSA" if alg == "Ed25519" else alg].verify(
                signing_input, key, signature)
        except (ValueError, TypeError, OverflowError, PyJWTError):
            good = False
        if not good:
            raise InvalidDPoPProofError("bad_signature", "the proof's signature does not "
                                        "verify with its jwk")
        if known is None and len(head_b64) <= _MAX_CACHED_HEADER:
            with self._headers_lock:
                if len(self._headers) >= _HEADER_CACHE_ENTRIES:  # the oldest leaves first
                    self._headers.pop(next(iter(self._headers)), None)
                self._headers[head_b64] = (header, thumbprint, key)
        claims = _json_object(_b64decode(payload_b64, "claims"), "claims")
        jti, iat = self._check_claims(claims, method, url, access_token_hash, now)
        if jkt is not None and not hmac.compare_digest(thumbprint.encode(),
                                                       jkt.encode("utf-8", "replace")):
            raise InvalidDPoPProofError("key_mismatch", "the proof's key is not the one the "
                                        "token is bound to (cnf.jkt)")
        if self.nonces is not None and not self.nonces.is_valid(claims.get("nonce")):
            raise UseDPoPNonceError(self.nonces.current(), "the proof has no nonce"
                                    if "nonce" not in claims else "the proof's nonce is "
                                    "not current")
        self._remember(thumbprint, jti, iat, now)
        return DPoPProof(thumbprint, jti, iat, MappingProxyType(header),
                         MappingProxyType(claims))

    # -- steps -----------------------------------------------------------------------------

    def _header(self, segment: str) -> dict[str, Any]:
        data = _b64decode(segment, "header")
        if len(data) > _MAX_HEADER_BYTES:
            raise InvalidDPoPProofError("malformed", f"the proof's header is larger than "
                                        f"{_MAX_HEADER_BYTES} bytes")
        header = _json_object(data, "header")
        typ = header.get("typ")
        if type(typ) is not str or typ.lower() != PROOF_TYPE:
            raise InvalidDPoPProofError("wrong_type", f"typ is {shown(typ)}, not dpop+jwt")
        alg = header.get("alg")
        if type(alg) is not str or alg not in self._allowed:
            raise InvalidDPoPProofError("algorithm_not_allowed", f"alg {shown(alg)} is not "
                                        f"allowed for DPoP proofs (allowed: "
                                        f"{' '.join(self.algorithms)})")
        if "crit" in header:
            raise InvalidDPoPProofError("malformed", "critical header parameters are not "
                                        "supported")
        if type(header.get("jwk")) is not dict:
            raise InvalidDPoPProofError("bad_key", "the proof has no jwk header")
        return header

    def _key(self, alg: str, jwk: dict[str, Any]) -> tuple[str, Any]:
        """(thumbprint, public key) of the proof's ``jwk``, which must be public and fit
        ``alg``."""
        private = _PRIVATE_MEMBERS.intersection(jwk)
        if private:
            raise InvalidDPoPProofError("bad_key", "the proof's jwk has private or symmetric "
                                        f"key members ({', '.join(sorted(private))})")
        kty, curves = _KEY_TYPES[alg]
        crv = jwk.get("crv")
        if jwk.get("kty") != kty or (curves is not None and (type(crv) is not str
                                                             or crv not in curves)):
            raise InvalidDPoPProofError("bad_key", f"the proof's jwk ({shown(jwk.get('kty'))}"
                                        f" {shown(jwk.get('crv'))}) does not fit alg {alg}")
        if not all(type(jwk.get(m)) is str and _B64URL.fullmatch(jwk[m])
                   for m in _THUMBPRINT_MEMBERS[kty] if m not in ("kty", "crv")):
            raise InvalidDPoPProofError("bad_key", "the proof's jwk members are not base64url")
        thumbprint = jwk_thumbprint(jwk)
        try:
            key = self._pyjwt["EdDSA" if alg == "Ed25519" else alg].from_jwk(
                {m: jwk[m] for m in _THUMBPRINT_MEMBERS[kty]})
        except (PyJWTError, ValueError, TypeError):
            raise InvalidDPoPProofError("bad_key", "the proof's jwk is not a valid public "
                                        "key") from None
        if kty == "RSA" and key.key_size < _MIN_RSA_BITS:
            raise InvalidDPoPProofError("bad_key", f"the proof's RSA key has fewer than "
                                        f"{_MIN_RSA_BITS} bits")
        return thumbprint, key

    def _check_claims(self, claims: dict[str, Any], method: str, url: str,
                      ath: str | None, now: float) -> tuple[str, float]:
        for name in ("jti", "htm", "htu", "iat"):
            if name not in claims:
                raise InvalidDPoPProofError("missing_claim", f"the proof has no {name}")
        jti, htm, htu, iat = claims["jti"], claims["htm"], claims["htu"], claims["iat"]
        if type(jti) is not str or not 0 < len(jti) <= _MAX_JTI:
            raise InvalidDPoPProofError("invalid_claim", "the proof's jti is not a short "
                                        "string")
        if type(htm) is not str or not 0 < len(htm) <= _MAX_METHOD:
            raise InvalidDPoPProofError("invalid_claim", "the proof's htm is not a method")
        if htm != method:  # methods are case-sensitive (RFC 9110 §9.1)
            raise InvalidDPoPProofError("wrong_method", f"htm is {shown(htm)}, not the "
                                        f"request's method {shown(method)}")
        if type(htu) is not str or len(htu) > _MAX_HTU:
            raise InvalidDPoPProofError("invalid_claim", "the proof's htu is not a string "
                                        f"of at most {_MAX_HTU} characters")
        try:
            claimed = normalized_htu(htu)
        except ValueError:
            raise InvalidDPoPProofError("invalid_claim", "the proof's htu is not an http(s) "
                                        "URL") from None
        try:
            called = normalized_htu(url)
        except ValueError:  # e.g. a Host header with a bad port, in the caller's request.url
            raise InvalidDPoPProofError("wrong_url", "this request's URL is not an http(s) "
                                        "URL that htu could name") from None
        if claimed != called:
            raise InvalidDPoPProofError("wrong_url", "htu is not this request's URL")
        if type(iat) not in (int, float) or not _finite(iat):
            raise InvalidDPoPProofError("invalid_claim", "the proof's iat is not a number")
        leeway = self.leeway
        if iat < now - self.policy.max_age - leeway:
            raise InvalidDPoPProofError("stale", f"the proof was made {now - iat:.0f} s ago; "
                                        f"at most {self.policy.max_age:g} s (leeway "
                                        f"{leeway:g} s)")
        if iat > now + leeway:
            raise InvalidDPoPProofError("future", f"the proof is dated {iat - now:.0f} s in "
                                        f"the future (leeway {leeway:g} s)")
        if ath is not None:
            given = claims.get("ath")
            if given is None:
                raise InvalidDPoPProofError("missing_claim", "the proof has no ath (the "
                                            "access token's hash)")
            if type(given) is not str or not hmac.compare_digest(
                    given.encode("utf-8", "replace"), ath.encode()):
                raise InvalidDPoPProofError("wrong_token_hash", "ath is not the hash of "
                                            "this access token")
        return jti, float(iat)

    def _remember(self, jkt: str, jti: str, iat: float, now: float) -> None:
        """RFC 9449 §11.1: one use per jti and key within the window (see the module doc)."""
        key = (jkt, jti)
        # The last instant the iat check lets the proof through: the entry is live up to and
        # including it (iat < now - max_age - leeway is what the check refuses).
        leaves = iat + self.policy.max_age + self.leeway
        shared = self.policy.replay_cache
        if shared is not None:
            if not shared.remember(jkt, jti, leaves, now):
                raise InvalidDPoPProofError("replayed", "the proof's jti was used before (or "
                                            "the shared replay cache is full)")
            return
        with self._seen_lock:
            seen = self._seen
            expiry = seen.get(key)
            if expiry is not None and expiry >= now:
                raise InvalidDPoPProofError("replayed", "the proof's jti was used before")
            while seen:  # drop expired entries from the front (the oldest inserted)
                first = next(iter(seen))
                if seen[first] >= now:
                    break
                del seen[first]
            if len(seen) >= self.policy.replay_max_entries and now >= self._next_scan:
                self._next_scan = now + _FULL_SCAN_INTERVAL
                for old in [k for k, t in seen.items() if t < now]:
                    del seen[old]
            if len(seen) >= self.policy.replay_max_entries:
                raise InvalidDPoPProofError("replay_cache_full", "too many recent proofs to "
                                            "remember another; try again shortly")
            seen.pop(key, None)
            seen[key] = leaves

    def __repr__(self) -> str:
        return (f"<DPoPProofChecker algorithms={list(self.algorithms)} "
                f"nonces={'on' if self.nonces else 'off'}>")
