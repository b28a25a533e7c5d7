"""Resource-server side: validate RFC 9068 JWT access tokens of one issuer for one API.

``TokenValidator(issuer, audience).validate(token, scopes=("read",))`` returns a
:class:`ValidatedToken` or raises :class:`InvalidTokenError` (``exc.reason`` says why) or
:class:`InsufficientScopeError`. Signatures are verified with PyJWT's algorithm objects and
keys from the issuer's JWKS (:class:`~m2mauth.client.jwks.JWKSCache`) – never with the
server's JOSE stack.

What is checked, in this order (RFC 9068 §4, RFC 8725):

1. size (``max_token_bytes``) before anything is decoded; only the compact JWS form (three
   base64url segments) – JWS JSON serialization and JWE (five segments) are refused;
   canonical base64url without padding; a header of at most 4 KiB, not nested;
2. header: ``alg`` on the allow-list (never ``none``; HMAC only with a configured secret);
   ``typ`` is ``at+jwt`` or ``application/at+jwt`` (any case); no ``crit``/``b64`` (no
   extension is supported, so any critical one is refused); ``kid`` a short string;
   ``jwk``/``jku``/``x5u``/``x5c`` are ignored – keys come from the configured JWKS only;
3. the key for ``kid`` from the JWKS cache, consistent with ``alg`` (type, curve, its ``alg``),
   and the signature;
4. claims: ``iss``, ``exp``, ``aud``, ``sub``, ``client_id``, ``iat``, ``jti`` present;
   ``iss`` equal to the issuer (exact string comparison); ``aud`` a string or list containing
   this API's identifier; ``exp``/``nbf``/``iat`` numbers, not expired and not in the future by
   more than ``leeway`` seconds (the error says by how much); ``scope`` a string;
5. with ``revocation_check`` (an :class:`~m2mauth.client.IntrospectionValidator` of the same
   issuer): whether the issuer still says the token is active – revoked tokens stop here,
   within that validator's cache time – on every use, first sight or cached;
6. the required scopes (``InsufficientScopeError``).

DPoP (RFC 9449): a token with ``cnf.jkt`` is bound to a key its client holds. ``validate``
refuses it (``wrong_type``: a bound token sent as Bearer); ``validate_dpop(token, proof,
method=..., url=...)`` wants one – after the steps above (the token cached or not), it refuses
a token without ``cnf.jkt`` and checks the proof with :mod:`~m2mauth.client.dpop_validation`
on every request (signature by the ``jwk``, ``typ``, ``alg``, ``htm``, ``htu``, ``iat``,
``jti`` replay, ``ath``, the key's thumbprint against ``cnf.jkt``, and the nonce when the
``dpop`` policy requires one), before the revocation check and the scopes.

Speed: a verified token is remembered under its full string in a bounded cache (entries and
bytes), so the usual case – a service sending the same token again – costs a dict lookup and
the re-checks that can change: the clock against ``exp``/``nbf``/``iat``, the required scopes,
and whether its key is still in the JWKS. Entries leave when the token expires (on the next
use, or when the cache is full) or when their key left the JWKS.
"""

from __future__ import annotations

import binascii
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import requests
from jwt.algorithms import get_default_algorithms

from ._algorithms import (
    ASYMMETRIC_ALGORITHMS,
    DEFAULT_ALGORITHMS,
    HMAC_ALGORITHMS,
    HMAC_MIN_BYTES,
)
from ._arguments import as_list
from ._untrusted import shown
from .discovery import MetadataCache, discover
from .dpop_validation import DPoPPolicy, DPoPProofChecker, access_token_hash
from .errors import DiscoveryError, InsufficientScopeError, InvalidTokenError
from .jwks import JWKSCache, VerificationKey

if TYPE_CHECKING:
    from .introspection import IntrospectionValidator

__all__ = ["ACCESS_TOKEN_TYPES", "DEFAULT_ALGORITHMS", "TokenValidator", "ValidatedToken"]

#: RFC 9068 §4: typ is "at+jwt"; RFC 7515 §4.1.9 allows the "application/" prefix.
ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
#: RFC 9068 §2.2; ``nbf`` and ``scope`` are optional.
REQUIRED_CLAIMS = ("iss", "exp", "aud", "sub", "client_id", "iat", "jti")

_COMPACT = re.compile(rb"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_B64URL_TO_STD = bytes.maketrans(b"-_", b"+/")
#: Canonical base64url: the unused low bits of the last character are zero (RFC 4648 §3.5).
_LAST_OF_2 = frozenset(b"AQgw")
_LAST_OF_3 = frozenset(b"AEIMQUYcgkosw048")
_PAD = (b"", None, b"==", b"=")
_MAX_HEADER_BYTES = 4096
_MAX_HEADER_BRACKETS = 8
_MAX_KID = 256
_PURGE_INTERVAL = 10.0
_MAX_JKT = 128


def _b64(segment: bytes, name: str) -> bytes:
    rem = len(segment) & 3
    pad = _PAD[rem]
    if pad is None or (rem == 2 and segment[-1] not in _LAST_OF_2) or (
            rem == 3 and segment[-1] not in _LAST_OF_3):
        raise InvalidTokenError("malformed", f"the {name} is not canonical base64url")
    try:
        return binascii.a2b_base64(segment.translate(_B64URL_TO_STD) + pad)
    except binascii.Error:
        raise InvalidTokenError("malformed", f"the {name} is not base64url") from None


def _json_object(data: bytes, subject: str) -> dict[str, Any]:
    """``data`` parsed as a JSON object, else ``malformed`` ("<subject> not JSON")."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        raise InvalidTokenError("malformed", f"{subject} not JSON") from None
    if type(value) is not dict:
        raise InvalidTokenError("malformed", f"{subject} not a JSON object")
    return value


def _secs(value: float) -> str:
    return f"{value:.0f}" if abs(value - round(value)) < 0.05 else f"{value:.1f}"


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    """The NumericDate claim ``name``; None only when absent. A present JSON null is not
    absence: it is a claim of the wrong type, like any other (``invalid_claim``)."""
    if name not in claims:
        return None
    value = claims[name]
    kind = type(value)
    if kind is float and math.isfinite(value):
        return value
    if kind is int:
        try:
            float(value)  # the time checks add float seconds: beyond this, OverflowError
        except OverflowError:
            raise InvalidTokenError("invalid_claim", f"claim {name} is out of range",
                                    claim=name) from None
        return value
    raise InvalidTokenError("invalid_claim", f"claim {name} is not a number", claim=name)


@dataclass(frozen=True, slots=True)
class ValidatedToken:
    """What a valid access token says. ``claims`` and ``header`` are read-only views of the
    token's JSON (shared by every use of the same token: do not change nested values)."""

    subject: str
    client_id: str
    scopes: tuple[str, ...]
    expires_at: float
    issued_at: float
    audience: tuple[str, ...]
    issuer: str
    jti: str
    claims: Mapping[str, Any] = field(repr=False)
    header: Mapping[str, Any] = field(repr=False)
    #: The RFC 7638 thumbprint of the key the token is bound to (``cnf.jkt``, RFC 9449 §6);
    #: None for a bearer token.
    jkt: str | None = None

    @property
    def scope(self) -> str:
        """The granted scopes, space-separated as in the ``scope`` claim."""
        return " ".join(self.scopes)

    def has_scopes(self, *scopes: str) -> bool:
        return set(scopes) <= set(self.scopes)


class _Entry:
    """A verified token in the cache, with what the re-checks need."""

    __slots__ = ("ath", "exp", "generation", "iat", "key", "kid", "nbf", "scopes", "size",
                 "token")

    def __init__(self, token: ValidatedToken, exp: float, nbf: float | None, iat: float,
                 scopes: frozenset[str], kid: str | None, key: VerificationKey | None,
                 generation: int | None, size: int) -> None:
        self.token, self.exp, self.nbf, self.iat = token, exp, nbf, iat
        self.scopes, self.kid, self.key = scopes, kid, key
        self.generation, self.size = generation, size
        self.ath: str | None = None  # DPoP's hash of the token, computed on first use


class TokenValidator:
    """Validates access tokens issued by ``issuer`` for this API (``audience``: its
    identifier, or several accepted ones).

    ``jwks_uri``: where the issuer's keys are; None looks it up in the issuer's RFC 8414
    metadata on first use (concurrent first uses share one fetch; a failed one is raised again
    without a request for 5 s of ``clock``). ``algorithms``: the allow-list (``none`` is
    refused; ``HS256``, ``HS384``, ``HS512`` only together with ``hmac_secret``, which is then
    the only HMAC key).
    ``leeway``: seconds of clock skew tolerated for ``exp``, ``nbf`` and ``iat``.
    ``require_typ``: True (default) wants ``typ: at+jwt``; False is a compatibility switch for
    providers that omit ``typ`` – a missing one is then accepted, a wrong one still is not.
    ``max_token_bytes``: longer tokens are refused before decoding. ``clock``: seconds since
    the epoch. ``jwks_cache``: a shared :class:`JWKSCache` (else one is made with ``session``,
    ``timeout`` and the clock). ``cache_max_entries``/``cache_max_bytes`` bound the cache of
    verified tokens (0 entries turns it off). ``revocation_check``: an
    :class:`~m2mauth.client.IntrospectionValidator` for the same issuer, asked after the local
    checks pass (its cache, its failures: :class:`~m2mauth.client.IntrospectionError`), so a
    revoked token is refused (``inactive``) while a forged one never reaches the issuer.
    ``dpop``: how :meth:`validate_dpop` judges DPoP proofs (a
    :class:`~m2mauth.client.DPoPPolicy`: algorithms, ``iat`` window, nonces, replay bound;
    default ``DPoPPolicy()``, whose leeway is this ``leeway``).
    """

    def __init__(
        self,
        issuer: str,
        audience: str | Iterable[str],
        *,
        jwks_uri: str | None = None,
        algorithms: Iterable[str] = DEFAULT_ALGORITHMS,
        hmac_secret: str | bytes | None = None,
        leeway: float = 30,
        require_typ: bool = True,
        max_token_bytes: int = 8192,
        clock: Callable[[], float] = time.time,
        jwks_cache: JWKSCache | None = None,
        session: requests.Session | None = None,
        timeout: float = 5.0,
        cache_max_entries: int = 10_000,
        cache_max_bytes: int = 16 * 1024 * 1024,
        revocation_check: IntrospectionValidator | None = None,
        dpop: DPoPPolicy | None = None,
    ) -> None:
        if not isinstance(issuer, str) or not issuer:
            raise ValueError("issuer must be a non-empty string")
        if revocation_check is not None and getattr(revocation_check, "issuer", None) != issuer:
            raise ValueError("revocation_check must ask the same issuer")
        audiences = tuple(as_list(audience))
        if not audiences or not all(isinstance(a, str) and a for a in audiences):
            raise ValueError("audience must be a non-empty string or strings")
        algorithms = tuple(dict.fromkeys(algorithms))
        unknown = [a for a in algorithms if a not in ASYMMETRIC_ALGORITHMS | HMAC_ALGORITHMS]
        if unknown:
            raise ValueError(f"unsupported algorithm(s) {unknown}: 'none' is never allowed; "
                             f"choose from {sorted(ASYMMETRIC_ALGORITHMS | HMAC_ALGORITHMS)}")
        hmac_algs = [a for a in algorithms if a in HMAC_ALGORITHMS]
        secret: bytes | None = None
        if hmac_algs or hmac_secret is not None:
            if hmac_secret is None or not hmac_algs:
                raise ValueError("HMAC needs both an HS algorithm in algorithms and hmac_secret")
            secret = hmac_secret.encode() if isinstance(hmac_secret, str) else bytes(hmac_secret)
            if secret.lstrip().startswith((b"-----BEGIN", b"{", b"ssh-")):
                raise ValueError("hmac_secret looks like a public key: HMAC with a public key "
                                 "as the secret is the key-confusion attack")
            short = [a for a in hmac_algs if len(secret) < HMAC_MIN_BYTES[a]]
            if short:
                raise ValueError(f"hmac_secret is shorter than {short[0]} needs "
                                 f"({HMAC_MIN_BYTES[short[0]]} bytes, RFC 7518 section 3.2)")
        if leeway < 0 or max_token_bytes < 16 or cache_max_entries < 0 or cache_max_bytes < 0:
            raise ValueError("leeway, max_token_bytes and the cache bounds must be positive")
        self.issuer = issuer
        self.audience = audiences
        self.algorithms = algorithms
        self.leeway = float(leeway)
        self.require_typ = require_typ
        self.max_token_bytes = max_token_bytes
        self.clock = clock
        self.cache_max_entries = cache_max_entries
        self.cache_max_bytes = cache_max_bytes
        self.revocation_check = revocation_check
        self._audiences = frozenset(audiences)
        self._allowed = frozenset(algorithms)
        self._asymmetric = frozenset(a for a in algorithms if a in ASYMMETRIC_ALGORITHMS)
        self._secret = secret
        self._pyjwt = get_default_algorithms()
        self._jwks_uri = jwks_uri
        self._jwks = jwks_cache
        self._session, self._timeout = session, timeout
        self._setup_lock = threading.Lock()
        self._metadata = MetadataCache(clock=clock)
        self._cache: dict[str, _Entry] = {}
        self._cache_bytes = 0
        self._cache_lock = threading.Lock()
        self._next_purge = float("-inf")
        self._dpop = DPoPProofChecker(dpop, clock=clock, leeway=self.leeway)

    # -- public API ----------------------------------------------------------------------------

    @property
    def jwks(self) -> JWKSCache:
        """The JWKS cache (made on first use; discovery happens here when no jwks_uri)."""
        jwks = self._jwks
        if jwks is None:
            # Discovery outside the lock: concurrent callers share one fetch, and its failure
            # for a backoff, through the metadata cache – none queues behind another's fetch.
            uri = self._jwks_uri or self._discover_jwks_uri()
            with self._setup_lock:
                jwks = self._jwks
                if jwks is None:
                    jwks = self._jwks = JWKSCache(
                        uri, algorithms=self._asymmetric, session=self._session,
                        timeout=self._timeout, clock=self.clock)
        return jwks

    def validate(self, token: str, scopes: str | Iterable[str] = ()) -> ValidatedToken:
        """The token's content if it is a valid access token for this API granting all of
        ``scopes`` (a space-separated string or strings); else :class:`InvalidTokenError` or
        :class:`InsufficientScopeError`. :class:`~m2mauth.client.JWKSError` or
        :class:`~m2mauth.client.DiscoveryError` mean the issuer's keys cannot be had,
        :class:`~m2mauth.client.IntrospectionError` that the ``revocation_check`` cannot
        ask."""
        now = self.clock()
        # _entry's body, inline: the Bearer path is the hot one (a cached token costs about a
        # microsecond, of which a method call would be a few percent).
        entry = self._cache.get(token) if type(token) is str else None
        if entry is None:
            entry = self._verify(token, now)
        else:
            self._recheck(token, entry, now)
        if entry.token.jkt is not None:  # RFC 9449 §7.2: a bound token is no bearer token
            raise InvalidTokenError("wrong_type", "the token is DPoP-bound (cnf.jkt): send it "
                                    "as Authorization: DPoP with a DPoP proof")
        if self.revocation_check is not None:  # before the scopes: a revoked token is a 401
            self.revocation_check.validate(token)
        check_scopes(scopes, entry.scopes)
        return entry.token

    def validate_dpop(self, token: str, proof: str | Sequence[str] | None, *, method: str,
                      url: str, scopes: str | Iterable[str] = ()) -> ValidatedToken:
        """Like :meth:`validate`, for a request with ``Authorization: DPoP <token>``: the
        token must be DPoP-bound (``cnf.jkt``, else :class:`InvalidTokenError` ``wrong_type``)
        and ``proof`` – the request's ``DPoP`` header value, or all its values (exactly one
        must be there) – a valid proof of its key for this request:
        :class:`~m2mauth.client.InvalidDPoPProofError` (``exc.reason`` says why) or
        :class:`~m2mauth.client.UseDPoPNonceError` (``exc.nonce``: the one to send back)
        otherwise. ``method``: the request's method; ``url``: the URL the client called
        (scheme, host, port and path as the client saw them – behind a proxy, the public one;
        its query and fragment are ignored). The token's signature is verified once and then
        cached as for :meth:`validate`; the proof is checked on every call."""
        now = self.clock()
        entry = self._entry(token, now)
        jkt = entry.token.jkt
        if jkt is None:
            raise InvalidTokenError("wrong_type", "the token is not DPoP-bound (no cnf.jkt): "
                                    "send it as Authorization: Bearer")
        ath = entry.ath
        if ath is None:
            ath = entry.ath = access_token_hash(token)
        self._dpop.check(proof, method=method, url=url, access_token_hash=ath, jkt=jkt,
                         now=now)
        if self.revocation_check is not None:
            self.revocation_check.validate(token, dpop_proven=True)
        check_scopes(scopes, entry.scopes)
        return entry.token

    def dpop_nonce(self) -> str | None:
        """The DPoP nonce to hand out now (``DPoP-Nonce``), None unless the ``dpop`` policy
        requires nonces."""
        return self._dpop.nonce()

    @property
    def dpop_algorithms(self) -> tuple[str, ...]:
        """The algorithms DPoP proofs may use (a ``WWW-Authenticate: DPoP`` ``algs``)."""
        return self._dpop.algorithms

    @property
    def dpop(self) -> DPoPProofChecker:
        """The DPoP proof checker: its policy, nonces and replay cache."""
        return self._dpop

    def _entry(self, token: Any, now: float) -> _Entry:
        """The token's cache entry: verified now, or seen before and re-checked."""
        entry = self._cache.get(token) if type(token) is str else None
        if entry is None:
            return self._verify(token, now)
        self._recheck(token, entry, now)
        return entry

    def clear_cache(self) -> None:
        """Forget every verified token (keys stay cached)."""
        with self._cache_lock:
            self._cache.clear()
            self._cache_bytes = 0

    @property
    def cache_size(self) -> tuple[int, int]:
        """(entries, approximate bytes) in the cache of verified tokens."""
        return len(self._cache), self._cache_bytes

    def __repr__(self) -> str:
        return (f"<TokenValidator issuer={self.issuer!r} audience={self.audience!r} "
                f"algorithms={list(self.algorithms)}>")

    # -- first sight ---------------------------------------------------------------------------

    def _verify(self, token: Any, now: float) -> _Entry:
        if isinstance(token, str):
            if len(token) > self.max_token_bytes:
                raise InvalidTokenError("too_large", f"the token is longer than "
                                        f"{self.max_token_bytes} bytes")
            try:
                raw = token.encode("ascii")
            except UnicodeEncodeError:
                raise InvalidTokenError("malformed", "the token is not ASCII") from None
        elif isinstance(token, (bytes, bytearray)):
            if len(token) > self.max_token_bytes:
                raise InvalidTokenError("too_large", f"the token is longer than "
                                        f"{self.max_token_bytes} bytes")
            raw = bytes(token)
        else:
            raise InvalidTokenError("malformed", "the token is not a string")
        if _COMPACT.fullmatch(raw) is None:
            raise InvalidTokenError("malformed", _shape(raw))
        head_b64, payload_b64, sig_b64 = raw.split(b".")
        header = self._header(_b64(head_b64, "header"))
        alg = header["alg"]
        kid = header.get("kid")
        signature = _b64(sig_b64, "signature") if sig_b64 else b""
        signing_input = raw[: len(head_b64) + 1 + len(payload_b64)]
        key: VerificationKey | None = None
        generation: int | None = None
        if alg in HMAC_ALGORITHMS:
            verify_key: Any = self._secret
        else:
            jwks = self.jwks
            key = jwks.get(kid, alg)
            verify_key = key.key
            keyset = jwks.current
            generation = keyset.generation if keyset is not None else None
        try:
            good = bool(signature) and self._pyjwt[alg].verify(signing_input, verify_key,
                                                              signature)
        except (ValueError, TypeError, OverflowError):
            good = False
        if not good:
            raise InvalidTokenError("bad_signature", "the signature does not verify")
        payload = _b64(payload_b64, "payload")
        claims = _json_object(payload, "the claims are")
        entry = self._check_claims(claims, header, now, kid, key, generation)
        if type(token) is str and self.cache_max_entries:
            entry.size = len(raw) + 2 * len(payload) + 512
            self._remember(token, entry, now)
        return entry

    def _header(self, data: bytes) -> dict[str, Any]:
        if len(data) > _MAX_HEADER_BYTES:
            raise InvalidTokenError("malformed", f"the header is larger than "
                                    f"{_MAX_HEADER_BYTES} bytes")
        if data.count(b"{") + data.count(b"[") > _MAX_HEADER_BRACKETS:
            raise InvalidTokenError("malformed", "the header is too deeply nested")
        header = _json_object(data, "the header is")
        alg = header.get("alg")
        if type(alg) is not str:
            raise InvalidTokenError("malformed", "the header has no alg")
        if alg not in self._allowed:
            raise InvalidTokenError("algorithm_not_allowed",
                                    f"alg {shown(alg)} is not allowed")
        if "enc" in header or "zip" in header:
            raise InvalidTokenError("malformed", "a JWE header: encrypted tokens are not "
                                    "accepted")
        typ = header.get("typ")
        if typ is None:
            if self.require_typ:
                raise InvalidTokenError("wrong_type", "typ is missing; an access token has "
                                        "typ at+jwt (RFC 9068)")
        elif type(typ) is not str or typ.lower() not in ACCESS_TOKEN_TYPES:
            raise InvalidTokenError("wrong_type", f"typ is {shown(typ)}, not at+jwt: not "
                                    "an access token (RFC 9068)")
        if "crit" in header:
            crit = header["crit"]
            if type(crit) is not list or not crit or not all(type(c) is str for c in crit):
                raise InvalidTokenError("malformed", "crit is not a list of names")
            raise InvalidTokenError("unsupported_crit", "critical header parameter(s) "
                                    f"{', '.join(shown(c) for c in crit[:5])} not supported")
        if "b64" in header:
            raise InvalidTokenError("malformed", "b64 without crit (RFC 7797 section 6)")
        kid = header.get("kid")
        if kid is not None and (type(kid) is not str or not 0 < len(kid) <= _MAX_KID):
            raise InvalidTokenError("malformed", "kid is not a short string")
        return header

    def _check_claims(self, claims: dict[str, Any], header: dict[str, Any], now: float,
                      kid: str | None, key: VerificationKey | None,
                      generation: int | None) -> _Entry:
        validated, nbf = check_claims(claims, header, issuer=self.issuer,
                                      audiences=self._audiences, leeway=self.leeway, now=now)
        return _Entry(validated, validated.expires_at, nbf, validated.issued_at,
                      frozenset(validated.scopes), kid, key, generation, 0)

    # -- seen before ---------------------------------------------------------------------------

    def _recheck(self, token: str, entry: _Entry, now: float) -> None:
        try:
            check_times(entry.exp, entry.nbf, entry.iat, now, self.leeway)
        except InvalidTokenError as exc:
            if exc.reason == "expired":
                self._forget(token, entry)
            raise
        if entry.key is not None:
            jwks = self._jwks
            keyset = jwks.current if jwks is not None else None
            if keyset is None or now >= keyset.expires_at:
                keyset = self.jwks.keyset(now)
            if keyset.generation != entry.generation:
                if not keyset.contains(entry.kid, entry.key):
                    self._forget(token, entry)
                    raise InvalidTokenError("unknown_key", f"key {shown(entry.kid)} is no "
                                            "longer in the issuer's JWKS")
                entry.generation = keyset.generation

    def _remember(self, token: str, entry: _Entry, now: float) -> None:
        size = entry.size
        if size > self.cache_max_bytes:
            return
        with self._cache_lock:
            cache = self._cache
            if token in cache:
                return
            full = (len(cache) >= self.cache_max_entries
                    or self._cache_bytes + size > self.cache_max_bytes)
            if full and now >= self._next_purge:  # drop expired entries first, not too often
                self._next_purge = now + _PURGE_INTERVAL
                horizon = now - self.leeway
                for old_token in [t for t, e in cache.items() if e.exp <= horizon]:
                    self._cache_bytes -= cache.pop(old_token).size
            while cache and (len(cache) >= self.cache_max_entries
                             or self._cache_bytes + size > self.cache_max_bytes):
                self._cache_bytes -= cache.pop(next(iter(cache))).size  # oldest first
            cache[token] = entry
            self._cache_bytes += size

    def _forget(self, token: str, entry: _Entry) -> None:
        with self._cache_lock:
            if self._cache.get(token) is entry:
                del self._cache[token]
                self._cache_bytes -= entry.size

    def _discover_jwks_uri(self) -> str:
        metadata = discover(self.issuer, session=self._session, timeout=self._timeout,
                            cache=self._metadata)
        uri = metadata.get("jwks_uri")
        if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
            raise DiscoveryError("discovery_error", f"the metadata of {self.issuer} has no "
                                 "usable jwks_uri")
        return uri


def check_claims(claims: Mapping[str, Any], header: Mapping[str, Any], *, issuer: str,
                 audiences: frozenset[str], leeway: float,
                 now: float) -> tuple[ValidatedToken, float | None]:
    """Step 4 (claims): the :class:`ValidatedToken` of ``claims`` (a JWT's payload, or an
    introspection answer), and its ``nbf``; else :class:`InvalidTokenError`. One check per
    claim, in a fixed order: required claims present, ``iss`` exactly ``issuer``, ``aud``
    naming one of ``audiences``, the times within ``leeway`` of ``now``, then the types of
    ``sub``, ``client_id``, ``jti`` and ``scope``."""
    for name in REQUIRED_CLAIMS:
        if name not in claims:
            raise InvalidTokenError("missing_claim", f"claim {name} is missing",
                                    claim=name)
    iss = claims["iss"]
    if type(iss) is not str:
        raise InvalidTokenError("invalid_claim", "claim iss is not a string", claim="iss")
    if iss != issuer:  # exact: no prefix/substring games
        raise InvalidTokenError("wrong_issuer", f"iss is {shown(iss, 60)}, not the "
                                "configured issuer", claim="iss")
    aud = claims["aud"]
    if type(aud) is str:
        audience: tuple[str, ...] = (aud,)
    elif type(aud) is list and aud and all(type(a) is str for a in aud):
        audience = tuple(aud)
    else:
        raise InvalidTokenError("invalid_claim", "claim aud is not a string or a list of "
                                "strings", claim="aud")
    if audiences.isdisjoint(audience):
        raise InvalidTokenError("wrong_audience", "aud does not name this API",
                                claim="aud")
    exp = _number(claims, "exp")
    iat = _number(claims, "iat")
    nbf = _number(claims, "nbf")
    check_times(exp, nbf, iat, now, leeway)  # type: ignore[arg-type]
    for name in ("sub", "client_id", "jti"):
        if type(claims[name]) is not str or not claims[name]:
            raise InvalidTokenError("invalid_claim", f"claim {name} is not a non-empty "
                                    "string", claim=name)
    scope = claims.get("scope", "")  # a present null is of the wrong type, not absent
    if type(scope) is not str:
        raise InvalidTokenError("invalid_claim", "claim scope is not a string",
                                claim="scope")
    granted: tuple[str, ...] = tuple(dict.fromkeys(scope.split()))
    jkt = _confirmation(claims)
    validated = ValidatedToken(
        subject=claims["sub"], client_id=claims["client_id"], scopes=granted,
        expires_at=exp, issued_at=iat, audience=audience,  # type: ignore[arg-type]
        issuer=iss, jti=claims["jti"], claims=MappingProxyType(claims),  # type: ignore[arg-type]
        header=MappingProxyType(header), jkt=jkt)  # type: ignore[arg-type]
    return validated, nbf


def _confirmation(claims: Mapping[str, Any]) -> str | None:
    """``cnf.jkt`` (RFC 9449 §6), None without ``cnf``. A ``cnf`` naming only confirmation
    methods this validator cannot check (``x5t#S256``, ...) is refused: accepting such a
    token as a bearer token would drop its binding."""
    if "cnf" not in claims:
        return None
    cnf = claims["cnf"]
    if type(cnf) is not dict:
        raise InvalidTokenError("invalid_claim", "claim cnf is not an object", claim="cnf")
    if "jkt" not in cnf:
        methods = ", ".join(shown(name) for name in list(cnf)[:3]) or "none"
        raise InvalidTokenError("invalid_claim", f"claim cnf names no confirmation method "
                                f"this API can check (has {methods}; only jkt)", claim="cnf")
    jkt = cnf["jkt"]
    if type(jkt) is not str or not 0 < len(jkt) <= _MAX_JKT:
        raise InvalidTokenError("invalid_claim", "claim cnf.jkt is not a thumbprint",
                                claim="cnf")
    return jkt


def check_scopes(scopes: str | Iterable[str], granted: frozenset[str]) -> None:
    """:class:`InsufficientScopeError` unless ``granted`` holds every scope asked for: one
    string is space-separated, each item of a list is one scope."""
    if scopes:
        required = tuple(as_list(scopes, split=isinstance(scopes, str)))
        if not granted.issuperset(required):
            raise InsufficientScopeError(required, granted)


def check_times(exp: float, nbf: float | None, iat: float, now: float, leeway: float) -> None:
    """``exp``, ``nbf`` and ``iat`` against ``now``, each allowed ``leeway`` seconds of skew;
    the error says by how much a token is late or early."""
    if now >= exp + leeway:
        raise InvalidTokenError("expired", f"expired {_secs(now - exp)} s ago (leeway "
                                f"{_secs(leeway)} s)", claim="exp")
    if nbf is not None and nbf > now + leeway:
        raise InvalidTokenError("not_yet_valid", f"not valid for another "
                                f"{_secs(nbf - now)} s (nbf; leeway {_secs(leeway)} s)",
                                claim="nbf")
    if iat > now + leeway:
        raise InvalidTokenError("not_yet_valid", f"issued {_secs(iat - now)} s in the "
                                f"future (iat; leeway {_secs(leeway)} s)", claim="iat")


def _shape(raw: bytes) -> str:
    """Why ``raw`` is not a compact JWS, in a few words."""
    if raw[:1] == b"{":
        return "JWS JSON serialization is not accepted; a compact JWS is expected"
    dots = raw.count(b".")
    if dots == 4:
        return "a JWE (five segments): encrypted tokens are not accepted"
    if dots != 2:
        return f"{dots + 1} segments; a compact JWS has three"
    return "not three base64url segments"
