"""`m2mauth serve` and `m2mauth keys generate`: click's runner, plus one real subprocess."""

import socket
import sys

import jwt
import pytest
import requests
from click.testing import CliRunner

from m2mauth.server.cli import main


def _m2mauth() -> list[str]:
    return [sys.executable, "-m", "m2mauth.server.cli"]


def test_serve_subprocess_prints_banner_and_issues_tokens(cli_process):
    server = cli_process("serve", "--port", "0")
    text = server.text
    issuer = server.field("issuer")
    assert issuer.startswith("http://127.0.0.1:") and not issuer.endswith(":0")
    for fragment in (f"{issuer}/token", f"{issuer}/jwks.json", "demo-client / demo-secret",
                     "scopes: read write", "PUBLIC test keys"):
        assert fragment in text
    r = requests.post(issuer + "/token", data={"grant_type": "client_credentials"},
                      auth=("demo-client", "demo-secret"), timeout=5)
    assert r.status_code == 200
    key = jwt.PyJWKClient(issuer + "/jwks.json").get_signing_key_from_jwt(
        r.json()["access_token"])
    claims = jwt.decode(r.json()["access_token"], key, algorithms=["RS256"],
                        audience="api://default", issuer=issuer)
    assert claims["scope"] == "read write"
    err = server.stop()
    # one log line for the token request, with no secret in it
    assert "token request client_id='demo-client'" in err
    assert "demo-secret" not in err


def test_port_in_use_is_one_line_and_exit_2():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(main, ["serve", "--port", str(port)])
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"Error: port {port} on 127.0.0.1 is already in use "
        "(choose another with --port, or 0 for any free port)"
    )


def test_bad_config_file_names_file_and_key_exit_2(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('algorithm = "none"\n')
    result = CliRunner().invoke(main, ["serve", "--config", str(path)])
    assert result.exit_code == 2
    assert f"{path}: algorithm: 'none' is not one of" in result.output
    assert "Traceback" not in result.output


def test_bad_environment_value_exit_2():
    result = CliRunner().invoke(main, ["serve"], env={"M2MAUTH_PORT": "x"})
    assert result.exit_code == 2
    assert "environment: M2MAUTH_PORT: must be an integer" in result.output


def test_missing_keys_dir_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["serve", "--keys-dir", str(tmp_path), "--port", "0"])
    assert result.exit_code == 2
    assert "no signing keys found" in result.output


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::"])
def test_non_loopback_with_shipped_keys_warns_loudly(host, capsys):
    # The banner alone: tests bind loopback addresses only, never all interfaces.
    from m2mauth.server import ServerSettings, create_app
    from m2mauth.server.cli import _banner

    settings = ServerSettings(host=host, port=8000)
    _banner(create_app(settings))
    err = capsys.readouterr().err
    assert f"WARNING: listening on {host}, a non-loopback address" in err
    assert "PUBLIC test keys" in err


def test_non_loopback_warns_for_a_further_issuer_with_shipped_keys(capsys):
    # The root has ephemeral keys; orders says "ephemeral_keys = false" and so signs with the
    # public test keys: its tokens are as forgeable as the root's would be.
    from m2mauth.server import ServerSettings, create_app
    from m2mauth.server.cli import _banner

    settings = ServerSettings(host="0.0.0.0", port=8000, ephemeral_keys=True,
                              issuers={"orders": {"ephemeral_keys": False}, "billing": {}})
    _banner(create_app(settings))
    err = capsys.readouterr().err
    assert "WARNING: listening on 0.0.0.0, a non-loopback address" in err
    assert "(for http://127.0.0.1:8000/orders)" in err
    assert "billing" not in err
    capsys.readouterr()
    _banner(create_app(ServerSettings(host="0.0.0.0", port=8000, ephemeral_keys=True,
                                      issuers={"billing": {}})))
    assert "WARNING" not in capsys.readouterr().err


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_loopback_with_shipped_keys_only_notes(host, capsys):
    from m2mauth.server import ServerSettings, create_app
    from m2mauth.server.cli import _banner

    settings = ServerSettings(host=host, port=8000)
    _banner(create_app(settings))
    out = capsys.readouterr()
    assert "WARNING" not in out.err
    assert "PUBLIC test keys" in out.out


def test_banner_names_where_the_shipped_keys_are(capsys):
    # From a wheel that is the installed package's directory (.ci/wheel_smoke.py checks it
    # there); never a keys/ directory the installed package does not have.
    from m2mauth.server import ServerSettings, create_app
    from m2mauth.server.cli import _banner
    from m2mauth.server.keys import shipped_keys_dir

    _banner(create_app(ServerSettings(port=8000)))
    (signing,) = [li for li in capsys.readouterr().out.splitlines()
                  if li.strip().startswith("signing")]
    assert signing.endswith(f"(shipped PUBLIC test keys from {shipped_keys_dir()})")
    assert "keys/ are" not in signing


def test_loopback_with_own_keys_does_not_warn(tmp_path, monkeypatch):
    from m2mauth.server.serving import HTTPServer

    monkeypatch.setattr(HTTPServer, "serve_forever", HTTPServer.close)
    runner = CliRunner()
    assert runner.invoke(main, ["keys", "generate", str(tmp_path), "--alg", "RS256"]).exit_code == 0
    result = runner.invoke(main, ["serve", "--keys-dir", str(tmp_path), "--port", "0"])
    assert result.exit_code == 0, result.output
    assert "WARNING" not in result.output
    assert f"keys from {tmp_path}" in result.output


def test_keys_generate_prints_kids_and_refuses_overwrite(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["keys", "generate", str(tmp_path / "k")])
    assert result.exit_code == 0
    assert result.output.count("kid=") == 4
    again = runner.invoke(main, ["keys", "generate", str(tmp_path / "k"), "--alg", "ES256"])
    assert again.exit_code == 2
    assert "exists; refusing to replace it (use --force" in again.output
    forced = runner.invoke(main, ["keys", "generate", str(tmp_path / "k"), "--alg", "ES256",
                                  "--force"])
    assert forced.exit_code == 0


def test_banner_names_the_admin_api_and_its_guard(capsys):
    from m2mauth.server import ServerSettings, create_app
    from m2mauth.server.cli import _banner

    for settings, guard in (
        (ServerSettings(port=8000), "open on loopback"),
        (ServerSettings(host="0.0.0.0", admin_token="t" * 20), "admin token required"),
    ):
        _banner(create_app(settings))
        out = capsys.readouterr().out
        assert f"admin     http://127.0.0.1:8000/admin  (test controls, {guard})" in out
        assert "t" * 20 not in out
    off = ServerSettings(host="0.0.0.0")
    _banner(create_app(off))
    assert "/admin" not in capsys.readouterr().out


def test_admin_token_flag_short_token_is_a_config_error():
    result = CliRunner().invoke(main, ["serve", "--admin-token", "short", "--port", "0"])
    assert result.exit_code == 2
    assert "admin_token: must be at least 16 characters" in result.output
    assert "short" not in result.output.replace("admin_token", "")


# A point that is not on P-256 (x = y = 1), in base64url of 32 bytes.
_ONE = "A" * 42 + "E"


@pytest.mark.parametrize(("jwks", "problem"), [
    ('{ keys = [ { kty = "RSA", n = "AAAA" } ] }', "keys[0] is not a usable RSA public key"),
    ('{ keys = [ { kty = "oct", k = "c2VjcmV0LXNlY3JldC1zZWNyZXQ" } ] }',
     "keys[0] is a symmetric (oct) key"),
    (f'{{ keys = [ {{ kty = "EC", crv = "P-256", x = "{_ONE}", y = "{_ONE}" }} ] }}',
     "keys[0] is not a usable EC public key: Invalid EC key. Point is not on the curve"),
    ('{ keys = ["x"] }', "keys[0] is not a JWK"),
    ('{ keys = [ { kty = "OKP", crv = "X25519", x = "' + "A" * 43 + '" } ] }',
     "keys[0]: crv 'X25519' is not Ed25519"),
    ('{ keys = [ { kty = "EC", crv = "P-999", x = "AA", y = "AA" } ] }',
     "keys[0]: crv 'P-999' is not P-256"),
])
def test_a_malformed_client_jwks_in_the_file_is_one_line_and_exit_2(tmp_path, monkeypatch,
                                                                    jwks, problem):
    """Issue 9 item 8: the file, the key and the problem on one line, exit 2 – never a
    traceback, and never a server that starts with a key it cannot use (oct used to)."""
    from m2mauth.server.serving import HTTPServer

    monkeypatch.setattr(HTTPServer, "serve_forever", HTTPServer.close)
    path = tmp_path / "m2mauth.toml"
    path.write_text(f'[[clients]]\nclient_id = "pk"\njwks = {jwks}\n')
    result = CliRunner().invoke(main, ["serve", "--port", "0", "--config", str(path)])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"Error: {path}: clients[0].jwks: {problem}"), line


def test_unsafe_key_files_are_one_line_and_exit_2_unless_overridden(tmp_path, monkeypatch):
    """Issue 9 item 9: another local user could have swapped a world-writable key."""
    from m2mauth.server.serving import HTTPServer

    monkeypatch.setattr(HTTPServer, "serve_forever", HTTPServer.close)
    runner = CliRunner()
    assert runner.invoke(main, ["keys", "generate", str(tmp_path), "--alg", "RS256"]).exit_code == 0
    key = tmp_path / "rs256.pem"
    key.chmod(0o666)
    result = runner.invoke(main, ["serve", "--keys-dir", str(tmp_path), "--port", "0"])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"Error: {key}: the private key has mode 0666") and \
        f"run chmod 600 {key}" in line
    result = runner.invoke(main, ["serve", "--keys-dir", str(tmp_path), "--port", "0",
                                  "--unsafe-key-permissions"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["serve", "--keys-dir", str(tmp_path), "--port", "0"],
                           env={"M2MAUTH_UNSAFE_KEY_PERMISSIONS": "true"})
    assert result.exit_code == 0, result.output


def test_keys_generate_refuses_a_world_writable_directory(tmp_path):
    tmp_path.chmod(0o777)
    result = CliRunner().invoke(main, ["keys", "generate", str(tmp_path), "--alg", "ES256"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        f"Error: {tmp_path}: the key directory has mode 0777: other users can add or replace"
        f" keys in it; run chmod 700 {tmp_path}")
    assert not (tmp_path / "es256.pem").exists()
