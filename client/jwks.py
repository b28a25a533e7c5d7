"""The issuer's signing keys for a resource server: a JWKS cache that resists abuse.

* Keys are parsed once per JWKS document into ready PyJWT/cryptography key objects (a key
  unchanged across refreshes keeps its object), never per token.
* Time to live: ``Cache-Control: max-age`` of the JWKS response, clamped to
  ``[min_ttl, max_ttl]`` (``default_ttl`` without one; ``no-cache``/``no-store`` mean
  ``min_ttl``). An expired set is refreshed on the next use.
* An unknown ``kid`` refetches the JWKS at most once per ``cooldown`` (30 s): a rotated key
  is picked up at once, while a flood of junk kids costs one fetch per cooldown. One fetch is
  in flight at a time; callers that arrive meanwhile wait for it and use its result. A kid
  that a fresh fetch did not bring is refused without fetching for ``negative_ttl``.
* A failed refresh keeps the last good set usable until ``max_stale`` seconds after it
  expired, then fails closed (:class:`JWKSError`). After a failure no new attempt is made for
  ``failure_backoff`` seconds, so a down JWKS endpoint is not hammered by every request.
* The ``jwk``/``jku``/``x5u``/``x5c`` headers of a token are never looked at: keys come from
  the configured JWKS URI only. ``oct`` (symmetric) keys, keys with private members, keys not
  for signatures, RSA keys under 2048 bits and keys whose ``alg`` contradicts their type or
  curve are ignored.
* Thread-safe; every time read goes through the injectable ``clock``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import requests
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import Algorithm, get_default_algorithms
from jwt.exceptions import PyJWTError

from ._algorithms import ASYMMETRIC_ALGORITHMS, DEFAULT_ALGORITHMS, algorithms_for
from ._http import DEFAULT_MAX_BYTES, BodyTooLarge, DeadlinePassed, read_body
from ._untrusted import shown
from .errors import InvalidTokenError, JWKSError, root_cause

__all__ = ["ASYMMETRIC_ALGORITHMS", "JWKSCache", "KeySet", "VerificationKey"]

_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_MIN_RSA_BITS = 2048
_STRING_MEMBERS = MappingProxyType({"kty": "key type", "crv": "curve", "alg": "algorithm",
                                    "kid": "key id", "use": "use"})
_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d{1,10})\"?", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|[,\s])no-(?:cache|store)\b", re.IGNORECASE)


@dataclass(frozen=True, eq=False)
class VerificationKey:
    """One usable JWKS key: ``key`` is the cryptography public key, ``algorithms`` the JWS
    algorithms it may verify (from its ``alg``, else its type and curve)."""

    kid: str | None
    kty: str
    crv: str | None
    algorithms: frozenset[str]
    key: Any = field(repr=False)

    def describe(self) -> str:
        kind = f"{self.crv} {self.kty}" if self.crv else self.kty
        return f"a {kind} key for {', '.join(sorted(self.algorithms))}"


@dataclass(frozen=True, eq=False)
class KeySet:
    """One fetched JWKS: immutable, replaced as a whole on refresh."""

    by_kid: Mapping[str | None, tuple[VerificationKey, ...]]
    fetched_at: float
    expires_at: float
    #: Increases with every successful fetch; caches of verified tokens compare it.
    generation: int
    ignored: tuple[str, ...] = ()
    #: The parsed keys by their JWK's canonical JSON, so a refresh reuses unchanged ones.
    fingerprints: Mapping[str, VerificationKey] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_kid.values())

    def contains(self, kid: str | None, key: VerificationKey) -> bool:
        """Whether ``key`` (under ``kid``) is in this set: the same object, or – for a key
        that left the JWKS and came back, parsed anew – the same public key."""
        candidates = self.by_kid.get(kid, ())
        return any(k is key for k in candidates) or any(
            k.algorithms == key.algorithms and _public_bytes(k.key) == _public_bytes(key.key)
            for k in candidates)


def _public_bytes(key: Any) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _ttl_from(cache_control: str | None, default: float, low: float, high: float) -> float:
    ttl = default
    if cache_control:
        if _NO_CACHE.search(cache_control):
            ttl = low
        else:
            found = _MAX_AGE.search(cache_control)
            if found:
                ttl = float(found.group(1))
    return min(max(ttl, low), high)


def parse_jwk(jwk: Mapping[str, Any], allowed: Iterable[str],
              algorithms: Mapping[str, Algorithm] | None = None) -> VerificationKey:
    """A :class:`VerificationKey` for one public JWK, or ``ValueError`` saying why not."""
    algorithms = algorithms or get_default_algorithms()
    allowed = frozenset(allowed) & ASYMMETRIC_ALGORITHMS
    if not isinstance(jwk, Mapping):
        raise ValueError("not a JSON object")
    # JSON lets every member be a list or an object; one such key must be skipped, not raise
    # TypeError (unhashable) later and break validation with every other key of the set.
    for name, what in _STRING_MEMBERS.items():
        if name in jwk and not isinstance(jwk[name], str):
            raise ValueError(f"{what} ({name}) is not a string")
    kty, crv, alg, kid = jwk.get("kty"), jwk.get("crv"), jwk.get("alg"), jwk.get("kid")
    if kty == "oct":
        raise ValueError("symmetric (oct) keys are never taken from a JWKS")
    if _PRIVATE_MEMBERS & set(jwk):
        raise ValueError("has private key members")
    if jwk.get("use", "sig") != "sig":
        raise ValueError(f"use is {jwk.get('use')!r}, not 'sig'")
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise ValueError("key_ops does not include 'verify'")
    possible = algorithms_for(kty, crv)
    if alg is not None:
        if alg == "Ed25519" and crv == "Ed25519":  # RFC 9864's fully specified name
            alg = "EdDSA"
        if alg not in possible:
            raise ValueError(f"alg {alg!r} does not fit a {crv or ''} {kty} key".replace("  ", " "))
        possible = frozenset({alg})
    usable = possible & allowed
    if not usable:
        raise ValueError(f"none of its algorithms ({', '.join(sorted(possible))}) is allowed")
    some = next(iter(sorted(usable)))
    try:
        key = algorithms[some].from_jwk(dict(jwk))
        key = algorithms[some].prepare_key(key)  # checks the EC curve against the alg too
    except (PyJWTError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"unreadable: {exc}") from None
    if hasattr(key, "private_bytes"):  # belt and braces: never hold private material
        key = key.public_key()
    if kty == "RSA" and key.key_size < _MIN_RSA_BITS:
        raise ValueError(f"RSA key of {key.key_size} bits (at least {_MIN_RSA_BITS} needed)")
    return VerificationKey(kid, kty, crv, usable, key)


def _fingerprint(jwk: Mapping[str, Any]) -> str:
    return json.dumps(jwk, sort_keys=True, separators=(",", ":"), default=str)


class JWKSCache:
    """Keys of one JWKS URI for token validation; see the module docstring for the policy.

    ``get(kid, alg)`` is what a validator calls; ``keyset()`` gives the current set
    (refreshing it when expired). ``fetch`` may replace the HTTP download for tests and
    offline use: a callable returning ``(jwks_document, cache_control_header_or_None)``.
    """

    def __init__(
        self,
        jwks_uri: str | None,
        *,
        algorithms: Iterable[str] = DEFAULT_ALGORITHMS,
        session: requests.Session | None = None,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
        default_ttl: float = 300.0,
        min_ttl: float = 60.0,
        max_ttl: float = 86400.0,
        cooldown: float = 30.0,
        negative_ttl: float = 60.0,
        max_stale: float = 900.0,
        failure_backoff: float = 5.0,
        max_keys: int = 100,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_negative: int = 4096,
        fetch: Callable[[], tuple[Any, str | None]] | None = None,
    ) -> None:
        if jwks_uri is None and fetch is None:
            raise ValueError("give a jwks_uri or a fetch function")
        if not 0 <= min_ttl <= max_ttl:
            raise ValueError("need 0 <= min_ttl <= max_ttl")
        for name, value in (("cooldown", cooldown), ("negative_ttl", negative_ttl),
                            ("max_stale", max_stale), ("failure_backoff", failure_backoff)):
            if value < 0:
                raise ValueError(f"{name} must not be negative")
        self.jwks_uri = jwks_uri
        self.algorithms = frozenset(algorithms) & ASYMMETRIC_ALGORITHMS
        self.timeout = timeout
        self.clock = clock
        self.default_ttl, self.min_ttl, self.max_ttl = default_ttl, min_ttl, max_ttl
        self.cooldown, self.negative_ttl = cooldown, negative_ttl
        self.max_stale, self.failure_backoff = max_stale, failure_backoff
        self.max_keys, self.max_bytes, self.max_negative = max_keys, max_bytes, max_negative
        self._session = session
        self._fetch_fn = fetch
        self._pyjwt_algorithms = get_default_algorithms()
        self._lock = threading.Lock()          # guards the small state below
        self._fetch_lock = threading.Lock()    # one fetch in flight
        self._keyset: KeySet | None = None
        self._generation = 0
        self._attempts = 0                     # fetch attempts, successful or not
        self._in_flight = False
        self._next_attempt = float("-inf")     # after a failure: no new attempt before this
        self._next_unknown_refetch = float("-inf")
        self._last_error: JWKSError | None = None
        self._unknown: dict[str, float] = {}   # negative cache: kid -> refuse-until
        #: Successful and failed fetches, for tests and metrics.
        self.fetches = 0
        self.failures = 0

    # -- what a validator calls ------------------------------------------------------------

    def get(self, kid: str | None, alg: str) -> VerificationKey:
        """The key to verify an ``alg`` token with ``kid``; :class:`InvalidTokenError`
        (``unknown_key`` / ``key_mismatch``) or :class:`JWKSError` when there is none."""
        now = self.clock()
        keyset = self.keyset(now)
        if kid is None:  # no kid: only unambiguous when one key can verify this alg
            candidates = [k for keys in keyset.by_kid.values() for k in keys
                          if alg in k.algorithms]
            if len(candidates) != 1:
                raise InvalidTokenError(
                    "unknown_key", f"the token has no kid and the JWKS has "
                    f"{len(candidates)} keys for {alg}")
            return candidates[0]
        found = keyset.by_kid.get(kid)
        if found is None:
            keyset = self._refetch_for(kid, now)
            found = keyset.by_kid.get(kid)
            if found is None:
                raise InvalidTokenError(
                    "unknown_key", f"no key {shown(kid)} in the issuer's JWKS")
        for key in found:
            if alg in key.algorithms:
                return key
        raise InvalidTokenError(
            "key_mismatch", f"key {shown(kid)} is {found[0].describe()}, not for {alg}")

    def keyset(self, now: float | None = None) -> KeySet:
        """The current key set, fetched or refreshed first when missing or expired. A failed
        refresh returns the old set while it is within ``max_stale`` of its expiry."""
        if now is None:
            now = self.clock()
        keyset = self._keyset
        if keyset is not None and now < keyset.expires_at:
            return keyset
        return self._refresh(now)

    @property
    def current(self) -> KeySet | None:
        """The set in use, without fetching (None before the first fetch)."""
        return self._keyset

    def refresh(self) -> KeySet:
        """Fetch now (regardless of TTL and cooldown); raises :class:`JWKSError` on failure."""
        self._take_turn()
        try:
            return self._fetch(self.clock())
        finally:
            self._fetch_lock.release()

    # -- internals ---------------------------------------------------------------------------

    def _usable_stale(self, now: float) -> KeySet | None:
        keyset = self._keyset
        if keyset is not None and now < keyset.expires_at + self.max_stale:
            return keyset
        return None

    def _take_turn(self) -> None:
        """Acquire the fetch lock, waiting no longer than one fetch may take (``timeout``):
        a fetch in flight ends by then, so a longer wait means something is wrong."""
        if not self._fetch_lock.acquire(timeout=self.timeout):
            raise JWKSError(error_description=f"a JWKS fetch in progress did not finish "
                            f"within {self.timeout:g} s")

    def _refresh(self, now: float) -> KeySet:
        seen = self._attempts
        try:
            self._take_turn()
        except JWKSError:
            stale = self._usable_stale(now)
            if stale is not None:
                return stale
            raise
        try:
            keyset = self._keyset
            if keyset is not None and now < keyset.expires_at:
                return keyset  # refreshed by another thread while we waited
            if self._attempts == seen and now >= self._next_attempt:
                try:
                    return self._fetch(now)
                except JWKSError:
                    pass
            stale = self._usable_stale(now)
            if stale is not None:
                return stale
            error = self._last_error
            if keyset is not None:
                raise JWKSError(
                    error_description=f"the JWKS expired {now - keyset.expires_at:.0f} s ago "
                    f"and cannot be refreshed ({error.error_description if error else '?'}); "
                    f"stale keys are used for at most {self.max_stale:g} s") from error
            raise JWKSError(error_description=error.error_description if error else
                            "the JWKS could not be fetched") from error
        finally:
            self._fetch_lock.release()

    def _refetch_for(self, kid: str, now: float) -> KeySet:
        """After an unknown kid: a new set when a refetch is allowed, else the current one."""
        with self._lock:
            until = self._unknown.get(kid)
            if until is not None and until <= now:
                del self._unknown[kid]
                until = None
            cooling = not self._in_flight and now < self._next_unknown_refetch
            if until is not None or cooling:
                if until is None:
                    # First seen after the last refetch, so no fetch has looked for it yet:
                    # refused only until the next permitted refetch, which looks (a key
                    # published since must not wait for negative_ttl after an older fetch).
                    self._remember_unknown(kid, self._next_unknown_refetch)
                return self._keyset  # type: ignore[return-value]
        seen = self._attempts
        self._take_turn()  # JWKSError: we could not check this kid in time
        try:
            if self._attempts == seen:  # nobody fetched while we waited: our turn?
                if now < self._next_unknown_refetch or now < self._next_attempt:
                    with self._lock:  # not looked for yet: until the next permitted refetch
                        self._remember_unknown(kid, max(self._next_unknown_refetch,
                                                        self._next_attempt))
                    return self._keyset  # type: ignore[return-value]
                self._next_unknown_refetch = now + self.cooldown
                keyset = self._fetch(now)  # JWKSError: we could not check this kid
            else:
                keyset = self._keyset or self.keyset(now)
            if kid not in keyset.by_kid:
                with self._lock:
                    self._remember_unknown(kid, now + self.negative_ttl)
            return keyset
        finally:
            self._fetch_lock.release()

    def _remember_unknown(self, kid: str, until: float) -> None:
        if len(self._unknown) >= self.max_negative:
            self._unknown.clear()  # bounded; clearing only costs refetches within cooldown
        self._unknown[kid] = until

    def _fetch(self, now: float) -> KeySet:
        """Download and parse (caller holds the fetch lock). Failures are recorded and raised."""
        self._in_flight = True
        try:
            document, cache_control = self._download()
            keyset = self._parse(document, cache_control, now)
        except JWKSError as exc:
            with self._lock:
                self._attempts += 1
                self.failures += 1
                self._last_error = exc
                self._next_attempt = now + self.failure_backoff
            raise
        finally:
            self._in_flight = False
        with self._lock:
            self._attempts += 1
            self.fetches += 1
            self._keyset = keyset
            self._last_error = None
            self._next_attempt = float("-inf")
            self._unknown.clear()
        return keyset

    def _download(self) -> tuple[Any, str | None]:
        if self._fetch_fn is not None:
            try:
                return self._fetch_fn()
            except JWKSError:
                raise
            except Exception as exc:  # a test's or user's fetcher failing is a fetch failure
                raise JWKSError(error_description=f"JWKS fetch failed: {root_cause(exc)}") from exc
        url = self.jwks_uri
        session = self._session or requests.Session()
        # ``timeout`` is the whole fetch: requests' own timeout is per socket read, which a
        # peer trickling bytes never trips.
        deadline = time.monotonic() + self.timeout
        try:
            with session.get(url, timeout=self.timeout, stream=True, allow_redirects=False,
                             headers={"Accept": "application/json"}) as response:
                if response.status_code != 200:
                    raise JWKSError(error_description=f"JWKS {url} answered HTTP "
                                    f"{response.status_code}", status=response.status_code)
                body = read_body(response, max_bytes=self.max_bytes, deadline=deadline)
                cache_control = response.headers.get("Cache-Control")
        except BodyTooLarge:
            raise JWKSError(error_description=f"JWKS {url} is larger than {self.max_bytes} "
                            "bytes") from None
        except (requests.Timeout, DeadlinePassed):
            raise JWKSError(error_description=f"timed out after {self.timeout} s fetching "
                            f"the JWKS {url}") from None
        except requests.RequestException as exc:
            raise JWKSError(error_description=f"cannot fetch the JWKS {url}: "
                            f"{root_cause(exc)}") from exc
        finally:
            if self._session is None:
                session.close()
        try:
            return json.loads(body), cache_control
        except (ValueError, RecursionError):
            raise JWKSError(error_description=f"JWKS {url} is not JSON") from None

    def _parse(self, document: Any, cache_control: str | None, now: float) -> KeySet:
        if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
            raise JWKSError(error_description="the JWKS is not an object with a 'keys' list")
        old = self._keyset
        previous = old.fingerprints if old is not None else {}
        by_kid: dict[str | None, list[VerificationKey]] = {}
        by_fingerprint: dict[str, VerificationKey] = {}
        ignored: list[str] = []
        for jwk in document["keys"][: self.max_keys]:
            try:
                fingerprint = _fingerprint(jwk)
            except (TypeError, ValueError):
                ignored.append("?: not JSON-serialisable")
                continue
            key = previous.get(fingerprint)
            if key is None:  # parse once; an unchanged key keeps its object across refreshes
                try:
                    key = parse_jwk(jwk, self.algorithms, self._pyjwt_algorithms)
                except (ValueError, TypeError) as exc:  # TypeError: belt and braces, one key
                    kid = jwk.get("kid") if isinstance(jwk, Mapping) else None
                    ignored.append(f"{shown(kid)}: {exc}")
                    continue
            by_fingerprint[fingerprint] = key
            by_kid.setdefault(key.kid, []).append(key)
        ttl = _ttl_from(cache_control, self.default_ttl, self.min_ttl, self.max_ttl)
        self._generation += 1
        return KeySet({k: tuple(v) for k, v in by_kid.items()}, now, now + ttl,
                      self._generation, tuple(ignored), by_fingerprint)

    def __repr__(self) -> str:
        keyset = self._keyset
        size = len(keyset) if keyset is not None else 0
        return f"<JWKSCache {self.jwks_uri!r} keys={size} fetches={self.fetches}>"

