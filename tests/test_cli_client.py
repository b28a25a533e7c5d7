"""`m2mauth token` and `m2mauth decode` through click's CliRunner, against the live server."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from click.testing import CliRunner

from conftest import SECRET
from m2mauth.server.cli import main


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args: str, env: dict | None = None, input: str | None = None):
        return runner.invoke(main, list(args), env=env, input=input, catch_exceptions=False)

    return invoke


@pytest.fixture
def token_args(live_server) -> list[str]:
    return ["token", "--token-url", live_server.issuer + "/token",
            "--client-id", "secret-client"]


def get_token(live_server, client_id: str = "secret-client") -> str:
    from m2mauth.client import fetch_token

    return fetch_token(live_server.issuer + "/token", client_id=client_id,
                       client_secret=SECRET).access_token


def claims_of(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def tamper(token: str, **changes) -> str:
    """The token with changed claims and its original signature."""
    header, _, signature = token.split(".")
    claims = {**claims_of(token), **changes}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{payload}.{signature}"


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


# -- m2mauth token ---------------------------------------------------------------------------


def test_token_prints_the_bare_token(run, live_server, token_args):
    result = run(*token_args, "--client-secret", SECRET)
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert "\n" not in token
    claims = claims_of(token)
    assert (claims["sub"], claims["iss"]) == ("secret-client", live_server.issuer)


def test_token_secret_from_environment_and_issuer_discovery(run, live_server):
    result = run("token", "--issuer", live_server.issuer, "--client-id", "secret-client",
                 env={"M2MAUTH_CLIENT_SECRET": SECRET})
    assert result.exit_code == 0, result.output
    assert claims_of(result.stdout.strip())["client_id"] == "secret-client"
    assert SECRET not in result.output


def test_token_json_prints_the_whole_response(run, token_args):
    result = run(*token_args, "--client-secret", SECRET, "--json", "--auth-method",
                 "client_secret_post")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "read"
    assert isinstance(body["expires_in"], int)
    assert claims_of(body["access_token"])["sub"] == "secret-client"


def test_token_decode_prints_header_and_claims(run, token_args):
    result = run(*token_args, "--client-secret", SECRET, "--decode")
    assert result.exit_code == 0, result.output
    out = result.stdout
    token, rest = out.split("\n", 1)
    assert claims_of(token)["sub"] == "secret-client"
    assert rest.startswith("header:\n")
    assert '"typ": "at+jwt"' in rest
    assert "claims:\n" in rest
    assert '"tenant": "acme"' in rest
    assert "expires in" in rest


def test_token_scopes_repeatable_and_space_separated(run, token_args):
    result = run(*token_args, "--client-secret", SECRET, "--scope", "read",
                 "--scope", "write admin", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["scope"] == "read write admin"


def test_token_resource_and_audience(run, live_server):
    base = ["token", "--token-url", live_server.issuer + "/token", "--client-id", "aud-client",
            "--client-secret", SECRET]
    result = run(*base, "--resource", "https://orders.test", "--resource",
                 "https://billing.test")
    assert result.exit_code == 0, result.output
    assert claims_of(result.stdout.strip())["aud"] == ["https://orders.test",
                                                        "https://billing.test"]
    result = run(*base, "--audience", "payments")
    assert result.exit_code == 0, result.output
    assert claims_of(result.stdout.strip())["aud"] == "payments"


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_token_client_secret_jwt(run, live_server):
    result = run("token", "--token-url", live_server.issuer + "/token", "--client-id",
                 "hmac-jwt", "--auth-method", "client_secret_jwt",
                 env={"M2MAUTH_CLIENT_SECRET": SECRET})
    assert result.exit_code == 0, result.output
    assert claims_of(result.stdout.strip())["sub"] == "hmac-jwt"
    # PyJWT's warning about the short HMAC key is one readable line, not a Python warning.
    assert "Warning: client_secret_jwt:" in result.stderr
    assert SECRET not in result.output


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_token_private_key_jwt(run, live_server, client_keys, tmp_path, alg):
    key_file = tmp_path / "client.pem"
    key_file.write_bytes(client_keys[alg].pem())
    client_id = f"jwt-{alg.lower()}"
    result = run("token", "--token-url", live_server.issuer + "/token", "--client-id",
                 client_id, "--private-key", str(key_file), "--kid", client_keys[alg].jwk.kid)
    assert result.exit_code == 0, result.output
    assert claims_of(result.stdout.strip())["sub"] == client_id
    assert live_server.token_requests[-1].auth_method == "private_key_jwt"


def test_token_unreadable_private_key(run, live_server, tmp_path):
    key_file = tmp_path / "broken.pem"
    key_file.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    result = run("token", "--token-url", live_server.issuer + "/token", "--client-id",
                 "jwt-rs256", "--private-key", str(key_file))
    line = one_line_error(result)
    assert "cannot load PEM" in line
    assert "AAAA" not in result.output


def test_token_wrong_secret_is_one_line_without_the_secret(run, token_args):
    wrong = "wrong-secret-do-not-print"
    result = run(*token_args, "--client-secret", wrong)
    line = one_line_error(result)
    assert line.startswith("Error: invalid_client: ")
    assert line.endswith("(HTTP 401)")
    assert wrong not in result.output
    assert result.stdout == ""


def test_token_invalid_scope_and_target(run, token_args, live_server):
    line = one_line_error(run(*token_args, "--client-secret", SECRET, "--scope", "delete"))
    assert line.startswith("Error: invalid_scope: ") and line.endswith("(HTTP 400)")
    line = one_line_error(run(*token_args, "--client-secret", SECRET, "--resource",
                              "https://elsewhere.test"))
    assert line.startswith("Error: invalid_target: ")


def test_token_connection_refused(run):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: refused
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/token"
        result = run("token", "--token-url", url, "--client-id", "c",
                     env={"M2MAUTH_CLIENT_SECRET": SECRET})
    line = one_line_error(result)
    assert "Connection refused" in line


@pytest.mark.parametrize("args", [
    [],  # neither --issuer nor --token-url
    ["--issuer", "http://127.0.0.1:1", "--token-url", "http://127.0.0.1:1/token"],
])
def test_token_needs_exactly_one_endpoint(run, args):
    result = run("token", "--client-id", "c", *args, env={"M2MAUTH_CLIENT_SECRET": SECRET})
    assert result.exit_code == 2
    assert "--issuer" in result.stderr


def test_token_needs_a_secret_or_key(run, live_server):
    result = run("token", "--token-url", live_server.issuer + "/token", "--client-id", "c",
                 env={"M2MAUTH_CLIENT_SECRET": ""})
    assert result.exit_code == 2
    assert "M2MAUTH_CLIENT_SECRET" in result.stderr


# -- m2mauth decode --------------------------------------------------------------------------


def test_decode_without_verification(run, live_server):
    token = get_token(live_server)
    result = run("decode", token)
    assert result.exit_code == 0, result.output
    out = result.stdout
    header_part, claims_part = out.split("claims:\n")
    assert json.loads(header_part.removeprefix("header:\n"))["typ"] == "at+jwt"
    claims_json = claims_part.split("\n}\n")[0] + "\n}"
    assert json.loads(claims_json) == claims_of(token)
    for name in ("iat", "nbf", "exp"):
        assert f"\n{name}: " in out and " UTC (" in out
    assert "expires in" in out
    assert "signature" not in out


def test_decode_reads_stdin(run, live_server):
    token = get_token(live_server)
    result = run("decode", "-", input=token + "\n")
    assert result.exit_code == 0, result.output
    assert '"sub": "secret-client"' in result.stdout


def test_decode_reports_an_expired_token(run, live_server):
    live_server.clock.set_offset(-3600)  # reset after the test by conftest
    token = get_token(live_server)
    result = run("decode", token)
    assert result.exit_code == 0
    assert "expired" in result.stdout and "s ago" in result.stdout


def test_decode_verifies_with_jwks_url(run, live_server):
    token = get_token(live_server)
    kid = jwt.get_unverified_header(token)["kid"]
    result = run("decode", token, "--jwks-url", live_server.issuer + "/jwks.json")
    assert result.exit_code == 0, result.output
    assert f"signature: valid (kid {kid}, alg RS256)" in result.stdout
    assert "iss:" not in result.stdout.split("exp:")[-1]


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256", "EdDSA"])
def test_decode_verifies_with_issuer(run, live_server, alg):
    token = get_token(live_server, f"alg-{alg.lower()}")
    result = run("decode", token, "--issuer", live_server.issuer)
    assert result.exit_code == 0, result.output
    assert f"signature: valid (kid {jwt.get_unverified_header(token)['kid']}, alg {alg})" \
        in result.stdout
    assert f"iss: matches {live_server.issuer}" in result.stdout


@pytest.mark.parametrize("option", ["--jwks-url", "--issuer"])
def test_decode_tampered_token_is_invalid(run, live_server, option):
    token = tamper(get_token(live_server), scope="read write admin")
    target = live_server.issuer + ("/jwks.json" if option == "--jwks-url" else "")
    result = run("decode", token, option, target)
    assert result.exit_code == 1
    assert "signature: INVALID (signature verification failed)" in result.stdout
    assert '"scope": "read write admin"' in result.stdout  # still shown, for inspection
    assert "Traceback" not in result.output


def test_decode_refuses_hmac_and_none(run, live_server):
    token = get_token(live_server)
    kid = jwt.get_unverified_header(token)["kid"]
    jwks_url = live_server.issuer + "/jwks.json"
    forged = jwt.encode(claims_of(token), "any-key-at-all-32-bytes-long!!!!", algorithm="HS256",
                        headers={"kid": kid})
    result = run("decode", forged, "--jwks-url", jwks_url)
    assert result.exit_code == 1
    assert "signature: INVALID (algorithm 'HS256' not allowed" in result.stdout
    unsigned = jwt.encode(claims_of(token), None, algorithm="none", headers={"kid": kid})
    result = run("decode", unsigned, "--jwks-url", jwks_url)
    assert result.exit_code == 1
    assert "signature: INVALID (algorithm 'none' not allowed" in result.stdout


def test_decode_unknown_kid_is_invalid(run, live_server):
    token = get_token(live_server)
    header, payload, signature = token.split(".")
    new_header = {**jwt.get_unverified_header(token), "kid": "no-such-kid"}
    header = base64.urlsafe_b64encode(json.dumps(new_header).encode()).rstrip(b"=").decode()
    result = run("decode", f"{header}.{payload}.{signature}", "--jwks-url",
                 live_server.issuer + "/jwks.json")
    assert result.exit_code == 1
    assert "signature: INVALID (no key with kid 'no-such-kid' in the JWKS)" in result.stdout


def test_decode_issuer_mismatch_fails_even_with_a_valid_signature(run, live_server):
    # The shipped keys are public test keys, so a test can sign what the server would.
    signing = live_server.core.keys.active("RS256")
    now = int(time.time())
    token = jwt.encode({"iss": "https://impostor.test", "sub": "x", "iat": now,
                        "exp": now + 60}, signing.pem(), algorithm="RS256",
                       headers={"kid": signing.kid, "typ": "at+jwt"})
    result = run("decode", token, "--issuer", live_server.issuer)
    assert result.exit_code == 1
    assert "signature: valid" in result.stdout
    assert "iss: MISMATCH (token says 'https://impostor.test'" in result.stdout


@pytest.mark.parametrize(("token", "reason"), [
    ("not-a-jwt", "three dot-separated parts"),
    ("a.b", "three dot-separated parts"),
    ("a.b.c.d.e", "three dot-separated parts"),
    ("!!!.@@@.###", ""),
    ("eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln", "not JSON"),
    ("eyJhbGciOiJSUzI1NiJ9.WzEsMl0.c2ln", "not a JSON object"),
    ("x" * 70_000, "longer than"),
])
def test_decode_malformed_token(run, token, reason):
    result = run("decode", token)
    line = one_line_error(result)
    assert line.startswith("Error: malformed token: ")
    assert reason in line
    assert result.stdout == ""


def test_decode_unreachable_jwks(run, live_server):
    token = get_token(live_server)
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/jwks.json"
        result = run("decode", token, "--jwks-url", url)
    line = one_line_error(result)
    assert "cannot fetch the JWKS" in line and "Connection refused" in line


def test_decode_issuer_without_metadata(run, live_server):
    token = get_token(live_server)
    line = one_line_error(run("decode", token, "--issuer", live_server.issuer + "/"))
    assert "discovery_error" in line
