"""`m2mauth introspect` and `m2mauth revoke` through click's CliRunner against a real server
whose resource-server client may introspect: the answer and the exit codes (0 active,
1 inactive, 2 no answer), every auth method's options (shared with `m2mauth token`), the
token from stdin, errors as one line without the secret or the token, and HTTPS with
--ca-bundle."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from m2mauth.client import fetch_token
from m2mauth.server import ClientSettings, ServerSettings
from m2mauth.server.cli import main
from m2mauth.server.lab.idp import IdentityProvider
from m2mauth.server.tls import verifying_session

API = "https://orders.test"
RS_SECRET = "orders-api-introspection-secret-0123456789"
CALLER_SECRET = "caller-secret-for-cli-tests"


def _settings(client_keys) -> ServerSettings:
    return ServerSettings(ephemeral_keys=True, algorithm="ES256", clients=[
        ClientSettings("orders-api", RS_SECRET, introspect=True),
        ClientSettings("orders-api-key", jwks=client_keys["EdDSA"].public_jwks(),
                       introspect=True),
        ClientSettings("no-introspect", RS_SECRET),
        ClientSettings("caller", CALLER_SECRET, scopes=("read",), audiences=(API,)),
        ClientSettings("opaque-caller", CALLER_SECRET, scopes=("read",), audiences=(API,),
                       token_format="opaque"),
    ])


@pytest.fixture(scope="module")
def server(client_keys) -> Iterator[IdentityProvider]:
    with IdentityProvider.start(_settings(client_keys)) as idp:
        yield idp


@pytest.fixture
def issuer(server) -> Iterator[IdentityProvider]:
    server.reset()
    yield server
    server.reset()


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args: str, env: dict | None = None, input: str | None = None):
        env = {"M2MAUTH_CLIENT_ID": None, "M2MAUTH_CLIENT_SECRET": None, **(env or {})}
        return runner.invoke(main, list(args), env=env, input=input, catch_exceptions=False)

    return invoke


def token_of(idp: IdentityProvider, client_id: str = "caller") -> str:
    return fetch_token(idp.token_endpoint, client_id=client_id,
                       client_secret=CALLER_SECRET).access_token


def as_rs(idp: IdentityProvider, *more: str) -> list[str]:
    return ["--issuer", idp.issuer, "--client-id", "orders-api", "--client-secret", RS_SECRET,
            *more]


def one_line_error(result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


# -- m2mauth introspect ------------------------------------------------------------------------


def test_introspect_an_active_token_prints_the_answer_and_exits_0(run, issuer):
    token = token_of(issuer)
    result = run("introspect", token, *as_rs(issuer))
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["active"] is True
    assert (answer["client_id"], answer["aud"], answer["iss"]) == ("caller", API, issuer.issuer)
    assert result.stderr == ""


def test_introspect_an_inactive_token_prints_the_answer_and_exits_1(run, issuer):
    token = token_of(issuer, "opaque-caller")
    issuer.clock.advance(301)
    result = run("introspect", token, *as_rs(issuer))
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout) == {"active": False}
    assert result.stderr == ""


def test_introspect_with_the_endpoint_url_and_credentials_from_the_environment(run, issuer):
    result = run("introspect", token_of(issuer), "--introspection-url",
                 issuer.core.introspection_endpoint, "--auth-method", "client_secret_post",
                 env={"M2MAUTH_CLIENT_ID": "orders-api", "M2MAUTH_CLIENT_SECRET": RS_SECRET})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["active"] is True


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_jwt"])
def test_introspect_with_each_secret_method(run, issuer, method):
    result = run("introspect", token_of(issuer), *as_rs(issuer, "--auth-method", method))
    assert result.exit_code == 0, result.output


def test_introspect_with_private_key_jwt(run, issuer, client_keys, tmp_path):
    key = client_keys["EdDSA"]
    key_file = tmp_path / "rs.pem"
    key_file.write_bytes(key.pem())
    result = run("introspect", token_of(issuer), "--issuer", issuer.issuer, "--client-id",
                 "orders-api-key", "--private-key", str(key_file), "--kid", key.jwk.kid)
    assert result.exit_code == 0, result.output


def test_introspect_reads_the_token_from_stdin(run, issuer):
    result = run("introspect", "-", *as_rs(issuer), input=token_of(issuer) + "\n")
    assert result.exit_code == 0, result.output


def test_introspect_sends_a_token_type_hint(run, issuer):
    result = run("introspect", token_of(issuer), *as_rs(issuer, "--token-type-hint",
                                                         "refresh_token"))
    assert result.exit_code == 0, result.output  # an unhelpful hint changes nothing


def test_introspect_by_a_client_that_may_not_is_one_line_exit_2(run, issuer):
    token = token_of(issuer)
    result = run("introspect", token, "--issuer", issuer.issuer, "--client-id",
                 "no-introspect", "--client-secret", RS_SECRET)
    line = one_line_error(result, 2)
    assert line.startswith("Error: unauthorized_client: ") and line.endswith("(HTTP 400)")
    assert token not in result.output and RS_SECRET not in result.output
    assert result.stdout == ""


def test_introspect_with_a_wrong_secret_never_prints_it(run, issuer):
    wrong = "wrong-secret-do-not-print-0123456789abcdef"
    token = token_of(issuer)
    result = run("introspect", token, "--issuer", issuer.issuer, "--client-id", "orders-api",
                 "--client-secret", wrong, "--auth-method", "client_secret_jwt")
    line = one_line_error(result, 2)
    assert line.startswith("Error: invalid_client: ")
    assert wrong not in result.output and token not in result.output


def test_introspect_connection_refused_is_exit_2(run):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/introspect"
        result = run("introspect", "some-token", "--introspection-url", url, "--client-id",
                     "orders-api", "--client-secret", RS_SECRET)
    assert "Connection refused" in one_line_error(result, 2)


@pytest.mark.parametrize("args", [
    [],
    ["--issuer", "http://127.0.0.1:9", "--introspection-url", "http://127.0.0.1:9/i"],
])
def test_introspect_needs_exactly_one_endpoint(run, args):
    result = run("introspect", "t", "--client-id", "c", "--client-secret", "s", *args)
    assert result.exit_code == 2
    assert "--introspection-url" in result.stderr


def test_introspect_needs_a_secret_or_a_key(run, issuer):
    result = run("introspect", "t", "--issuer", issuer.issuer, "--client-id", "orders-api")
    assert result.exit_code == 2
    assert "M2MAUTH_CLIENT_SECRET" in result.stderr


def test_introspect_refuses_an_empty_or_huge_token(run, issuer):
    assert one_line_error(run("introspect", "-", *as_rs(issuer), input="\n"), 2).endswith(
        "the token is empty")
    huge = run("introspect", "-", *as_rs(issuer), input="x" * 70_000)
    assert "longer than" in one_line_error(huge, 2)


@pytest.mark.parametrize("command", ["introspect", "revoke"])
def test_a_token_that_starts_with_a_dash_is_the_token_not_an_option(run, issuer, command):
    """One opaque token in 64 starts with '-' (base64url); it must not be read as options."""
    who = as_rs(issuer) if command == "introspect" else [
        "--issuer", issuer.issuer, "--client-id", "caller", "--client-secret", CALLER_SECRET]
    for args in (["-Gq7_not-issued", *who],  # first
                 [*who, "-hx-not-issued"],  # last, and like -h at first sight
                 [*who[:2], "-Gq7_not-issued", *who[2:]],  # between options
                 [*who, "--", "-Gq7_not-issued"]):  # the usual way still works
        result = run(command, *args)
        assert result.exit_code == (1 if command == "introspect" else 0), result.output
        assert "Usage" not in result.output
    secret_with_a_dash = run(command, "-Gq7_not-issued", "--issuer", issuer.issuer,
                             "--client-id", "orders-api", "--client-secret", "-not-the-token")
    assert secret_with_a_dash.exit_code != 0  # taken as the secret (wrong), not as a token
    assert "invalid_client" in secret_with_a_dash.stderr


def test_a_mistyped_option_says_where_a_token_with_dashes_goes(run, issuer):
    result = run("introspect", "--isuer", issuer.issuer, "t")
    assert result.exit_code == 2
    assert "No such option '--isuer'" in result.stderr and "put it after --" in result.stderr


# -- m2mauth revoke ----------------------------------------------------------------------------


def test_revoke_is_silent_and_the_token_is_then_inactive(run, issuer):
    token = token_of(issuer)
    result = run("revoke", token, "--issuer", issuer.issuer, "--client-id", "caller",
                 "--client-secret", CALLER_SECRET)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")
    assert run("introspect", token, *as_rs(issuer)).exit_code == 1


def test_revoke_an_opaque_token_from_stdin_with_the_endpoint_url(run, issuer):
    token = token_of(issuer, "opaque-caller")
    result = run("revoke", "-", "--revocation-url", issuer.core.revocation_endpoint,
                 "--auth-method", "client_secret_post", input=token,
                 env={"M2MAUTH_CLIENT_ID": "opaque-caller",
                      "M2MAUTH_CLIENT_SECRET": CALLER_SECRET})
    assert result.exit_code == 0, result.output
    assert run("introspect", token, *as_rs(issuer)).exit_code == 1


def test_revoke_an_unknown_token_exits_0(run, issuer):
    result = run("revoke", "never-issued", "--issuer", issuer.issuer, "--client-id", "caller",
                 "--client-secret", CALLER_SECRET)
    assert result.exit_code == 0 and result.stdout == ""


def test_revoke_with_a_wrong_secret_is_one_line_exit_1(run, issuer):
    token = token_of(issuer)
    wrong = "wrong-secret-do-not-print"
    result = run("revoke", token, "--issuer", issuer.issuer, "--client-id", "caller",
                 "--client-secret", wrong)
    line = one_line_error(result, 1)
    assert line.startswith("Error: invalid_client: ")
    assert wrong not in result.output and token not in result.output
    assert run("introspect", token, *as_rs(issuer)).exit_code == 0  # still active


def test_revoke_needs_exactly_one_endpoint(run):
    result = run("revoke", "t", "--client-id", "c", "--client-secret", "s")
    assert result.exit_code == 2 and "--revocation-url" in result.stderr


def test_the_three_commands_share_the_client_options(run):
    """Declared once (a decorator): the same names, in the same order."""
    def options(command: str) -> list[str]:
        return [p.opts[0] for p in main.commands[command].params if p.opts[0].startswith("--")]

    shared = ["--issuer", "--client-id", "--client-secret", "--auth-method", "--private-key",
              "--kid", "--timeout", "--ca-bundle"]
    for command, url in (("token", "--token-url"), ("introspect", "--introspection-url"),
                         ("revoke", "--revocation-url")):
        found = options(command)
        assert [o for o in found if o in shared] == shared, command
        assert url in found


# -- over HTTPS ----------------------------------------------------------------------------


def test_introspect_and_revoke_over_https_with_ca_bundle(run, client_keys):
    with IdentityProvider.start(_settings(client_keys), tls=True) as idp:
        token = fetch_token(idp.token_endpoint, client_id="caller", client_secret=CALLER_SECRET,
                            session=verifying_session(idp.ca_bundle)).access_token
        ca = ["--ca-bundle", str(idp.ca_bundle)]
        result = run("introspect", token, *as_rs(idp), *ca)
        assert result.exit_code == 0, result.output
        result = run("revoke", token, "--issuer", idp.issuer, "--client-id", "caller",
                     "--client-secret", CALLER_SECRET, *ca)
        assert result.exit_code == 0, result.output
        assert run("introspect", token, *as_rs(idp), *ca).exit_code == 1
