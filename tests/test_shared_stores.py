"""The shared stores in use: several processes on one SQLite file or Redis database, restarts
(of the store's user and of Redis), the server over HTTP while the store is unreachable and
when it returns, ``/readyz``, choosing the store (``--store``, ``M2MAUTH_STORE``), the file's
permissions, the password kept out of sight, and a cost that does not grow with the state
(round trips and statements counted, never timed). Real SQLite files in ``tmp_path``, real
``redis-server`` processes on loopback ports; every wait bounded; no sleeps."""

from __future__ import annotations

import base64
import multiprocessing
import os
import sqlite3
import stat
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import requests
from _store_support import RedisServer, free_port, open_shared, worker_change, worker_round

from m2mauth.server import ClientSettings, ConfigError, ServerSettings, create_app
from m2mauth.server.errors import KeyStoreError, StoreUnavailableError
from m2mauth.server.keys import ACTIVE, generate_signing_key
from m2mauth.server.lab.idp import IdentityProvider
from m2mauth.server.settings import load_settings
from m2mauth.server.sqlite_store import SQLiteStore
from m2mauth.server.store import ClockState, begin_request_reads, end_request_reads

T0 = 1_700_000_000.0
SHARED = ("sqlite", "redis")
GRANT = {"grant_type": "client_credentials"}
DEMO = ("demo-client", "demo-secret")


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


@pytest.fixture(params=SHARED)
def target(request, tmp_path):
    """(kind, target) of a shared store: an SQLite file, or a flushed Redis database."""
    if request.param == "sqlite":
        return "sqlite", str(tmp_path / "state.db")
    server = request.getfixturevalue("redis_server")
    url = server.url(3)
    import redis

    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return "redis", url


def store_url(kind: str, target: str) -> str:
    return f"sqlite:{target}" if kind == "sqlite" else target


def spawn():
    # spawn, not fork: the test process has threads (xdist, servers), which fork copies badly.
    return multiprocessing.get_context("spawn")


def run_processes(ctx, function, args_list, timeout: float = 120) -> list:
    """``function(*args)`` in one process per args, their results in order (via a queue)."""
    from _store_support import in_process

    queue = ctx.Queue()
    procs = [ctx.Process(target=in_process, args=(queue, i, function, args), daemon=True)
             for i, args in enumerate(args_list)]
    for proc in procs:
        proc.start()
    results: dict[int, object] = {}
    try:
        for _ in procs:
            index, ok, value = queue.get(timeout=timeout)
            assert ok, value
            results[index] = value
    finally:
        for proc in procs:
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()
    return [results[i] for i in range(len(procs))]


# -- several processes on one store ----------------------------------------------------------


def test_processes_sharing_a_store_take_each_fault_once_and_race_fairly(target):
    """Four processes released together on one store: each use of a queued fault is taken by
    exactly one of them, one registration of an id wins, one sight of a jti is fresh, every
    record is kept in each process's order, and the rotations of all are seen here."""
    kind, where = target
    first = generate_signing_key("ES256")
    store = open_shared(kind, where, "procs")
    store.restore([], [first])
    keys = store.signing_keys()  # this process's cache, warm before the others change things
    for fault_id, uses in (("a", 40), ("b", 1), ("c", 19)):
        store.push_fault("token", {"id": fault_id, "remaining": uses})
    ctx = spawn()
    barrier = ctx.Barrier(4)
    results = run_processes(ctx, worker_round,
                            [(kind, where, "procs", i, barrier, 25) for i in range(4)])
    taken = Counter(use for each in results for use in each["taken"])
    assert sum(taken.values()) == 60 and set(taken.values()) == {1}
    assert set(taken) == {("a", n) for n in range(1, 41)} | {("b", 1)} | {
        ("c", n) for n in range(1, 20)}
    assert store.faults() == []
    assert [each["won"] for each in results].count(True) == 1
    winner = [each["won"] for each in results].index(True)
    assert store.client("same").client_secret == f"secret-{winner}"
    assert [each["jti"] for each in results].count(True) == 1
    records = store.records("token")
    assert len(records) == 100
    for i in range(4):
        assert [r["n"] for r in records if r["worker"] == i] == list(range(25))
    now = store.signing_keys()
    assert now is not keys  # seen here without a reload being asked for
    assert {k.kid for k in now} == {first.kid} | {each["kid"] for each in results}
    assert [k.alg for k in now if k.status == ACTIVE] == ["ES256"]
    assert len({each["pid"] for each in results}) == 4
    store.close()


def test_a_change_in_another_process_is_seen_by_the_next_read_here(target):
    kind, where = target
    key = generate_signing_key("ES256")
    store = open_shared(kind, where, "versions")
    store.restore([ClientSettings("here", "s")], [key])
    keys, here = store.signing_keys(), store.client("here")
    assert store.client("from-another-process") is None
    run_processes(spawn(), worker_change, [(kind, where, "versions")])
    assert store.client("from-another-process") is not None
    assert store.clock_state() == ClockState(frozen_at=1_700_000_123.0)
    # What did not change is not read again: the same snapshots.
    assert store.signing_keys() is keys and store.client("here") is here
    store.close()


# -- restarts ----------------------------------------------------------------------------------


def test_redis_restarted_keeps_everything_and_the_store_reconnects(tmp_path):
    server = RedisServer(tmp_path).start()
    try:
        from m2mauth.server.redis_store import RedisStore

        e1, e2 = generate_signing_key("ES256"), generate_signing_key("ES256")
        store = RedisStore(server.url())
        store.restore([ClientSettings("a", "s")], [e1])
        store.add_signing_key(e2)
        store.update_clock(lambda s: ClockState(2.5, T0))
        store.push_fault("token", {"remaining": 2})
        store.append_record("token", {"n": 1})
        assert store.remember_jti("c", "j", T0 + 60, T0)
        assert store.revoke("r", T0 + 60, T0)
        assert store.add_opaque_token("o", {"sub": "c"}, T0 + 60, T0)
        server.restart()
        for each in (store, RedisStore(server.url())):  # the old handle reconnects
            assert [c.client_id for c in each.clients()] == ["a"]
            assert [(k.kid, k.status) for k in each.signing_keys()] == [
                (e1.kid, "published"), (e2.kid, ACTIVE)]
            assert each.clock_state() == ClockState(2.5, T0)
            assert each.faults() == [{"remaining": 2}]
            assert each.records("token") == [{"n": 1}]
            assert each.remember_jti("c", "j", T0 + 60, T0 + 1) is False
            assert each.is_revoked("r", T0) and each.opaque_token("o", T0) == {"sub": "c"}
        store.close()
    finally:
        server.stop()


def _admin(url: str, method: str, path: str, **body) -> dict:
    response = requests.request(method, f"{url}/admin{path}", json=body or None, timeout=10)
    assert response.status_code < 300, response.text
    return response.json()


def test_a_served_issuer_killed_and_restarted_loses_nothing(target, cli_process):
    """``m2mauth serve --store ...`` killed with SIGKILL (no shutdown of any kind) and
    started again: clients, keys and their status, the clock, the fault queue and the
    request log are as they were, and a token issued before validates after."""
    from m2mauth.client import TokenValidator

    kind, where = target
    port = free_port()
    args = ("serve", "--port", str(port), "--ephemeral-keys", "--store", store_url(kind, where))
    first = cli_process(*args)
    assert "new: seeded" in first.text, first.text
    url = first.field("issuer")
    _admin(url, "POST", "/clients", client_id="kept", client_secret="kept-secret",
           scopes=["read"])
    rotated = _admin(url, "POST", "/keys/rotate")["kid"]
    _admin(url, "POST", "/clock", freeze=True, at=T0 + 10)
    _admin(url, "POST", "/faults", n=3, status=503)
    assert requests.post(url + "/token", data=GRANT, auth=DEMO, timeout=10).status_code == 503
    token = requests.post(url + "/token", data=GRANT, auth=("kept", "kept-secret"),
                          timeout=10)
    assert token.status_code == 503  # the fault's second use
    keys_before = _admin(url, "GET", "/keys")["keys"]
    log_before = _admin(url, "GET", "/requests/token")["requests"]
    first.proc.kill()
    first.proc.wait(timeout=20)

    second = cli_process(*args)
    assert "kept: the clients and keys it holds" in second.text, second.text
    assert second.field("issuer") == url
    assert [c["client_id"] for c in _admin(url, "GET", "/clients")["clients"]] == [
        "demo-client", "kept"]
    assert _admin(url, "GET", "/keys")["keys"] == keys_before
    assert _admin(url, "GET", "/clock")["now"] == T0 + 10
    assert [f["remaining"] for f in _admin(url, "GET", "/faults")["faults"]] == [1]
    assert _admin(url, "GET", "/requests/token")["requests"] == log_before
    assert requests.post(url + "/token", data=GRANT, auth=DEMO, timeout=10).status_code == 503
    issued = requests.post(url + "/token", data=GRANT, auth=("kept", "kept-secret"),
                           timeout=10)
    assert issued.status_code == 200
    validator = TokenValidator(url, "api://default", jwks_uri=url + "/jwks.json",
                               clock=lambda: T0 + 20)
    claims = validator.validate(issued.json()["access_token"])
    assert claims.header["kid"] == rotated
    assert requests.get(url + "/readyz", timeout=10).json() == {"status": "ready", "store": kind}


# -- two servers, one store ------------------------------------------------------------------


def test_two_servers_on_one_store_read_each_others_writes(target):
    """What ``--workers`` will build on: two servers (two stores, two caches) on one file or
    database. A change through either's admin API is in effect at the other's next request;
    a queued fault spoils exactly its count of responses across both; the log has them all."""
    kind, where = target
    settings = ServerSettings(ephemeral_keys=True, algorithm="ES256")
    a = IdentityProvider.start(settings, store=open_shared(kind, where, ""))
    b = IdentityProvider.start(settings, store=open_shared(kind, where, ""))
    try:
        assert a.keys() == b.keys()  # seeded once: the same keys in both
        _admin(a.issuer, "POST", "/clients", client_id="new", client_secret="new-secret")
        assert requests.post(b.token_endpoint, data=GRANT, auth=("new", "new-secret"),
                             timeout=10).status_code == 200
        kid = _admin(b.issuer, "POST", "/keys/rotate", alg="ES256")["kid"]
        token = requests.post(a.token_endpoint, data=GRANT, auth=DEMO, timeout=10).json()
        import jwt

        assert jwt.get_unverified_header(token["access_token"])["kid"] == kid
        assert kid in {k["kid"] for k in requests.get(a.jwks_uri, timeout=10).json()["keys"]}
        _admin(a.issuer, "POST", "/clock", freeze=True, at=T0)
        token = requests.post(b.token_endpoint, data=GRANT, auth=DEMO, timeout=10).json()
        assert jwt.decode(token["access_token"], options={"verify_signature": False})[
            "iat"] == int(T0)
        _admin(b.issuer, "DELETE", "/requests")
        _admin(a.issuer, "POST", "/faults", n=3)
        statuses = [requests.post((a, b)[i % 2].token_endpoint, data=GRANT, auth=DEMO,
                                  timeout=10).status_code for i in range(8)]
        assert statuses == [503] * 3 + [200] * 5
        logged = _admin(b.issuer, "GET", "/requests/token")["requests"]
        assert [r["status"] for r in logged] == statuses  # complete, in order
    finally:
        a.stop()
        b.stop()


# -- the store unreachable -------------------------------------------------------------------


def _calls(idp: IdentityProvider) -> dict[str, requests.Response]:
    token = {"token": "whatever"}
    return {
        "token": requests.post(idp.token_endpoint, data=GRANT, auth=DEMO, timeout=20),
        "jwks": requests.get(idp.jwks_uri, timeout=20),
        "introspection": requests.post(idp.issuer + "/introspect", data=token, auth=DEMO,
                                       timeout=20),
        "revocation": requests.post(idp.issuer + "/revoke", data=token, auth=DEMO, timeout=20),
        "admin": requests.get(idp.admin_url + "/clients", timeout=20),
        "metadata": requests.get(idp.metadata_url, timeout=20),
    }


def test_redis_down_gives_503s_with_an_rfc_body_and_the_server_recovers(tmp_path):
    """Stop redis-server under a running server: every endpoint that needs the store
    answers 503 ``temporarily_unavailable`` (JSON, ``Retry-After``, no-store), ``/readyz``
    is not ready; start it again and the same server answers as before, with its keys."""
    from m2mauth.server.redis_store import RedisStore

    redis = RedisServer(tmp_path).start()
    idp = IdentityProvider.start(ServerSettings(ephemeral_keys=True, algorithm="ES256"),
                                 store=RedisStore(redis.url()))
    try:
        before = _calls(idp)
        assert [name for name, r in before.items() if r.status_code >= 500] == []
        redis.stop()
        down = _calls(idp)
        for name, response in down.items():
            assert response.status_code == 503, name
            assert response.headers["Content-Type"] == "application/json", name
            assert response.headers["Retry-After"] == "1"
            assert response.headers["Cache-Control"] == "no-store"
            body = response.json()
            assert body["error"] == "temporarily_unavailable", name
            assert "Traceback" not in response.text and "127.0.0.1" not in response.text
        assert down["token"].elapsed.total_seconds() < 10  # bounded, not a hang
        ready = requests.get(idp.url + "/readyz", timeout=20)
        assert (ready.status_code, ready.json()) == (503, {"status": "not ready",
                                                           "store": "redis"})
        redis.start()
        after = _calls(idp)
        assert {name: r.status_code for name, r in after.items()} == {
            name: r.status_code for name, r in before.items()}
        assert after["jwks"].json() == before["jwks"].json()  # its keys, not new ones
        assert requests.get(idp.url + "/readyz", timeout=20).json() == {"status": "ready",
                                                                        "store": "redis"}
    finally:
        idp.stop()
        redis.stop()


def test_redis_back_without_its_data_is_seeded_again(tmp_path):
    """A Redis that comes back empty (no persistence, flushed): the server seeds it again
    from its settings, as at a first start, instead of answering with no clients."""
    from m2mauth.server.redis_store import RedisStore

    redis = RedisServer().start()  # in memory only: a restart loses everything
    idp = IdentityProvider.start(ServerSettings(ephemeral_keys=True, algorithm="ES256"),
                                 store=RedisStore(redis.url()))
    try:
        old = requests.get(idp.jwks_uri, timeout=10).json()
        redis.restart()
        assert requests.post(idp.token_endpoint, data=GRANT, auth=DEMO,
                             timeout=10).status_code == 200
        assert requests.get(idp.jwks_uri, timeout=10).json() != old  # keys made anew
    finally:
        idp.stop()
        redis.stop()


def test_sqlite_locked_beyond_its_busy_timeout_gives_503s_and_recovers(tmp_path):
    path = tmp_path / "state.db"
    store = SQLiteStore(path, busy_timeout=0.2)
    idp = IdentityProvider.start(ServerSettings(), store=store)
    try:
        assert requests.post(idp.token_endpoint, data=GRANT, auth=DEMO,
                             timeout=10).status_code == 200
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process's long write transaction
        try:
            for response in (requests.post(idp.token_endpoint, data=GRANT, auth=DEMO,
                                           timeout=10),
                             requests.get(idp.jwks_uri, timeout=10),
                             requests.post(idp.admin_url + "/clock", json={"advance": 5},
                                           timeout=10)):
                assert response.status_code == 503
                assert response.json()["error"] == "temporarily_unavailable"
                assert response.headers["Retry-After"] == "1"
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert requests.post(idp.token_endpoint, data=GRANT, auth=DEMO,
                             timeout=10).status_code == 200
    finally:
        idp.stop()
        store.close()


def test_serve_with_redis_down_at_start_says_so_and_exits_2(cli_process):
    port = free_port()  # nothing listens there
    process = cli_process("serve", "--port", "0", "--store",
                          f"redis://:hunter2-password@127.0.0.1:{port}/0", until="never")
    err = process.stop()
    assert process.proc.returncode == 2
    assert "Redis store redis://:***@127.0.0.1" in err and "hunter2" not in err
    assert "Traceback" not in err


# -- readyz and secrets --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["memory", *SHARED])
def test_readyz_reports_the_kind_of_store(kind, tmp_path, request):
    store = {"memory": lambda: "memory", "sqlite": lambda: f"sqlite:{tmp_path / 's.db'}",
             "redis": lambda: request.getfixturevalue("redis_server").url(4)}[kind]()
    app = create_app(replace(ServerSettings(), store=store))
    response = app.test_client().get("/readyz")
    assert (response.status_code, response.json) == (200, {"status": "ready", "store": kind})


def test_the_redis_password_is_never_shown(tmp_path, cli_process):
    from m2mauth.server.redis_store import RedisStore

    redis = RedisServer(password="s3cret-pass-word").start()
    try:
        store = RedisStore(redis.url())
        assert "s3cret" not in repr(store) and "s3cret" not in store.location
        assert store.location == f"redis://:***@127.0.0.1:{redis.port}/0"
        wrong = RedisStore(redis.url().replace("s3cret-pass-word", "wrong-pass-word"))
        with pytest.raises(StoreUnavailableError) as info:
            wrong.clients()
        assert "wrong-pass" not in str(info.value) and "***" in str(info.value)
        settings = load_settings(env={"M2MAUTH_STORE": redis.url()})
        assert "s3cret" not in repr(settings)
        with pytest.raises(ConfigError) as bad:
            load_settings(env={"M2MAUTH_STORE": redis.url().replace("/0", "/x")})
        assert "s3cret" not in str(bad.value)
        served = cli_process("serve", "--port", "0", "--store", redis.url())
        assert f"store     redis redis://:***@127.0.0.1:{redis.port}/0" in served.text
        assert "s3cret" not in served.text
        url = served.field("issuer")
        assert requests.get(url + "/readyz", timeout=10).json() == {"status": "ready",
                                                                    "store": "redis"}
        assert "s3cret" not in served.stop()
        store.close()
    finally:
        redis.stop()


# -- choosing the store ------------------------------------------------------------------------


@pytest.mark.parametrize("url, why", [
    ("mysql://db/x", "is not a store"),
    ("sqlite:", "needs a file path"),
    ("sqlite://host/x.db", "names a host"),
    ("sqlite:///tmp/x.db?mode=ro", "path only"),
    ("sqlite:///srv/", "names a directory"),
    ("redis://", "names no host"),
    ("redis://127.0.0.1:99999/0", "port that is not a number"),
    ("redis://127.0.0.1:6379/zero", "database number"),
    ("redis://127.0.0.1:6379/0?ssl=1", "no query"),
    ("redis:127.0.0.1", "redis://HOST:PORT/DB"),
    ("Memory", "is not a store"),
])
def test_a_bad_store_url_is_a_config_error_naming_the_setting(url, why, tmp_path):
    with pytest.raises(ConfigError) as info:
        load_settings(env={"M2MAUTH_STORE": url})
    assert (info.value.source, info.value.key) == ("environment", "M2MAUTH_STORE")
    assert why in info.value.why
    with pytest.raises(ConfigError) as info:
        load_settings(overrides={"store": url})
    assert info.value.key == "store"
    config = tmp_path / "m2mauth.toml"
    config.write_text(f'store = "{url}"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert (info.value.source, info.value.key) == (str(config), "store")


def test_serve_with_a_bad_store_exits_2_with_one_line(cli_process):
    process = cli_process("serve", "--port", "0", "--store", "postgres://db/m2mauth",
                          until="never")
    err = process.stop()
    assert process.proc.returncode == 2
    assert "store" in err and "is not a store" in err and "Traceback" not in err


def test_store_urls_and_where_relative_paths_go(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_settings(env={}).store == "memory"
    assert load_settings(env={"M2MAUTH_STORE": "sqlite:state.db"}).store == "sqlite:state.db"
    (tmp_path / "conf").mkdir()
    config = tmp_path / "conf" / "m2mauth.toml"
    config.write_text('store = "sqlite:data/state.db"\n')
    # In a config file, relative to the file's directory (as keys_dir is).
    assert load_settings(config).store == f"sqlite:{tmp_path / 'conf' / 'data' / 'state.db'}"
    config.write_text('store = "sqlite:///srv/state.db"\n')
    assert load_settings(config).store == "sqlite:///srv/state.db"
    # A relative path anywhere else is relative to the current directory.
    issuer = create_app(replace(ServerSettings(), store="sqlite:here.db")).extensions["m2mauth"]
    assert issuer.store.location == str(tmp_path / "here.db")
    issuer.close()
    issuer = create_app(replace(ServerSettings(), store=f"sqlite://{tmp_path}/abs.db")
                        ).extensions["m2mauth"]
    assert issuer.store.location == str(tmp_path / "abs.db")


# -- seeding, namespaces -----------------------------------------------------------------------


def test_the_first_start_seeds_and_later_starts_keep_what_the_store_holds(target):
    kind, where = target
    url = store_url(kind, where)
    settings = ServerSettings(ephemeral_keys=True, algorithm="ES256", store=url,
                              issuers={"orders": {"algorithm": "EdDSA"}})
    first = create_app(settings)
    root = first.extensions["m2mauth"]
    orders = first.extensions["m2mauth_issuers"].get("orders").extensions["m2mauth"]
    assert root.seeded_store and orders.seeded_store
    kids = [k.kid for k in root.keys.all_keys()]
    orders_kids = [k.kid for k in orders.keys.all_keys()]
    assert set(kids).isdisjoint(orders_kids)  # each issuer its own keys, in its namespace
    root.store.add_client(ClientSettings("added-at-run-time", "s"))
    # Another start with other clients: the store's are kept, and its keys (generated once).
    other = replace(settings, clients=[ClientSettings("other", "s")])
    second = create_app(other)
    again = second.extensions["m2mauth"]
    assert not again.seeded_store
    assert [k.kid for k in again.keys.all_keys()] == kids
    assert [c.client_id for c in again.store.clients()] == ["demo-client", "added-at-run-time"]
    again_orders = second.extensions["m2mauth_issuers"].get("orders").extensions["m2mauth"]
    assert [k.kid for k in again_orders.keys.all_keys()] == orders_kids
    assert second.test_client().post("/token", data=GRANT, headers=basic(*DEMO)).status_code == 200
    for app in (first, second):
        app.extensions["m2mauth"].close()


def test_issuers_added_at_run_time_stay_in_memory(target):
    kind, where = target
    idp = IdentityProvider.start(replace(ServerSettings(), store=store_url(kind, where)))
    try:
        added = idp.add_issuer("later")
        assert added.core.store.kind == "memory"
        assert idp.core.store.kind == kind
    finally:
        idp.stop()


# -- the file ------------------------------------------------------------------------------------


def test_the_sqlite_file_is_created_0600_with_its_wal_and_shm(tmp_path):
    os.umask(0o022)
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    store.restore([ClientSettings("a", "s")], [generate_signing_key("ES256")])
    store.append_record("token", {"n": 1})
    for suffix in ("", "-wal", "-shm"):
        file = Path(f"{path}{suffix}")
        assert file.exists(), suffix
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, suffix
    store.close()


def test_an_sqlite_store_used_across_a_fork_opens_its_own_connection_in_the_child(tmp_path):
    """A pre-forking server (gunicorn --preload, serve --workers) opens the store before the
    fork: the child never uses (nor closes) the parent's connection."""
    store = SQLiteStore(tmp_path / "state.db")
    store.restore([ClientSettings("a", "s")], [])
    parent_connection = store._connection()
    pid = os.fork()
    if pid == 0:  # the child: report by exit status only
        code = 1
        try:
            mine = store._connection()
            store.add_client(ClientSettings("child", "s"))
            code = 0 if mine is not parent_connection and store.client("a") else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store._connection() is parent_connection
    assert store.client("child") is not None
    store.close()


def test_a_store_file_others_can_read_is_refused(tmp_path):
    path = tmp_path / "state.db"
    SQLiteStore(path).close()
    path.chmod(0o644)
    with pytest.raises(KeyStoreError, match=r"mode 0644.*private signing keys.*chmod 600"):
        SQLiteStore(path)
    SQLiteStore(path, unsafe_permissions=True).close()
    settings = replace(ServerSettings(), store=f"sqlite:{path}")
    with pytest.raises(KeyStoreError):
        create_app(settings)
    create_app(replace(settings, unsafe_key_permissions=True)).extensions["m2mauth"].close()
    path.chmod(0o600)
    planted = Path(f"{path}-wal")
    planted.write_bytes(b"")
    planted.chmod(0o666)
    with pytest.raises(KeyStoreError, match="-wal"):
        SQLiteStore(path)


def test_a_store_directory_others_can_write_is_refused(tmp_path, cli_process):
    shared_dir = tmp_path / "open"
    shared_dir.mkdir()
    shared_dir.chmod(0o777)
    with pytest.raises(KeyStoreError, match=r"mode 0777.*-wal file"):
        SQLiteStore(shared_dir / "state.db")
    assert not (shared_dir / "state.db").exists()
    process = cli_process("serve", "--port", "0", "--store", f"sqlite:{shared_dir}/s.db",
                          until="never")
    err = process.stop()
    assert process.proc.returncode == 2 and "mode 0777" in err and "Traceback" not in err
    missing = tmp_path / "no" / "such" / "dir" / "state.db"
    with pytest.raises(StoreUnavailableError, match="its directory"):
        SQLiteStore(missing)


# -- cost that does not grow with the state ------------------------------------------------------


class Counted:
    """Round trips to a store: SQLite statements (its trace callback, on this thread's
    connection) or Redis commands sent (every send of redis-py's connections: a pipeline is
    one). Counts between ``start()`` and ``stop()``."""

    def __init__(self, store, monkeypatch) -> None:
        self.store = store
        self.statements: list[str] = []
        self.on = False
        if store.kind == "sqlite":
            store._connection().set_trace_callback(self._statement)
        else:
            from redis.connection import AbstractConnection

            send = AbstractConnection.send_packed_command

            def counting(connection, command, check_health=True):
                if self.on:
                    self.statements.append("redis")
                return send(connection, command, check_health)

            monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)

    def _statement(self, sql: str) -> None:
        if self.on:
            self.statements.append(sql)

    def count(self, action) -> int:
        self.statements = []
        self.on = True
        try:
            action()
        finally:
            self.on = False
        return len(self.statements)


def _filled(kind: str, where: str, namespace: str, clients: int, records: int, jtis: int):
    # The same bounds for both: only what the store holds differs.
    store = open_shared(kind, where, namespace, max_records=10_000, max_jtis_per_client=10_000)
    store.restore([ClientSettings(f"c{i}", "s", scopes=("read",)) for i in range(clients - 1)]
                  + [ClientSettings(*DEMO, scopes=("read",))], [generate_signing_key("ES256")])
    for n in range(records):
        store.append_record("token", {"client_id": f"c{n % clients}", "n": n})
    for n in range(jtis):
        assert store.remember_jti("full", f"j{n}", T0 + 3600, T0)
    return store


def test_the_token_path_costs_the_same_with_10_or_10000_clients_and_full_logs(target,
                                                                              monkeypatch):
    """Statements (SQLite) and round trips (Redis) of one token request over HTTP (the Flask
    test client, so that every one is on this thread), of a JWKS fetch, and of the replay
    check, counted: the same on a store with 10 clients, an empty log and no jtis as on one
    with 10,000 clients, a log at its bound and a client's replay share full."""
    kind, where = target
    small = _filled(kind, where, "small", clients=10, records=0, jtis=0)
    big = _filled(kind, where, "big", clients=10_000, records=10_000, jtis=10_000)
    counts = {}
    for name, store in (("small", small), ("big", big)):
        app = create_app(ServerSettings(algorithm="ES256"), store=store)
        client = app.test_client()
        counted = Counted(store, monkeypatch)

        def token(client=client):
            response = client.post("/token", data=GRANT, headers=basic(*DEMO))
            assert response.status_code == 200

        def jwks(client=client):
            assert client.get("/jwks.json").status_code == 200

        sent = iter(range(100))

        def replay(store=store, sent=sent):
            begin_request_reads()
            try:
                # Another client than the one whose share is full: accepted in both.
                assert store.remember_jti("other", f"j-{next(sent)}", T0 + 60, T0 + 1)
            finally:
                end_request_reads()

        for action in (token, jwks, replay):
            action()  # warm: this process's cache filled
        counts[name] = {what: counted.count(action) for what, action in
                        (("token", token), ("jwks", jwks), ("replay", replay))}
        if kind == "sqlite":
            counted.count(token)
            _assert_no_scans(store, counted.statements)
    # Nothing differs: not the clients, not a log at its bound (SQLite trims it once every
    # _TRIM_EVERY appends, Redis's script as it appends), not the replay cache.
    assert counts["big"] == counts["small"], counts
    # One version check per request, and the record of it: two statements in SQLite (the
    # record one INSERT), two round trips to Redis.
    assert counts["big"]["token"] == 2 and counts["big"]["jwks"] == 2, counts
    for store in (small, big):
        store.close()


def _assert_no_scans(store, statements: list[str]) -> None:
    """Every statement a token request made is an index lookup: none scans a table."""
    db = store._connection()
    for sql in statements:
        if not sql.lstrip().upper().startswith(("SELECT", "INSERT", "UPDATE", "DELETE")):
            continue
        plan = " | ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql))
        assert "SCAN" not in plan, (sql, plan)


def test_the_sqlite_log_table_stays_near_its_bounds_while_reads_hold_them_exactly(tmp_path):
    """An append is one INSERT; each process trims the logs it appended to every
    _TRIM_EVERY appends, by the covering index. So the table never holds more than the bound
    plus _TRIM_EVERY rows per process, and records() applies the bounds exactly."""
    from m2mauth.server import sqlite_store

    store = SQLiteStore(tmp_path / "log.db", max_records=100, max_record_bytes=10**9)
    every = sqlite_store._TRIM_EVERY
    for n in range(5 * every + 7):
        store.append_record("token", {"n": n})
        (rows,) = store._connection().execute("SELECT COUNT(*) FROM records").fetchone()
        assert rows <= 100 + every
    assert [r["n"] for r in store.records("token")] == list(range(5 * every + 7))[-100:]
    plan = " | ".join(row[3] for row in store._connection().execute(
        "EXPLAIN QUERY PLAN SELECT id FROM (SELECT id, SUM(size) OVER (ORDER BY id DESC) "
        "FROM records INDEXED BY records_size WHERE ns = '' AND log = 'token')"))
    assert "COVERING INDEX records_size" in plan, plan
    # The byte bound, exactly at read time: 1,000 records of about 40 bytes, 4,000 allowed.
    small = SQLiteStore(tmp_path / "bytes.db", max_records=10_000, max_record_bytes=4_000)
    for n in range(1_000):
        small.append_record("token", {"client_id": f"{n:032d}"})
    kept = small.records("token")
    assert kept[-1]["client_id"] == f"{999:032d}" and 0 < len(kept) < 1_000
    assert sum(len(r["client_id"]) + 8 for r in kept) <= 4_000
    store.close()
    small.close()
