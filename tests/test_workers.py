"""``m2mauth serve --workers 2``: real processes (a gunicorn arbiter and its workers) over
loopback HTTP, every kind of state seen alike by every worker, on the temporary SQLite store
``--workers`` makes from the memory one and on a real ``redis-server``.

Which worker answered is in the lab's ``M2MAuth-Worker`` response header; requests go on
fresh connections until every worker has answered (bounded), so each check holds for both.
One server per store kind serves the whole module (reset store-wide before each test, which
is itself one of the checks); the tests that stop things start their own. Every wait is
bounded; nothing sleeps; the issuer's clock is moved through the admin API, never waited for.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
import requests
from _store_support import RedisServer

from m2mauth.client import DPoPKey
from m2mauth.server.workers import WORKER_HEADER

T0 = 1_700_000_000
GRANT = {"grant_type": "client_credentials"}
DEMO = ("demo-client", "demo-secret")
#: Requests one check may send to see every worker answer.
MAX_REQUESTS = 200
WORKERS = 2


@dataclass
class Served:
    """A running ``serve --workers 2``: its process, URL and store kind."""

    process: object
    url: str
    kind: str

    @property
    def master(self) -> int:
        return self.process.proc.pid

    def workers(self) -> set[int]:
        """The master's child processes now (Linux's /proc)."""
        path = Path(f"/proc/{self.master}/task/{self.master}/children")
        return {int(pid) for pid in path.read_text().split()}


def worker_of(response: requests.Response) -> int:
    return int(response.headers[WORKER_HEADER])


def fresh(method: str, url: str, **kwargs) -> requests.Response:
    """One request on a connection of its own (so the kernel gives it to any worker)."""
    headers = {"Connection": "close", **kwargs.pop("headers", {})}
    return requests.request(method, url, headers=headers, **{"timeout": 10, **kwargs})


def across_workers(send: Callable[[], requests.Response], *, each: int = 2,
                   limit: int = MAX_REQUESTS) -> list[requests.Response]:
    """``send()`` until every worker has answered ``each`` times; every response, in order."""
    responses: list[requests.Response] = []
    seen: Counter[int] = Counter()
    for _ in range(limit):
        response = send()
        responses.append(response)
        seen[worker_of(response)] += 1
        if len(seen) >= WORKERS and min(seen.values()) >= each:
            return responses
    raise AssertionError(f"not every worker answered in {limit} requests: {dict(seen)}")


def until(condition: Callable[[], bool], url: str, attempts: int = 1000) -> bool:
    """Whether ``condition()`` came true, checked between requests to the server's
    ``/healthz`` (at most ``attempts``, each bounded by its timeout): the pace of a server's
    own work, not a sleep."""
    for _ in range(attempts):
        if condition():
            return True
        fresh("GET", url + "/healthz")
    return condition()


def admin(url: str, method: str, path: str, **body) -> dict:
    response = fresh(method, f"{url}/admin{path}", json=body or None)
    assert response.status_code < 300, response.text
    return response.json()


def token(url: str, auth=DEMO, **data) -> requests.Response:
    return fresh("POST", url + "/token", data={**GRANT, **data}, auth=auth)


def start_workers(start, *args: str, stderr_file: Path, ca: bool = False) -> Served:
    process = start("serve", "--workers", str(WORKERS), "--port", "0", *args,
                    stderr_file=stderr_file)
    assert process.proc.poll() is None, process.stderr()
    url = process.field("issuer")
    verify = process.field("ca") if ca else True
    # The banner is printed before the fork: wait (bounded) until both workers answer.
    across_workers(lambda: fresh("GET", url + "/healthz", verify=verify), each=1)
    return Served(process, url, "redis" if any(a.startswith("redis://") for a in args)
                  else "sqlite")


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def served(request, module_cli_process, tmp_path_factory) -> Served:
    """One server per store kind for the module: the memory store made a temporary SQLite
    file by --workers, or a Redis database (flushed first)."""
    args = ["--ephemeral-keys", "--algorithm", "ES256"]
    if request.param == "redis":
        import redis

        url = request.getfixturevalue("redis_server").url(7)
        with redis.Redis.from_url(url) as client:
            client.flushdb()
        args += ["--store", url]
    directory = tmp_path_factory.mktemp(f"workers-{request.param}")
    config = directory / "m2mauth.toml"
    config.write_text("[issuers.orders]\nalgorithm = \"ES256\"\n")  # a declared issuer too
    return start_workers(module_cli_process, *args, "--config", str(config),
                         stderr_file=directory / "stderr.log")


@pytest.fixture
def server(served) -> Served:
    """The module's server, reset (store-wide) before the test."""
    assert served.process.proc.poll() is None, served.process.stderr()
    admin(served.url, "POST", "/reset")
    return served


def jwks_keys(url: str) -> tuple[int, set[str], dict]:
    response = fresh("GET", url + "/jwks.json")
    jwks = response.json()
    return worker_of(response), {k["kid"] for k in jwks["keys"]}, jwks


def verify(access_token: str, jwks: dict) -> dict:
    kid = jwt.get_unverified_header(access_token)["kid"]
    key = next(jwt.PyJWK(k) for k in jwks["keys"] if k["kid"] == kid)
    return jwt.decode(access_token, key.key, algorithms=["ES256"], audience="api://default",
                      options={"verify_exp": False, "verify_iat": False})


# -- the banner, the setting --------------------------------------------------------------


def test_the_banner_names_the_workers_and_the_temporary_store(served):
    text = served.process.text
    assert f"  workers   {WORKERS} processes, one issuer" in text
    if served.kind == "sqlite":
        line = next(li for li in served.process.banner if li.startswith("  store"))
        assert f"(temporary for --workers {WORKERS}, removed at exit; --store to keep it)" \
            in line
        directory = Path(line.split()[2]).parent
        assert directory.stat().st_mode & 0o777 == 0o700
    else:
        assert "store     redis redis://127.0.0.1:" in text
    assert served.url.rsplit(":", 1)[1] != "0"  # port 0: the port bound is named
    assert text.count("m2mauth authorization server listening") == 1  # printed once


def test_every_worker_answers_and_a_kept_alive_connection_stays_with_one(server):
    workers = server.workers()
    assert len(workers) == WORKERS
    responses = across_workers(lambda: token(server.url))
    assert {worker_of(r) for r in responses} == workers
    # The ephemeral keys were made once, before the fork: every worker signs with the same.
    assert len({jwt.get_unverified_header(r.json()["access_token"])["kid"]
                for r in responses}) == 1
    assert len({frozenset(jwks_keys(server.url)[1]) for _ in range(10)}) == 1
    with requests.Session() as session:  # keep-alive: one connection, so one worker
        pids = {worker_of(session.post(server.url + "/token", data=GRANT, auth=DEMO,
                                       timeout=10)) for _ in range(10)}
    assert len(pids) == 1


@pytest.mark.parametrize(("variable", "value", "why"), [
    ("M2MAUTH_WORKERS", "0", "must be between 1 and 64"),
    ("M2MAUTH_WORKERS", "many", "must be an integer"),
])
def test_a_bad_workers_value_names_the_variable_and_exits_2(variable, value, why,
                                                             cli_process):
    process = cli_process("serve", "--port", "0", env={variable: value})
    err = process.stop()
    assert process.proc.returncode == 2
    assert variable in err and why in err
    assert "Traceback" not in err


def test_a_bad_workers_key_in_the_config_file_and_flag_exit_2(cli_process, tmp_path):
    config = tmp_path / "m2mauth.toml"
    config.write_text("workers = 100\n")
    process = cli_process("serve", "--port", "0", "--config", str(config))
    err = process.stop()
    assert process.proc.returncode == 2 and "workers" in err and "between 1 and 64" in err
    process = cli_process("serve", "--port", "0", "--workers", "-1")
    err = process.stop()
    assert process.proc.returncode == 2 and "workers" in err


def test_a_configuration_error_exits_2_before_any_worker_starts(cli_process, tmp_path):
    config = tmp_path / "m2mauth.toml"
    config.write_text('[[clients]]\nclient_id = "no-credentials"\n')
    process = cli_process("serve", "--workers", "2", "--port", "0", "--config", str(config))
    err = process.stop()
    assert process.proc.returncode == 2
    assert "clients[0]" in err and "answering on" not in err and "Traceback" not in err


def test_a_taken_port_exits_2_with_one_line_before_any_worker(cli_process):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = cli_process("serve", "--workers", "2", "--port", str(port))
        err = process.stop()
    assert process.proc.returncode == 2
    assert err.strip().splitlines() == [
        f"Error: port {port} on 127.0.0.1 is already in use (choose another with --port, "
        "or 0 for any free port)"]


# -- every kind of state, seen by every worker ------------------------------------------------


def test_a_key_rotated_through_one_worker_is_in_every_jwks_and_signs_every_token(server):
    kid = admin(server.url, "POST", "/keys/rotate", alg="ES256")["kid"]
    seen: Counter[int] = Counter()
    for _ in range(MAX_REQUESTS):
        jwks_worker, kids, jwks = jwks_keys(server.url)
        assert kid in kids
        issued = token(server.url)
        assert issued.status_code == 200, issued.text
        access_token = issued.json()["access_token"]
        assert jwt.get_unverified_header(access_token)["kid"] == kid
        verify(access_token, jwks)  # against the JWKS fetched just before
        seen[jwks_worker] += 1
        seen[worker_of(issued)] += 1
        if len(seen) == WORKERS and min(seen.values()) >= 2:
            break
    assert len(seen) == WORKERS, seen


def test_a_declared_issuers_state_is_shared_and_reset_with_the_root(server):
    """An [issuers.NAME] issuer keeps its state in the same store under its name: its key
    rotated through one worker is in every worker's JWKS; the root's reset resets it."""
    orders = server.url + "/orders"
    _, seeded, _ = jwks_keys(orders)
    kid = admin(orders, "POST", "/keys/rotate", alg="ES256")["kid"]
    for response in across_workers(lambda: fresh("GET", orders + "/jwks.json")):
        assert kid in {k["kid"] for k in response.json()["keys"]}
    admin(server.url, "POST", "/reset")
    for response in across_workers(lambda: fresh("GET", orders + "/jwks.json")):
        assert {k["kid"] for k in response.json()["keys"]} == seeded


def test_a_client_added_or_removed_through_one_worker_is_known_to_all(server):
    admin(server.url, "POST", "/clients", client_id="added", client_secret="added-secret",
          scopes=["read"])
    for response in across_workers(lambda: token(server.url, auth=("added", "added-secret"))):
        assert response.status_code == 200, response.text
    admin(server.url, "DELETE", "/clients/added")
    for response in across_workers(lambda: token(server.url, auth=("added", "added-secret"))):
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_client"


def test_the_clock_frozen_or_offset_through_one_worker_is_every_workers(server):
    admin(server.url, "POST", "/clock", freeze=True, at=T0)
    for response in across_workers(lambda: token(server.url)):
        claims = jwt.decode(response.json()["access_token"],
                            options={"verify_signature": False})
        assert claims["iat"] == T0
    admin(server.url, "POST", "/clock", reset=True, offset=3600)
    for response in across_workers(lambda: fresh("GET", server.url + "/admin/clock")):
        assert response.json()["offset"] == 3600 and response.json()["frozen"] is False


def test_a_queued_fault_fires_exactly_once_across_workers(server):
    admin(server.url, "POST", "/faults", n=3, status=503)
    responses = across_workers(lambda: token(server.url))
    statuses = [r.status_code for r in responses]
    assert statuses[:3] == [503] * 3 and set(statuses[3:]) == {200}
    assert admin(server.url, "GET", "/faults")["faults"] == []


def test_the_request_log_holds_every_request_of_every_worker_in_order(server):
    admin(server.url, "DELETE", "/requests")
    responses = across_workers(lambda: token(server.url), each=5)
    sent = [jwt.decode(r.json()["access_token"], options={"verify_signature": False})["jti"]
            for r in responses]
    logged = admin(server.url, "GET", "/requests/token")["requests"]
    assert [r["jti"] for r in logged] == sent
    assert [r["status"] for r in logged] == [200] * len(sent)


def _hmac_assertion(client_id: str, secret: str, audience: str) -> str:
    now = int(time.time())  # the server's clock is real time after the reset
    return jwt.encode({"iss": client_id, "sub": client_id, "aud": audience,
                       "jti": uuid.uuid4().hex, "iat": now, "exp": now + 120},
                      secret, algorithm="HS256")


def _key_assertion(client_id: str, key, audience: str) -> str:
    now = int(time.time())
    return jwt.encode({"iss": client_id, "sub": client_id, "aud": audience,
                       "jti": uuid.uuid4().hex, "iat": now, "exp": now + 120},
                      key.pem(), algorithm="ES256", headers={"kid": key.jwk.kid})


@pytest.mark.parametrize("method", ["client_secret_jwt", "private_key_jwt"])
def test_a_replayed_client_assertion_is_refused_whichever_worker_sees_it(server, method,
                                                                         client_keys):
    endpoint = server.url + "/token"
    if method == "client_secret_jwt":
        secret = "a-shared-secret-of-32-bytes-or-more!"
        admin(server.url, "POST", "/clients", client_id="asserting", client_secret=secret,
              auth_methods=[method], scopes=["read"])
        assertion = _hmac_assertion("asserting", secret, endpoint)
    else:
        key = client_keys["ES256"]
        admin(server.url, "POST", "/clients", client_id="asserting", jwks=key.public_jwks(),
              scopes=["read"])
        assertion = _key_assertion("asserting", key, endpoint)
    data = {**GRANT, "client_id": "asserting", "client_assertion": assertion,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}
    first = fresh("POST", endpoint, data=data)
    assert first.status_code == 200, first.text
    replays = across_workers(lambda: fresh("POST", endpoint, data=data))
    for replay in replays:
        # invalid_client, 400 without HTTP Basic (RFC 6749 section 5.2)
        assert replay.status_code == 400, replay.text
        assert replay.json()["error"] == "invalid_client"
    assert worker_of(first) in {worker_of(r) for r in replays}  # and the other one too


def test_a_dpop_proof_replayed_at_the_demo_api_is_refused_whichever_worker_sees_it(server):
    """The demo API keeps the proofs it accepted in the issuer's store: once across workers."""
    key = DPoPKey.generate()
    endpoint, hello = server.url + "/token", server.url + "/demo/hello"
    got = fresh("POST", endpoint, data={**GRANT, "scope": "read"}, auth=DEMO,
                headers={"DPoP": key.proof("POST", endpoint)})
    assert got.status_code == 200 and got.json()["token_type"] == "DPoP", got.text
    access = got.json()["access_token"]
    headers = {"Authorization": f"DPoP {access}",
               "DPoP": key.proof("GET", hello, access_token=access)}
    first = fresh("GET", hello, headers=headers)
    assert first.status_code == 200, first.text
    replays = across_workers(lambda: fresh("GET", hello, headers=headers))
    for replay in replays:
        assert replay.status_code == 401, replay.text
        assert 'error="invalid_dpop_proof"' in replay.headers["WWW-Authenticate"]
    assert worker_of(first) in {worker_of(r) for r in replays}  # and the other one too


def test_revocations_and_opaque_tokens_are_seen_by_every_worker(server):
    admin(server.url, "POST", "/clients", client_id="checker", client_secret="checker-secret",
          introspect=True)
    admin(server.url, "POST", "/clients", client_id="opaque", client_secret="opaque-secret",
          token_format="opaque", scopes=["read"])
    checker = ("checker", "checker-secret")

    def introspect(access_token: str) -> requests.Response:
        return fresh("POST", server.url + "/introspect", data={"token": access_token},
                     auth=checker)

    opaque = token(server.url, auth=("opaque", "opaque-secret")).json()["access_token"]
    signed = token(server.url).json()["access_token"]
    for access_token in (opaque, signed):
        for response in across_workers(lambda t=access_token: introspect(t)):
            assert response.json()["active"] is True, response.text
    assert fresh("POST", server.url + "/revoke", data={"token": signed},
                 auth=DEMO).status_code == 200
    assert fresh("POST", server.url + "/revoke", data={"token": opaque},
                 auth=("opaque", "opaque-secret")).status_code == 200
    for access_token in (opaque, signed):
        for response in across_workers(lambda t=access_token: introspect(t)):
            assert response.json() == {"active": False}


def test_admin_reset_through_one_worker_resets_the_store_for_all(server):
    seeded_clients = admin(server.url, "GET", "/clients")["clients"]
    seeded_keys = admin(server.url, "GET", "/keys")["keys"]
    admin(server.url, "POST", "/clients", client_id="temp", client_secret="temp-secret")
    admin(server.url, "POST", "/keys/rotate", alg="ES256")
    admin(server.url, "POST", "/clock", freeze=True, at=T0)
    admin(server.url, "POST", "/faults", n=5)
    admin(server.url, "POST", "/reset")
    for response in across_workers(lambda: fresh("GET", server.url + "/admin/clients")):
        assert response.json()["clients"] == seeded_clients
    for response in across_workers(lambda: fresh("GET", server.url + "/admin/keys")):
        assert response.json()["keys"] == seeded_keys
    for response in across_workers(lambda: fresh("GET", server.url + "/admin/clock")):
        assert response.json()["frozen"] is False and response.json()["offset"] == 0
    for response in across_workers(lambda: token(server.url)):
        assert response.status_code == 200  # no fault left


def test_reset_puts_back_the_seed_not_what_the_store_held_at_this_start(cli_process,
                                                                         tmp_path):
    """A store kept from an earlier start (a client added then): reset through any worker
    goes back to what the store was seeded with, not to what it held when these workers
    started."""
    store = f"sqlite:{tmp_path / 'state.db'}"
    first = cli_process("serve", "--port", "0", "--ephemeral-keys", "--store", store,
                        stderr_file=tmp_path / "first.log")
    seeded = admin(first.field("issuer"), "GET", "/clients")["clients"]
    seeded_keys = admin(first.field("issuer"), "GET", "/keys")["keys"]
    admin(first.field("issuer"), "POST", "/clients", client_id="earlier",
          client_secret="earlier-secret")
    first.stop()
    served = start_workers(cli_process, "--ephemeral-keys", "--store", store,
                           stderr_file=tmp_path / "stderr.log")
    assert "kept: the clients and keys it holds" in served.process.text
    assert "earlier" in {c["client_id"] for c in admin(served.url, "GET", "/clients")[
        "clients"]}
    admin(served.url, "POST", "/reset")
    for response in across_workers(lambda: fresh("GET", served.url + "/admin/clients")):
        assert response.json()["clients"] == seeded
    for response in across_workers(lambda: fresh("GET", served.url + "/admin/keys")):
        assert response.json()["keys"] == seeded_keys


def test_issuers_cannot_be_added_at_run_time_under_workers(server):
    response = fresh("POST", server.url + "/admin/issuers", json={"name": "later"})
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_request"
    assert "--workers 2" in body["error_description"]
    assert [i["name"] for i in admin(server.url, "GET", "/issuers")["issuers"]] == ["orders"]


# -- a worker killed, the store gone, the server stopped -------------------------------------


def test_a_worker_killed_with_sigkill_is_restarted_and_nothing_is_lost(server):
    admin(server.url, "POST", "/clients", client_id="kept", client_secret="kept-secret",
          scopes=["read"])
    kid = admin(server.url, "POST", "/keys/rotate", alg="ES256")["kid"]
    admin(server.url, "POST", "/clock", freeze=True, at=T0)
    admin(server.url, "POST", "/faults", n=50, endpoint="jwks", status=503)
    admin(server.url, "DELETE", "/requests")
    before = token(server.url, auth=("kept", "kept-secret"))
    assert before.status_code == 200
    victim = worker_of(before)
    os.kill(victim, signal.SIGKILL)
    # The arbiter forks a new worker; until then the survivor answers everything.
    assert until(lambda: victim not in (now := server.workers()) and len(now) == WORKERS,
                 server.url), server.workers()
    responses = across_workers(lambda: token(server.url, auth=("kept", "kept-secret")))
    assert victim not in {worker_of(r) for r in responses}
    for response in responses:
        assert response.status_code == 200, response.text
        claims = jwt.decode(response.json()["access_token"],
                            options={"verify_signature": False})
        assert claims["iat"] == T0  # the frozen clock
        assert jwt.get_unverified_header(response.json()["access_token"])["kid"] == kid
    # The fault queue: one use per JWKS fetch, across the workers, none lost or doubled.
    fetches = across_workers(lambda: fresh("GET", server.url + "/jwks.json"))
    assert {r.status_code for r in fetches} == {503}
    assert admin(server.url, "GET", "/faults")["faults"][0]["remaining"] == 50 - len(fetches)
    logged = admin(server.url, "GET", "/requests/token")["requests"]
    assert [r["status"] for r in logged] == [200] * (1 + len(responses))  # the victim's too
    assert "was sent SIGKILL" in server.process.stderr()


def test_redis_unreachable_gives_503s_with_an_rfc_body_and_the_workers_recover(
        cli_process, tmp_path):
    redis = RedisServer(tmp_path).start()  # this test's own: it is stopped under the server
    try:
        served = start_workers(cli_process, "--ephemeral-keys", "--store", redis.url(),
                               stderr_file=tmp_path / "stderr.log")
        _, kids_before, _ = jwks_keys(served.url)
        redis.stop()
        for response in across_workers(lambda: token(served.url)):
            assert response.status_code == 503
            assert response.headers["Content-Type"] == "application/json"
            assert response.headers["Retry-After"] == "1"
            assert response.json()["error"] == "temporarily_unavailable"
            assert "Traceback" not in response.text
        for response in across_workers(lambda: fresh("GET", served.url + "/readyz")):
            assert (response.status_code, response.json()) == (
                503, {"status": "not ready", "store": "redis"})
        redis.start()
        for response in across_workers(lambda: token(served.url)):
            assert response.status_code == 200, response.text
        for response in across_workers(lambda: fresh("GET", served.url + "/jwks.json")):
            assert {k["kid"] for k in response.json()["keys"]} == kids_before  # not new keys
        assert served.process.proc.poll() is None
    finally:
        redis.stop()


def test_sighup_replaces_every_worker_with_the_same_app_and_state(server):
    admin(server.url, "POST", "/clients", client_id="kept", client_secret="kept-secret")
    _, kids, _ = jwks_keys(server.url)
    old = server.workers()
    os.kill(server.master, signal.SIGHUP)
    assert until(lambda: len(now := server.workers()) == WORKERS and not now & old,
                 server.url), f"the workers were not replaced: {old} -> {server.workers()}"
    for response in across_workers(lambda: token(server.url, auth=("kept", "kept-secret"))):
        assert response.status_code == 200
        assert worker_of(response) not in old
    assert jwks_keys(server.url)[1] == kids  # the keys made once, at start


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl+C"])
def test_a_stop_answers_the_request_in_flight_then_exits_0(how, cli_process, tmp_path):
    """SIGTERM to the master, or Ctrl+C (SIGINT to the master and, as a terminal sends it to
    the process group, to every worker): graceful either way."""
    served = start_workers(cli_process, stderr_file=tmp_path / "stderr.log")
    store_dir = Path(next(li for li in served.process.banner
                          if li.startswith("  store")).split()[2]).parent
    workers = served.workers()
    admin(served.url, "POST", "/faults", kind="delay", delay=2)
    answer: list[requests.Response] = []
    slow = threading.Thread(target=lambda: answer.append(token(served.url)))
    slow.start()
    # The fault is taken when the request is being answered: then it is in flight.
    for _ in range(MAX_REQUESTS):
        if admin(served.url, "GET", "/faults")["faults"] == []:
            break
    else:
        raise AssertionError("the delayed request never reached a worker")
    if how == "SIGTERM":
        served.process.proc.send_signal(signal.SIGTERM)
    else:
        for pid in (served.master, *workers):
            os.kill(pid, signal.SIGINT)
    assert served.process.proc.wait(timeout=30) == 0
    slow.join(timeout=30)
    assert [r.status_code for r in answer] == [200]
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(
            f"/proc/{pid}/status").read_text()
    assert not store_dir.exists()  # the temporary store went with it


def test_tls_works_with_workers(cli_process, tmp_path):
    """--tls with --workers: every worker speaks TLS with the certificate made once."""
    served = start_workers(cli_process, "--tls", "--tls-dir", str(tmp_path / "tls"),
                           stderr_file=tmp_path / "stderr.log", ca=True)
    assert served.url.startswith("https://")
    ca = served.process.field("ca")
    for response in across_workers(lambda: fresh("POST", served.url + "/token", data=GRANT,
                                                 auth=DEMO, verify=ca)):
        assert response.status_code == 200


def test_workers_stop_by_themselves_when_the_master_is_killed(cli_process, tmp_path):
    """SIGKILL to the master (nothing can clean up): each worker sees its parent gone at its
    next heartbeat and stops, rather than serving on with nobody to restart or stop it."""
    import shutil

    served = start_workers(cli_process, stderr_file=tmp_path / "stderr.log")
    store_dir = Path(next(li for li in served.process.banner
                          if li.startswith("  store")).split()[2]).parent
    workers = served.workers()
    served.process.proc.kill()
    served.process.proc.wait(timeout=30)

    def gone(pid: int) -> bool:
        try:
            return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return True

    for _ in range(3000):  # bounded: each check reads /proc once; a heartbeat is a second
        if all(gone(pid) for pid in workers):
            break
        # Their parent is gone, so nobody else will answer; the port answers or refuses.
        with contextlib.suppress(requests.RequestException):
            fresh("GET", served.url + "/healthz", timeout=1)
    try:
        assert all(gone(pid) for pid in workers), workers
        assert "the master is gone; stopping" in served.process.stderr()
    finally:
        shutil.rmtree(store_dir, ignore_errors=True)  # documented: left behind by a kill -9
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
