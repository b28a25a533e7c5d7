"""Container-friendly configuration through the real `m2mauth serve` process on loopback
ports: clients from M2MAUTH_CLIENTS, a JSON config file, one line and exit 2 for a bad
variable or an unknown file format, and the warning when the issuer names another port."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jwt
import pytest
import requests

GRANT = {"grant_type": "client_credentials"}
SECRET = "orders-secret-never-shown"
CLIENTS = json.dumps([
    {"client_id": "orders", "client_secret": SECRET, "scopes": ["orders:read"],
     "audiences": ["https://orders.test"]},
    {"client_id": "billing", "client_secret": "billing-secret", "scopes": ["billing:read"]},
])


def _run_serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`m2mauth serve ARGS` for a start that must fail: it exits before it listens."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("M2MAUTH_")}
    return subprocess.run(
        [sys.executable, "-m", "m2mauth.server.cli", "serve", "--port", "0", *args],
        env={**clean, **(env or {})}, capture_output=True, text=True, timeout=60)


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    return line


def test_clients_from_m2mauth_clients_get_tokens_and_others_do_not(cli_process):
    served = cli_process("serve", "--port", "0", env={"M2MAUTH_CLIENTS": CLIENTS},
                         until="clients")
    issuer = served.field("issuer")
    assert "clients   orders, billing" in served.text  # no demo client: they replace it
    token = requests.post(issuer + "/token", data=GRANT, auth=("orders", SECRET), timeout=5)
    assert token.status_code == 200, token.text
    access = token.json()["access_token"]
    key = jwt.PyJWKClient(issuer + "/jwks.json").get_signing_key_from_jwt(access)
    claims = jwt.decode(access, key, algorithms=["RS256"], audience="https://orders.test",
                        issuer=issuer)
    assert (claims["client_id"], claims["scope"]) == ("orders", "orders:read")
    for auth in (("demo-client", "demo-secret"), ("stranger", SECRET), ("orders", "wrong")):
        refused = requests.post(issuer + "/token", data=GRANT, auth=auth, timeout=5)
        assert refused.status_code == 401, auth
        assert refused.json()["error"] == "invalid_client"
    assert SECRET not in served.stop()


@pytest.mark.parametrize(("value", "message"), [
    (CLIENTS[:-1], "environment: M2MAUTH_CLIENTS: is not valid JSON: Expecting ',' delimiter "
                   f"(at line 1, column {len(CLIENTS)})"),
    (CLIENTS.replace('"scopes": ["orders:read"]', '"scopes": "orders:read"'),
     "environment: M2MAUTH_CLIENTS[0].scopes: must be a list, got 'orders:read'"),
    (json.dumps({"client_id": "orders", "client_secret": SECRET}),
     "environment: M2MAUTH_CLIENTS: must be a JSON array, got an object"),
])
def test_a_bad_m2mauth_clients_is_one_line_naming_it_and_exit_2(value, message):
    result = _run_serve(env={"M2MAUTH_CLIENTS": value})
    assert _one_error_line(result) == f"Error: {message}"
    assert SECRET not in result.stderr


def test_a_json_config_file_from_m2mauth_config(cli_process, tmp_path):
    config = tmp_path / "m2mauth.json"
    config.write_text(json.dumps({
        "token_lifetime": 120, "algorithm": "ES256",
        "clients": [{"client_id": "svc", "client_secret": SECRET, "scopes": ["read"]}],
    }))
    served = cli_process("serve", "--port", "0", env={"M2MAUTH_CONFIG": str(config)},
                         until="clients")
    token = requests.post(served.field("issuer") + "/token", data=GRANT, auth=("svc", SECRET),
                          timeout=5)
    assert token.status_code == 200, token.text
    assert token.json()["expires_in"] == 120
    assert jwt.get_unverified_header(token.json()["access_token"])["alg"] == "ES256"


@pytest.mark.parametrize(("name", "text", "why"), [
    ("m2mauth.yaml", "issuer: http://127.0.0.1:8000\n",
     "(file): unknown config format '.yaml'; use a .toml or .json file"),
    ("m2mauth.toml", '{"issuer": "http://127.0.0.1:8000"}\n',
     "(syntax): not valid TOML: Invalid statement (at line 1, column 1); this looks like JSON: "
     "name the file .json"),
    ("m2mauth.json", 'issuer = "http://127.0.0.1:8000"\n',
     "(syntax): not valid JSON: Expecting value (at line 1, column 1); this looks like TOML: "
     "name the file .toml"),
])
def test_a_config_file_in_another_format_is_one_line_and_exit_2(tmp_path, name, text, why):
    config = tmp_path / name
    config.write_text(text)
    assert _one_error_line(_run_serve("--config", str(config))) == f"Error: {config}: {why}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve_on_a_free_port(cli_process, *args: str, env: dict[str, str] | None = None):
    """`m2mauth serve --port P ARGS` on a port that was free a moment ago (``{port}`` in
    ``args`` and ``env`` values becomes P); again on another one if it was taken in between."""
    for _ in range(3):
        port = _free_port()
        served = cli_process(
            "serve", "--port", str(port), *(a.replace("{port}", str(port)) for a in args),
            env={k: v.replace("{port}", str(port)) for k, v in (env or {}).items()})
        if served.proc.poll() is None or "already in use" not in served.stop():
            return served, port
    raise AssertionError("no free port three times running")


def test_an_issuer_naming_another_port_is_warned_before_the_banner(cli_process, tmp_path):
    """The report: the README's file names port 8000 as the issuer, served with --port."""
    config = tmp_path / "m2mauth.toml"
    config.write_text('issuer = "http://127.0.0.1:8000"\n')
    served, port = _serve_on_a_free_port(cli_process, "--config", str(config))
    assert served.field("issuer") == "http://127.0.0.1:8000"  # still the one configured
    first, *rest = served.stop().splitlines()
    assert first == (f"Warning: issuer http://127.0.0.1:8000 names port 8000, but the server "
                     f"listens on {port}; clients will be sent to another server (set issuer "
                     "to match, or leave it unset to follow the port)")
    assert not any("Warning" in line for line in rest)


@pytest.mark.parametrize(("issuer", "via"), [
    ("http://127.0.0.1:{port}", "--issuer"),                # exactly this server
    ("http://localhost:{port}", "M2MAUTH_ISSUER"),          # another name for loopback
    ("https://idp.example.test", "--issuer"),               # a TLS-terminating proxy in front
    ("http://idp.example.test:8000", "M2MAUTH_ISSUER"),     # another host: a proxy or mapping
])
def test_an_issuer_that_names_this_server_or_a_proxy_is_not_warned(cli_process, issuer, via):
    if via == "--issuer":
        served, port = _serve_on_a_free_port(cli_process, "--issuer", issuer)
    else:
        served, port = _serve_on_a_free_port(cli_process, env={via: issuer})
    assert served.field("issuer") == issuer.replace("{port}", str(port))
    assert "Warning" not in served.stop()
