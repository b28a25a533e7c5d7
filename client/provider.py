"""``TokenProvider``: a client-credentials token, cached until shortly before it expires,
fetched once however many threads ask (single flight per cache key), refreshed with retries,
and served from the cache while a refresh fails and the token is still valid."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import requests

from ._arguments import as_list
from ._flow import Flow, called, run
from ._http import DEFAULT_MAX_BYTES
from ._jwt import unverified_jwt
from .assertions import PrivateKey, load_private_key
from .discovery import MetadataCache
from .dpop import DPoPKey, DPoPNonceStore
from .errors import OAuthError
from .retry import RetryPolicy
from .tokens import AuthMethod, Token, TokenRequest

__all__ = ["TokenCache", "TokenProvider"]

log = logging.getLogger("m2mauth.client")

#: Default refresh margin: refetch this many seconds before the token expires...
DEFAULT_REFRESH_MARGIN = 60.0
#: ...but never earlier than this fraction of the token's lifetime before expiry, so a token
#: that arrives with little time left is still used (no refresh storm).
MAX_MARGIN_FRACTION = 0.5
#: The key of the cache-key HMAC: random, made once per process at import. Module-level
#: and still no mutable state – it never changes after import, and a per-process value is
#: what keeps cache keys equal for equal inputs across providers (and their shared caches)
#: while making them useless for guessing a secret in any other process.
_CACHE_KEY_SECRET = secrets.token_bytes(32)


@dataclass(frozen=True)
class CachedToken:
    """A token in the cache: serve it until ``refresh_at``; it is usable until ``expires_at``."""

    token: Token
    refresh_at: float
    expires_at: float


_Lock = TypeVar("_Lock")
_T = TypeVar("_T")


class KeyLock:
    """One cache key's lock: ``with`` for threads, ``async with`` for asyncio tasks. The
    asyncio side keeps one ``asyncio.Lock`` per event loop, since such a lock is bound to the
    loop it first waited in and a provider may outlive one ``asyncio.run``."""

    def __init__(self) -> None:
        self._thread_lock = threading.Lock()
        self._guard = threading.Lock()
        self._loop_locks: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    def __enter__(self) -> KeyLock:
        self._thread_lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread_lock.release()

    def _loop_lock(self) -> Any:
        import asyncio  # only async callers pay for it

        loop = asyncio.get_running_loop()
        with self._guard:
            lock = self._loop_locks.get(loop)
            if lock is None:
                lock = self._loop_locks[loop] = asyncio.Lock()
        return lock

    async def __aenter__(self) -> KeyLock:
        await self._loop_lock().acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._loop_lock().release()


class TokenCache(Generic[_Lock]):
    """Tokens by cache key, with one lock per key: single flight for a key, no waiting across
    keys. Providers that share one cache share tokens (same key, same token); the default
    :class:`KeyLock` serves both threaded and asyncio providers."""

    def __init__(self, lock_factory: Callable[[], _Lock] = KeyLock) -> None:  # type: ignore[assignment]
        self._guard = threading.Lock()
        self._entries: dict[str, CachedToken] = {}
        self._locks: dict[str, _Lock] = {}
        self._lock_factory = lock_factory

    def get(self, key: str) -> CachedToken | None:
        return self._entries.get(key)

    def put(self, key: str, entry: CachedToken) -> None:
        with self._guard:  # so discard()'s check-then-delete never removes a newer token
            self._entries[key] = entry

    def replace(self, key: str, old: CachedToken, new: CachedToken) -> bool:
        """Put ``new`` only if the key still holds ``old`` (not discarded or replaced since)."""
        with self._guard:
            if self._entries.get(key) is not old:
                return False
            self._entries[key] = new
            return True

    def lock(self, key: str) -> _Lock:
        lock = self._locks.get(key)
        if lock is None:
            with self._guard:
                lock = self._locks.setdefault(key, self._lock_factory())
        return lock

    def discard(self, key: str, access_token: str | None = None) -> None:
        """Drop the key's token – only if it is still ``access_token`` when one is given (a
        token another caller already replaced stays)."""
        with self._guard:
            entry = self._entries.get(key)
            if entry is not None and (access_token is None
                                      or entry.token.access_token == access_token):
                del self._entries[key]

    def clear(self) -> None:
        with self._guard:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def cache_key(
    *, endpoint: str, client_id: str, credential: object, auth_method: str, scopes: Sequence[str],
    resources: Sequence[str], extra_params: Mapping[str, str | Sequence[str]] | None,
    dpop_jkt: str | None = None,
) -> str:
    """A key covering everything that changes which token the server gives: endpoint (or
    issuer), client id, a hash of the credential, auth method, scopes (sorted), resources,
    any extra parameters and the DPoP key's thumbprint (``dpop_jkt``, None for bearer
    tokens), so a bearer token and a DPoP-bound one, or tokens bound to two keys, never
    share an entry. The credential itself never appears in the key."""
    extras = sorted((k, sorted(as_list(v))) for k, v in (extra_params or {}).items())
    material = json.dumps([endpoint, client_id, auth_method, sorted(set(scopes)),
                           sorted(set(resources)), extras, dpop_jkt])
    # Keyed, not a plain hash: a plain SHA-256 over guessable parameters and SHA-256(secret)
    # gives a weak secret back to a dictionary in microseconds.
    digest = hmac.new(_CACHE_KEY_SECRET, material.encode(), hashlib.sha256)
    digest.update(b"\0" + _credential_fingerprint(credential))
    return digest.hexdigest()


def _credential_fingerprint(credential: object) -> bytes:
    if credential is None:
        return b""
    if isinstance(credential, str):
        credential = credential.encode()
    if isinstance(credential, bytes):
        return hashlib.sha256(credential).digest()
    from cryptography.hazmat.primitives import serialization

    # A key object: its public half names it.
    public = credential.public_key().public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(public).digest()


def _jwt_claims(access_token: str) -> dict[str, Any]:
    """A JWT's claims read without verification (only to time the refresh); {} when the token
    is not a JWT."""
    try:
        return unverified_jwt(access_token)[1]
    except ValueError:
        return {}


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def jwt_expiry(access_token: str) -> float | None:
    """The ``exp`` claim of a JWT access token, read without verification; None when the
    token is not a JWT or has no numeric ``exp``."""
    return _number(_jwt_claims(access_token).get("exp"))


def jwt_lifetime(access_token: str) -> float | None:
    """``exp - iat`` of a JWT access token: its lifetime on the issuer's clock, which holds on
    ours however far the two clocks disagree; None without both claims."""
    claims = _jwt_claims(access_token)
    exp, iat = _number(claims.get("exp")), _number(claims.get("iat"))
    return exp - iat if exp is not None and iat is not None and exp > iat else None


class _Timing:
    """How long a token is served: shared by the sync and async providers."""

    def __init__(self, refresh_margin: float, default_expires_in: float) -> None:
        if refresh_margin < 0 or default_expires_in <= 0:
            raise ValueError("refresh_margin must be >= 0 and default_expires_in > 0")
        self.refresh_margin = refresh_margin
        self.default_expires_in = default_expires_in
        self._warned_no_expiry = False

    def entry(self, token: Token, fetched_at: float) -> CachedToken:
        expires_at = token.expires_at
        if expires_at is None:
            lifetime = jwt_lifetime(token.access_token)
            if lifetime is not None:
                expires_at, source = fetched_at + lifetime, "the JWT's exp - iat"
            else:
                expires_at, source = jwt_expiry(token.access_token), "the JWT's exp claim"
            if expires_at is None:
                expires_at = fetched_at + self.default_expires_in
                source = f"the default of {self.default_expires_in:g} s"
            if not self._warned_no_expiry:
                self._warned_no_expiry = True
                log.warning("token response has no expires_in; timing the refresh from %s",
                            source)
        lifetime = max(expires_at - fetched_at, 0.0)
        margin = min(self.refresh_margin, MAX_MARGIN_FRACTION * lifetime)
        return CachedToken(token, expires_at - margin, expires_at)


def _failed_refresh(entry: CachedToken, now: float, exc: OAuthError) -> CachedToken:
    """Keep serving a still-valid token after a failed refresh; try again halfway to expiry
    (at most 30 s later) rather than on every call."""
    log.warning("token refresh failed (%s); serving the cached token, valid for %.0f s more",
                exc, entry.expires_at - now)
    retry_at = now + min(30.0, (entry.expires_at - now) / 2)
    return CachedToken(entry.token, retry_at, entry.expires_at)


@dataclass(eq=False, repr=False)
class _ProviderBase:
    """What the threaded and asyncio providers share: their parameters (declared once, here:
    each provider adds only its HTTP client), cache key, timing and the refresh flow. The
    arguments stay readable as attributes of the same names; the request is prepared from
    them once, so changing one later changes nothing."""

    _kind: ClassVar[str] = "TokenProvider"

    token_url: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    scope: str | Sequence[str] | None = None
    _: KW_ONLY
    issuer: str | None = None
    private_key: PrivateKey | str | bytes | None = None
    kid: str | None = None
    resource: str | Sequence[str] | None = None
    #: None: ``private_key_jwt`` when a private key is given, else ``client_secret_basic``.
    auth_method: AuthMethod | str | None = None
    extra_params: Mapping[str, str | Sequence[str]] | None = None
    refresh_margin: float = DEFAULT_REFRESH_MARGIN
    default_expires_in: float = 300.0
    timeout: float = 10.0
    #: None: ``RetryPolicy()``.
    retry: RetryPolicy | None = None
    clock: Callable[[], float] = time.time
    #: None: a cache of this provider's own.
    cache: TokenCache[Any] | None = None
    #: None: a metadata cache of this provider's own (for ``issuer=``).
    metadata_cache: MetadataCache | None = None
    #: Token and metadata responses larger than this are refused (``TransportError``).
    max_response_bytes: int = DEFAULT_MAX_BYTES
    #: DPoP (RFC 9449): the key that tokens are bound to; every token request carries a
    #: proof of it and the token must come back as ``token_type`` DPoP.
    dpop_key: DPoPKey | None = None
    #: True: DPoP with a new ES256 key, kept for this provider's lifetime (``dpop_key``).
    dpop: bool = False

    def __post_init__(self) -> None:
        if self.dpop_key is None and self.dpop:
            self.dpop_key = DPoPKey.generate("ES256", clock=self.clock)
        self.dpop = self.dpop_key is not None
        #: The token endpoint's latest DPoP-Nonce, for the next proof (RFC 9449 §8).
        self._dpop_nonces = DPoPNonceStore(4)
        private_key = self.private_key
        if self.auth_method is None:
            self.auth_method = ("private_key_jwt" if private_key is not None
                                else "client_secret_basic")
        if isinstance(private_key, (str, bytes)):
            # Parsed once, not per assertion; and the PEM text is not kept around.
            private_key = self.private_key = load_private_key(private_key)
        scopes = as_list(self.scope, split=True)
        resources = as_list(self.resource)
        # Made here, so that the arguments are checked here (ValueError before any I/O).
        self._request = TokenRequest(
            token_url=self.token_url, issuer=self.issuer, client_id=self.client_id or "",
            client_secret=self.client_secret, private_key=private_key, kid=self.kid,
            scope=scopes, resource=resources, auth_method=self.auth_method,
            timeout=self.timeout, clock=self.clock, extra_params=self.extra_params,
            max_response_bytes=self.max_response_bytes,
            dpop_key=self.dpop_key, dpop_nonces=self._dpop_nonces,
            # "is not None": a MetadataCache has __len__, so a given (still empty) one is falsy.
            metadata_cache=(self.metadata_cache if self.metadata_cache is not None
                            # backoff 0: the retry policy paces this provider's attempts;
                            # a remembered failure would answer all of them at once.
                            else MetadataCache(backoff=0.0)),
        )
        self._retry = self.retry or RetryPolicy()
        self._timing = _Timing(self.refresh_margin, self.default_expires_in)
        self._cache: TokenCache[Any] = self.cache if self.cache is not None else TokenCache()
        self._key = cache_key(
            endpoint=self.token_url or f"issuer:{self.issuer}", client_id=self.client_id or "",
            credential=(private_key if self.auth_method == "private_key_jwt"
                        else self.client_secret),
            auth_method=self.auth_method, scopes=scopes, resources=resources,
            extra_params=self.extra_params,
            dpop_jkt=None if self.dpop_key is None else self.dpop_key.thumbprint,
        )
        self._scopes = scopes

    def __repr__(self) -> str:
        where = self.token_url or self.issuer
        dpop = "" if self.dpop_key is None else f" dpop={self.dpop_key.thumbprint}"
        return (f"<{self._kind} client_id={self.client_id!r} auth_method={self.auth_method}"
                f" scope={' '.join(self._scopes)!r}{dpop} at {where}>")

    @property
    def cache_key(self) -> str:
        """The key this provider's token is cached under: an HMAC under a random per-process key,
        so no secret can be guessed from it; equal for equal inputs within this process only."""
        return self._key

    def invalidate(self, access_token: str | None = None) -> None:
        """Forget the cached token (only if it is still ``access_token``, when given): for a
        resource server's 401 ``invalid_token``, so the next call fetches a new one."""
        self._cache.discard(self._key, access_token)

    def _fresh(self) -> CachedToken | None:
        entry = self._cache.get(self._key)
        if entry is not None and self.clock() < entry.refresh_at:
            return entry
        return None

    def _refresh(self) -> Flow[Token]:
        """The refresh as a flow, for a caller that holds the key's lock: the token another
        caller refreshed meanwhile; else one fetched with retries and cached; else, when that
        fails, the cached token while it is still valid; else the error."""
        # Another thread or task may have refreshed while this one waited for the lock.
        entry = self._fresh()
        if entry is not None:
            return entry.token
        entry = self._cache.get(self._key)
        try:
            token = yield from self._retry.flow(lambda: called(self._fetch), self.clock)
        except OAuthError as exc:
            # Read the clock after the retries, which take time: the cached token may have
            # expired meanwhile, and the next attempt is timed from now.
            now = self.clock()
            if entry is not None and self._keep_serving(entry, now, exc):
                return entry.token
            raise
        # The lifetime counts from the token's arrival, not from before the retries.
        self._cache.put(self._key, self._timing.entry(token, self.clock()))
        return token

    def _keep_serving(self, entry: CachedToken, now: float, exc: OAuthError) -> bool:
        """After a failed refresh: whether the cached ``entry`` may still be served – not if it
        expired, and not if it was invalidated meanwhile (a resource server rejected it)."""
        return (now < entry.expires_at
                and self._cache.replace(self._key, entry, _failed_refresh(entry, now, exc)))

    def _fetch(self) -> Any:
        """One token request over this provider's HTTP client: a :class:`Token`, or on the
        asyncio side an awaitable of one. (The refresh calls it once per attempt.)"""
        return self._drive(self._request.flow())

    def _drive(self, flow: Flow[_T]) -> Any:
        """Run ``flow`` with this provider's I/O: its result, or an awaitable of it."""
        raise NotImplementedError


@dataclass(eq=False, repr=False)
class TokenProvider(_ProviderBase):
    """Client-credentials tokens for one client, cached and refreshed.

    ``TokenProvider(token_url, client_id, client_secret, scope)`` as in the tutorial, or with
    ``issuer=`` to discover the token endpoint. ``get_token()`` returns the access token
    string. The token is refetched ``refresh_margin`` seconds before it expires, but never
    earlier than half its lifetime before expiry. Without ``expires_in`` in the response the
    JWT's ``exp`` is used, else ``default_expires_in``. A failed refresh while the cached
    token is still valid is logged and the cached token served; an expired one raises.
    Providers given the same ``cache`` share tokens for the same cache key. ``session``: the
    ``requests.Session`` to use (else one of its own).

    DPoP (RFC 9449): ``dpop_key=DPoPKey(...)``, or ``dpop=True`` for a new ES256 key kept as
    ``provider.dpop_key``. Each token request then carries a proof (``htm`` POST, ``htu`` the
    token endpoint); a ``400 use_dpop_nonce`` with a ``DPoP-Nonce`` header is retried once
    with that nonce, which is kept for the next request. A token whose ``token_type`` is not
    DPoP raises :class:`~m2mauth.client.DPoPTokenTypeError` (not retried). The adapters
    (:class:`~m2mauth.client.RequestsBearerAuth`, :class:`~m2mauth.client.HttpxBearerAuth`)
    then send ``Authorization: DPoP <token>`` with a proof per request.
    """

    session: requests.Session | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._session = self.session or requests.Session()

    def get_token(self) -> str:
        """The access token string, from the cache while it is fresh."""
        entry = self._fresh()
        return entry.token.access_token if entry is not None else self.get().access_token

    def get(self) -> Token:
        """The whole :class:`Token`, fetching one if the cached one is due for refresh."""
        entry = self._fresh()
        if entry is not None:
            return entry.token
        with self._cache.lock(self._key):
            return self._drive(self._refresh())

    def _drive(self, flow: Flow[_T]) -> _T:
        return run(flow, session=self._session, sleep=self._retry.sleep)
