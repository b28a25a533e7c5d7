"""``MemoryStore`` against the ``StateStore`` contract (server/store.py), and the clocks that
read and change its clock state (``Clock``, ``LabClock``). Concurrency cases run real
threads, bounded and joined with a timeout; no sleeps, no wall-clock assertions beyond a
sanity bound."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest

from m2mauth.server import ClientSettings, Clock, LabClock, MemoryStore, StateStore
from m2mauth.server.keys import ACTIVE, PUBLISHED, RETIRED, generate_signing_key
from m2mauth.server.store import ClockState

T0 = 1_700_000_000.0


def client(client_id: str, **fields) -> ClientSettings:
    return ClientSettings(client_id, f"{client_id}-secret", **fields)


@pytest.fixture(scope="module")
def es_keys():
    """A few distinct ES256 and EdDSA keys (cheap to make), reused by every test."""
    return ([generate_signing_key("ES256") for _ in range(4)],
            [generate_signing_key("EdDSA") for _ in range(2)])


def run_threads(count: int, target: Callable[[int], object], timeout: float = 30) -> list:
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


def test_memory_store_is_a_state_store():
    assert isinstance(MemoryStore(), StateStore)
    assert not getattr(MemoryStore, "__abstractmethods__", None)


# -- clients --------------------------------------------------------------------------------


def test_clients_in_registration_order_and_lookup():
    store = MemoryStore([client("a"), client("b")])
    assert [c.client_id for c in store.clients()] == ["a", "b"]
    assert store.add_client(client("c")) is True
    assert [c.client_id for c in store.clients()] == ["a", "b", "c"]
    assert store.client("c").client_secret == "c-secret"
    assert store.client("nobody") is None
    assert isinstance(store.clients(), tuple)


def test_add_client_refuses_a_taken_id_and_keeps_the_first():
    store = MemoryStore([client("a", scopes=("read",))])
    assert store.add_client(client("a", scopes=("write",))) is False
    assert store.client("a").scopes == ("read",)
    assert len(store.clients()) == 1


def test_add_client_is_atomic_under_concurrency():
    store = MemoryStore()
    results = run_threads(20, lambda i: store.add_client(client("same", scopes=(f"s{i}",))))
    assert results.count(True) == 1 and results.count(False) == 19
    (winner,) = store.clients()
    assert winner.scopes == (f"s{results.index(True)}",)


def test_concurrent_adds_of_different_ids_all_land():
    store = MemoryStore()
    assert all(run_threads(20, lambda i: store.add_client(client(f"c{i}"))))
    assert sorted(c.client_id for c in store.clients()) == sorted(f"c{i}" for i in range(20))


def test_remove_client():
    store = MemoryStore([client("a"), client("b"), client("c")])
    snapshot = store.clients()
    assert store.remove_client("b") is True
    assert store.remove_client("b") is False
    assert store.remove_client("nobody") is False
    assert [c.client_id for c in store.clients()] == ["a", "c"]
    assert [c.client_id for c in snapshot] == ["a", "b", "c"]  # a snapshot is never mutated
    assert store.client("b") is None
    assert store.add_client(client("b")) is True  # the id is free again
    assert [c.client_id for c in store.clients()] == ["a", "c", "b"]


def test_concurrent_removes_succeed_once():
    store = MemoryStore([client("gone")])
    assert run_threads(10, lambda i: store.remove_client("gone")).count(True) == 1


# -- signing keys ---------------------------------------------------------------------------


def test_signing_keys_identity_is_stable_until_a_change(es_keys):
    (e1, e2, _, _), (o1, _) = es_keys
    store = MemoryStore(keys=[e1, o1])
    first = store.signing_keys()
    assert store.signing_keys() is first  # no change: the very same tuple
    store.add_client(client("x"))
    store.append_record("token", {"n": 1})
    store.push_fault("token", {"remaining": 1})
    store.update_clock(lambda s: ClockState(offset=5))
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


def test_add_signing_key_demotes_the_active_key_of_its_algorithm_only(es_keys):
    (e1, e2, e3, _), (o1, _) = es_keys
    store = MemoryStore(keys=[e1, o1])
    store.add_signing_key(e2)
    assert [(k.kid, k.status) for k in store.signing_keys()] == [
        (e1.kid, PUBLISHED), (o1.kid, ACTIVE), (e2.kid, ACTIVE)]
    store.add_signing_key(e3)
    assert [(k.kid, k.status) for k in store.signing_keys()] == [
        (e1.kid, PUBLISHED), (o1.kid, ACTIVE), (e2.kid, PUBLISHED), (e3.kid, ACTIVE)]
    # The key given is stored as active whatever status it carried; the caller's is unchanged.
    from dataclasses import replace

    retired_copy = replace(e1, status=RETIRED)
    store.add_signing_key(retired_copy)
    assert store.signing_keys()[-1].status == ACTIVE
    assert retired_copy.status == RETIRED


def test_readers_never_see_two_active_keys_of_one_algorithm(es_keys):
    (e1, e2, e3, e4), (o1, _) = es_keys
    store = MemoryStore(keys=[e1, o1])
    done = threading.Event()
    bad: list[tuple] = []
    samples = Counter()

    def read(_):
        for _ in range(20_000):  # bounded
            if done.is_set():
                break
            keys = store.signing_keys()
            active = Counter(k.alg for k in keys if k.status == ACTIVE)
            if active["ES256"] != 1 or active["EdDSA"] != 1:
                bad.append(tuple(keys))
            samples["reads"] += 1

    def write(_):
        try:
            for _ in range(300):
                for key in (e2, e3, e4, e1):
                    store.add_signing_key(key)
        finally:
            done.set()

    run_threads(3, lambda i: write(i) if i == 0 else read(i))
    assert bad == []
    assert samples["reads"] > 0
    active = [k for k in store.signing_keys() if k.status == ACTIVE]
    assert sorted(k.alg for k in active) == ["ES256", "EdDSA"]


def test_set_key_status(es_keys):
    (e1, e2, _, _), _ = es_keys
    store = MemoryStore(keys=[e1])
    store.add_signing_key(e2)
    changed = store.set_key_status(e1.kid, RETIRED)
    assert changed is not None and (changed.kid, changed.status) == (e1.kid, RETIRED)
    assert [(k.kid, k.status) for k in store.signing_keys()] == [
        (e1.kid, RETIRED), (e2.kid, ACTIVE)]
    assert e1.status == ACTIVE  # records are immutable: the store holds a new one
    assert store.set_key_status("no-such-kid", PUBLISHED) is None
    assert store.set_key_status(e1.kid, PUBLISHED).status == PUBLISHED


# -- clock state ----------------------------------------------------------------------------


def test_clock_state_and_update_clock():
    store = MemoryStore()
    assert store.clock_state() == ClockState(0.0, None)
    new = store.update_clock(lambda s: ClockState(s.offset + 10, None))
    assert new == store.clock_state() == ClockState(10.0, None)


def test_update_clock_is_atomic_under_concurrency():
    store = MemoryStore()
    run_threads(8, lambda i: [store.update_clock(lambda s: ClockState(s.offset + 1, None))
                              for _ in range(500)])
    assert store.clock_state().offset == 8 * 500


# -- faults ---------------------------------------------------------------------------------


def test_take_fault_counts_down_remaining_and_returns_the_fault_as_before_the_use():
    store = MemoryStore()
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


def test_faults_are_copies():
    store = MemoryStore()
    fault = {"kind": "error", "remaining": 2}
    store.push_fault("token", fault)
    fault["remaining"] = 99  # the caller's dict is not the store's
    listed = store.faults()
    listed[0]["remaining"] = 50
    taken = store.take_fault("token")
    taken["remaining"] = 70
    assert store.faults() == [{"kind": "error", "remaining": 1}]


def test_take_fault_is_exactly_once_under_concurrency():
    store = MemoryStore()
    store.push_fault("token", {"kind": "error", "remaining": 500})
    store.push_fault("token", {"kind": "drop", "remaining": 100})
    store.push_fault("jwks", {"kind": "malformed", "remaining": 50})
    taken = run_threads(8, lambda i: [store.take_fault("jwks" if i == 7 else "token")
                                      for _ in range(100)])
    token = [f for per in taken[:7] for f in per if f is not None]
    jwks = [f for f in taken[7] if f is not None]
    assert len(token) == 600  # of 700 takes: the last 100 found the queue empty
    # Every use of each fault handed out once: remaining values 500..1 and 100..1, no repeats.
    assert sorted(f["remaining"] for f in token if f["kind"] == "error") == list(range(1, 501))
    assert sorted(f["remaining"] for f in token if f["kind"] == "drop") == list(range(1, 101))
    assert sorted(f["remaining"] for f in jwks) == list(range(1, 51))
    assert sum(f is None for f in taken[7]) == 50
    assert store.faults() == []
    # In each thread, faults come in queue order: errors, then drops, then nothing.
    rank = {"error": 0, "drop": 1, None: 2}
    for per in taken[:7]:
        kinds = [f["kind"] if f is not None else None for f in per]
        assert kinds == sorted(kinds, key=rank.__getitem__)


def test_clear_faults():
    store = MemoryStore()
    store.push_fault("token", {"remaining": 2})
    store.push_fault("jwks", {"remaining": 2})
    store.clear_faults()
    assert store.faults() == [] and store.take_fault("token") is None


# -- request logs ---------------------------------------------------------------------------


def test_logs_are_separate_ordered_and_bounded_by_max_records():
    store = MemoryStore(max_records=5)
    for i in range(12):
        store.append_record("token", {"n": i})
        if i % 3 == 0:
            store.append_record("jwks", {"n": i})
    assert [r["n"] for r in store.records("token")] == [7, 8, 9, 10, 11]
    assert [r["n"] for r in store.records("jwks")] == [0, 3, 6, 9]
    assert store.records("nothing") == []
    store.clear_records()
    assert store.records("token") == [] and store.records("jwks") == []


def test_records_are_copies():
    store = MemoryStore()
    record = {"n": 1}
    store.append_record("token", record)
    record["n"] = 2
    store.records("token")[0]["n"] = 3
    assert store.records("token") == [{"n": 1}]


def test_concurrent_appends_are_all_kept_in_bound():
    store = MemoryStore(max_records=1000)
    run_threads(8, lambda i: [store.append_record("token", {"t": i, "n": n})
                              for n in range(200)])
    kept = store.records("token")
    assert len(kept) == 1000
    assert len({(r["t"], r["n"]) for r in kept}) == 1000
    for t in range(8):  # each thread's records stay in its order
        mine = [r["n"] for r in kept if r["t"] == t]
        assert mine == sorted(mine)


# -- client-assertion jti replay -----------------------------------------------------------


def test_remember_jti_refuses_a_replay_until_it_expires():
    store = MemoryStore()
    assert store.remember_jti("c", "j1", expires_at=T0 + 60, now=T0) is True
    assert store.remember_jti("c", "j1", expires_at=T0 + 60, now=T0 + 1) is False
    assert store.remember_jti("c", "j1", expires_at=T0 + 60, now=T0 + 60) is False  # inclusive
    assert store.remember_jti("other", "j1", expires_at=T0 + 60, now=T0) is True  # per client
    assert store.remember_jti("c", "j2", expires_at=T0 + 60, now=T0) is True
    # Expired: the assertion's own exp check refuses it; the cache may forget it.
    assert store.remember_jti("c", "j1", expires_at=T0 + 200, now=T0 + 61) is True
    assert store.remember_jti("c", "j1", expires_at=T0 + 200, now=T0 + 100) is False


def test_remember_jti_refuses_when_full_of_live_entries():
    store = MemoryStore(max_jtis_per_client=3)
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


def test_one_client_filling_its_share_never_refuses_another_client():
    """Issue 9 item 6: the bound is per client; a greedy client's long-lived assertions
    refuse only its own next ones."""
    store = MemoryStore(max_jtis_per_client=3)
    for j in ("a", "b", "c"):
        assert store.remember_jti("greedy", j, expires_at=T0 + 3600, now=T0)
    assert store.remember_jti("greedy", "d", expires_at=T0 + 60, now=T0 + 1) is False
    for other in ("x", "y", "z"):
        assert store.remember_jti(other, "a", expires_at=T0 + 60, now=T0 + 1) is True
        assert store.remember_jti(other, "a", expires_at=T0 + 60, now=T0 + 2) is False


def test_remember_jti_forgets_expired_entries_as_time_passes():
    """Expired entries go by time, whether or not a share is full: a steady client with
    60 s assertions keeps about 60 s worth of entries, not all it ever sent."""
    store = MemoryStore(max_jtis_per_client=100_000)
    for i in range(5_000):
        now = T0 + i * 0.5  # two assertions a second
        assert store.remember_jti(f"c{i % 7}", f"j{i}", expires_at=now + 60, now=now)
        # Private state, read to check the bound: at most 60 s of entries stay.
        assert len(store._jti_expiry) <= 122
    assert sum(len(seen) for seen in store._jtis.values()) == len(store._jti_expiry)
    later = T0 + 5_000
    assert store.remember_jti("new", "j", expires_at=later + 60, now=later)
    assert len(store._jti_expiry) == 1 and list(store._jtis) == ["new"]


def test_the_per_client_bound_is_a_setting():
    from m2mauth.server.issuer import Issuer
    from m2mauth.server.settings import ServerSettings, load_settings

    settings = load_settings(env={"M2MAUTH_ASSERTION_JTIS_PER_CLIENT": "2"})
    assert settings.assertion_jtis_per_client == 2
    assert ServerSettings().assertion_jtis_per_client == 10_000
    store = Issuer(settings).store
    assert store.remember_jti("c", "a", T0 + 60, T0) and store.remember_jti("c", "b", T0 + 60, T0)
    assert store.remember_jti("c", "c", T0 + 60, T0) is False
    assert store.remember_jti("d", "c", T0 + 60, T0) is True


def test_remember_jti_is_exactly_once_under_concurrency():
    store = MemoryStore()
    results = run_threads(16, lambda i: store.remember_jti("c", "same", T0 + 60, T0))
    assert results.count(True) == 1


# -- restore --------------------------------------------------------------------------------


def test_restore_resets_everything_in_one_step(es_keys):
    (e1, e2, _, _), (o1, _) = es_keys
    store = MemoryStore([client("a")], [e1, o1])
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

    store.restore([client("z")], [e1])
    assert [c.client_id for c in store.clients()] == ["z"]
    assert store.client("b") is None
    assert [(k.kid, k.status) for k in store.signing_keys()] == [(e1.kid, ACTIVE)]
    assert store.clock_state() == ClockState()
    assert store.faults() == [] and store.take_fault("token") is None
    assert store.records("token") == [] and store.records("jwks") == []
    assert store.remember_jti("c", "j", T0 + 60, T0) is True  # forgotten


def test_restore_while_faults_are_taken_never_hands_one_out_twice():
    store = MemoryStore()
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
            fault = store.take_fault("token")
            if fault is not None:
                count(fault)

    def reset(_):
        try:
            for r in range(200):
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


# -- the clocks over a store ----------------------------------------------------------------


def test_clock_without_a_store_is_real_time():
    clock = Clock()
    assert abs(clock.now() - time.time()) < 5
    assert clock.offset == 0 and clock.frozen is False
    assert isinstance(clock(), int)


def test_clock_reads_the_store():
    store = MemoryStore()
    clock = Clock(store)
    assert abs(clock.now() - time.time()) < 5
    store.update_clock(lambda s: ClockState(frozen_at=T0))
    assert clock.now() == T0 and clock() == int(T0) and clock.frozen
    store.update_clock(lambda s: ClockState(offset=-3600.0))
    assert not clock.frozen and clock.offset == -3600
    assert abs(clock.now() - (time.time() - 3600)) < 5
    assert "offset -3600" in repr(clock)


def test_lab_clock_freeze_advance_offset_unfreeze_reset():
    store = MemoryStore()
    lab, core = LabClock(store), Clock(store)  # one state: the core's clock follows the lab's
    lab.freeze(T0)
    assert lab.frozen and core.frozen and core.now() == T0
    lab.advance(90)
    assert core.now() == T0 + 90 and core() == int(T0) + 90
    lab.advance(-30)
    assert core.now() == T0 + 60
    lab.unfreeze()
    assert not core.frozen
    # Continuous: time runs on from the frozen instant, not from real time.
    assert T0 + 60 <= core.now() < T0 + 65
    offset = core.offset
    assert abs(offset - (T0 + 60 - time.time())) < 5
    lab.advance(10)
    assert core.offset == pytest.approx(offset + 10)
    lab.set_offset(7200)
    assert core.offset == 7200 and not core.frozen
    assert abs(core.now() - (time.time() + 7200)) < 5
    lab.freeze()
    frozen_at = core.now()
    assert abs(frozen_at - (time.time() + 7200)) < 5
    assert core.now() == frozen_at  # frozen: the same instant on every read
    lab.set_offset(-60)  # while frozen: frozen at real time minus a minute
    assert core.frozen and abs(core.now() - (time.time() - 60)) < 5
    lab.reset()
    assert store.clock_state() == ClockState()
    assert core.offset == 0 and not core.frozen
    assert abs(core.now() - time.time()) < 5


def test_lab_clock_unfreeze_when_running_changes_nothing():
    store = MemoryStore()
    lab = LabClock(store)
    lab.set_offset(100)
    lab.unfreeze()
    assert store.clock_state() == ClockState(100.0, None)


def test_lab_clock_needs_a_store():
    lab = LabClock()
    assert abs(lab.now() - time.time()) < 5
    with pytest.raises(RuntimeError, match="state store"):
        lab.freeze(T0)


def test_clocks_of_two_stores_are_independent():
    a, b = MemoryStore(), MemoryStore()
    LabClock(a).freeze(T0)
    assert Clock(a).frozen and not Clock(b).frozen


def test_store_restore_resets_the_clock():
    store = MemoryStore()
    LabClock(store).freeze(T0)
    store.restore([], [])
    assert not Clock(store).frozen and Clock(store).offset == 0
