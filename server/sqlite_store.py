"""``SQLiteStore``: the state store in one SQLite file in WAL mode, shared by every process on
one host that opens it (``--store sqlite:PATH``).

Every change is one ``BEGIN IMMEDIATE`` transaction (SQLite's write lock, taken at the start,
so a read-then-write never races another process's), and bumps the version its part of the
state has in the ``meta`` row in the same transaction. Reads are single statements in
autocommit mode: under WAL they never wait for a writer. Each thread has its own connection.
Every statement on the token path is an index lookup, and every count a bound needs is kept
in a row, never counted: the cost of a request does not grow with the clients, the log or the
replay cache.

The file holds the issuer's private signing keys and client secrets: it is created 0600
(SQLite gives its ``-wal`` and ``-shm`` files the same mode), and a file or directory other
users could read or change is refused, as key files are (``unsafe_permissions`` to allow it).
WAL needs the processes on one machine: never put the file on a network filesystem.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import KeyStoreError, StoreUnavailableError
from .shared_store import KeyRecord, Meta, SharedStore, Version, client_json, key_record
from .store import ClockState, _size

if TYPE_CHECKING:
    from .keys import SigningKey
    from .settings import ClientSettings

__all__ = ["SQLiteStore"]

#: The schema's version (``PRAGMA user_version``); a file of a later one is refused.
SCHEMA_VERSION = 1
#: Appends by one process between two trims of the logs it appended to (see append_record).
_TRIM_EVERY = 256

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    ns TEXT PRIMARY KEY, seeded INTEGER NOT NULL DEFAULT 0,
    clients_v INTEGER NOT NULL DEFAULT 0, keys_v INTEGER NOT NULL DEFAULT 0,
    clock_offset REAL NOT NULL DEFAULT 0.0, clock_frozen REAL,
    faults INTEGER NOT NULL DEFAULT 0, fault_seq INTEGER NOT NULL DEFAULT 0,
    revoked INTEGER NOT NULL DEFAULT 0, opaque INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS clients (
    id INTEGER PRIMARY KEY, ns TEXT NOT NULL, client_id TEXT NOT NULL, data TEXT NOT NULL,
    UNIQUE (ns, client_id));
CREATE TABLE IF NOT EXISTS signing_keys (
    id INTEGER PRIMARY KEY, ns TEXT NOT NULL, kid TEXT NOT NULL, alg TEXT NOT NULL,
    status TEXT NOT NULL, pem TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS signing_keys_ns ON signing_keys (ns, id);
CREATE TABLE IF NOT EXISTS fault_endpoints (
    ns TEXT NOT NULL, endpoint TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (ns, endpoint)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS faults (
    id INTEGER PRIMARY KEY, ns TEXT NOT NULL, endpoint TEXT NOT NULL,
    remaining INTEGER NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS faults_queue ON faults (ns, endpoint, id);
CREATE TABLE IF NOT EXISTS logs (
    ns TEXT NOT NULL, log TEXT NOT NULL, count INTEGER NOT NULL, bytes INTEGER NOT NULL,
    PRIMARY KEY (ns, log)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY, ns TEXT NOT NULL, log TEXT NOT NULL, size INTEGER NOT NULL,
    data TEXT NOT NULL);
DROP INDEX IF EXISTS records_log;
CREATE INDEX IF NOT EXISTS records_size ON records (ns, log, id DESC, size);
CREATE TABLE IF NOT EXISTS jtis (
    ns TEXT NOT NULL, client_id TEXT NOT NULL, jti TEXT NOT NULL, expires_at REAL NOT NULL,
    PRIMARY KEY (ns, client_id, jti)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jtis_expiry ON jtis (ns, expires_at);
CREATE TABLE IF NOT EXISTS jti_counts (
    ns TEXT NOT NULL, client_id TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (ns, client_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS expiring (
    ns TEXT NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL, expires_at REAL NOT NULL,
    value TEXT, PRIMARY KEY (ns, kind, key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS expiring_expiry ON expiring (ns, kind, expires_at);
CREATE TABLE IF NOT EXISTS seeds (
    ns TEXT PRIMARY KEY, clients TEXT NOT NULL, keys TEXT NOT NULL);
"""

#: Tables holding one namespace's state (meta aside), emptied by restore().
_TABLES = ("clients", "signing_keys", "fault_endpoints", "faults", "logs", "records", "jtis",
           "jti_counts", "expiring")
#: The two bounded lists of _Expiring entries, and the meta column counting each. (Table
#: and column names put into statements below are these constants, never input.)
_REVOKED, _OPAQUE = "revoked", "opaque"
#: The issuer's small named values: rows of the expiring table that never expire (restore()
#: empties the table, which forgets them).
_VALUE, _NEVER = "value", 1e300

_RISK = ("it holds the issuer's private signing keys and client secrets; other users could "
         "read them or sign tokens")
_OVERRIDE = " (or, for a throwaway setup only, --unsafe-key-permissions)"


class SQLiteStore(SharedStore):
    """The state of one issuer (``namespace``: further issuers share the file under their
    names) in the SQLite file ``path``, created if missing. ``busy_timeout``: seconds a
    change waits for another process's transaction before the store counts as unavailable
    (503). The bounds are :class:`~m2mauth.server.store.MemoryStore`'s."""

    kind = "sqlite"

    def __init__(self, path: str | os.PathLike[str], *, namespace: str = "",
                 busy_timeout: float = 5.0, unsafe_permissions: bool = False,
                 **bounds: Any) -> None:
        super().__init__(**bounds)
        self.path = Path(path).absolute()
        self.namespace = namespace
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        # Every connection with its thread, to close them all (and those of threads that
        # ended: a pool's threads come and go).
        self._connections: list[tuple[weakref.ref[threading.Thread], int,
                                      sqlite3.Connection]] = []
        self._inherited: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        # Appends since this process last trimmed the logs, and the logs they went to.
        self._trim_lock = threading.Lock()
        self._appends = 0
        self._untrimmed: set[str] = set()
        self._closed = False
        self._prepare_file(unsafe_permissions)
        with self._write() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreUnavailableError(
                    f"{self.path}: made by a later m2mauth (schema {version}, this one "
                    f"knows {SCHEMA_VERSION})")
            db.executescript_in_transaction(_SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("INSERT OR IGNORE INTO meta (ns) VALUES (?)", (namespace,))

    # -- the file ------------------------------------------------------------------------

    def _prepare_file(self, unsafe: bool) -> None:
        """Create the file 0600, or check the one there (and its -wal and -shm files) as
        key files are checked: another user must not read it, nor plant a -wal file."""
        directory = self.path.parent
        try:
            st = os.stat(directory)
        except OSError as exc:
            raise StoreUnavailableError(
                f"{self.path}: cannot open the store: its directory {directory}: "
                f"{exc.strerror}") from None
        if not unsafe:
            _check_directory(directory, st)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        except OSError as exc:
            raise StoreUnavailableError(f"{self.path}: cannot create the store: "
                                        f"{exc.strerror}") from None
        else:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.close(fd)
        if not unsafe:
            for suffix in ("", "-wal", "-shm"):
                file = Path(f"{self.path}{suffix}")
                try:
                    st = os.stat(file)
                except FileNotFoundError:
                    continue
                _check_file(file, st)

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use, and again in a forked child: an
        SQLite connection must never cross a fork)."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None and self._local.pid == os.getpid():
            return db
        if self._closed:
            raise StoreUnavailableError(f"{self.path}: the store was closed")
        try:
            # Autocommit (isolation_level None): reads are one statement each; changes say
            # BEGIN IMMEDIATE themselves. timeout is SQLite's busy timeout.
            db = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None,
                                 check_same_thread=False)
            db.execute("PRAGMA journal_mode = WAL")
            # WAL with NORMAL: a commit is durable once the WAL is checkpointed; a crash of
            # the process loses nothing, a power cut at most the last commits.
            db.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.DatabaseError as exc:
            raise self._unavailable(exc) from None
        pid = os.getpid()
        self._local.db, self._local.pid = db, pid
        with self._connections_lock:
            kept = []
            for thread, owner, other in self._connections:
                alive = thread()
                if owner != pid:
                    # The parent's, inherited by a fork: never used nor closed here (closing
                    # it could disturb the parent's locks); kept referenced, so never freed.
                    self._inherited.append(other)
                elif alive is not None and alive.is_alive():
                    kept.append((thread, owner, other))
                else:
                    with contextlib.suppress(sqlite3.Error):
                        other.close()
            kept.append((weakref.ref(threading.current_thread()), pid, db))
            self._connections = kept
        return db

    def _unavailable(self, exc: sqlite3.Error) -> StoreUnavailableError:
        return StoreUnavailableError(f"SQLite store {self.path}: {exc}")

    @contextlib.contextmanager
    def _write(self) -> Iterator[_Transaction]:
        """One ``BEGIN IMMEDIATE`` transaction: committed if the block ends normally,
        rolled back otherwise."""
        db = self._connection()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as exc:
            raise self._unavailable(exc) from None
        try:
            yield _Transaction(db)
            db.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            if _is_unavailable(exc):
                raise self._unavailable(exc) from None  # type: ignore[arg-type]
            raise

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        try:
            return self._connection().execute(sql, args).fetchall()
        except sqlite3.DatabaseError as exc:
            if _is_unavailable(exc):
                raise self._unavailable(exc) from None
            raise

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[_Transaction]:
        """Several reads that see one state (a deferred read transaction)."""
        db = self._connection()
        try:
            db.execute("BEGIN")
            try:
                yield _Transaction(db)
            finally:
                db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            if _is_unavailable(exc):
                raise self._unavailable(exc) from None
            raise

    @property
    def location(self) -> str:
        return str(self.path)

    def close(self) -> None:
        self._closed = True
        with self._connections_lock:
            connections = [db for _, owner, db in self._connections if owner == os.getpid()]
            self._connections = []
        for db in connections:
            with contextlib.suppress(sqlite3.Error):
                db.close()
        self._local = threading.local()

    def __repr__(self) -> str:
        ns = f" namespace={self.namespace!r}" if self.namespace else ""
        return f"<SQLiteStore {self.path}{ns}>"

    # -- reads for the cache ----------------------------------------------------------

    def _read_meta(self) -> Meta:
        rows = self._read("SELECT seeded, clients_v, keys_v, clock_offset, clock_frozen, "
                          "faults FROM meta WHERE ns = ?", (self.namespace,))
        if not rows:
            return Meta("", False, 0, 0, ClockState(), 0)
        seeded, clients_v, keys_v, offset, frozen, faults = rows[0]
        return Meta("", bool(seeded), clients_v, keys_v, ClockState(offset, frozen), faults)

    def _version(self, db: _Transaction, column: str) -> Version:
        row = db.execute(f"SELECT {column} FROM meta WHERE ns = ?",  # noqa: S608
                         (self.namespace,)).fetchone()
        return ("", row[0] if row else 0)

    def _read_keys(self) -> tuple[Version, list[KeyRecord]]:
        with self._snapshot() as db:
            version = self._version(db, "keys_v")
            rows = db.execute("SELECT kid, alg, status, pem FROM signing_keys WHERE ns = ? "
                              "ORDER BY id", (self.namespace,)).fetchall()
        return version, [KeyRecord(*row) for row in rows]

    def _read_client(self, client_id: str) -> tuple[Version, str | None]:
        with self._snapshot() as db:
            version = self._version(db, "clients_v")
            row = db.execute("SELECT data FROM clients WHERE ns = ? AND client_id = ?",
                             (self.namespace, client_id)).fetchone()
        return version, row[0] if row else None

    def _read_clients(self) -> tuple[Version, list[tuple[str, str]]]:
        with self._snapshot() as db:
            version = self._version(db, "clients_v")
            rows = db.execute("SELECT client_id, data FROM clients WHERE ns = ? ORDER BY id",
                              (self.namespace,)).fetchall()
        return version, [(client_id, data) for client_id, data in rows]

    # -- clients ------------------------------------------------------------------------

    def add_client(self, client: ClientSettings) -> bool:
        with self._write() as db:
            added = db.execute("INSERT OR IGNORE INTO clients (ns, client_id, data) "
                               "VALUES (?, ?, ?)",
                               (self.namespace, client.client_id, client_json(client))).rowcount
            if added:
                self._bump(db, "clients_v")
        if added:
            self._changed()
        return bool(added)

    def remove_client(self, client_id: str) -> bool:
        with self._write() as db:
            removed = db.execute("DELETE FROM clients WHERE ns = ? AND client_id = ?",
                                 (self.namespace, client_id)).rowcount
            if removed:
                self._bump(db, "clients_v")
        if removed:
            self._changed()
        return bool(removed)

    def _bump(self, db: _Transaction, column: str) -> None:
        db.execute(f"UPDATE meta SET {column} = {column} + 1 WHERE ns = ?",  # noqa: S608
                   (self.namespace,))

    # -- signing keys -----------------------------------------------------------------

    def add_signing_key(self, key: SigningKey) -> None:
        from .keys import ACTIVE, PUBLISHED

        record = key_record(key)
        with self._write() as db:
            db.execute("UPDATE signing_keys SET status = ? WHERE ns = ? AND alg = ? AND "
                       "status = ?", (PUBLISHED, self.namespace, record.alg, ACTIVE))
            db.execute("INSERT INTO signing_keys (ns, kid, alg, status, pem) VALUES "
                       "(?, ?, ?, ?, ?)", (self.namespace, record.kid, record.alg, ACTIVE,
                                           record.pem))
            self._bump(db, "keys_v")
        self._changed()

    def set_key_status(self, kid: str, status: str) -> SigningKey | None:
        with self._write() as db:
            row = db.execute("SELECT id FROM signing_keys WHERE ns = ? AND kid = ? ORDER BY "
                             "id LIMIT 1", (self.namespace, kid)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE signing_keys SET status = ? WHERE id = ?", (status, row[0]))
            self._bump(db, "keys_v")
        self._changed()
        return next((k for k in self.signing_keys() if k.kid == kid), None)

    # -- clock ------------------------------------------------------------------------

    def update_clock(self, change: Callable[[ClockState], ClockState]) -> ClockState:
        with self._write() as db:
            offset, frozen = db.execute("SELECT clock_offset, clock_frozen FROM meta WHERE "
                                        "ns = ?", (self.namespace,)).fetchone()
            new = change(ClockState(offset, frozen))
            db.execute("UPDATE meta SET clock_offset = ?, clock_frozen = ? WHERE ns = ?",
                       (float(new.offset), None if new.frozen_at is None
                        else float(new.frozen_at), self.namespace))
        self._changed()
        return new

    # -- faults -----------------------------------------------------------------------

    def push_fault(self, endpoint: str, fault: Mapping[str, Any]) -> None:
        remaining, data = _fault_parts(fault)
        with self._write() as db:
            if not db.execute("SELECT 1 FROM fault_endpoints WHERE ns = ? AND endpoint = ?",
                              (self.namespace, endpoint)).fetchone():
                db.execute("UPDATE meta SET fault_seq = fault_seq + 1 WHERE ns = ?",
                           (self.namespace,))
                db.execute("INSERT INTO fault_endpoints (ns, endpoint, seq) SELECT ns, ?, "
                           "fault_seq FROM meta WHERE ns = ?", (endpoint, self.namespace))
            db.execute("INSERT INTO faults (ns, endpoint, remaining, data) VALUES "
                       "(?, ?, ?, ?)", (self.namespace, endpoint, remaining, data))
            db.execute("UPDATE meta SET faults = faults + 1 WHERE ns = ?", (self.namespace,))
        self._changed()

    def _take_fault(self, endpoint: str) -> dict[str, Any] | None:
        with self._write() as db:
            row = db.execute("SELECT id, remaining, data FROM faults WHERE ns = ? AND "
                             "endpoint = ? ORDER BY id LIMIT 1",
                             (self.namespace, endpoint)).fetchone()
            if row is None:
                return None
            fault_id, remaining, data = row
            if remaining <= 1:
                db.execute("DELETE FROM faults WHERE id = ?", (fault_id,))
                db.execute("UPDATE meta SET faults = faults - 1 WHERE ns = ?",
                           (self.namespace,))
            else:
                db.execute("UPDATE faults SET remaining = ? WHERE id = ?",
                           (remaining - 1, fault_id))
        return {**json.loads(data), "remaining": remaining}

    def faults(self) -> list[dict[str, Any]]:
        rows = self._read("SELECT f.remaining, f.data FROM faults f JOIN fault_endpoints e "
                          "ON e.ns = f.ns AND e.endpoint = f.endpoint WHERE f.ns = ? "
                          "ORDER BY e.seq, f.id", (self.namespace,))
        return [{**json.loads(data), "remaining": remaining} for remaining, data in rows]

    def clear_faults(self) -> None:
        with self._write() as db:
            db.execute("DELETE FROM faults WHERE ns = ?", (self.namespace,))
            db.execute("DELETE FROM fault_endpoints WHERE ns = ?", (self.namespace,))
            db.execute("UPDATE meta SET faults = 0 WHERE ns = ?", (self.namespace,))
        self._changed()

    # -- request logs -----------------------------------------------------------------

    def append_record(self, log: str, record: Mapping[str, Any]) -> None:
        record = dict(record)
        size = _size(record)
        data = json.dumps(record, separators=(",", ":"))
        try:
            # One statement in autocommit mode, its own transaction: the token path appends
            # on every request, and BEGIN IMMEDIATE ... COMMIT around it, with a count kept
            # up to date and the oldest row dropped at the bound, cost three times as much.
            self._connection().execute(
                "INSERT INTO records (ns, log, size, data) VALUES (?, ?, ?, ?)",
                (self.namespace, log, size, data))
        except sqlite3.DatabaseError as exc:
            if _is_unavailable(exc):
                raise self._unavailable(exc) from None
            raise
        with self._trim_lock:
            self._untrimmed.add(log)
            self._appends += 1
            if self._appends < _TRIM_EVERY:
                return
            logs, self._untrimmed, self._appends = self._untrimmed, set(), 0
        try:
            with self._write() as db:
                for name in logs:
                    self._trim(db, name)
        except StoreUnavailableError:
            # The record is in; the next append trims (the bounds hold at read time).
            with self._trim_lock:
                self._untrimmed |= logs
                self._appends = _TRIM_EVERY

    def _trim(self, db: _Transaction, log: str) -> None:
        """Drop what the bounds leave out of ``log``: beyond the newest ``max_records``, and
        the older records once the newest take ``max_record_bytes`` (one walk of the
        covering index, newest first)."""
        ns = self.namespace
        row = db.execute(
            "SELECT id FROM (SELECT id, ROW_NUMBER() OVER newest AS n, SUM(size) OVER newest "
            "AS total FROM records INDEXED BY records_size WHERE ns = ? AND log = ? "
            "WINDOW newest AS (ORDER BY id DESC)) WHERE n > ? OR total > ? LIMIT 1",
            (ns, log, self._max_records, self._max_record_bytes)).fetchone()
        if row is not None:
            db.execute("DELETE FROM records WHERE ns = ? AND log = ? AND id <= ?",
                       (ns, log, row[0]))

    def records(self, log: str) -> list[dict[str, Any]]:
        # The bounds applied exactly here: between two trims the table holds up to
        # _TRIM_EVERY more rows per process.
        rows = self._read("SELECT size, data FROM records WHERE ns = ? AND log = ? "
                          "ORDER BY id DESC LIMIT ?",
                          (self.namespace, log, self._max_records))
        kept, total = [], 0
        for size, data in rows:
            total += size
            if total > self._max_record_bytes:
                break
            kept.append(data)
        return [json.loads(data) for data in reversed(kept)]

    def clear_records(self) -> None:
        with self._write() as db:
            db.execute("DELETE FROM records WHERE ns = ?", (self.namespace,))
            # Counts an earlier version kept per log; records() counts now.
            db.execute("DELETE FROM logs WHERE ns = ?", (self.namespace,))

    # -- client-assertion replay ------------------------------------------------------

    def remember_jti(self, client_id: str, jti: str, expires_at: float, now: float) -> bool:
        ns = self.namespace
        with self._write() as db:
            # INDEXED BY: for the GROUP BY, SQLite's planner otherwise walks the primary key,
            # every remembered jti of the namespace on every assertion (10x the request's
            # cost at 100,000 of them); the expiry index finds only the expired ones.
            expired = db.execute("SELECT client_id, COUNT(*) FROM jtis INDEXED BY jtis_expiry "
                                 "WHERE ns = ? AND expires_at < ? GROUP BY client_id",
                                 (ns, now)).fetchall()
            if expired:
                db.execute("DELETE FROM jtis WHERE ns = ? AND expires_at < ?", (ns, now))
                db.executemany("UPDATE jti_counts SET count = count - ? WHERE ns = ? AND "
                               "client_id = ?", [(n, ns, c) for c, n in expired])
                db.executemany("DELETE FROM jti_counts WHERE ns = ? AND client_id = ? AND "
                               "count <= 0", [(ns, c) for c, _ in expired])
            # Every entry left is live (expires_at >= now): being there is a replay.
            if db.execute("SELECT 1 FROM jtis WHERE ns = ? AND client_id = ? AND jti = ?",
                          (ns, client_id, jti)).fetchone():
                return False
            row = db.execute("SELECT count FROM jti_counts WHERE ns = ? AND client_id = ?",
                             (ns, client_id)).fetchone()
            if row is not None and row[0] >= self._max_jtis_per_client:
                return False  # this client's share is full of live entries
            db.execute("INSERT INTO jtis (ns, client_id, jti, expires_at) VALUES "
                       "(?, ?, ?, ?)", (ns, client_id, jti, float(expires_at)))
            db.execute("INSERT INTO jti_counts (ns, client_id, count) VALUES (?, ?, 1) "
                       "ON CONFLICT (ns, client_id) DO UPDATE SET count = count + 1",
                       (ns, client_id))
            return True

    # -- small named values -------------------------------------------------------------

    def issuer_value(self, name: str) -> str | None:
        rows = self._read("SELECT value FROM expiring WHERE ns = ? AND kind = ? AND key = ?",
                          (self.namespace, _VALUE, name))
        return rows[0][0] if rows else None

    def set_issuer_value(self, name: str, value: str | None, *,
                         only_if_absent: bool = False) -> str | None:
        if value == "":
            raise ValueError("an issuer value is a non-empty string (None removes it)")
        ns = self.namespace
        with self._write() as db:
            row = db.execute("SELECT value FROM expiring WHERE ns = ? AND kind = ? AND key = ?",
                             (ns, _VALUE, name)).fetchone()
            if only_if_absent and row is not None:
                return str(row[0])
            if value is None:
                db.execute("DELETE FROM expiring WHERE ns = ? AND kind = ? AND key = ?",
                           (ns, _VALUE, name))
            else:
                db.execute("INSERT OR REPLACE INTO expiring (ns, kind, key, expires_at, value) "
                           "VALUES (?, ?, ?, ?, ?)", (ns, _VALUE, name, _NEVER, value))
            return value

    # -- revoked and opaque tokens ------------------------------------------------------

    def _put(self, kind: str, key: str, value: str | None, expires_at: float, now: float,
             limit: int) -> bool:
        ns = self.namespace
        with self._write() as db:
            gone = db.execute("DELETE FROM expiring WHERE ns = ? AND kind = ? AND "
                              "expires_at < ?", (ns, kind, now)).rowcount
            if gone:
                db.execute(f"UPDATE meta SET {kind} = {kind} - ? WHERE ns = ?",  # noqa: S608
                           (gone, ns))
            if db.execute("SELECT 1 FROM expiring WHERE ns = ? AND kind = ? AND key = ?",
                          (ns, kind, key)).fetchone():
                # Put again (another token with this revocation key): the later expiry wins.
                db.execute("UPDATE expiring SET expires_at = MAX(expires_at, ?) WHERE ns = ? "
                           "AND kind = ? AND key = ?", (float(expires_at), ns, kind, key))
                return True
            (count,) = db.execute(f"SELECT {kind} FROM meta WHERE ns = ?",  # noqa: S608
                                  (ns,)).fetchone()
            if count >= limit:
                return False
            db.execute("INSERT INTO expiring (ns, kind, key, expires_at, value) VALUES "
                       "(?, ?, ?, ?, ?)", (ns, kind, key, float(expires_at), value))
            db.execute(f"UPDATE meta SET {kind} = {kind} + 1 WHERE ns = ?",  # noqa: S608
                       (ns,))
            return True

    def _get(self, kind: str, key: str, now: float) -> tuple[str | None] | None:
        rows = self._read("SELECT value FROM expiring WHERE ns = ? AND kind = ? AND key = ? "
                          "AND expires_at >= ?", (self.namespace, kind, key, now))
        return rows[0] if rows else None

    def revoke(self, key: str, expires_at: float, now: float) -> bool:
        return self._put(_REVOKED, key, None, expires_at, now, self._max_revocations)

    def is_revoked(self, key: str, now: float) -> bool:
        return self._get(_REVOKED, key, now) is not None

    def add_opaque_token(self, key: str, claims: Mapping[str, Any], expires_at: float,
                         now: float) -> bool:
        return self._put(_OPAQUE, key, json.dumps(dict(claims), separators=(",", ":")),
                         expires_at, now, self._max_opaque_tokens)

    def opaque_token(self, key: str, now: float) -> dict[str, Any] | None:
        found = self._get(_OPAQUE, key, now)
        return json.loads(found[0]) if found is not None and found[0] is not None else None

    # -- all of it --------------------------------------------------------------------

    def restore(self, clients: Iterable[ClientSettings], keys: Iterable[SigningKey]) -> None:
        self._restore(list(clients), list(keys), only_if_new=False)

    def seed(self, clients: Iterable[ClientSettings], keys: Iterable[SigningKey]) -> bool:
        return self._restore(list(clients), list(keys), only_if_new=True)

    def restore_seed(self) -> bool:
        with self._write() as db:
            row = db.execute("SELECT clients, keys FROM seeds WHERE ns = ?",
                             (self.namespace,)).fetchone()
            if row is None:
                return False
            self._replace_all(db, [tuple(c) for c in json.loads(row[0])],
                              [tuple(k) for k in json.loads(row[1])])
        self._changed()
        return True

    def _restore(self, clients: list[ClientSettings], keys: list[SigningKey], *,
                 only_if_new: bool) -> bool:
        ns = self.namespace
        client_rows = [(c.client_id, client_json(c)) for c in clients]
        key_rows = [tuple(key_record(k)) for k in keys]
        with self._write() as db:
            if only_if_new and db.execute("SELECT seeded FROM meta WHERE ns = ?",
                                          (ns,)).fetchone()[0]:
                return False
            self._replace_all(db, client_rows, key_rows)
            if only_if_new:  # what restore_seed() puts back
                db.execute("INSERT OR REPLACE INTO seeds (ns, clients, keys) VALUES (?, ?, ?)",
                           (ns, json.dumps(client_rows), json.dumps(key_rows)))
        self._changed()
        return True

    def _replace_all(self, db: _Transaction, client_rows: list[tuple[str, ...]],
                     key_rows: list[tuple[str, ...]]) -> None:
        """Empty the namespace and put these clients ((id, JSON)) and keys (KeyRecord
        fields) in, within the caller's transaction."""
        ns = self.namespace
        for table in _TABLES:
            db.execute(f"DELETE FROM {table} WHERE ns = ?", (ns,))  # noqa: S608
        # OR REPLACE: a repeated id keeps the last, as MemoryStore's dict does.
        db.executemany("INSERT OR REPLACE INTO clients (ns, client_id, data) VALUES "
                       "(?, ?, ?)", [(ns, *row) for row in client_rows])
        db.executemany("INSERT INTO signing_keys (ns, kid, alg, status, pem) VALUES "
                       "(?, ?, ?, ?, ?)", [(ns, *row) for row in key_rows])
        db.execute("UPDATE meta SET seeded = 1, clients_v = clients_v + 1, "
                   "keys_v = keys_v + 1, clock_offset = 0.0, clock_frozen = NULL, "
                   "faults = 0, fault_seq = 0, revoked = 0, opaque = 0 WHERE ns = ?", (ns,))


class _Transaction:
    """The connection inside one transaction: ``execute``/``executemany`` with SQLite's
    lock errors turned into :class:`StoreUnavailableError` by the caller's block."""

    __slots__ = ("_db",)

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> sqlite3.Cursor:
        return self._db.execute(sql, args)

    def executemany(self, sql: str, rows: Iterable[Any]) -> sqlite3.Cursor:
        return self._db.executemany(sql, rows)

    def executescript_in_transaction(self, script: str) -> None:
        """Each statement of ``script`` (executescript would commit first)."""
        for statement in script.split(";"):
            if statement.strip():
                self._db.execute(statement)


def _is_unavailable(exc: BaseException) -> bool:
    """Whether an SQLite error means the store cannot serve now (locked beyond the busy
    timeout, unreadable, not a database, disk full), not a mistake in a statement."""
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


def _fault_parts(fault: Mapping[str, Any]) -> tuple[int, str]:
    """A fault's ``remaining`` (kept apart: taking a fault changes it alone) and the JSON of
    the rest."""
    rest = {k: v for k, v in fault.items() if k != "remaining"}
    return int(fault["remaining"]), json.dumps(rest, separators=(",", ":"))


def _check_directory(directory: Path, st: os.stat_result) -> None:
    uid = os.geteuid()
    if st.st_uid not in (uid, 0):
        raise KeyStoreError(
            f"{directory}: the store's directory is owned by uid {st.st_uid}, not by this "
            f"user (uid {uid}) or root, so that user can replace the store, which {_RISK}"
            f"{_OVERRIDE}")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise KeyStoreError(
            f"{directory}: the store's directory has mode {mode:04o}: other users can put "
            "files beside the store (a -wal file SQLite would read), and the store "
            f"{_RISK}; keep the store in a directory only you can write (chmod 700)"
            f"{_OVERRIDE}")


def _check_file(file: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise KeyStoreError(f"{file}: not a regular file")
    uid = os.geteuid()
    if st.st_uid not in (uid, 0):
        raise KeyStoreError(
            f"{file}: the store file is owned by uid {st.st_uid}, not by this user (uid "
            f"{uid}) or root; it {_RISK}; run chown {uid} {file}{_OVERRIDE}")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise KeyStoreError(
            f"{file}: the store file has mode {mode:04o}: {_RISK}; run chmod 600 {file}"
            f"{_OVERRIDE}")
