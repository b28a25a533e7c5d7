"""What is MemoryStore's own (the contract every store keeps is tests/test_store_contract.py,
run over memory, SQLite and Redis), and the clocks that read and change its clock state
(``Clock``, ``LabClock``). Concurrency cases run real
threads, bounded and joined with a timeout; no sleeps, no wall-clock assertions beyond a
sanity bound."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from m2mauth.server import ClientSettings, Clock, LabClock, MemoryStore, StateStore
from m2mauth.server.keys import generate_signing_key
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


# -- signing keys ---------------------------------------------------------------------------


# -- clock state ----------------------------------------------------------------------------


# -- faults ---------------------------------------------------------------------------------


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


# -- request logs ---------------------------------------------------------------------------


def test_records_are_copies():
    store = MemoryStore()
    record = {"n": 1}
    store.append_record("token", record)
    record["n"] = 2
    store.records("token")[0]["n"] = 3
    assert store.records("token") == [{"n": 1}]


# -- client-assertion jti replay -----------------------------------------------------------


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


# -- restore --------------------------------------------------------------------------------


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
