"""The ``StateStore`` contract (server/store.py), run against every store: ``MemoryStore``,
``SQLiteStore`` on a real file in ``tmp_path`` and ``RedisStore`` on a real ``redis-server``
(the session's, see conftest.py). Every method and bound; atomicity under threads; and for
the shared stores, a second handle on the same state standing for another process (its own
cache), the version check, namespaces and reopening. Concurrency across real processes,
restarts, HTTP and cost are in tests/test_shared_stores.py. No sleeps: expiry goes by the
``now`` each call is given."""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from m2mauth.server import ClientSettings, MemoryStore, StateStore
from m2mauth.server.keys import ACTIVE, PUBLISHED, RETIRED, generate_signing_key
from m2mauth.server.store import ClockState, begin_request_reads, end_request_reads

T0 = 1_700_000_000.0
KINDS = ("memory", "sqlite", "redis")
SHARED = ("sqlite", "redis")
_names = itertools.count()


def client(client_id: str, **fields) -> ClientSettings:
    return ClientSettings(client_id, f"{client_id}-secret", **fields)


class Stores:
    """Stores of one kind. For the shared kinds each :meth:`make` gets a namespace of its own
    in one file (or database), and :meth:`another` a second handle on a store's namespace:
    another process's view, with a cache of its own."""

    def __init__(self, kind: str, target: str) -> None:
        self.kind = kind
        self.target = target
        self.opened: list[Any] = []

    @property
    def shared(self) -> bool:
        return self.kind != "memory"

    def make(self, clients=(), keys=(), **bounds) -> StateStore:
        if self.kind == "memory":
            return MemoryStore(clients, keys, **bounds)
        from _store_support import open_shared

        store = self._track(open_shared(self.kind, self.target, f"t{next(_names)}", **bounds))
        store.restore(clients, keys)
        return store

    def another(self, store: StateStore, **bounds) -> StateStore:
        if self.kind == "memory":
            return store
        from _store_support import open_shared

        return self._track(open_shared(self.kind, self.target, store.namespace, **bounds))

    def _track(self, store):
        self.opened.append(store)
        return store

    def close(self) -> None:
        for store in self.opened:
            store.close()


@pytest.fixture(params=KINDS)
def stores(request, tmp_path):
    kind = request.param
    if kind == "sqlite":
        target = str(tmp_path / "state.db")
    elif kind == "redis":
        target = request.getfixturevalue("redis_server").url()
    else:
        target = ""
    made = Stores(kind, target)
    yield made
    made.close()


@pytest.fixture(params=SHARED)
def shared(request, tmp_path):
    """Like ``stores``, the shared kinds only."""
    target = str(tmp_path / "state.db") if request.param == "sqlite" else \
        request.getfixturevalue("redis_server").url()
    made = Stores(request.param, target)
    yield made
    made.close()


@pytest.fixture(scope="module")
def es_keys():
    """A few distinct ES256 and EdDSA keys (cheap to make), reused by every test."""
    return ([generate_signing_key("ES256") for _ in range(4)],
            [generate_signing_key("EdDSA") for _ in range(2)])


def run_threads(count: int, target: Callable[[int], object], timeout: float = 60) -> list:
    """Run ``target(i)`` in ``count`` threads released together; their results, in order."""
    results: list = [None] * count
    errors: list[BaseException] = []
    barrier = threading.Barrier(count, timeout=timeout)

    def body(i: int) -> None:
        try:
            barrier.wait()
            results[i] = target(i)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish"
    assert errors == []
    return results


def json_shaped(value):
    """``value`` as it comes back from JSON (tuples become lists)."""
    if isinstance(value, dict):
        return {k: json_shaped(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_shaped(v) for v in value]
    return value


def test_every_store_is_a_state_store(stores):
    store = stores.make()
    assert isinstance(store, StateStore)
    assert not getattr(type(store), "__abstractmethods__", None)
    assert store.kind == stores.kind
    store.ping()


# -- clients --------------------------------------------------------------------------------


def test_clients_in_registration_order_and_lookup(stores):
    store = stores.make([client("a"), client("b")])
    assert [c.client_id for c in store.clients()] == ["a", "b"]
    assert store.add_client(client("c")) is True
    assert [c.client_id for c in store.clients()] == ["a", "b", "c"]
    assert store.client("c").client_secret == "c-secret"
    assert store.client("nobody") is None
    assert isinstance(store.clients(), tuple)


def test_add_client_refuses_a_taken_id_and_keeps_the_first(stores):
    store = stores.make([client("a", scopes=("read",))])
    assert store.add_client(client("a", scopes=("write",))) is False
    assert store.client("a").scopes == ("read",)
    assert len(store.clients()) == 1


def test_add_client_is_atomic_under_concurrency(stores):
    store = stores.make()
    handles = [stores.another(store) for _ in range(4)]  # shared: four caches, one store
    results = run_threads(20, lambda i: handles[i % 4].add_client(
        client("same", scopes=(f"s{i}",))))
    assert results.count(True) == 1 and results.count(False) == 19
    (winner,) = store.clients()
    assert winner.scopes == (f"s{results.index(True)}",)


def test_concurrent_adds_of_different_ids_all_land(stores):
    store = stores.make()
    assert all(run_threads(20, lambda i: store.add_client(client(f"c{i}"))))
    assert sorted(c.client_id for c in store.clients()) == sorted(f"c{i}" for i in range(20))


def test_remove_client(stores):
    store = stores.make([client("a"), client("b"), client("c")])
    snapshot = store.clients()
    assert store.remove_client("b") is True
    assert store.remove_client("b") is False
    assert store.remove_client("nobody") is False
    assert [c.client_id for c in store.clients()] == ["a", "c"]
    assert [c.client_id for c in snapshot] == ["a", "b", "c"]  # a snapshot is never mutated
    assert store.client("b") is None
    assert store.add_client(client("b")) is True  # the id is free again
    assert [c.client_id for c in store.clients()] == ["a", "c", "b"]


def test_concurrent_removes_succeed_once(stores):
    store = stores.make([client("gone")])
    assert run_threads(10, lambda i: store.remove_client("gone")).count(True) == 1


def test_client_settings_come_back_whole(stores, es_keys):
    """Every field of a client survives the store (shared stores keep JSON: tuples come back
    as tuples, None stays None)."""
    full = ClientSettings(
        "full", "secret", jwks={"keys": [es_keys[0][0].public_jwk()]},
        auth_methods=("client_secret_basic", "private_key_jwt"), scopes=("read", "write"),
        default_scopes=("read",), audiences=("https://a.test", "https://b.test"),
        default_audience=("https://a.test",), claims={"tenant": "acme", "n": [1, {"x": None}]},
        token_lifetime=60, algorithm="ES256", token_format="opaque", introspect=True)
    bare = ClientSettings("bare", "s")
    store = stores.make([full])
    store.add_client(bare)
    assert store.client("full") == full and store.client("bare") == bare
    assert stores.another(store).client("full") == full
    assert store.clients() == (full, bare)
    assert isinstance(store.client("full").scopes, tuple)
    assert store.client("bare").default_scopes is None


# -- signing keys ---------------------------------------------------------------------------


def test_signing_keys_identity_is_stable_until_a_change(stores, es_keys):
    (e1, e2, _, _), (o1, _) = es_keys
    store = stores.make(keys=[e1, o1])
    first = store.signing_keys()
    assert store.signing_keys() is first  # no change: the very same tuple
    store.add_client(client("x"))
    store.append_record("token", {"n": 1})
    store.push_fault("token", {"remaining": 1})
    store.update_clock(lambda s: ClockState(offset=5))
    store.remember_jti("c", "j", T0 + 60, T0)
    assert store.signing_keys() is first  # other state changing does not count
    store.add_signing_key(e2)
    second = store.signing_keys()
    assert second is not first and store.signing_keys() is second
    assert [k.kid for k in first] == [e1.kid, o1.kid]  # the old tuple is untouched
    store.set_key_status(e1.kid, RETIRED)
    assert store.signing_keys() is not second
    third = store.signing_keys()
    assert store.set_key_status("no-such-kid", RETIRED) is None
    assert store.signing_keys() is third  # a change of nothing is no change


def test_add_signing_key_demotes_the_active_key_of_its_algorithm_only(stores, es_keys):
    (e1, e2, e3, _), (o1, _) = es_keys
    store = stores.make(keys=[e1, o1])
    store.add_signing_key(e2)
    assert [(k.kid, k.status) for k in store.signing_keys()] == [
        (e1.kid, PUBLISHED), (o1.kid, ACTIVE), (e2.kid, ACTIVE)]
    store.add_signing_key(e3)
    assert [(k.kid, k.status) for k in store.signing_keys()] == [
        (e1.kid, PUBLISHED), (o1.kid, ACTIVE), (e2.kid, PUBLISHED), (e3.kid, ACTIVE)]
    # The key given is stored as active whatever status it carried; the caller's is unchanged.
    retired_copy = replace(e1, status=RETIRED)
    store.add_signing_key(retired_copy)
    assert store.signing_keys()[-1].status == ACTIVE
    assert retired_copy.status == RETIRED


def test_signing_keys_come_back_able_to_sign(stores, es_keys):
    """A shared store keeps each key as alg, status and its private key in PKCS#8 PEM: what
    comes back has the same kid, public JWK and private key."""
    from joserfc import jwt

    rsa = generate_signing_key("RS256")
    (e1, _, _, _), (o1, _) = es_keys
    store = stores.make(keys=[rsa, e1, o1])
    store.set_key_status(e1.kid, PUBLISHED)
    fresh = stores.another(store).signing_keys()
    assert [(k.alg, k.kid, k.status) for k in fresh] == [
        ("RS256", rsa.kid, ACTIVE), ("ES256", e1.kid, PUBLISHED), ("EdDSA", o1.kid, ACTIVE)]
    for original, back in zip((rsa, e1, o1), fresh, strict=True):
        assert back.public_jwk() == original.public_jwk()
        assert back.pem() == original.pem()
        token = jwt.encode({"alg": back.alg}, {"sub": "x"}, back.key, algorithms=[back.alg])
        assert jwt.decode(token, original.key, algorithms=[back.alg]).claims == {"sub": "x"}


def test_readers_never_see_two_active_keys_of_one_algorithm(stores, es_keys):
    (e1, e2, e3, e4), (o1, _) = es_keys
    store = stores.make(keys=[e1, o1])
    reader = stores.another(store)
    done = threading.Event()
    bad: list[tuple] = []
    samples = Counter()
    rounds = 300 if not stores.shared else 25

    def read(_):
        for _ in range(20_000):  # bounded
            if done.is_set():
                break
            keys = reader.signing_keys()
            active = Counter(k.alg for k in keys if k.status == ACTIVE)
            if active["ES256"] != 1 or active["EdDSA"] != 1:
                bad.append(tuple(keys))
            samples["reads"] += 1

    def write(_):
        try:
            for _ in range(rounds):
                for key in (e2, e3, e4, e1):
                    store.add_signing_key(key)
        finally:
            done.set()

    run_threads(3, lambda i: write(i) if i == 0 else read(i))
    assert bad == []
    assert samples["reads"] > 0
    active = [k for k in reader.signing_keys() if k.status == ACTIVE]
    assert sorted(k.alg for k in active) == ["ES256", "EdDSA"]


def test_set_key_status(stores, es_keys):
    (e1, e2, _, _), _ = es_keys
    store = stores.make(keys=[e1])
    store.add_signing_key(e2)
    changed = store.set_key_status(e1.kid, RETIRED)
    assert changed is not None and (changed.kid, changed.status) == (e1.kid, RETIRED)
    assert [(k.kid, k.status) for k in store.signing_keys()] == [
        (e1.kid, RETIRED), (e2.kid, ACTIVE)]
    assert e1.status == ACTIVE  # records are immutable: the store holds a new one
    assert store.set_key_status("no-such-kid", PUBLISHED) is None
    assert store.set_key_status(e1.kid, PUBLISHED).status == PUBLISHED


# -- clock state ----------------------------------------------------------------------------


def test_clock_state_and_update_clock(stores):
    store = stores.make()
    assert store.clock_state() == ClockState(0.0, None)
    new = store.update_clock(lambda s: ClockState(s.offset + 10, None))
    assert new == store.clock_state() == ClockState(10.0, None)
    frozen = store.update_clock(lambda s: ClockState(s.offset, T0 + 0.123456789))
    assert store.clock_state() == frozen == ClockState(10.0, T0 + 0.123456789)  # exact floats
    assert stores.another(store).clock_state() == frozen


def test_update_clock_is_atomic_under_concurrency(stores):
    store = stores.make()
    handles = [stores.another(store) for _ in range(4)]
    per = 500 if not stores.shared else 40
    run_threads(8, lambda i: [handles[i % 4].update_clock(
        lambda s: ClockState(s.offset + 1, None)) for _ in range(per)])
    assert store.clock_state().offset == 8 * per


# -- faults ---------------------------------------------------------------------------------


def test_take_fault_counts_down_remaining_and_returns_the_fault_as_before_the_use(stores):
    store = stores.make()
    store.push_fault("token", {"kind": "error", "remaining": 3})
    store.push_fault("token", {"kind": "drop", "remaining": 1})
    store.push_fault("jwks", {"kind": "malformed", "remaining": 1})
    assert store.take_fault("token") == {"kind": "error", "remaining": 3}
    assert store.faults() == [{"kind": "error", "remaining": 2}, {"kind": "drop", "remaining": 1},
                              {"kind": "malformed", "remaining": 1}]
    assert store.take_fault("token")["remaining"] == 2
    assert store.take_fault("token")["remaining"] == 1
    assert store.take_fault("token") == {"kind": "drop", "remaining": 1}
    assert store.take_fault("token") is None
    assert store.faults() == [{"kind": "malformed", "remaining": 1}]
    assert store.take_fault("other") is None
    assert store.take_fault("jwks")["kind"] == "malformed"
    assert store.faults() == []


def test_faults_are_listed_by_endpoint_in_the_order_each_was_first_queued(stores):
    store = stores.make()
    store.push_fault("token", {"n": 1, "remaining": 1})
    store.push_fault("jwks", {"n": 2, "remaining": 1})
    store.take_fault("token")
    store.push_fault("token", {"n": 3, "remaining": 1})
    assert [f["n"] for f in store.faults()] == [3, 2]  # token's place stays until a clear
    store.clear_faults()
    store.push_fault("jwks", {"n": 4, "remaining": 1})
    store.push_fault("token", {"n": 5, "remaining": 1})
    assert [f["n"] for f in store.faults()] == [4, 5]


def test_faults_are_copies_and_keep_every_field(stores):
    from m2mauth.server.lab.faults import Fault

    store = stores.make()
    fault = Fault("token", "delay", 200, None, "why", 7, delay=0.25, remaining=2).as_dict()
    store.push_fault("token", fault)
    fault["remaining"] = 99  # the caller's dict is not the store's
    listed = store.faults()
    assert listed == [{**fault, "remaining": 2}]
    listed[0]["remaining"] = 50
    taken = store.take_fault("token")
    assert Fault(**taken) == Fault("token", "delay", 200, None, "why", 7, 0.25, remaining=2)
    taken["remaining"] = 70
    assert store.faults() == [{**fault, "remaining": 1}]


def test_take_fault_is_exactly_once_under_concurrency(stores):
    store = stores.make()
    scale = 1 if not stores.shared else 5
    store.push_fault("token", {"kind": "error", "remaining": 500 // scale})
    store.push_fault("token", {"kind": "drop", "remaining": 100 // scale})
    store.push_fault("jwks", {"kind": "malformed", "remaining": 50 // scale})
    handles = [stores.another(store) for _ in range(4)]
    per = 100 // scale
    taken = run_threads(8, lambda i: [handles[i % 4].take_fault("jwks" if i == 7 else "token")
                                      for _ in range(per)])
    token = [f for each in taken[:7] for f in each if f is not None]
    jwks = [f for f in taken[7] if f is not None]
    assert len(token) == 600 // scale
    # Every use of each fault handed out once: remaining values N..1, no repeats.
    assert sorted(f["remaining"] for f in token if f["kind"] == "error") == list(
        range(1, 500 // scale + 1))
    assert sorted(f["remaining"] for f in token if f["kind"] == "drop") == list(
        range(1, 100 // scale + 1))
    assert sorted(f["remaining"] for f in jwks) == list(range(1, 50 // scale + 1))
    assert store.faults() == []
    rank = {"error": 0, "drop": 1, None: 2}
    for each in taken[:7]:  # in each thread, faults come in queue order
        kinds = [f["kind"] if f is not None else None for f in each]
        assert kinds == sorted(kinds, key=rank.__getitem__)


def test_clear_faults(stores):
    store = stores.make()
    store.push_fault("token", {"remaining": 2})
    store.push_fault("jwks", {"remaining": 2})
    store.clear_faults()
    assert store.faults() == [] and store.take_fault("token") is None


def test_a_fault_queued_through_another_handle_is_taken_here(stores):
    """The shared stores' "nothing queued" shortcut never hides a fault queued elsewhere."""
    store = stores.make()
    assert store.take_fault("token") is None
    stores.another(store).push_fault("token", {"remaining": 1})
    assert store.take_fault("token") == {"remaining": 1}
    assert store.take_fault("token") is None


# -- request logs ---------------------------------------------------------------------------


def test_logs_are_separate_ordered_and_bounded_by_max_records(stores):
    store = stores.make(max_records=5)
    for i in range(12):
        store.append_record("token", {"n": i})
        if i % 3 == 0:
            store.append_record("jwks", {"n": i})
    assert [r["n"] for r in store.records("token")] == [7, 8, 9, 10, 11]
    assert [r["n"] for r in store.records("jwks")] == [0, 3, 6, 9]
    assert store.records("nothing") == []
    store.clear_records()
    assert store.records("token") == [] and store.records("jwks") == []
    store.append_record("token", {"n": 99})
    assert store.records("token") == [{"n": 99}]


def test_logs_are_bounded_in_bytes(stores):
    """``max_record_bytes`` counts the records' strings (store._size), as MemoryStore does;
    a record larger than the bound alone leaves the log empty."""
    from m2mauth.server.store import _size

    record = {"client_id": "x" * 92}
    size = _size(record)
    store = stores.make(max_record_bytes=3 * size)
    for i in range(5):
        store.append_record("token", {**record, "client_id": f"{i}" + "x" * 91})
    assert [r["client_id"][0] for r in store.records("token")] == ["2", "3", "4"]
    store.append_record("token", {"client_id": "y" * (4 * size)})
    assert store.records("token") == []
    store.append_record("token", record)
    assert store.records("token") == [record]


def test_records_are_copies_and_json_shaped(stores):
    store = stores.make()
    record = {"n": 1, "scope": ("read", "write"), "time": T0 + 0.5, "ok": True, "none": None,
              "claims": {"a": [1, 2]}}
    store.append_record("token", record)
    record["n"] = 2
    store.records("token")[0]["n"] = 3
    assert [json_shaped(r) for r in store.records("token")] == [
        json_shaped({**record, "n": 1})]


def test_concurrent_appends_are_all_kept_in_bound(stores):
    bound, per = (1000, 200) if not stores.shared else (200, 40)
    store = stores.make(max_records=bound)
    handles = [stores.another(store, max_records=bound) for _ in range(4)]
    run_threads(8, lambda i: [handles[i % 4].append_record("token", {"t": i, "n": n})
                              for n in range(per)])
    kept = store.records("token")
    assert len(kept) == bound == len({(r["t"], r["n"]) for r in kept})
    for t in range(8):  # each thread's records stay in its order
        mine = [r["n"] for r in kept if r["t"] == t]
        assert mine == sorted(mine)


# -- client-assertion jti replay -----------------------------------------------------------


def test_remember_jti_refuses_a_replay_until_it_expires(stores):
    store = stores.make()
    assert store.remember_jti("c", "j1", expires_at=T0 + 60, now=T0) is True
    assert store.remember_jti("c", "j1", expires_at=T0 + 60, now=T0 + 1) is False
    assert store.remember_jti("c", "j1", expires_at=T0 + 60, now=T0 + 60) is False  # inclusive
    assert store.remember_jti("other", "j1", expires_at=T0 + 60, now=T0) is True  # per client
    assert store.remember_jti("c", "j2", expires_at=T0 + 60, now=T0) is True
    # Expired: the assertion's own exp check refuses it; the cache may forget it.
    assert store.remember_jti("c", "j1", expires_at=T0 + 200, now=T0 + 61) is True
    assert store.remember_jti("c", "j1", expires_at=T0 + 200, now=T0 + 100) is False


def test_remember_jti_refuses_when_full_of_live_entries(stores):
    store = stores.make(max_jtis_per_client=3)
    for j in ("a", "b", "c"):
        assert store.remember_jti("c", j, expires_at=T0 + 60, now=T0)
    # Full of live entries: refused, rather than forgetting one and allowing its replay.
    assert store.remember_jti("c", "d", expires_at=T0 + 60, now=T0) is False
    for j in ("a", "b", "c"):
        assert store.remember_jti("c", j, expires_at=T0 + 60, now=T0 + 1) is False
    # Once they expire, room is made.
    assert store.remember_jti("c", "d", expires_at=T0 + 200, now=T0 + 61) is True
    assert store.remember_jti("c", "a", expires_at=T0 + 200, now=T0 + 61) is True
    assert store.remember_jti("c", "d", expires_at=T0 + 200, now=T0 + 62) is False


def test_one_client_filling_its_share_never_refuses_another_client(stores):
    store = stores.make(max_jtis_per_client=3)
    for j in ("a", "b", "c"):
        assert store.remember_jti("greedy", j, expires_at=T0 + 3600, now=T0)
    assert store.remember_jti("greedy", "d", expires_at=T0 + 60, now=T0 + 1) is False
    for other in ("x", "y", "z"):
        assert store.remember_jti(other, "a", expires_at=T0 + 60, now=T0 + 1) is True
        assert store.remember_jti(other, "a", expires_at=T0 + 60, now=T0 + 2) is False


def test_remember_jti_forgets_expired_entries_as_time_passes(stores):
    """A steady client with 60 s assertions keeps about 60 s worth of entries: with a share
    of 130 it is never refused, however many it sent."""
    store = stores.make(max_jtis_per_client=130)
    for i in range(400 if stores.shared else 2_000):
        now = T0 + i * 0.5  # two assertions a second
        assert store.remember_jti("c", f"j{i}", expires_at=now + 60, now=now), i


def test_jtis_with_odd_characters_are_kept_apart(stores):
    store = stores.make()
    for jti in ("a\nb", "a", "a\nb\n", "", "ü\x00"):
        assert store.remember_jti("c", jti, T0 + 60, T0) is True
        assert store.remember_jti("c", jti, T0 + 60, T0) is False
    assert store.remember_jti("c\nd", "x", T0 + 60, T0) is True
    assert store.remember_jti("c", "d\nx", T0 + 60, T0) is True


def test_remember_jti_is_exactly_once_under_concurrency(stores):
    store = stores.make()
    handles = [stores.another(store) for _ in range(4)]
    results = run_threads(16, lambda i: handles[i % 4].remember_jti("c", "same", T0 + 60, T0))
    assert results.count(True) == 1


# -- revocations and opaque tokens ---------------------------------------------------------


def test_revocations_expire_by_now_and_are_bounded(stores):
    store = stores.make(max_revocations=2)
    assert store.is_revoked("a", T0) is False
    assert store.revoke("a", T0 + 60, T0) is True
    assert store.revoke("a", T0 + 60, T0) is True  # again: still revoked, nothing new
    assert store.is_revoked("a", T0 + 60) is True  # inclusive, as the token's exp is
    assert store.is_revoked("a", T0 + 61) is False
    assert store.revoke("b", T0 + 600, T0) is True
    # Full of live entries: refused rather than forgetting a revocation.
    assert store.revoke("c", T0 + 600, T0 + 1) is False
    assert store.is_revoked("c", T0 + 1) is False
    # "a" expired: its room is free.
    assert store.revoke("c", T0 + 600, T0 + 61) is True
    assert store.is_revoked("c", T0 + 62) and store.is_revoked("b", T0 + 62)
    assert stores.another(store).is_revoked("b", T0 + 62)


def test_a_revocation_made_again_keeps_the_later_expiry(stores):
    """Another token with the same revocation key revoked again: its entry stays until the
    later ``exp``; an earlier one changes nothing. The entry still leaves once that passes."""
    store = stores.make()
    assert store.revoke("k", T0 + 60, T0)
    assert store.revoke("k", T0 + 600, T0 + 1)
    assert store.revoke("k", T0 + 30, T0 + 2)  # earlier: the later stays
    assert store.is_revoked("k", T0 + 61) and store.is_revoked("k", T0 + 600)
    assert store.is_revoked("k", T0 + 601) is False
    # Expired entries are dropped by time, the extended one at its new expiry.
    small = stores.make(max_revocations=1)
    assert small.revoke("k", T0 + 60, T0) and small.revoke("k", T0 + 600, T0)
    assert small.revoke("other", T0 + 700, T0 + 61) is False  # "k" is live until T0 + 600
    assert small.revoke("other", T0 + 700, T0 + 601) is True


def test_opaque_tokens_expire_by_now_and_are_bounded(stores):
    store = stores.make(max_opaque_tokens=2)
    claims = {"sub": "c", "scope": "read", "exp": int(T0) + 60, "aud": ["x", "y"]}
    assert store.add_opaque_token("k1", claims, T0 + 60, T0) is True
    assert store.opaque_token("k1", T0) == claims
    assert store.opaque_token("k1", T0 + 60) == claims
    assert store.opaque_token("k1", T0 + 61) is None
    assert store.opaque_token("nothing", T0) is None
    found = store.opaque_token("k1", T0)
    found["sub"] = "changed"  # a copy
    assert store.opaque_token("k1", T0)["sub"] == "c"
    assert store.add_opaque_token("k2", claims, T0 + 600, T0) is True
    assert store.add_opaque_token("k3", claims, T0 + 600, T0 + 1) is False  # full
    assert store.add_opaque_token("k3", claims, T0 + 600, T0 + 61) is True  # k1 expired
    assert store.opaque_token("k3", T0 + 62) == claims
    assert stores.another(store).opaque_token("k2", T0 + 62) == claims


def test_revoke_and_opaque_are_atomic_under_concurrency(stores):
    bounds = dict(max_revocations=10, max_opaque_tokens=10)
    store = stores.make(**bounds)
    handles = [stores.another(store, **bounds) for _ in range(4)]
    results = run_threads(8, lambda i: [handles[i % 4].revoke(f"r{i}-{n}", T0 + 60, T0)
                                        for n in range(3)])
    assert sum(r for each in results for r in each) == 10  # exactly the bound, never more
    results = run_threads(8, lambda i: [handles[i % 4].add_opaque_token(
        f"o{i}-{n}", {"n": n}, T0 + 60, T0) for n in range(3)])
    assert sum(r for each in results for r in each) == 10


# -- the issuer's small named values (DPoP nonce secret and switch) -----------------------


def test_issuer_values_set_replace_and_remove(stores):
    store = stores.make()
    assert store.issuer_value("dpop_nonce") is None
    assert store.set_issuer_value("dpop_nonce", "on") == "on"
    assert store.issuer_value("dpop_nonce") == "on"
    assert store.set_issuer_value("dpop_nonce", "off") == "off"
    assert store.issuer_value("dpop_nonce") == "off"
    assert store.set_issuer_value("dpop_nonce", None) is None
    assert store.issuer_value("dpop_nonce") is None
    with pytest.raises(ValueError):
        store.set_issuer_value("dpop_nonce", "")


def test_issuer_value_only_if_absent_keeps_the_first(stores):
    store = stores.make()
    assert store.set_issuer_value("secret", "first", only_if_absent=True) == "first"
    assert store.set_issuer_value("secret", "second", only_if_absent=True) == "first"
    assert store.issuer_value("secret") == "first"


def test_issuer_value_made_once_under_concurrency_and_seen_by_every_handle(stores):
    store = stores.make()
    others = [store, *(stores.another(store) for _ in range(2))]
    got = run_threads(8, lambda i: (others[i % len(others)]).set_issuer_value(
        "secret", f"v{i}", only_if_absent=True))
    assert len(set(got)) == 1
    assert all(o.issuer_value("secret") == got[0] for o in others)


def test_restore_forgets_issuer_values(stores):
    store = stores.make()
    store.set_issuer_value("dpop_nonce", "on")
    store.restore([client("a")], [])
    assert store.issuer_value("dpop_nonce") is None


# -- restore and seed -------------------------------------------------------------------------


def test_restore_resets_everything_in_one_step(stores, es_keys):
    (e1, e2, _, _), (o1, _) = es_keys
    store = stores.make([client("a")], [e1, o1])
    store.add_client(client("b"))
    store.remove_client("a")
    store.add_signing_key(e2)
    store.set_key_status(e1.kid, RETIRED)
    store.update_clock(lambda s: ClockState(100.0, T0))
    store.push_fault("token", {"remaining": 3})
    store.push_fault("jwks", {"remaining": 1})
    store.append_record("token", {"n": 1})
    store.append_record("jwks", {"n": 1})
    assert store.remember_jti("c", "j", T0 + 60, T0)
    assert store.revoke("r", T0 + 60, T0)
    assert store.add_opaque_token("o", {"sub": "c"}, T0 + 60, T0)
    other = stores.another(store)
    assert other.client("b") is not None and len(other.signing_keys()) == 3  # cached there

    store.restore([client("z")], [e1])
    for each in (store, other):
        assert [c.client_id for c in each.clients()] == ["z"]
        assert each.client("b") is None
        assert [(k.kid, k.status) for k in each.signing_keys()] == [(e1.kid, ACTIVE)]
        assert each.clock_state() == ClockState()
        assert each.faults() == [] and each.take_fault("token") is None
        assert each.records("token") == [] and each.records("jwks") == []
        assert each.is_revoked("r", T0) is False and each.opaque_token("o", T0) is None
    assert store.remember_jti("c", "j", T0 + 60, T0) is True  # forgotten


def test_restore_while_faults_are_taken_never_hands_one_out_twice(stores):
    store = stores.make()
    taker = stores.another(store)
    handed = Counter()
    lock = threading.Lock()
    stop = threading.Event()

    def count(fault) -> None:
        with lock:
            handed[(fault["round"], fault["remaining"])] += 1

    def take(_):
        for _ in range(1_000_000):  # bounded; ends when the resets do
            if stop.is_set():
                break
            fault = taker.take_fault("token")
            if fault is not None:
                count(fault)

    def reset(_):
        try:
            for r in range(200 if not stores.shared else 40):
                store.restore([], [])
                store.push_fault("token", {"round": r, "remaining": 5})
        finally:
            stop.set()

    run_threads(4, lambda i: reset(i) if i == 0 else take(i))
    for _ in range(5):  # what the last round left in the queue
        fault = store.take_fault("token")
        if fault is not None:
            count(fault)
    assert store.take_fault("token") is None
    assert handed and max(handed.values()) == 1
    assert all(1 <= remaining <= 5 for _, remaining in handed)


def test_a_new_shared_store_is_seeded_once(shared, es_keys):
    (e1, e2, _, _), _ = es_keys
    from _store_support import open_shared

    first = shared._track(open_shared(shared.kind, shared.target, "fresh"))
    assert first.seeded() is False
    assert first.clients() == () and first.signing_keys() == ()
    assert first.seed([client("a")], [e1]) is True
    second = shared._track(open_shared(shared.kind, shared.target, "fresh"))
    assert second.seeded() is True
    # A later start keeps what the store holds: its seed is not applied.
    assert second.seed([client("b")], [e2]) is False
    assert [c.client_id for c in second.clients()] == ["a"]
    assert [k.kid for k in second.signing_keys()] == [e1.kid]
    second.add_client(client("added"))
    second.restore([client("r")], [e2])  # a restore counts as seeded too
    assert first.seed([client("x")], [e1]) is False
    assert [c.client_id for c in first.clients()] == ["r"]


def test_seeding_is_one_winner_under_concurrency(shared, es_keys):
    from _store_support import open_shared

    keys = [generate_signing_key("ES256") for _ in range(6)]
    handles = [shared._track(open_shared(shared.kind, shared.target, "race")) for _ in range(6)]
    results = run_threads(6, lambda i: handles[i].seed([client(f"c{i}")], [keys[i]]))
    assert results.count(True) == 1
    winner = results.index(True)
    for handle in handles:
        assert [k.kid for k in handle.signing_keys()] == [keys[winner].kid]
        assert [c.client_id for c in handle.clients()] == [f"c{winner}"]


def test_restore_seed_puts_back_what_the_store_was_seeded_with_from_any_handle(shared,
                                                                                 es_keys):
    """The lab's reset on a shared store: whichever process asks (another handle, opened
    after changes, holding other clients and keys at its start), the store goes back to its
    seed – clients, keys and their status – with everything else emptied, in one step."""
    (e1, e2, _, _), _ = es_keys
    from _store_support import open_shared

    first = shared._track(open_shared(shared.kind, shared.target, "seeded"))
    assert first.restore_seed() is False  # nothing seeded yet: nothing kept
    assert first.seed([client("a"), client("b")], [e1]) is True
    first.add_client(client("added"))
    first.remove_client("b")
    first.add_signing_key(e2)
    first.push_fault("token", {"remaining": 2, "kind": "error"})
    first.append_record("token", {"n": 1})
    first.update_clock(lambda _: ClockState(offset=30.0))
    later = shared._track(open_shared(shared.kind, shared.target, "seeded"))  # a later start
    assert [c.client_id for c in later.clients()] == ["a", "added"]
    assert later.restore_seed() is True
    for handle in (first, later):
        assert [c.client_id for c in handle.clients()] == ["a", "b"]
        assert [(k.kid, k.status) for k in handle.signing_keys()] == [(e1.kid, e1.status)]
        assert handle.faults() == [] and handle.records("token") == []
        assert handle.clock_state() == ClockState()
    # A restore to something else leaves the seed as it was.
    later.restore([client("r")], [e2])
    assert first.restore_seed() is True
    assert [c.client_id for c in later.clients()] == ["a", "b"]


def test_a_store_that_keeps_no_seed_says_so():
    store = MemoryStore([client("a")])
    store.add_client(client("b"))
    assert store.restore_seed() is False
    assert [c.client_id for c in store.clients()] == ["a", "b"]  # unchanged


def test_memory_stores_are_seeded_by_their_constructor():
    store = MemoryStore([client("a")])
    assert store.seeded() is True
    assert store.seed([client("b")], []) is False
    assert [c.client_id for c in store.clients()] == ["a"]


# -- the shared stores: namespaces, versions, the per-request check ------------------------


def test_namespaces_keep_issuers_apart(shared, es_keys):
    (e1, e2, _, _), _ = es_keys
    from _store_support import open_shared

    root = shared._track(open_shared(shared.kind, shared.target, ""))
    named = shared._track(open_shared(shared.kind, shared.target, "orders"))
    root.restore([client("root-client")], [e1])
    named.restore([client("orders-client")], [e2])
    for store in (root, named):
        store.push_fault("token", {"ns": store.namespace, "remaining": 1})
        store.append_record("token", {"ns": store.namespace})
        store.update_clock(lambda s, ns=store.namespace: ClockState(offset=len(ns)))
        assert store.remember_jti("c", "j", T0 + 60, T0) is True
        assert store.revoke("r", T0 + 60, T0) is True
    assert [c.client_id for c in root.clients()] == ["root-client"]
    assert [c.client_id for c in named.clients()] == ["orders-client"]
    assert [k.kid for k in named.signing_keys()] == [e2.kid]
    assert root.take_fault("token") == {"ns": "", "remaining": 1}
    assert named.faults() == [{"ns": "orders", "remaining": 1}]
    assert root.records("token") == [{"ns": ""}]
    assert (root.clock_state().offset, named.clock_state().offset) == (0.0, 6.0)
    named.restore([], [])
    assert root.records("token") == [{"ns": ""}] and root.client("root-client") is not None
    assert root.remember_jti("c", "j", T0 + 60, T0) is False
    assert named.remember_jti("c", "j", T0 + 60, T0) is True


def test_a_change_through_another_handle_is_read_next_and_only_it_is_fetched(shared,
                                                                             es_keys):
    """The version check: another process's change is seen by this one's next read; what did
    not change keeps its snapshot (the keys tuple, the unchanged client's settings object)."""
    (e1, e2, _, _), _ = es_keys
    store = shared.make([client("a"), client("b")], [e1])
    keys, a, b = store.signing_keys(), store.client("a"), store.client("b")
    other = shared.another(store)
    other.add_client(client("c"))
    assert store.client("c") == client("c")
    assert store.signing_keys() is keys  # the clients changed, not the keys
    assert store.client("a") is a and store.client("b") is b  # same JSON: same object
    other.remove_client("b")
    assert store.client("b") is None and [c.client_id for c in store.clients()] == ["a", "c"]
    other.add_signing_key(e2)
    assert [k.kid for k in store.signing_keys()] == [e1.kid, e2.kid]
    assert store.client("a") is a
    other.update_clock(lambda s: ClockState(frozen_at=T0))
    assert store.clock_state() == ClockState(frozen_at=T0)
    other.restore([client("a", scopes=("read",))], [e1])
    assert store.client("a").scopes == ("read",)


def test_within_a_request_the_versions_are_read_once_and_own_writes_are_read(shared):
    store = shared.make([client("a")], [generate_signing_key("ES256")])
    other = shared.another(store)
    begin_request_reads()
    try:
        assert store.client("a") is not None
        before = store.clock_state()
        other.update_clock(lambda s: ClockState(offset=42.0))
        # One check per request: another process's change made after this request's first
        # read shows from the next request on.
        assert store.clock_state() == before
        store.add_client(client("mine"))  # this handle's own write: read at once
        assert store.client("mine") is not None
        assert store.clock_state().offset == 42.0  # ...which checked the versions again
    finally:
        end_request_reads()
    other.push_fault("token", {"remaining": 1})
    begin_request_reads()
    try:
        assert store.take_fault("token") == {"remaining": 1}
    finally:
        end_request_reads()


def test_reopening_keeps_everything(shared, es_keys):
    """Close the store and open it again (a restarted worker): nothing is lost."""
    (e1, e2, _, _), (o1, _) = es_keys
    store = shared.make([client("a")], [e1, o1])
    store.add_client(client("b"))
    store.add_signing_key(e2)
    store.set_key_status(e1.kid, RETIRED)
    store.update_clock(lambda s: ClockState(3.5, T0))
    store.push_fault("token", {"remaining": 2})
    store.append_record("token", {"n": 1})
    store.remember_jti("c", "j", T0 + 60, T0)
    store.revoke("r", T0 + 60, T0)
    store.add_opaque_token("o", {"sub": "c"}, T0 + 60, T0)
    namespace = store.namespace
    store.close()
    from _store_support import open_shared

    again = shared._track(open_shared(shared.kind, shared.target, namespace))
    assert again.seeded()
    assert [c.client_id for c in again.clients()] == ["a", "b"]
    assert [(k.kid, k.status) for k in again.signing_keys()] == [
        (e1.kid, RETIRED), (o1.kid, ACTIVE), (e2.kid, ACTIVE)]
    assert again.clock_state() == ClockState(3.5, T0)
    assert again.faults() == [{"remaining": 2}]
    assert again.records("token") == [{"n": 1}]
    assert again.remember_jti("c", "j", T0 + 60, T0 + 1) is False
    assert again.is_revoked("r", T0) and again.opaque_token("o", T0) == {"sub": "c"}
