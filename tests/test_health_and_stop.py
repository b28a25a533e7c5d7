"""Running next to other services: liveness and readiness probes, CORS on the public
documents only, and a graceful stop on SIGTERM or SIGINT (stop accepting, answer what was
received, exit 0). Real servers on loopback ports; every wait is bounded."""

from __future__ import annotations

import signal
import socket
import threading

import pytest
import requests

DEMO = ("demo-client", "demo-secret")
GRANT = {"grant_type": "client_credentials"}


def test_health_and_readiness(idp):
    for path, body in (("/healthz", {"status": "alive"}),
                       ("/readyz", {"status": "ready", "store": "memory"})):
        response = requests.get(idp.url + path, timeout=5)
        assert (response.status_code, response.json()) == (200, body)
        assert response.headers["Cache-Control"] == "no-store"


def test_cors_on_the_jwks_and_metadata_only(idp):
    for path in ("/jwks.json", "/.well-known/oauth-authorization-server",
                 "/.well-known/openid-configuration"):
        response = requests.get(idp.url + path, headers={"Origin": "https://app.example"},
                                timeout=5)
        assert response.headers["Access-Control-Allow-Origin"] == "*", path
    token = requests.post(idp.token_endpoint, data=GRANT, auth=DEMO, timeout=5,
                          headers={"Origin": "https://app.example"})
    assert "Access-Control-Allow-Origin" not in token.headers
    admin = requests.get(idp.admin_url, timeout=5)
    assert "Access-Control-Allow-Origin" not in admin.headers


def test_options_answers_allow_and_a_preflight_on_public_documents_only(idp):
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "cache-control"}
    for path in ("/jwks.json", "/.well-known/oauth-authorization-server",
                 "/.well-known/openid-configuration"):
        answer = requests.options(idp.url + path, headers=preflight, timeout=5)
        assert answer.status_code == 204, path
        assert answer.content == b"" and "Content-Type" not in answer.headers
        assert answer.headers["Allow"] == "GET, HEAD, OPTIONS"
        assert answer.headers["Access-Control-Allow-Origin"] == "*"
        assert answer.headers["Access-Control-Allow-Methods"] == "GET, HEAD"
        assert answer.headers["Access-Control-Allow-Headers"] == "*"
    token = requests.options(idp.token_endpoint, timeout=5,
                             headers={**preflight, "Access-Control-Request-Method": "POST"})
    assert token.status_code == 204 and token.headers["Allow"] == "OPTIONS, POST"
    assert not [h for h in token.headers if h.lower().startswith("access-control-")]
    # The same Allow as the 405 for a method the endpoint lacks.
    assert requests.get(idp.token_endpoint, timeout=5).headers["Allow"] == "OPTIONS, POST"
    admin = requests.options(idp.admin_url + "/clients", timeout=5)
    assert admin.status_code == 204
    assert not [h for h in admin.headers if h.lower().startswith("access-control-")]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_answers_the_request_in_flight_and_exits_0(cli_process, sig):
    served = cli_process("serve", "--port", "0")
    proc, issuer = served.proc, served.field("issuer")
    port = int(issuer.rsplit(":", 1)[1])
    try:
        fault = requests.post(issuer + "/admin/faults", json={"kind": "delay", "delay": 2},
                              timeout=5)
        assert fault.status_code == 201, fault.text
        answers: list[requests.Response] = []
        in_flight = threading.Thread(target=lambda: answers.append(requests.post(
            issuer + "/token", data=GRANT, auth=DEMO, timeout=15)))
        in_flight.start()
        for _ in range(500):  # bounded: until the request has taken the fault
            if requests.get(issuer + "/admin/faults", timeout=5).json()["faults"] == []:
                break
        else:
            raise AssertionError("the token request never reached the server")
        proc.send_signal(sig)
        refused = False
        for _ in range(500):  # bounded: the listening socket closes at once
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except (ConnectionRefusedError, ConnectionResetError):  # reset: caught in the backlog
                refused = True
                break
        in_flight.join(timeout=15)
        assert refused, "still accepting connections after the signal"
        assert [a.status_code for a in answers] == [200]
        assert proc.wait(timeout=15) == 0
        assert "Traceback" not in served.stop()
    finally:
        if proc.poll() is None:
            proc.kill()
