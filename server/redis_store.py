"""``RedisStore``: the state store in a Redis database, shared by every process on every host
that names it (``--store redis://HOST:PORT/DB``), through redis-py.

Every read-then-write is one Lua script, which Redis runs atomically: a fault is taken by one
request of all the processes, of two ``add_client`` calls for one id one wins, a replayed
``jti`` is refused however many hosts see it at once. Each change to clients, keys or the
clock updates the issuer's ``meta`` hash in the same script; a read fetches that hash in one
round trip and answers from this process's cache while it is current (see
:mod:`.shared_store`). Expired replay-cache, revocation and opaque-token entries go by the
``now`` each call is given (the issuer's clock, which the lab moves), never by Redis's own
key expiry, which runs on real time.

Keys are ``m2mauth:{NAMESPACE}:...`` (the root issuer's namespace is empty): one issuer's
keys share a hash tag. Redis holds the issuer's private signing keys and client secrets:
protect it like a key file (a password in the URL, ``bind``, no access for others); the URL's
password is never logged or shown. Run it with ``maxmemory-policy noeviction``: an evicted
key is lost state. When Redis cannot be reached the store raises
:class:`~m2mauth.server.errors.StoreUnavailableError` within about ``socket_timeout``; redis-py
reconnects by itself once it answers again.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .errors import StoreUnavailableError
from .shared_store import KeyRecord, Meta, SharedStore, Version, client_json, key_record
from .store import ClockState, _size, redact_url

if TYPE_CHECKING:
    from .keys import SigningKey
    from .settings import ClientSettings

__all__ = ["RedisStore"]

#: Every script starts with this: the prefix, the meta hash, and touch(), which gives a new
#: (or flushed) database its meta with a fresh epoch.
_PRELUDE = """
local P = ARGV[1]
local M = P .. 'meta'
local function touch()
  if redis.call('HEXISTS', M, 'epoch') == 0 then
    local t = redis.call('TIME')
    redis.call('HSET', M, 'epoch', t[1] .. '.' .. t[2], 'cv', 0, 'kv', 0, 'off', '0.0',
               'frz', '', 'nf', 0)
  end
end
local function head(entry)  -- "first\\nrest" -> first, rest
  local nl = string.find(entry, '\\n', 1, true)
  return string.sub(entry, 1, nl - 1), string.sub(entry, nl + 1)
end
"""

_SCRIPTS = {
    "add_client": """
touch()
if redis.call('HSETNX', P .. 'clients', ARGV[2], ARGV[3]) == 0 then return 0 end
redis.call('ZADD', P .. 'client_order', redis.call('HINCRBY', M, 'cseq', 1), ARGV[2])
redis.call('HINCRBY', M, 'cv', 1)
return 1
""",
    "remove_client": """
touch()
if redis.call('HDEL', P .. 'clients', ARGV[2]) == 0 then return 0 end
redis.call('ZREM', P .. 'client_order', ARGV[2])
redis.call('HINCRBY', M, 'cv', 1)
return 1
""",
    # Keys are "status\nalg\nkid\npem" entries of a list, oldest first.
    "add_signing_key": """
touch()
local K = P .. 'keys'
local n = redis.call('LLEN', K)
for i = 0, n - 1 do
  local entry = redis.call('LINDEX', K, i)
  local status, rest = head(entry)
  local alg = head(rest)
  if status == 'active' and alg == ARGV[2] then
    redis.call('LSET', K, i, 'published\\n' .. rest)
  end
end
redis.call('RPUSH', K, ARGV[3])
redis.call('HINCRBY', M, 'kv', 1)
return 1
""",
    "set_key_status": """
touch()
local K = P .. 'keys'
local n = redis.call('LLEN', K)
for i = 0, n - 1 do
  local entry = redis.call('LINDEX', K, i)
  local _, rest = head(entry)
  local _, after_alg = head(rest)
  local kid = head(after_alg)
  if kid == ARGV[2] then
    redis.call('LSET', K, i, ARGV[3] .. '\\n' .. rest)
    redis.call('HINCRBY', M, 'kv', 1)
    return 1
  end
end
return 0
""",
    # A compare-and-set of the clock: the caller's change is Python, so it is applied
    # between a read and this script, which refuses if the clock moved meanwhile.
    "set_clock": """
touch()
local now = redis.call('HMGET', M, 'off', 'frz')
if now[1] ~= ARGV[2] or now[2] ~= ARGV[3] then return {0, now[1], now[2]} end
redis.call('HSET', M, 'off', ARGV[4], 'frz', ARGV[5])
return {1}
""",
    # Faults are "remaining\njson" entries of one list per endpoint; endpoints in the order
    # of their first fault since the last clear.
    "push_fault": """
touch()
local E = P .. 'fault_endpoints'
if not redis.call('ZSCORE', E, ARGV[2]) then
  redis.call('ZADD', E, redis.call('HINCRBY', M, 'fseq', 1), ARGV[2])
end
redis.call('RPUSH', P .. 'faults:' .. ARGV[2], ARGV[3])
redis.call('HINCRBY', M, 'nf', 1)
return 1
""",
    "take_fault": """
local Q = P .. 'faults:' .. ARGV[2]
local entry = redis.call('LINDEX', Q, 0)
if not entry then return false end
local remaining, rest = head(entry)
remaining = tonumber(remaining)
if remaining <= 1 then
  redis.call('LPOP', Q)
  redis.call('HINCRBY', M, 'nf', -1)
else
  redis.call('LSET', Q, 0, tostring(remaining - 1) .. '\\n' .. rest)
end
return entry
""",
    "faults": """
local found = {}
for _, endpoint in ipairs(redis.call('ZRANGE', P .. 'fault_endpoints', 0, -1)) do
  for _, entry in ipairs(redis.call('LRANGE', P .. 'faults:' .. endpoint, 0, -1)) do
    found[#found + 1] = entry
  end
end
return found
""",
    "clear_faults": """
touch()
for _, endpoint in ipairs(redis.call('ZRANGE', P .. 'fault_endpoints', 0, -1)) do
  redis.call('DEL', P .. 'faults:' .. endpoint)
end
redis.call('DEL', P .. 'fault_endpoints')
redis.call('HSET', M, 'nf', 0)
return 1
""",
    # Records are "size\njson" entries of one list per log; the bytes per log in a hash.
    "append_record": """
local L = P .. 'log:' .. ARGV[2]
local B = P .. 'log_bytes'
redis.call('SADD', P .. 'logs', ARGV[2])
redis.call('RPUSH', L, ARGV[3])
local total = redis.call('HINCRBY', B, ARGV[2], ARGV[4])
local count = redis.call('LLEN', L)
local max_records, max_bytes = tonumber(ARGV[5]), tonumber(ARGV[6])
while count > max_records or (total > max_bytes and count > 0) do
  local size = head(redis.call('LPOP', L))
  total = redis.call('HINCRBY', B, ARGV[2], -tonumber(size))
  count = count - 1
end
return 1
""",
    "clear_records": """
for _, log in ipairs(redis.call('SMEMBERS', P .. 'logs')) do
  redis.call('DEL', P .. 'log:' .. log)
end
redis.call('DEL', P .. 'logs', P .. 'log_bytes')
return 1
""",
    # One sorted set of "LENGTH:CLIENTjti" members by expiry, and each client's count in a
    # hash: expired entries leave by `now`, oldest first.
    "remember_jti": """
local Z, C = P .. 'jtis', P .. 'jti_counts'
local bound = '(' .. ARGV[5]
local gone = redis.call('ZRANGEBYSCORE', Z, '-inf', bound)
if #gone > 0 then
  for _, member in ipairs(gone) do
    local length = string.match(member, '^%d+')
    local client = string.sub(member, #length + 2, #length + 1 + tonumber(length))
    if redis.call('HINCRBY', C, client, -1) <= 0 then redis.call('HDEL', C, client) end
  end
  redis.call('ZREMRANGEBYSCORE', Z, '-inf', bound)
end
local member = string.len(ARGV[2]) .. ':' .. ARGV[2] .. ARGV[3]
if redis.call('ZSCORE', Z, member) then return 0 end
if tonumber(redis.call('HGET', C, ARGV[2]) or '0') >= tonumber(ARGV[6]) then return 0 end
redis.call('ZADD', Z, ARGV[4], member)
redis.call('HINCRBY', C, ARGV[2], 1)
return 1
""",
    # Revocations and opaque tokens: a sorted set by expiry, values (opaque claims) in a
    # hash beside it.
    "put_expiring": """
local Z, V = P .. ARGV[2], P .. ARGV[2] .. ':values'
local bound = '(' .. ARGV[5]
local gone = redis.call('ZRANGEBYSCORE', Z, '-inf', bound)
if #gone > 0 then
  if ARGV[7] then
    for _, key in ipairs(gone) do redis.call('HDEL', V, key) end
  end
  redis.call('ZREMRANGEBYSCORE', Z, '-inf', bound)
end
local held = redis.call('ZSCORE', Z, ARGV[3])
if held then  -- put again (another token with this revocation key): the later expiry wins
  if tonumber(ARGV[4]) > tonumber(held) then redis.call('ZADD', Z, ARGV[4], ARGV[3]) end
  return 1
end
if redis.call('ZCARD', Z) >= tonumber(ARGV[6]) then return 0 end
redis.call('ZADD', Z, ARGV[4], ARGV[3])
if ARGV[7] then redis.call('HSET', V, ARGV[3], ARGV[7]) end
return 1
""",
    # The issuer's small named values, in one hash (ARGV[4] == '1': only if absent).
    "set_value": """
local V = P .. 'values'
if ARGV[4] == '1' then
  local held = redis.call('HGET', V, ARGV[2])
  if held then return held end
end
if ARGV[3] == '' then redis.call('HDEL', V, ARGV[2]) return false end
redis.call('HSET', V, ARGV[2], ARGV[3])
return ARGV[3]
""",
    "get_expiring": """
local expires = redis.call('ZSCORE', P .. ARGV[2], ARGV[3])
if not expires or tonumber(expires) < tonumber(ARGV[4]) then return false end
if ARGV[5] == '1' then return redis.call('HGET', P .. ARGV[2] .. ':values', ARGV[3]) or false end
return '1'
""",
    # Everything of this namespace goes, then the clients and keys given come in; with
    # ARGV[2] == 'seed' only into a namespace never seeded, and they are kept (a list of
    # the same arguments) for ARGV[2] == 'reset', which puts them back (-1: none kept).
    "restore": """
local A, base = ARGV, 3
if ARGV[2] == 'seed' and redis.call('HGET', M, 'seeded') == '1' then return 0 end
if ARGV[2] == 'reset' then
  A, base = redis.call('LRANGE', P .. 'seed', 0, -1), 1
  if #A == 0 then return -1 end
end
for _, endpoint in ipairs(redis.call('ZRANGE', P .. 'fault_endpoints', 0, -1)) do
  redis.call('DEL', P .. 'faults:' .. endpoint)
end
for _, log in ipairs(redis.call('SMEMBERS', P .. 'logs')) do
  redis.call('DEL', P .. 'log:' .. log)
end
redis.call('DEL', P .. 'fault_endpoints', P .. 'logs', P .. 'log_bytes', P .. 'clients',
           P .. 'client_order', P .. 'keys', P .. 'jtis', P .. 'jti_counts', P .. 'revoked',
           P .. 'revoked:values', P .. 'opaque', P .. 'opaque:values', P .. 'values')
touch()
local clients = tonumber(A[base])
for i = 0, clients - 1 do
  local id, data = A[base + 1 + 2 * i], A[base + 2 + 2 * i]
  redis.call('HSET', P .. 'clients', id, data)
  redis.call('ZADD', P .. 'client_order', i + 1, id)
end
for i = base + 1 + 2 * clients, #A do redis.call('RPUSH', P .. 'keys', A[i]) end
if ARGV[2] == 'seed' then
  redis.call('DEL', P .. 'seed')
  for i = 3, #ARGV do redis.call('RPUSH', P .. 'seed', ARGV[i]) end
end
redis.call('HSET', M, 'seeded', 1, 'off', '0.0', 'frz', '', 'nf', 0, 'fseq', 0,
           'cseq', clients)
redis.call('HINCRBY', M, 'cv', 1)
redis.call('HINCRBY', M, 'kv', 1)
return 1
""",
}

#: How often update_clock tries its compare-and-set before giving up (each failure means
#: another process changed the clock in between, so some process always gets on).
_CLOCK_ATTEMPTS = 1000

_META_FIELDS = ("epoch", "seeded", "cv", "kv", "off", "frz", "nf")


class RedisStore(SharedStore):
    """The state of one issuer (``namespace``: further issuers share the database under
    their names) in the Redis database ``url`` (``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]``).
    ``socket_timeout`` and ``connect_timeout`` bound every call (seconds); a failed call is
    tried once more on a new connection, then raises
    :class:`~m2mauth.server.errors.StoreUnavailableError`. The bounds are
    :class:`~m2mauth.server.store.MemoryStore`'s."""

    kind = "redis"

    def __init__(self, url: str, *, namespace: str = "", socket_timeout: float = 1.0,
                 connect_timeout: float = 1.0, **bounds: Any) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        super().__init__(**bounds)
        self.url = redact_url(url)  # the only form of the URL this object keeps in sight
        self.namespace = namespace
        self._prefix = f"m2mauth:{{{namespace}}}:"
        self._meta_key = self._prefix + "meta"
        # redis-py's default retries ten times with backoff, seconds in all: one retry (a
        # pooled connection the server closed, after a restart) and then the 503.
        self._redis = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout, retry=Retry(NoBackoff(), 1),
            health_check_interval=0)
        self._errors: tuple[type[BaseException], ...] = (
            redis.ConnectionError, redis.TimeoutError, redis.exceptions.ReadOnlyError,
            redis.exceptions.OutOfMemoryError)
        self._response_error = redis.ResponseError
        # Loaded into the server on first use, and again after it restarted (NOSCRIPT).
        self._scripts = {name: self._redis.register_script(_PRELUDE + body)
                         for name, body in _SCRIPTS.items()}

    # -- calls ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _calls(self) -> Iterator[None]:
        """Redis errors that mean "not now" as :class:`StoreUnavailableError`."""
        try:
            yield
        except self._errors as exc:
            raise self._unavailable(exc) from None
        except self._response_error as exc:
            # A server that is loading its data, busy with a script, or refusing writes
            # after a failed save: unavailable for now. Anything else is a mistake here.
            if str(exc).split(" ", 1)[0] in ("LOADING", "BUSY", "MISCONF", "MASTERDOWN",
                                              "NOREPLICAS", "TRYAGAIN"):
                raise self._unavailable(exc) from None
            raise

    def _unavailable(self, exc: BaseException) -> StoreUnavailableError:
        # redis-py's messages name host and port, never the password.
        return StoreUnavailableError(f"Redis store {self.url}: {exc}")

    def _run(self, script: str, *args: Any) -> Any:
        with self._calls():
            return self._scripts[script](args=[self._prefix, *args])

    @property
    def location(self) -> str:
        return self.url

    def close(self) -> None:
        self._redis.close()

    def __repr__(self) -> str:
        ns = f" namespace={self.namespace!r}" if self.namespace else ""
        return f"<RedisStore {self.url}{ns}>"

    # -- reads for the cache ----------------------------------------------------------

    def _read_meta(self) -> Meta:
        with self._calls():
            epoch, seeded, cv, kv, off, frz, nf = self._redis.hmget(self._meta_key,
                                                                    _META_FIELDS)
        if epoch is None:
            return Meta("", False, 0, 0, ClockState(), 0)
        return Meta(epoch, seeded == "1", int(cv or 0), int(kv or 0),
                    ClockState(float(off or 0.0), float(frz) if frz else None), int(nf or 0))

    def _versioned(self, field: str, read: Callable[[Any], Any]) -> tuple[Version, Any]:
        """``read(pipeline)`` and the version ``field`` in one MULTI/EXEC: one round trip,
        one state."""
        with self._calls():
            pipe = self._redis.pipeline(transaction=True)
            pipe.hmget(self._meta_key, ("epoch", field))
            read(pipe)
            (epoch, version), found = pipe.execute()
        return (epoch or "", int(version or 0)), found

    def _read_keys(self) -> tuple[Version, list[KeyRecord]]:
        version, entries = self._versioned(
            "kv", lambda pipe: pipe.lrange(self._prefix + "keys", 0, -1))
        records = []
        for entry in entries:
            status, alg, kid, pem = entry.split("\n", 3)
            records.append(KeyRecord(kid, alg, status, pem))
        return version, records

    def _read_client(self, client_id: str) -> tuple[Version, str | None]:
        return self._versioned(
            "cv", lambda pipe: pipe.hget(self._prefix + "clients", client_id))

    def _read_clients(self) -> tuple[Version, list[tuple[str, str]]]:
        with self._calls():
            pipe = self._redis.pipeline(transaction=True)
            pipe.hmget(self._meta_key, ("epoch", "cv"))
            pipe.zrange(self._prefix + "client_order", 0, -1)
            pipe.hgetall(self._prefix + "clients")
            (epoch, version), order, data = pipe.execute()
        return ((epoch or "", int(version or 0)),
                [(client_id, data[client_id]) for client_id in order if client_id in data])

    # -- clients ------------------------------------------------------------------------

    def add_client(self, client: ClientSettings) -> bool:
        added = self._run("add_client", client.client_id, client_json(client)) == 1
        if added:
            self._changed()
        return added

    def remove_client(self, client_id: str) -> bool:
        removed = self._run("remove_client", client_id) == 1
        if removed:
            self._changed()
        return removed

    # -- signing keys -----------------------------------------------------------------

    def add_signing_key(self, key: SigningKey) -> None:
        from .keys import ACTIVE

        record = key_record(key)
        self._run("add_signing_key", record.alg, _key_entry(record._replace(status=ACTIVE)))
        self._changed()

    def set_key_status(self, kid: str, status: str) -> SigningKey | None:
        if self._run("set_key_status", kid, status) != 1:
            return None
        self._changed()
        return next((k for k in self.signing_keys() if k.kid == kid), None)

    # -- clock ------------------------------------------------------------------------

    def update_clock(self, change: Callable[[ClockState], ClockState]) -> ClockState:
        with self._calls():
            off, frz = self._redis.hmget(self._meta_key, ("off", "frz"))
        off, frz = off or "0.0", frz or ""
        for _ in range(_CLOCK_ATTEMPTS):
            new = change(ClockState(float(off), float(frz) if frz else None))
            answer = self._run("set_clock", off, frz, repr(float(new.offset)),
                               "" if new.frozen_at is None else repr(float(new.frozen_at)))
            if answer[0] == 1:
                self._changed()
                return new
            off, frz = answer[1] or "0.0", answer[2] or ""
        raise StoreUnavailableError(f"Redis store {self.url}: the clock changed under "
                                    f"{_CLOCK_ATTEMPTS} attempts to change it")

    # -- faults -----------------------------------------------------------------------

    def push_fault(self, endpoint: str, fault: Mapping[str, Any]) -> None:
        rest = {k: v for k, v in fault.items() if k != "remaining"}
        entry = f"{int(fault['remaining'])}\n{json.dumps(rest, separators=(',', ':'))}"
        self._run("push_fault", endpoint, entry)
        self._changed()

    def _take_fault(self, endpoint: str) -> dict[str, Any] | None:
        entry = self._run("take_fault", endpoint)
        return None if entry is None else _fault(entry)

    def faults(self) -> list[dict[str, Any]]:
        return [_fault(entry) for entry in self._run("faults")]

    def clear_faults(self) -> None:
        self._run("clear_faults")
        self._changed()

    # -- request logs -----------------------------------------------------------------

    def append_record(self, log: str, record: Mapping[str, Any]) -> None:
        record = dict(record)
        size = _size(record)
        self._run("append_record", log, f"{size}\n{json.dumps(record, separators=(',', ':'))}",
                  size, self._max_records, self._max_record_bytes)

    def records(self, log: str) -> list[dict[str, Any]]:
        with self._calls():
            entries = self._redis.lrange(self._prefix + "log:" + log, 0, -1)
        return [json.loads(entry.split("\n", 1)[1]) for entry in entries]

    def clear_records(self) -> None:
        self._run("clear_records")

    # -- client-assertion replay ------------------------------------------------------

    def remember_jti(self, client_id: str, jti: str, expires_at: float, now: float) -> bool:
        return self._run("remember_jti", client_id, jti, repr(float(expires_at)),
                         repr(float(now)), self._max_jtis_per_client) == 1

    # -- small named values -------------------------------------------------------------

    def issuer_value(self, name: str) -> str | None:
        with self._calls():
            found = self._redis.hget(self._prefix + "values", name)
        return str(found) if found is not None else None

    def set_issuer_value(self, name: str, value: str | None, *,
                         only_if_absent: bool = False) -> str | None:
        if value == "":
            raise ValueError("an issuer value is a non-empty string (None removes it)")
        found = self._run("set_value", name, value or "", "1" if only_if_absent else "0")
        return str(found) if found is not None else None

    # -- revoked and opaque tokens ------------------------------------------------------

    def revoke(self, key: str, expires_at: float, now: float) -> bool:
        return self._run("put_expiring", "revoked", key, repr(float(expires_at)),
                         repr(float(now)), self._max_revocations) == 1

    def is_revoked(self, key: str, now: float) -> bool:
        return self._run("get_expiring", "revoked", key, repr(float(now)), "0") is not None

    def add_opaque_token(self, key: str, claims: Mapping[str, Any], expires_at: float,
                         now: float) -> bool:
        return self._run("put_expiring", "opaque", key, repr(float(expires_at)),
                         repr(float(now)), self._max_opaque_tokens,
                         json.dumps(dict(claims), separators=(",", ":"))) == 1

    def opaque_token(self, key: str, now: float) -> dict[str, Any] | None:
        found = self._run("get_expiring", "opaque", key, repr(float(now)), "1")
        return json.loads(found) if found is not None else None

    # -- all of it --------------------------------------------------------------------

    def restore(self, clients: Iterable[ClientSettings], keys: Iterable[SigningKey]) -> None:
        self._restore("restore", clients, keys)

    def seed(self, clients: Iterable[ClientSettings], keys: Iterable[SigningKey]) -> bool:
        return self._restore("seed", clients, keys)

    def restore_seed(self) -> bool:
        done = self._run("restore", "reset") == 1
        if done:
            self._changed()
        return done

    def _restore(self, mode: str, clients: Iterable[ClientSettings],
                 keys: Iterable[SigningKey]) -> bool:
        by_id = {c.client_id: c for c in clients}  # a repeated id keeps the last
        args: list[Any] = [mode, len(by_id)]
        for client_id, client in by_id.items():
            args += [client_id, client_json(client)]
        args += [_key_entry(key_record(k)) for k in keys]
        done = self._run("restore", *args) == 1
        if done:
            self._changed()
        return done


def _key_entry(record: KeyRecord) -> str:
    return f"{record.status}\n{record.alg}\n{record.kid}\n{record.pem}"


def _fault(entry: str) -> dict[str, Any]:
    remaining, rest = entry.split("\n", 1)
    return {**json.loads(rest), "remaining": int(remaining)}
