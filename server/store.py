"""The state store: everything mutable that a running issuer holds, behind one interface.

Clients, signing keys and their status, the clock's offset and freeze, the fault queue, the
request logs, the client-assertion ``jti`` replay cache, revoked tokens and opaque tokens live
here and nowhere else, so that
a store shared by several processes or hosts (a later SQLite or Redis implementation of the
same interface) makes them all see one issuer. Endpoints and the lab reach state only through
a :class:`StateStore`; changing how state is kept means another implementation, never an
endpoint change.

Values crossing the interface are immutable (frozen dataclasses, tuples) or plain JSON-shaped
dicts (faults, request records), so that a shared implementation can serialise them. Every
operation that reads and then writes is atomic in the store, not in its caller.

Three implementations, chosen by the ``store`` setting (:func:`parse_store_url`):
:class:`MemoryStore` (the default: one process, a lock for writes, lock-free reads of
immutable snapshots on the token path), :class:`~m2mauth.server.sqlite_store.SQLiteStore`
(one file in WAL mode, for the processes of one host) and
:class:`~m2mauth.server.redis_store.RedisStore` (for several hosts). The shared two keep a
per-process cache of what the token path reads (keys, clients, the clock), checked against
the store's version counters once per call – or once per request, between
:func:`begin_request_reads` and :func:`end_request_reads`, which every issuer app calls
around each request.
"""

from __future__ import annotations

import abc
import heapq
import json
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from .keys import SigningKey
    from .settings import ClientSettings

__all__ = ["STORE_KINDS", "ClockState", "MemoryStore", "StateStore", "begin_request_reads",
           "end_request_reads", "parse_store_url", "redact_url"]

#: The kinds of store the ``store`` setting names.
STORE_KINDS = ("memory", "sqlite", "redis")


@dataclass(frozen=True)
class ClockState:
    """How the issuer's clock differs from real time: an offset, or a frozen instant."""

    offset: float = 0.0
    frozen_at: float | None = None


class StateStore(abc.ABC):
    """The state of one issuer. Implementations must be safe to call from many threads."""

    #: What kind of store this is, as ``/readyz`` reports it ("memory", "sqlite", "redis").
    kind = "custom"

    # -- the store itself -------------------------------------------------------------

    def seeded(self) -> bool:
        """Whether the store holds an issuer already (it was seeded or restored); a new
        shared store does not. A :class:`MemoryStore` is seeded by its constructor."""
        return True

    def seed(self, clients: Iterable[ClientSettings], keys: Iterable[SigningKey]) -> bool:
        """:meth:`restore` to these clients and keys unless the store holds an issuer
        already, in one step: of several processes starting on one new store, one seeds it
        and every other keeps what that one put there. True if this call seeded it."""
        return False

    def seed_when_empty(self, make: Callable[[], tuple[Iterable[ClientSettings],
                                                        Iterable[SigningKey]]]) -> None:
        """From now on, should the store be found holding no issuer (a Redis restarted
        without persistence, or flushed), :meth:`seed` it again with what ``make`` returns,
        as at a first start, instead of answering with no clients and no keys. A store in
        this process cannot lose its state: it ignores this."""
        return None

    def ping(self) -> None:  # noqa: B027 - optional: a store in this process always answers
        """Raise :class:`~m2mauth.server.errors.StoreUnavailableError` unless the store
        answers now (``/readyz``): a real round trip, never a cached answer."""

    @property
    def location(self) -> str:
        """Where the state is, for the start-up banner (a file, a URL without its
        password); empty for a store in this process."""
        return ""

    def close(self) -> None:  # noqa: B027 - optional: only stores with connections close
        """Let go of connections and files; the store is not used afterwards."""

    # -- clients ----------------------------------------------------------------------

    @abc.abstractmethod
    def client(self, client_id: str) -> ClientSettings | None:
        """The registered client ``client_id``, or None."""

    @abc.abstractmethod
    def clients(self) -> tuple[ClientSettings, ...]:
        """Every registered client, in registration order."""

    @abc.abstractmethod
    def add_client(self, client: ClientSettings) -> bool:
        """Register ``client`` unless its id is taken (then False); check and insert are one
        step, so two concurrent adds of one id cannot both succeed."""

    @abc.abstractmethod
    def remove_client(self, client_id: str) -> bool:
        """Forget a client; False if there was none."""

    # -- signing keys -----------------------------------------------------------------

    @abc.abstractmethod
    def signing_keys(self) -> tuple[SigningKey, ...]:
        """Every key with its status, oldest first. The same tuple object is returned until
        the keys change, so callers may cache what they derive from it by identity."""

    @abc.abstractmethod
    def add_signing_key(self, key: SigningKey) -> None:
        """Add ``key`` as the active key of its algorithm; the key that was active for that
        algorithm becomes published, in the same step."""

    @abc.abstractmethod
    def set_key_status(self, kid: str, status: str) -> SigningKey | None:
        """Change a key's status; the changed key, or None if there is no such kid."""

    # -- clock ------------------------------------------------------------------------

    @abc.abstractmethod
    def clock_state(self) -> ClockState:
        """The clock's offset and freeze; read on every timestamp, so it must be cheap."""

    @abc.abstractmethod
    def update_clock(self, change: Callable[[ClockState], ClockState]) -> ClockState:
        """Apply ``change`` to the clock state atomically; the new state."""

    # -- faults -----------------------------------------------------------------------

    @abc.abstractmethod
    def push_fault(self, endpoint: str, fault: Mapping[str, Any]) -> None:
        """Queue ``fault`` (a JSON-shaped dict with an int ``remaining``) for ``endpoint``."""

    @abc.abstractmethod
    def take_fault(self, endpoint: str) -> dict[str, Any] | None:
        """The fault for the response being made now, if any, as it was before this use:
        ``remaining`` goes down by one, and the fault leaves the queue at zero. A fault is
        taken by exactly one request, however many serve at once."""

    @abc.abstractmethod
    def faults(self) -> list[dict[str, Any]]:
        """Every queued fault, in order."""

    @abc.abstractmethod
    def clear_faults(self) -> None: ...

    # -- request logs -----------------------------------------------------------------

    @abc.abstractmethod
    def append_record(self, log: str, record: Mapping[str, Any]) -> None:
        """Append ``record`` (a JSON-shaped dict) to the bounded log named ``log``."""

    @abc.abstractmethod
    def records(self, log: str) -> list[dict[str, Any]]:
        """The log named ``log``, oldest first."""

    @abc.abstractmethod
    def clear_records(self) -> None:
        """Empty every log."""

    # -- client-assertion replay ------------------------------------------------------

    @abc.abstractmethod
    def remember_jti(self, client_id: str, jti: str, expires_at: float, now: float) -> bool:
        """Record an assertion ``jti`` of ``client_id`` until ``expires_at``; False if it was
        seen before and has not expired (a replay), or if no room is left for it in this
        client's share. Entries expire by time (``now``); each client's share is bounded on
        its own, so a client that fills its share never causes another client's refusal."""

    # -- small named values (the DPoP nonce secret, the lab's DPoP nonce switch) --------

    @abc.abstractmethod
    def issuer_value(self, name: str) -> str | None:
        """The issuer's value ``name`` (a short string), or None when it has none."""

    @abc.abstractmethod
    def set_issuer_value(self, name: str, value: str | None, *,
                         only_if_absent: bool = False) -> str | None:
        """Set (None: remove) the value ``name`` (a non-empty string, else ValueError);
        with ``only_if_absent`` a value already
        held is kept. Atomic: of several processes making one secret at once, one wins and
        each gets its value back. Returns the value held afterwards. :meth:`restore`
        forgets every value."""

    # -- revoked tokens (RFC 7009) and opaque tokens -------------------------------------

    @abc.abstractmethod
    def revoke(self, key: str, expires_at: float, now: float) -> bool:
        """Record the token ``key`` (its client and jti,
        :func:`~m2mauth.server.introspection.revocation_key`) as revoked until ``expires_at``
        (when it would have expired anyway, and its entry leaves; revoked again, the later
        expiry wins); False when the list is full of live entries: a revocation is refused
        rather than another one forgotten."""

    @abc.abstractmethod
    def is_revoked(self, key: str, now: float) -> bool: ...

    @abc.abstractmethod
    def add_opaque_token(self, key: str, claims: Mapping[str, Any], expires_at: float,
                         now: float) -> bool:
        """Hold an opaque token's claims under ``key`` (a hash of the token, never the token)
        until ``expires_at``; False when the store is full of live tokens."""

    @abc.abstractmethod
    def opaque_token(self, key: str, now: float) -> dict[str, Any] | None:
        """The claims of the live opaque token ``key``, or None."""

    # -- all of it --------------------------------------------------------------------

    @abc.abstractmethod
    def restore(self, clients: Iterable[ClientSettings], keys: Iterable[SigningKey]) -> None:
        """Back to a start: exactly these clients and keys, real time, no faults, empty logs,
        no remembered jtis, revocations or opaque tokens – in one step."""

    def restore_seed(self) -> bool:
        """:meth:`restore` to the clients and keys the store was seeded with (by
        :meth:`seed`, at its first start or when found empty), in one step, whichever
        process asks: what the lab's reset puts back on a shared store. False, changing
        nothing, when the store keeps no seed (a store in this process, where what the
        process started with is the seed, or a store seeded by an earlier m2mauth)."""
        return False


class MemoryStore(StateStore):
    """The state of one issuer in this process's memory: the default, and the pytest
    plugin's. Bounded: each log keeps its newest ``max_records`` and at most
    ``max_record_bytes`` (the records' strings counted), the replay cache at most
    ``max_jtis_per_client`` live entries per client, the revocation list ``max_revocations``
    and the opaque tokens ``max_opaque_tokens`` live entries."""

    kind = "memory"

    def __init__(self, clients: Iterable[ClientSettings] = (), keys: Iterable[SigningKey] = (),
                 *, max_records: int = 10_000, max_record_bytes: int = 8 * 1024 * 1024,
                 max_jtis_per_client: int = 10_000, max_revocations: int = 100_000,
                 max_opaque_tokens: int = 100_000) -> None:
        self._lock = threading.RLock()
        self._max_records = max_records
        self._max_record_bytes = max_record_bytes
        self._max_jtis_per_client = max_jtis_per_client
        # Read without the lock on the token path: each is replaced whole, never mutated.
        self._clients: dict[str, ClientSettings] = {}
        self._keys: tuple[SigningKey, ...] = ()
        self._clock = ClockState()
        self._faults: dict[str, deque[dict[str, Any]]] = {}
        self._logs: dict[str, _Log] = {}
        # Replay cache: client id -> {jti: expires_at}, and every entry once more in a heap
        # ordered by expiry, so that expired entries are dropped oldest first at O(log n) each
        # instead of by scanning (or rebuilding) everything under the lock.
        self._jtis: dict[str, dict[str, float]] = {}
        self._jti_expiry: list[tuple[float, str, str]] = []
        self._revoked = _Expiring(max_revocations)
        self._opaque = _Expiring(max_opaque_tokens)
        self._values: dict[str, str] = {}
        self.restore(clients, keys)

    # -- clients ----------------------------------------------------------------------

    def client(self, client_id: str) -> ClientSettings | None:
        return self._clients.get(client_id)

    def clients(self) -> tuple[ClientSettings, ...]:
        return tuple(self._clients.values())

    def add_client(self, client: ClientSettings) -> bool:
        with self._lock:
            if client.client_id in self._clients:
                return False
            self._clients = {**self._clients, client.client_id: client}
            return True

    def remove_client(self, client_id: str) -> bool:
        with self._lock:
            if client_id not in self._clients:
                return False
            self._clients = {k: v for k, v in self._clients.items() if k != client_id}
            return True

    # -- signing keys -----------------------------------------------------------------

    def signing_keys(self) -> tuple[SigningKey, ...]:
        return self._keys

    def add_signing_key(self, key: SigningKey) -> None:
        from .keys import ACTIVE, PUBLISHED

        with self._lock:
            demoted = tuple(replace(k, status=PUBLISHED)
                            if k.alg == key.alg and k.status == ACTIVE else k
                            for k in self._keys)
            self._keys = (*demoted, replace(key, status=ACTIVE))

    def set_key_status(self, kid: str, status: str) -> SigningKey | None:
        with self._lock:
            changed = None
            keys = []
            for key in self._keys:
                if key.kid == kid and changed is None:
                    key = changed = replace(key, status=status)
                keys.append(key)
            if changed is not None:
                self._keys = tuple(keys)
            return changed

    # -- clock ------------------------------------------------------------------------

    def clock_state(self) -> ClockState:
        return self._clock

    def update_clock(self, change: Callable[[ClockState], ClockState]) -> ClockState:
        with self._lock:
            self._clock = change(self._clock)
            return self._clock

    # -- faults -----------------------------------------------------------------------

    def push_fault(self, endpoint: str, fault: Mapping[str, Any]) -> None:
        with self._lock:
            self._faults.setdefault(endpoint, deque()).append(dict(fault))

    def take_fault(self, endpoint: str) -> dict[str, Any] | None:
        if not self._faults.get(endpoint):  # the usual case: nothing queued, no lock taken
            return None
        with self._lock:
            queue = self._faults.get(endpoint)
            if not queue:
                return None
            fault = queue[0]
            if fault["remaining"] <= 1:
                queue.popleft()
            else:
                queue[0] = {**fault, "remaining": fault["remaining"] - 1}
            return dict(fault)

    def faults(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(f) for queue in self._faults.values() for f in queue]

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    # -- request logs -----------------------------------------------------------------

    def append_record(self, log: str, record: Mapping[str, Any]) -> None:
        with self._lock:
            entries = self._logs.get(log)
            if entries is None:
                entries = self._logs[log] = _Log()
            entries.append(dict(record), self._max_records, self._max_record_bytes)

    def records(self, log: str) -> list[dict[str, Any]]:
        with self._lock:
            entries = self._logs.get(log)
            return [dict(r) for r in entries.records] if entries is not None else []

    def clear_records(self) -> None:
        with self._lock:
            self._logs.clear()

    # -- client-assertion replay ------------------------------------------------------

    def remember_jti(self, client_id: str, jti: str, expires_at: float, now: float) -> bool:
        with self._lock:
            self._forget_expired_jtis(now)
            seen = self._jtis.setdefault(client_id, {})
            # Every entry left is live (expires_at >= now): being there is a replay.
            if jti in seen:
                return False
            if len(seen) >= self._max_jtis_per_client:
                # This client's share is full of live entries: refuse rather than forget one
                # and allow a replay. Other clients have shares of their own.
                return False
            seen[jti] = expires_at
            heapq.heappush(self._jti_expiry, (expires_at, client_id, jti))
            return True

    def _forget_expired_jtis(self, now: float) -> None:
        """Drop every entry that expired before ``now`` (the caller holds the lock)."""
        expiry = self._jti_expiry
        while expiry and expiry[0][0] < now:
            _, client_id, jti = heapq.heappop(expiry)
            seen = self._jtis.get(client_id)
            if seen is not None:
                seen.pop(jti, None)
                if not seen:
                    del self._jtis[client_id]

    # -- small named values -------------------------------------------------------------

    def issuer_value(self, name: str) -> str | None:
        return self._values.get(name)

    def set_issuer_value(self, name: str, value: str | None, *,
                         only_if_absent: bool = False) -> str | None:
        if value == "":
            raise ValueError("an issuer value is a non-empty string (None removes it)")
        with self._lock:
            held = self._values.get(name)
            if only_if_absent and held is not None:
                return held
            values = dict(self._values)  # replaced whole: read without the lock
            if value is None:
                values.pop(name, None)
            else:
                values[name] = value
            self._values = values
            return value

    # -- revoked and opaque tokens ------------------------------------------------------

    def revoke(self, key: str, expires_at: float, now: float) -> bool:
        with self._lock:
            return self._revoked.put(key, True, expires_at, now)

    def is_revoked(self, key: str, now: float) -> bool:
        if not self._revoked.entries:  # the usual case: nothing revoked, no lock taken
            return False
        with self._lock:
            return self._revoked.get(key, now) is not None

    def add_opaque_token(self, key: str, claims: Mapping[str, Any], expires_at: float,
                         now: float) -> bool:
        with self._lock:
            return self._opaque.put(key, dict(claims), expires_at, now)

    def opaque_token(self, key: str, now: float) -> dict[str, Any] | None:
        with self._lock:
            found = self._opaque.get(key, now)
            return dict(found) if found is not None else None

    # -- all of it --------------------------------------------------------------------

    def restore(self, clients: Iterable[ClientSettings], keys: Iterable[SigningKey]) -> None:
        with self._lock:
            self._clients = {c.client_id: c for c in clients}
            self._keys = tuple(keys)
            self._clock = ClockState()
            self._faults.clear()
            self._logs.clear()
            self._jtis.clear()
            self._jti_expiry.clear()
            self._revoked.clear()
            self._opaque.clear()
            self._values = {}

    def __repr__(self) -> str:
        return f"<MemoryStore clients={len(self._clients)} keys={len(self._keys)}>"


# -- one version check per request --------------------------------------------------------

#: Per context (a request's thread): store id -> what that store's first read in this request
#: found (its version counters), or None outside a request. Not shared between threads.
_REQUEST_READS: ContextVar[dict[int, Any] | None] = ContextVar("m2mauth_request_reads",
                                                                default=None)


def begin_request_reads() -> None:
    """From now on in this context, each shared store checks its versions once (at its
    first read) and answers later reads from what it cached, its own writes included:
    one cheap check per request instead of one per read. A request's first read still
    sees every change committed before it, by any process (read-your-writes)."""
    _REQUEST_READS.set({})


def end_request_reads(_exc: BaseException | None = None) -> None:
    """Back to one version check per read (a Flask ``teardown_request`` function)."""
    _REQUEST_READS.set(None)


def request_reads() -> dict[int, Any] | None:
    """The current request's checked versions by store id, or None outside a request."""
    return _REQUEST_READS.get()


# -- store URLs ------------------------------------------------------------------------


def parse_store_url(url: str) -> tuple[str, str]:
    """``(kind, target)`` of a ``store`` setting: ``("memory", "")``, ``("sqlite", PATH)``
    for ``sqlite:PATH`` or ``sqlite:///ABSOLUTE/PATH`` (PATH as given: relative to the
    current directory), ``("redis", URL)`` for ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]``.
    ValueError says what is wrong, without the URL's password."""
    if not isinstance(url, str):
        raise ValueError("must be a string")
    if url == "memory":
        return "memory", ""
    scheme, colon, rest = url.partition(":")
    if not colon or scheme not in ("sqlite", "redis"):
        raise ValueError(f"{redact_url(url)!r} is not a store: use memory, sqlite:PATH "
                         "(sqlite:///ABSOLUTE/PATH) or redis://HOST:PORT/DB")
    if scheme == "sqlite":
        if rest.startswith("//"):
            if not rest.startswith("///"):
                raise ValueError(f"{url!r} names a host; an SQLite store is a local file: "
                                 "sqlite:///ABSOLUTE/PATH or sqlite:RELATIVE/PATH")
            rest = rest[2:]
        if not rest:
            raise ValueError("sqlite: needs a file path (sqlite:///ABSOLUTE/PATH or "
                             "sqlite:RELATIVE/PATH)")
        if "?" in rest or "#" in rest or "\x00" in rest:
            raise ValueError(f"{url!r}: an SQLite store URL takes a path only (no '?', '#')")
        if rest.endswith("/"):
            raise ValueError(f"{url!r} names a directory; name the store's file")
        return "sqlite", rest
    return "redis", _checked_redis_url(url)


def _checked_redis_url(url: str) -> str:
    shown = repr(redact_url(url))
    parts = urlsplit(url)
    if not url.startswith("redis://"):
        raise ValueError(f"{shown}: write redis://HOST:PORT/DB")
    if parts.query or parts.fragment:
        raise ValueError(f"{shown}: a Redis store URL takes no query or fragment")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{shown} has a port that is not a number from 0 to 65535") from None
    if not parts.hostname:
        raise ValueError(f"{shown} names no host")
    if port == 0:
        raise ValueError(f"{shown}: port 0 is not a Redis server's port")
    db = parts.path.lstrip("/")
    if parts.path not in ("", "/") and not (db.isdigit() and db.isascii()
                                            and parts.path.count("/") == 1):
        raise ValueError(f"{shown}: the path is the database number (redis://HOST:PORT/0)")
    return url


def redact_url(url: str) -> str:
    """``url`` with the password of its user part replaced by ``***``, for messages and
    logs."""
    if not isinstance(url, str):
        return repr(url)
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}{slash}{path}"


class _Expiring:
    """Entries that leave at their expiry: a dict, and a heap by expiry (one entry per key)
    so that expired entries are dropped oldest first at O(log n) each. Bounded; the caller
    holds a lock."""

    __slots__ = ("entries", "expiry", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.entries: dict[str, tuple[float, Any]] = {}
        self.expiry: list[tuple[float, str]] = []

    def put(self, key: str, value: Any, expires_at: float, now: float) -> bool:
        self._forget(now)
        found = self.entries.get(key)
        if found is not None:
            # Put again (a revocation of another token with this key): the later expiry
            # wins, in place; its heap entry moves on when it comes up in _forget.
            if expires_at > found[0]:
                self.entries[key] = (expires_at, found[1])
            return True
        if len(self.entries) >= self.limit:
            return False
        self.entries[key] = (expires_at, value)
        heapq.heappush(self.expiry, (expires_at, key))
        return True

    def get(self, key: str, now: float) -> Any | None:
        found = self.entries.get(key)
        if found is None or found[0] < now:
            return None
        return found[1]

    def _forget(self, now: float) -> None:
        while self.expiry and self.expiry[0][0] < now:
            _, key = heapq.heappop(self.expiry)
            found = self.entries.get(key)
            if found is None:
                continue
            if found[0] < now:
                del self.entries[key]
            else:  # extended by a later put: one heap entry per key, at its expiry
                heapq.heappush(self.expiry, (found[0], key))

    def clear(self) -> None:
        self.entries.clear()
        self.expiry.clear()


class _Log:
    """One bounded log: records, newest last, and the bytes their strings take."""

    __slots__ = ("bytes", "records", "sizes")

    def __init__(self) -> None:
        self.records: deque[dict[str, Any]] = deque()
        self.sizes: deque[int] = deque()
        self.bytes = 0

    def append(self, record: dict[str, Any], max_records: int, max_bytes: int) -> None:
        size = _size(record)
        self.records.append(record)
        self.sizes.append(size)
        self.bytes += size
        while len(self.records) > max_records or (self.bytes > max_bytes and self.records):
            self.records.popleft()
            self.bytes -= self.sizes.popleft()


def _size(record: dict[str, Any]) -> int:
    """About what a record's values take: string lengths, and a word for anything else. On
    the token path for every request, so flat records (the log's) are summed without
    recursion; a nested value is counted as its JSON."""
    size = 0
    for value in record.values():
        kind = type(value)
        if kind is str:
            size += len(value) + 8
        elif kind is tuple or kind is list:
            size += 8
            for item in value:  # a loop, not sum() over a generator: three per record
                size += len(item) + 8 if type(item) is str else len(json.dumps(item))
        elif kind is dict:
            size += len(json.dumps(value))
        else:
            size += 8
    return size
