"""The demo API that `m2mauth serve` mounts at /demo with the lab on: m2mauth.client's
resource server, trusting this issuer, its JWKS fetched over HTTP from the same server, its
clock the server's."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
import requests

from m2mauth.server import create_app
from m2mauth.server.serving import BackgroundServer, bind_app
from m2mauth.server.settings import ServerSettings

DEMO = ("demo-client", "demo-secret")


@pytest.fixture
def served() -> Iterator[tuple[str, object]]:
    server, app = bind_app("127.0.0.1", 0, lambda port: create_app(
        replace(ServerSettings(), port=port)))
    with BackgroundServer(server) as running:
        yield running.url, app.extensions["m2mauth_lab"].controls


def _token(url: str, **form: str) -> str:
    response = requests.post(url + "/token", data={"grant_type": "client_credentials", **form},
                             auth=DEMO, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def test_hello_with_a_token_from_the_same_server(served):
    url, _ = served
    token = _token(url, scope="read")
    response = requests.get(url + "/demo/hello", headers={"Authorization": f"Bearer {token}"},
                            timeout=5)
    assert response.status_code == 200, response.text
    assert response.json()["client_id"] == "demo-client"
    index = requests.get(url + "/demo/", timeout=5).json()
    assert url + "/demo/hello" in index["endpoints"]


def test_rfc_6750_answers(served):
    url, controls = served
    missing = requests.get(url + "/demo/hello", timeout=5)
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong_scope = _token(url, scope="write")
    forbidden = requests.get(url + "/demo/hello", timeout=5,
                             headers={"Authorization": f"Bearer {wrong_scope}"})
    assert forbidden.status_code == 403
    assert 'error="insufficient_scope"' in forbidden.headers["WWW-Authenticate"]
    other = controls.issue_token("demo-client", "read", audience="https://other.example")
    refused = requests.get(url + "/demo/hello", timeout=5,
                           headers={"Authorization": f"Bearer {other}"})
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["WWW-Authenticate"]


def test_the_api_reads_the_servers_clock(served):
    url, controls = served
    token = _token(url, scope="read")
    controls.clock.advance(300 + 31)  # past exp and the API's 30 s leeway
    expired = requests.get(url + "/demo/hello", headers={"Authorization": f"Bearer {token}"},
                           timeout=5)
    assert expired.status_code == 401
    assert "expired" in expired.headers["WWW-Authenticate"]


def test_no_demo_api_without_the_lab():
    server, _ = bind_app("127.0.0.1", 0, lambda port: create_app(
        replace(ServerSettings(lab=False), port=port)))
    with BackgroundServer(server) as running:
        assert requests.get(running.url + "/demo/hello", timeout=5).status_code == 404
