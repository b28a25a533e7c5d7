"""What the shared stores (:mod:`.sqlite_store`, :mod:`.redis_store`) have in common: the JSON
forms of clients and signing keys, and the per-process cache of what the token path reads on
every request (signing keys, clients, the clock), kept true by one cheap version check.

Every change to clients, keys or the clock bumps a counter in the store in the same atomic
step as the change. A read first fetches those counters, with the clock state and the number
of queued faults, in one round trip (the store's *meta*), and answers from the cache while
the cached snapshot is at least as new; only what changed is fetched again. Within a request
(:func:`~.store.begin_request_reads`) the meta is fetched once, by the request's first read,
so a token request costs one round trip for reading plus its writes (the request log),
whatever the number of clients, keys, log records or remembered jtis.

The snapshots keep :class:`MemoryStore`'s identities: :meth:`signing_keys` returns the same
tuple until the keys change (``KeyStore`` caches the JWKS by it), and :meth:`client` the
same settings object until that client changes (``ClientRegistry`` caches the parsed client
by it), in every process.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from cryptography.hazmat.primitives import serialization
from joserfc.jwk import Key

from .settings import ClientSettings
from .store import ClockState, StateStore, request_reads

__all__ = ["KeyRecord", "Meta", "SharedStore", "Version", "client_from_json", "client_json",
           "key_record"]

log = logging.getLogger("m2mauth.server")

#: A version counter and the store's epoch (a Redis database flushed and made anew has
#: another epoch, so its restarted counters are never taken for the old ones).
Version = tuple[str, int]

_TUPLE_FIELDS = frozenset(f.name for f in dataclasses.fields(ClientSettings)
                          if str(f.type).startswith("tuple"))
_CLIENT_FIELDS = frozenset(f.name for f in dataclasses.fields(ClientSettings))


def client_json(client: ClientSettings) -> str:
    """``client`` as JSON (its secret included: the store holds what the issuer checks)."""
    return json.dumps(dataclasses.asdict(client), separators=(",", ":"))


def client_from_json(text: str) -> ClientSettings:
    """The settings :func:`client_json` wrote (lists back to tuples; a field a newer version
    added is left out rather than refused)."""
    values = json.loads(text)
    return ClientSettings(**{k: tuple(v) if k in _TUPLE_FIELDS and v is not None else v
                             for k, v in values.items() if k in _CLIENT_FIELDS})


class KeyRecord(NamedTuple):
    """One signing key as a shared store holds it: the private key as PKCS#8 PEM."""

    kid: str
    alg: str
    status: str
    pem: str


def key_record(key: Any) -> KeyRecord:
    return KeyRecord(key.kid, key.alg, key.status, key.pem().decode("ascii"))


class Meta(NamedTuple):
    """What a shared store's first read of a request fetches, in one round trip."""

    epoch: str
    seeded: bool
    clients: int
    keys: int
    clock: ClockState
    #: Fault uses queued, over every endpoint (0: a request takes none without asking).
    faults: int


class SharedStore(StateStore):
    """A :class:`StateStore` kept outside this process; subclasses implement the I/O.

    Subclasses provide :meth:`_read_meta`, :meth:`_read_keys`, :meth:`_read_client`,
    :meth:`_read_clients` and :meth:`_take_fault`, every write, and call
    :meth:`_changed` after a write that bumps a version or changes the clock or the faults.
    """

    def __init__(self, *, max_records: int = 10_000, max_record_bytes: int = 8 * 1024 * 1024,
                 max_jtis_per_client: int = 10_000, max_revocations: int = 100_000,
                 max_opaque_tokens: int = 100_000) -> None:
        self._max_records = max_records
        self._max_record_bytes = max_record_bytes
        self._max_jtis_per_client = max_jtis_per_client
        self._max_revocations = max_revocations
        self._max_opaque_tokens = max_opaque_tokens
        self._cache_lock = threading.Lock()
        # (version, keys): replaced whole. The parsed keys by kid and PEM, so that a status
        # change does not parse every private key again.
        self._keys: tuple[Version, tuple[Any, ...]] | None = None
        self._parsed: dict[tuple[str, str], Key] = {}
        # client id -> (version it was checked at, its JSON, its settings); and the whole
        # list, for clients() (the metadata endpoint reads it on every request).
        self._clients: dict[str, tuple[Version, str, ClientSettings]] = {}
        self._all_clients: tuple[Version, tuple[ClientSettings, ...]] | None = None
        self._seeder: Callable[[], tuple[Iterable[Any], Iterable[Any]]] | None = None
        self._seed_lock = threading.Lock()

    # -- what subclasses implement ---------------------------------------------------------

    def _read_meta(self) -> Meta:
        raise NotImplementedError

    def _read_keys(self) -> tuple[Version, list[KeyRecord]]:
        """The keys, oldest first, and the keys' version, read in one atomic step."""
        raise NotImplementedError

    def _read_client(self, client_id: str) -> tuple[Version, str | None]:
        raise NotImplementedError

    def _read_clients(self) -> tuple[Version, list[tuple[str, str]]]:
        """(client id, JSON) of every client, in registration order, and their version."""
        raise NotImplementedError

    def _take_fault(self, endpoint: str) -> dict[str, Any] | None:
        raise NotImplementedError

    # -- the version check -------------------------------------------------------------

    def _meta(self) -> Meta:
        """The store's versions, clock and fault count: fetched, or within a request the
        ones its first read fetched (this process's own writes drop them, see
        :meth:`_changed`)."""
        pinned = request_reads()
        if pinned is not None:
            meta = pinned.get(id(self))
            if meta is not None:
                return meta
        meta = self._read_meta()
        if not meta.seeded and self._seeder is not None:
            meta = self._seed_again()
        if pinned is not None:
            pinned[id(self)] = meta
        return meta

    def seed_when_empty(self, make: Callable[[], tuple[Iterable[Any], Iterable[Any]]]) -> None:
        self._seeder = make

    def _seed_again(self) -> Meta:
        assert self._seeder is not None
        with self._seed_lock:  # one thread of this process makes the keys
            meta = self._read_meta()
            if not meta.seeded:
                clients, keys = self._seeder()
                if self.seed(clients, keys):
                    log.warning("%r held no issuer (restarted without its data, or "
                                "flushed?): seeded it again from the settings", self)
                meta = self._read_meta()
        return meta

    def _changed(self) -> None:
        """After this process changed the store: the current request's next read checks
        the versions again, so it reads its own write."""
        pinned = request_reads()
        if pinned is not None:
            pinned.pop(id(self), None)

    @staticmethod
    def _fresh(cached: Version, epoch: str, version: int) -> bool:
        """Whether a snapshot taken at ``cached`` is at least as new as the store's
        ``version`` (a snapshot may be newer than a request's pinned meta: another thread
        of this process fetched it since)."""
        return cached[0] == epoch and cached[1] >= version

    # -- clients ---------------------------------------------------------------------------

    def client(self, client_id: str) -> ClientSettings | None:
        meta = self._meta()
        cached = self._clients.get(client_id)
        if cached is not None and self._fresh(cached[0], meta.epoch, meta.clients):
            return cached[2]
        version, text = self._read_client(client_id)
        with self._cache_lock:
            if text is None:
                self._clients.pop(client_id, None)
                return None
            cached = self._clients.get(client_id)
            if cached is not None and cached[1] == text:
                settings = cached[2]  # unchanged: the same object, so its parsed Client stays
            else:
                settings = client_from_json(text)
            self._clients[client_id] = (version, text, settings)
            return settings

    def clients(self) -> tuple[ClientSettings, ...]:
        meta = self._meta()
        cached = self._all_clients
        if cached is not None and self._fresh(cached[0], meta.epoch, meta.clients):
            return cached[1]
        version, rows = self._read_clients()
        with self._cache_lock:
            fresh: dict[str, tuple[Version, str, ClientSettings]] = {}
            for client_id, text in rows:
                old = self._clients.get(client_id)
                settings = old[2] if old is not None and old[1] == text \
                    else client_from_json(text)
                fresh[client_id] = (version, text, settings)
            self._clients = fresh  # also forgets clients removed by other processes
            found = tuple(entry[2] for entry in fresh.values())
            self._all_clients = (version, found)
            return found

    # -- signing keys ------------------------------------------------------------------

    def signing_keys(self) -> tuple[Any, ...]:
        meta = self._meta()
        cached = self._keys
        if cached is not None and self._fresh(cached[0], meta.epoch, meta.keys):
            return cached[1]
        with self._cache_lock:
            cached = self._keys
            if cached is not None and self._fresh(cached[0], meta.epoch, meta.keys):
                return cached[1]  # another thread fetched them meanwhile
            version, records = self._read_keys()
            keys = self._signing_keys(records)
            self._keys = (version, keys)
            return keys

    def _signing_keys(self, records: Iterable[KeyRecord]) -> tuple[Any, ...]:
        from .keys import SigningKey, _to_jwk

        parsed: dict[tuple[str, str], Key] = {}
        keys = []
        for record in records:
            found = self._parsed.get((record.kid, record.pem))
            if found is None:
                # The store's own keys, checked when they were loaded or generated: RSA's
                # 40 ms validation is skipped, as for the shipped keys.
                native = serialization.load_pem_private_key(
                    record.pem.encode("ascii"), password=None,
                    unsafe_skip_rsa_key_validation=True)
                found = _to_jwk(record.alg, native)
            parsed[(record.kid, record.pem)] = found
            keys.append(SigningKey(record.alg, found, record.status))
        self._parsed = parsed
        return tuple(keys)

    # -- clock and faults -----------------------------------------------------------------

    def clock_state(self) -> ClockState:
        return self._meta().clock

    def take_fault(self, endpoint: str) -> dict[str, Any] | None:
        if self._meta().faults == 0:  # the usual case: nothing queued, no round trip
            return None
        fault = self._take_fault(endpoint)
        if fault is not None:
            self._changed()
        return fault

    # -- the store itself ----------------------------------------------------------------

    def seeded(self) -> bool:
        return self._read_meta().seeded

    def ping(self) -> None:
        self._read_meta()

    def _forget_cache(self) -> None:
        with self._cache_lock:
            self._keys = None
            self._clients = {}
            self._all_clients = None
