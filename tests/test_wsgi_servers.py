"""``m2mauth.server:create_app()`` under another WSGI server: gunicorn as a real process on a
loopback port, configured only through M2MAUTH_* variables (and a TOML file named by
M2MAUTH_CONFIG), as a user would run it. Tokens are checked with PyJWT against the JWKS."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
import requests

pytest.importorskip("gunicorn")

GRANT = {"grant_type": "client_credentials"}
METADATA = "/.well-known/oauth-authorization-server"


def _gunicorn() -> str:
    executable = Path(sys.executable).parent / "gunicorn"
    if not executable.exists():
        pytest.skip(f"gunicorn is importable but {executable} does not exist")
    return str(executable)


def _options() -> list[str]:
    """Options this gunicorn knows: no control socket (gunicorn 27 opens one in ~/.gunicorn,
    which two servers at once would share)."""
    from gunicorn import config

    known = {flag for setting in config.KNOWN_SETTINGS for flag in setting.cli or ()}
    return ["--no-control-socket"] if "--no-control-socket" in known else []


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Gunicorn:
    """``gunicorn -w 1 -b 127.0.0.1:PORT 'm2mauth.server:create_app()'`` with ``env``."""

    def __init__(self, port: int, env: dict[str, str]) -> None:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("M2MAUTH_")}
        clean.update(env, PYTHONUNBUFFERED="1")
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [_gunicorn(), "-w", "1", "-b", f"127.0.0.1:{port}", "--graceful-timeout", "5",
             *_options(), "m2mauth.server:create_app()"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=clean)
        self.log: list[str] = []

    def wait_until_listening(self) -> None:
        """Read gunicorn's log (bounded) until it listens, then wait for the worker's first
        answer: the listening socket queues the request until the worker has imported the
        app, so a blocking read with a timeout is the wait (no sleeping, no busy polling)."""
        for _ in range(50):
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line)
            if "Listening at:" in line:
                break
        assert any("Listening at:" in line for line in self.log), "".join(self.log)
        last: Exception | None = None
        for _ in range(100):
            if self.proc.poll() is not None:
                break
            try:
                response = requests.get(self.url + METADATA, timeout=(1, 10))
            except requests.ConnectionError as exc:  # refused: not yet (or gone, see poll)
                last = exc
                continue
            assert response.status_code == 200, response.text
            return
        pytest.fail(f"gunicorn never answered ({last}):\n{''.join(self.log)}")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=5)
        return "".join(self.log) + (err or "")


@pytest.fixture
def gunicorn() -> Iterator:
    started: list[Gunicorn] = []

    def start(env_for_port) -> Gunicorn:
        port = _free_port()
        server = Gunicorn(port, env_for_port(port))
        started.append(server)
        server.wait_until_listening()
        return server

    yield start
    for server in started:
        server.stop()


def verify(token: str, issuer: str, jwks: dict, audience: str) -> dict:
    """PyJWT against the JWKS the server published."""
    kid = jwt.get_unverified_header(token)["kid"]
    (jwk,) = [k for k in jwks["keys"] if k["kid"] == kid]
    return jwt.decode(token, jwt.PyJWK(jwk), algorithms=[jwk["alg"]], issuer=issuer,
                      audience=audience)


def check_server(server: Gunicorn, issuer: str, auth: tuple[str, str], audience: str,
                 scope: str) -> dict:
    metadata = requests.get(server.url + METADATA, timeout=5).json()
    assert metadata["issuer"] == issuer
    assert metadata["token_endpoint"] == issuer + "/token"
    assert metadata["jwks_uri"] == issuer + "/jwks.json"
    response = requests.post(server.url + "/token", data=GRANT, auth=auth, timeout=5)
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    token = response.json()["access_token"]
    jwks = requests.get(metadata["jwks_uri"], timeout=5).json()
    claims = verify(token, issuer, jwks, audience)
    assert claims["iss"] == issuer
    assert claims["client_id"] == auth[0] and claims["scope"] == scope
    # The lab is on by default; tokenless admin answers a loopback peer.
    admin = requests.get(server.url + "/admin/clients", timeout=5)
    assert admin.status_code == 200, admin.text
    assert auth[0] in [c["client_id"] for c in admin.json()["clients"]]
    assert requests.post(server.url + "/admin/reset", timeout=5).status_code == 200
    return claims


def test_gunicorn_create_app_from_the_environment(gunicorn):
    server = gunicorn(lambda port: {"M2MAUTH_ISSUER": f"http://127.0.0.1:{port}"})
    issuer = server.url
    claims = check_server(server, issuer, ("demo-client", "demo-secret"), "api://default",
                          "read write")
    assert jwt.get_unverified_header(
        requests.post(server.url + "/token", data=GRANT, auth=("demo-client", "demo-secret"),
                      timeout=5).json()["access_token"])["alg"] == "RS256"
    assert claims["sub"] == "demo-client"
    # One worker keeps its state between requests: the request log saw them all.
    log = requests.get(server.url + "/admin/requests/token", timeout=5).json()["requests"]
    assert [r["outcome"] for r in log] == ["issued"]  # reset above cleared the first
    # Errors are JSON under gunicorn too.
    refused = requests.post(server.url + "/token", data=GRANT, auth=("demo-client", "x"),
                            timeout=5)
    assert (refused.status_code, refused.json()["error"]) == (401, "invalid_client")
    missing = requests.get(server.url + "/nothing", timeout=5)
    assert missing.status_code == 404 and missing.json()["error"] == "invalid_request"
    server.stop()
    assert server.proc.returncode == 0


def test_gunicorn_create_app_from_a_config_file(gunicorn, tmp_path):
    config = tmp_path / "m2mauth.toml"
    config.write_text(textwrap.dedent("""
        algorithm = "ES256"
        token_lifetime = 90
        [[clients]]
        client_id = "orders-service"
        client_secret = "orders-service-secret"
        scopes = ["orders:read", "orders:write"]
        default_scopes = ["orders:read"]
        audiences = ["https://orders.test"]
    """))
    server = gunicorn(lambda port: {"M2MAUTH_ISSUER": f"http://127.0.0.1:{port}",
                                    "M2MAUTH_CONFIG": str(config)})
    claims = check_server(server, server.url, ("orders-service", "orders-service-secret"),
                          "https://orders.test", "orders:read")
    assert claims["exp"] - claims["iat"] == 90
    # The file's clients replace the demo client.
    demo = requests.post(server.url + "/token", data=GRANT, auth=("demo-client", "demo-secret"),
                         timeout=5)
    assert demo.status_code == 401
    server.stop()
    assert server.proc.returncode == 0


def test_gunicorn_with_the_lab_off(gunicorn):
    server = gunicorn(lambda port: {"M2MAUTH_ISSUER": f"http://127.0.0.1:{port}",
                                    "M2MAUTH_LAB": "false"})
    assert requests.post(server.url + "/token", data=GRANT, auth=("demo-client", "demo-secret"),
                         timeout=5).status_code == 200
    admin = requests.get(server.url + "/admin/clients", timeout=5)
    assert admin.status_code == 404 and admin.json()["error"] == "invalid_request"


def test_gunicorn_faults_and_body_limits(gunicorn):
    server = gunicorn(lambda port: {"M2MAUTH_ISSUER": f"http://127.0.0.1:{port}"})
    url, auth = server.url, ("demo-client", "demo-secret")

    def fault(**body) -> None:
        assert requests.post(url + "/admin/faults", json=body, timeout=5).status_code == 201

    fault(status=429, retry_after=4)
    refused = requests.post(url + "/token", data=GRANT, auth=auth, timeout=5)
    assert (refused.status_code, refused.headers["Retry-After"]) == (429, "4")
    # No socket to shut under gunicorn: a drop is a JSON 502, still recorded as the drop.
    fault(kind="drop")
    dropped = requests.post(url + "/token", data=GRANT, auth=auth, timeout=5)
    assert dropped.status_code == 502 and dropped.json()["error"] == "server_error"
    assert requests.options(url + "/token", timeout=5).status_code == 204  # takes no fault
    fault(kind="no_expires_in")
    assert "expires_in" not in requests.post(url + "/token", data=GRANT, auth=auth,
                                             timeout=5).json()

    def chunked():
        yield b"grant_type=client_credentials&pad="
        for _ in range(8):
            yield b"x" * 10_000

    for data in (chunked(), {**GRANT, "pad": "x" * 70_000}):
        big = requests.post(url + "/token", data=data, auth=auth, timeout=5,
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert big.status_code == 413 and big.json()["error"] == "invalid_request"
    log = requests.get(url + "/admin/requests/token", timeout=5).json()["requests"]
    assert [(r["status"], r["fault"]) for r in log] == [
        (429, "error"), (502, "drop"), (200, "no_expires_in"), (413, None), (413, None)]
    assert requests.get(url + "/admin/faults", timeout=5).json() == {"faults": []}
