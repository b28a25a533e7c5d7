"""End to end: client → server → demo API. A TokenProvider with RequestsBearerAuth gets tokens
from the real authorization server (``idp``) and calls the demo API (client/demo_api.py) running
in a background thread on a free loopback port; plus ``m2mauth demo-api`` through click's
runner and as a real subprocess."""

from __future__ import annotations

import shlex
import socket
from collections.abc import Iterator

import pytest
import requests
from click.testing import CliRunner

from m2mauth.client import RequestsBearerAuth, TokenProvider, TokenValidator
from m2mauth.client.demo_api import create_demo_api
from m2mauth.server.cli import main
from m2mauth.server.serving import BackgroundServer, PortInUseError, bind_app

AUDIENCE = "https://demo.test"


@pytest.fixture
def demo_url(idp) -> Iterator[str]:
    """The demo API for ``idp``'s tokens; its validator reads the server's clock, so moving
    ``idp.clock`` ages tokens for the API too (the client's provider keeps real time)."""
    server, _ = bind_app("127.0.0.1", 0, lambda _port: create_demo_api(
        idp.issuer, AUDIENCE, clock=idp.clock.now))
    with BackgroundServer(server) as running:
        yield running.url


def session_for(idp, client_id: str, scopes: list[str]) -> requests.Session:
    client = idp.add_client(client_id, scopes=scopes, audiences=[AUDIENCE])
    provider = TokenProvider(idp.token_endpoint, client.client_id, client.client_secret,
                             scope=scopes, resource=AUDIENCE)
    session = requests.Session()
    session.auth = RequestsBearerAuth(provider)
    return session


def test_hello_with_scope_read(idp, demo_url):
    with session_for(idp, "reader", ["read"]) as http:
        r = http.get(demo_url + "/hello", timeout=5)
        assert r.status_code == 200
        assert r.json() == {"message": "hello, reader", "sub": "reader", "client_id": "reader",
                            "scopes": ["read"]}
        assert http.get(demo_url + "/hello", timeout=5).status_code == 200
    assert len(idp.token_requests) == 1  # the cached token served both calls


def test_admin_without_scope_admin_is_403(idp, demo_url):
    with session_for(idp, "reader", ["read"]) as http:
        r = http.get(demo_url + "/admin", timeout=5)
    assert r.status_code == 403
    assert r.headers["WWW-Authenticate"] == (
        'Bearer realm="https://demo.test", error="insufficient_scope", '
        'error_description="the token lacks scope admin", scope="admin"')
    assert r.json() == {"error": "insufficient_scope",
                        "error_description": "the token lacks scope admin", "scope": "admin"}
    assert r.history == []  # a 403 is never retried
    assert len(idp.token_requests) == 1


def test_admin_client_gets_both(idp, demo_url):
    with session_for(idp, "operator", ["read", "admin"]) as http:
        admin = http.get(demo_url + "/admin", timeout=5)
        hello = http.get(demo_url + "/hello", timeout=5)
    assert admin.status_code == 200
    assert admin.json() == {"message": "welcome to the admin area, operator",
                            "sub": "operator", "client_id": "operator",
                            "scopes": ["read", "admin"]}
    assert hello.status_code == 200


def test_expired_token_is_refetched_once_by_the_adapter(idp, demo_url):
    with session_for(idp, "reader", ["read"]) as http:
        assert http.get(demo_url + "/hello", timeout=5).status_code == 200
        # The server's (and the API's) clock jumps an hour: the token the provider still
        # holds as fresh (its own clock did not move) is expired for the API.
        idp.clock.advance(3600)
        r = http.get(demo_url + "/hello", timeout=5)
    assert r.status_code == 200
    (first,) = r.history
    assert first.status_code == 401
    assert first.headers["WWW-Authenticate"].startswith(
        'Bearer realm="https://demo.test", error="invalid_token", error_description="expired ')
    assert [q.outcome for q in idp.token_requests] == ["issued", "issued"]


def test_no_token_and_bad_token(idp, demo_url):
    r = requests.get(demo_url + "/hello", timeout=5)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == (
        'Bearer realm="https://demo.test", DPoP realm="https://demo.test", '
        'algs="ES256 ES384 ES512 RS256 PS256 EdDSA Ed25519"')
    token = idp.issue_token("reader", scope="read", audience="https://elsewhere.test")
    r = requests.get(demo_url + "/hello", headers={"Authorization": f"Bearer {token}"},
                     timeout=5)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == (
        'Bearer realm="https://demo.test", error="invalid_token", '
        'error_description="aud does not name this API"')


def test_index_lists_the_endpoints(idp, demo_url):
    r = requests.get(demo_url + "/", timeout=5)
    assert r.status_code == 200
    assert r.json()["endpoints"] == {demo_url + "/hello": {"method": "GET", "scope": "read"},
                                     demo_url + "/admin": {"method": "GET", "scope": "admin"}}
    assert r.json()["issuer"] == idp.issuer


def test_create_demo_api_with_a_validator(idp):
    validator = TokenValidator(idp.issuer, AUDIENCE, jwks_uri=idp.jwks_uri)
    app = create_demo_api(idp.issuer, AUDIENCE, validator=validator, realm="demo")
    token = idp.issue_token("reader", scope="read", audience=AUDIENCE)
    with app.test_client() as http:
        r = http.get("/hello", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json["sub"] == "reader"
        assert http.get("/admin").headers["WWW-Authenticate"].startswith(
            'Bearer realm="demo", DPoP realm="demo", algs="ES256 ')
    with pytest.raises(TypeError):
        create_demo_api(idp.issuer, AUDIENCE, validator=validator, leeway=5)


def test_bind_app_port_in_use():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(PortInUseError):
            bind_app("127.0.0.1", busy.getsockname()[1],
                     lambda _port: create_demo_api("http://127.0.0.1:1", AUDIENCE))


# -- the command ----------------------------------------------------------------------------


def test_cli_port_in_use_is_one_line_and_exit_2():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(main, ["demo-api", "--issuer", "http://127.0.0.1:8000",
                                           "--audience", AUDIENCE, "--port", str(port)])
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"Error: port {port} on 127.0.0.1 is already in use "
        "(choose another with --port, or 0 for any free port)")


def test_cli_needs_issuer_and_audience():
    result = CliRunner().invoke(main, ["demo-api", "--audience", AUDIENCE])
    assert result.exit_code == 2
    assert "Missing option '--issuer'" in result.output


def test_cli_subprocess_serves_hello(idp, cli_process):
    """`m2mauth demo-api` in a real process: the banner, then the banner's own example (get a
    token for the demo client, call /hello) works against the session's server."""
    audience = "api://default"  # the demo client's audience in this suite's server
    api = cli_process("demo-api", "--issuer", idp.issuer, "--audience", audience, "--port", "0")
    text, banner = api.text, api.banner
    assert text.startswith("m2mauth demo API listening on 127.0.0.1:"), text
    hello = next(w for li in banner for w in li.split() if w.endswith("/hello"))
    assert not hello.startswith("http://127.0.0.1:0/")
    assert f"issuer    {idp.issuer}" in text and f"audience  {audience}" in text
    assert "needs scope read" in text and "/admin  needs scope admin" in text

    # the printed example: TOKEN=$(m2mauth token ...), then curl ... /hello
    token_line = next(li.strip() for li in banner if li.strip().startswith("TOKEN=$("))
    args = shlex.split(token_line[len("TOKEN=$("):-1])
    assert args[:2] == ["m2mauth", "token"]
    got = CliRunner().invoke(main, args[1:])
    assert got.exit_code == 0, got.output
    token = got.output.strip()
    r = requests.get(hello, headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert r.status_code == 200, r.text
    assert r.json() == {"message": "hello, demo-client", "sub": "demo-client",
                        "client_id": "demo-client", "scopes": ["read"]}
    admin = requests.get(hello.replace("/hello", "/admin"),
                         headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert admin.status_code == 403
    assert requests.get(hello, timeout=5).status_code == 401
    err = api.stop()
    assert token not in err  # nothing logs the token
