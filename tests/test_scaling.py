"""A token request does the same work however much the issuer holds: the in-memory store's
calls and the key store's lookups counted (never timed) with 10 and 10,000 clients, an empty
and a full request log, an empty and a full replay cache. tests/test_shared_stores.py counts
the same for SQLite statements and Redis round trips; bench/scaling.py times it."""

from __future__ import annotations

import base64
import time
from collections import Counter

import jwt

from m2mauth.server import ClientSettings, ServerSettings, create_app
from m2mauth.server.issuer import initial_keys
from m2mauth.server.store import MemoryStore

SECRET = "a-shared-secret-of-more-than-32-bytes!"
BASIC = {"Authorization": "Basic " + base64.b64encode(b"demo-client:demo-secret").decode()}


class CountingStore(MemoryStore):
    """A MemoryStore that counts the calls of each of its methods while ``on``."""

    def __init__(self, **bounds) -> None:
        self.calls: Counter[str] = Counter()
        self.on = False
        super().__init__(**bounds)

    def __getattribute__(self, name: str):
        value = super().__getattribute__(name)
        if not name.startswith("_") and callable(value) and \
                super().__getattribute__("on"):
            super().__getattribute__("calls")[name] += 1
        return value


def _app(extra_clients: int, *, records: int = 0, jtis: int = 0):
    settings = ServerSettings(algorithm="ES256").validate()
    store = CountingStore(max_records=1_000)
    clients = [*settings.clients, ClientSettings("jwt-client", SECRET, scopes=("read",))]
    clients += [ClientSettings(f"c{i}", "s", scopes=("read",)) for i in range(extra_clients)]
    store.restore(clients, initial_keys(settings))
    for n in range(records):
        store.append_record("token", {"n": n})
    now = time.time()
    for n in range(jtis):
        assert store.remember_jti(f"other-{n % 10}", f"j{n}", now + 600, now)
    return create_app(settings, store=store), store


def _assertion() -> dict[str, str]:
    now = int(time.time())
    claims = {"iss": "jwt-client", "sub": "jwt-client", "aud": "http://127.0.0.1:8000/token",
              "iat": now, "exp": now + 60, "jti": f"j-{time.perf_counter_ns()}"}
    return {"grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": jwt.encode(claims, SECRET, algorithm="HS256")}


def _calls(app, store, request) -> Counter[str]:
    client = app.test_client()
    request(client)  # warm: clients built, signers made
    store.calls.clear()
    store.on = True
    try:
        for _ in range(3):
            request(client)
    finally:
        store.on = False
    return store.calls


def _basic(client) -> None:
    response = client.post("/token", data={"grant_type": "client_credentials"}, headers=BASIC)
    assert response.status_code == 200, response.data


def _jwt(client) -> None:
    response = client.post("/token", data=_assertion())
    assert response.status_code == 200, response.data


def test_store_calls_per_token_request_do_not_grow_with_clients_logs_or_jtis():
    small = _calls(*_app(8), _basic)
    assert small  # the path does reach the store (the fault check, the record, ...)
    assert _calls(*_app(10_000), _basic) == small
    assert _calls(*_app(8, records=1_000), _basic) == small  # the log at its bound
    assert _calls(*_app(8), _jwt) == _calls(*_app(8, jtis=10_000), _jwt)


def test_the_request_log_and_the_replay_cache_stay_at_their_bounds():
    app, store = _app(8, records=1_000)
    client = app.test_client()
    for _ in range(5):
        _basic(client)
    records = store.records("token")
    assert len(records) == 1_000 and records[-1]["outcome"] == "issued"
    assert len(store._jti_expiry) == 0
    _app_jwt, jwt_store = _app(8, jtis=2_000)
    jwt_client = _app_jwt.test_client()
    for _ in range(3):
        _jwt(jwt_client)
    # Entries leave at their expiry, oldest first from a heap: no per-request scan.
    assert len(jwt_store._jti_expiry) == 2_003


def _vm_steps(store, action) -> int:
    """SQLite virtual-machine instructions (in hundreds) that ``action`` runs on this
    thread's connection: work done, counted, never timed."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    db = store._connection()
    db.set_progress_handler(count, 100)
    try:
        action()
    finally:
        db.set_progress_handler(None, 100)
    return steps[0]


def test_the_sqlite_replay_check_does_not_walk_the_remembered_jtis(tmp_path):
    """remember_jti finds the expired entries by the expiry index: its work is the same
    with 10 and with 20,000 live jtis in the store (it once walked every one)."""
    from m2mauth.server.sqlite_store import SQLiteStore

    now = time.time()
    stores = {}
    for name, live in (("small", 10), ("big", 20_000)):
        store = stores[name] = SQLiteStore(tmp_path / f"{name}.db")
        store.restore([], [])
        for n in range(live):
            assert store.remember_jti(f"other-{n % 100}", f"j{n}", now + 600, now)
    work = {name: _vm_steps(store, lambda store=store: [
        store.remember_jti("client", f"new-{i}", now + 60, now + 1) for i in range(20)])
        for name, store in stores.items()}
    assert work["big"] <= work["small"] * 2 + 10, work
