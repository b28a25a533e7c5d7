"""HTTPS: `m2mauth serve --tls` (a local CA reused across starts, or given files), the
IdentityProvider and the pytest plugin over TLS, third-party clients (Authlib, requests-oauthlib,
httpx, openid-client) and m2mauth's own getting tokens with verification on, and the TLS channel
against slow, stalled and confused clients. Real servers on loopback ports, real TLS; every wait
is bounded and ends on an event (an answer, a close)."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import select
import socket
import ssl
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import requests
import trustme
from click.testing import CliRunner

from m2mauth.client import TokenValidator, fetch_token
from m2mauth.server import ConfigError, ServerSettings, load_settings
from m2mauth.server.cli import main
from m2mauth.server.lab import IdentityProvider
from m2mauth.server.serving import BackgroundServer, HTTPServer, bind_app
from m2mauth.server.tls import CA_FILE, CA_KEY_FILE, client_context, load_server_tls

pytest_plugins = ["pytester"]

DEMO = ("demo-client", "demo-secret")
GRANT = {"grant_type": "client_credentials"}
PARTIAL = b"POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # headers never finished


@pytest.fixture(scope="module")
def tls_idp() -> Iterator[IdentityProvider]:
    """One TLS issuer for the tests that only get tokens from it (each with its own CA)."""
    with IdentityProvider.start(tls=True) as idp:
        yield idp


@pytest.fixture
def quick_tls() -> Iterator[IdentityProvider]:
    with IdentityProvider.start(ServerSettings(request_timeout=1, idle_timeout=1),
                                tls=True) as idp:
        yield idp


def _token(idp: IdentityProvider, **options) -> requests.Response:
    # verify= per request: this machine may set REQUESTS_CA_BUNDLE, which beats a session's.
    return requests.post(idp.token_endpoint, data=GRANT, auth=DEMO, verify=str(idp.ca_bundle),
                         timeout=5, **options)


def _tls_socket(idp: IdentityProvider, *, rcvbuf: int | None = None) -> ssl.SSLSocket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", idp.server.port))
    return client_context(idp.ca_bundle).wrap_socket(sock, server_hostname="127.0.0.1")


def _closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """Whether the peer closes ``sock`` (EOF, close_notify or reset) within ``timeout``,
    after whatever it sends first (a TLS alert)."""
    end = time.monotonic() + timeout
    while True:
        pending = isinstance(sock, ssl.SSLSocket) and sock.pending()
        left = end - time.monotonic()
        if not pending and (left <= 0 or not select.select([sock], [], [], left)[0]):
            return False
        try:
            if sock.recv(4096) == b"":
                return True
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            return True


def _client_hello(ca_bundle: Path) -> bytes:
    """The first flight of a real TLS client: its ClientHello."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context(ca_bundle).wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("M2MAUTH_")}
    env.update(extra)
    return env


# -- m2mauth serve --tls ------------------------------------------------------------------------


def _served_certificate(port: int) -> str:
    return ssl.get_server_certificate(("127.0.0.1", port))


def test_serve_tls_makes_a_ca_serves_https_and_reuses_the_ca(cli_process, tmp_path):
    ca_dir = tmp_path / "ca"
    first = cli_process("serve", "--tls", "--port", "0", "--tls-dir", str(ca_dir))
    issuer = first.field("issuer")
    ca = first.field("ca")
    assert issuer.startswith("https://127.0.0.1:") and ca == str(ca_dir / CA_FILE)
    for line in (f"export REQUESTS_CA_BUNDLE={ca}", f"export SSL_CERT_FILE={ca}",
                 f"export NODE_EXTRA_CA_CERTS={ca}", f"curl --cacert {ca} -s -u demo-client"):
        assert line in first.text
    assert "made now" in first.text and "127.0.0.1, ::1, localhost" in first.text
    key = (ca_dir / CA_KEY_FILE).read_text()
    assert key.strip().splitlines()[1] not in first.text  # the CA's private key is never shown
    assert stat.S_IMODE((ca_dir / CA_KEY_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(ca_dir.stat().st_mode) == 0o700

    metadata = requests.get(issuer + "/.well-known/oauth-authorization-server", verify=ca,
                            timeout=5).json()
    assert metadata["issuer"] == issuer
    assert metadata["token_endpoint"] == issuer + "/token"
    assert metadata["jwks_uri"].startswith("https://")
    response = requests.post(metadata["token_endpoint"], data=GRANT, auth=DEMO, verify=ca,
                             timeout=5)
    assert response.status_code == 200, response.text
    # The demo API on the same server fetches this server's JWKS over https itself.
    hello = requests.get(issuer + "/demo/hello", verify=ca, timeout=5, headers={
        "Authorization": f"Bearer {response.json()['access_token']}"})
    assert hello.status_code == 200, hello.text
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(metadata["jwks_uri"], verify=certifi_bundle(), timeout=5)
    certificate = _served_certificate(int(issuer.rsplit(":", 1)[1]))
    ca_pem = Path(ca).read_bytes()
    first.stop()

    second = cli_process("serve", "--tls", "--port", "0", "--tls-dir", str(ca_dir))
    assert "made before, reused" in second.text and second.field("ca") == ca
    assert Path(ca).read_bytes() == ca_pem  # trusted once, still trusted
    again = second.field("issuer")
    assert _served_certificate(int(again.rsplit(":", 1)[1])) != certificate  # a new one
    assert requests.get(again + "/jwks.json", verify=ca, timeout=5).status_code == 200


def test_sigterm_over_tls_answers_the_request_in_flight_and_closes_idle_ones(cli_process,
                                                                           tmp_path):
    import signal

    served = cli_process("serve", "--tls", "--port", "0", "--tls-dir", str(tmp_path))
    issuer, ca = served.field("issuer"), served.field("ca")
    port = int(issuer.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            client_context(ca).wrap_socket(raw, server_hostname="127.0.0.1") as idle:
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert idle.recv(4096).startswith(b"HTTP/1.1 200")  # then kept alive, idle
        fault = requests.post(issuer + "/admin/faults", json={"kind": "delay", "delay": 1},
                              verify=ca, timeout=5)
        assert fault.status_code == 201, fault.text
        answers: list[requests.Response] = []
        in_flight = threading.Thread(target=lambda: answers.append(requests.post(
            issuer + "/token", data=GRANT, auth=DEMO, verify=ca, timeout=15)))
        in_flight.start()
        for _ in range(500):  # bounded: until the request has taken the fault
            if requests.get(issuer + "/admin/faults", verify=ca,
                            timeout=5).json()["faults"] == []:
                break
        served.proc.send_signal(signal.SIGTERM)
        in_flight.join(timeout=15)
        assert [a.status_code for a in answers] == [200]
        assert _closed_by_peer(idle, 15)  # close_notify, then the socket
    assert served.proc.wait(timeout=15) == 0
    assert "Traceback" not in served.stop()


def certifi_bundle() -> str:
    import certifi

    return certifi.where()


def _leaf_files(tmp_path: Path, *names: str) -> tuple[trustme.CA, Path, Path, Path]:
    ca = trustme.CA()
    leaf = ca.issue_cert(*(names or ("127.0.0.1", "localhost")))
    cert, key, bundle = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    leaf.cert_chain_pems[0].write_to_path(cert)
    leaf.private_key_pem.write_to_path(key)
    ca.cert_pem.write_to_path(bundle)
    return ca, cert, key, bundle


def test_serve_with_given_certificate_files(cli_process, tmp_path):
    _, cert, key, bundle = _leaf_files(tmp_path)
    server = cli_process("serve", "--tls-cert", str(cert), "--tls-key", str(key), "--port", "0")
    issuer = server.field("issuer")
    assert issuer.startswith("https://")
    assert f"certificate {cert}, key {key}" in server.text
    assert "names     localhost, 127.0.0.1" in server.text
    assert not (tmp_path / CA_KEY_FILE).exists()
    response = requests.post(issuer + "/token", data=GRANT, auth=DEMO, verify=str(bundle),
                             timeout=5)
    assert response.status_code == 200, response.text


def _serve(args: list[str], monkeypatch: pytest.MonkeyPatch, **env: str):
    """``m2mauth serve ARGS`` in this process, returning as soon as it would serve."""
    monkeypatch.setattr(HTTPServer, "serve_forever", HTTPServer.close)
    return CliRunner().invoke(main, ["serve", "--port", "0", *args], env=env)


def _error_line(result) -> str:
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 2, result.output
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


@pytest.mark.parametrize("case", ["missing", "not_pem_cert", "not_pem_key", "mismatch",
                                  "cert_only", "key_only", "encrypted"])
def test_bad_certificate_files_are_one_line_naming_the_key_exit_2(tmp_path, monkeypatch, case):
    _, cert, key, _ = _leaf_files(tmp_path)
    other_key = tmp_path / "other.pem"
    trustme.CA().issue_cert("127.0.0.1").private_key_pem.write_to_path(other_key)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    args, expected = {
        "missing": (["--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", str(key)],
                    f"command line: tls_cert: cannot read {tmp_path / 'nope.pem'}"),
        "not_pem_cert": (["--tls-cert", str(junk), "--tls-key", str(key)],
                         f"tls_cert: {junk} is not a PEM certificate"),
        "not_pem_key": (["--tls-cert", str(cert), "--tls-key", str(junk)],
                        f"tls_key: {junk} is not a PEM private key"),
        "mismatch": (["--tls-cert", str(cert), "--tls-key", str(other_key)],
                     f"tls_key: {other_key} is not the key of the certificate in {cert}"),
        "cert_only": (["--tls-cert", str(cert)], "command line: tls_key: is needed with tls_cert"),
        "key_only": (["--tls-key", str(key)], "command line: tls_cert: is needed with tls_key"),
        "encrypted": (["--tls-cert", str(cert), "--tls-key", str(_encrypted(key, tmp_path))],
                      "tls_key: " + str(tmp_path / "encrypted.pem") + " is encrypted"),
    }[case]
    assert expected in _error_line(_serve(args, monkeypatch))


def _encrypted(key: Path, tmp_path: Path) -> Path:
    from cryptography.hazmat.primitives import serialization

    native = serialization.load_pem_private_key(key.read_bytes(), password=None)
    path = tmp_path / "encrypted.pem"
    path.write_bytes(native.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pass")))
    return path


def test_an_unsafe_ca_key_or_an_http_issuer_with_tls_is_refused(tmp_path, monkeypatch):
    ca_dir = tmp_path / "ca"
    assert _serve(["--tls", "--tls-dir", str(ca_dir)], monkeypatch).exit_code == 0
    (ca_dir / CA_KEY_FILE).chmod(0o644)
    line = _error_line(_serve(["--tls", "--tls-dir", str(ca_dir)], monkeypatch))
    assert "tls_dir:" in line and "mode 0644" in line and "chmod 600" in line
    (ca_dir / CA_KEY_FILE).chmod(0o600)
    (ca_dir / CA_KEY_FILE).unlink()
    line = _error_line(_serve(["--tls", "--tls-dir", str(ca_dir)], monkeypatch))
    assert "has no private key beside it" in line
    line = _error_line(_serve(["--tls", "--tls-dir", str(ca_dir), "--issuer",
                               "http://127.0.0.1:8443"], monkeypatch))
    assert "command line: issuer: 'http://127.0.0.1:8443' is http:// but TLS is on" in line


def test_the_default_ca_directory_is_per_user(tmp_path, monkeypatch):
    result = _serve(["--tls"], monkeypatch, XDG_DATA_HOME=str(tmp_path))
    assert result.exit_code == 0, result.output
    assert f"ca        {tmp_path / 'm2mauth' / 'tls' / CA_FILE}" in result.output


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_https_issuer_on_the_bound_port_is_warned_about_without_tls_only(tmp_path,
                                                                             monkeypatch):
    port = _free_port()
    issuer = f"https://127.0.0.1:{port}"
    monkeypatch.setattr(HTTPServer, "serve_forever", HTTPServer.close)
    runner = CliRunner()
    plain = runner.invoke(main, ["serve", "--port", str(port), "--issuer", issuer])
    assert plain.exit_code == 0, plain.output
    assert "but the server speaks plain HTTP" in plain.output and "--tls" in plain.output
    served = runner.invoke(main, ["serve", "--port", str(port), "--issuer", issuer, "--tls",
                                  "--tls-dir", str(tmp_path)])
    assert served.exit_code == 0, served.output
    assert "Warning" not in served.output
    # With TLS, an https issuer naming another port of the same address is the mistake.
    other = runner.invoke(main, ["serve", "--port", str(port), "--tls", "--tls-dir",
                                 str(tmp_path), "--issuer", f"https://127.0.0.1:{port + 1}"])
    assert f"names port {port + 1}, but the server listens on {port}" in other.output


def test_tls_settings_combine_across_layers(tmp_path):
    _, cert, key, _ = _leaf_files(tmp_path)
    config = tmp_path / "m2mauth.toml"
    config.write_text('tls_cert = "cert.pem"\n')
    # The certificate from the file, its key from the environment: checked once all are in.
    settings = load_settings(config, env={"M2MAUTH_TLS_KEY": str(key)})
    assert settings.tls_cert == cert and settings.tls_enabled
    assert settings.issuer_url == "https://127.0.0.1:8000"
    with pytest.raises(ConfigError) as missing:
        load_settings(config, env={})
    assert (missing.value.source, missing.value.key) == (str(config), "tls_key")
    with pytest.raises(ConfigError) as http:
        load_settings(env={"M2MAUTH_TLS": "1", "M2MAUTH_ISSUER": "http://idp:8443"})
    assert (http.value.source, http.value.key) == ("environment", "M2MAUTH_ISSUER")
    with pytest.raises(ConfigError) as alone:
        load_settings(env={"M2MAUTH_TLS_CERT": str(cert)})
    assert (alone.value.source, alone.value.key) == ("environment", "tls_key")
    assert "needed with M2MAUTH_TLS_CERT" in alone.value.why
    assert ServerSettings(tls=True, host="::1", port=8443).issuer_url == "https://[::1]:8443"
    with_issuer = ServerSettings(tls=True, issuer="https://idp.test:8443",
                                 tls_dir=tmp_path / "ca")
    assert "idp.test" in load_server_tls(with_issuer).names


def test_two_first_starts_at_once_make_one_ca(tmp_path):
    settings = ServerSettings(tls=True, tls_dir=tmp_path / "ca")
    with ThreadPoolExecutor(4) as pool:
        made = list(pool.map(lambda _: load_server_tls(settings), range(4)))
    assert sum(tls.ca_created for tls in made) == 1
    assert {tls.ca_bundle for tls in made} == {tmp_path / "ca" / CA_FILE}


# -- clients over TLS, verification on ----------------------------------------------------------


# Authlib 1.9 announces a move of its httpx integration; the one it has is what is tested.
@pytest.mark.filterwarnings("ignore:The httpx module is deprecated")
def test_authlib_gets_tokens_over_tls(tls_idp):
    from authlib.integrations.httpx_client import OAuth2Client
    from authlib.integrations.requests_client import OAuth2Session

    with OAuth2Session(*DEMO, scope="read") as session:
        token = session.fetch_token(tls_idp.token_endpoint, grant_type="client_credentials",
                                    verify=str(tls_idp.ca_bundle))
    assert token["token_type"] == "Bearer" and token["scope"] == "read"
    with OAuth2Client(*DEMO, scope="read", verify=tls_idp.ssl_context()) as client:
        assert client.fetch_token(tls_idp.token_endpoint,
                                  grant_type="client_credentials")["scope"] == "read"
    with OAuth2Client(*DEMO, verify=client_context(certifi_bundle())) as client, \
            pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        client.fetch_token(tls_idp.token_endpoint, grant_type="client_credentials")


def test_requests_oauthlib_gets_a_token_over_tls_without_insecure_transport(tls_idp,
                                                                           monkeypatch):
    from oauthlib.oauth2 import BackendApplicationClient
    from requests_oauthlib import OAuth2Session

    monkeypatch.delenv("OAUTHLIB_INSECURE_TRANSPORT", raising=False)
    session = OAuth2Session(client=BackendApplicationClient(client_id=DEMO[0]), scope=["read"])
    token = session.fetch_token(tls_idp.token_endpoint, client_id=DEMO[0], scope=["read"],
                                client_secret=DEMO[1], verify=str(tls_idp.ca_bundle))
    assert token["token_type"] == "Bearer" and token["scope"] == ["read"]


def test_httpx_gets_a_token_and_the_validator_accepts_it(tls_idp):
    response = httpx.post(tls_idp.token_endpoint, data=GRANT, auth=DEMO,
                          verify=tls_idp.ssl_context(), timeout=5)
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    # The JWKS is discovered from the https issuer's metadata, then fetched over https.
    validator = TokenValidator(tls_idp.issuer, "api://default",
                               session=tls_idp.requests_session())
    assert validator.validate(token).claims["iss"] == tls_idp.issuer
    assert validator.validate(token, "read").client_id == "demo-client"
    own = fetch_token(tls_idp.token_endpoint, client_id=DEMO[0], client_secret=DEMO[1],
                      scope="read", session=tls_idp.requests_session())
    assert validator.validate(own.access_token).scopes == ("read",)


def _m2mauth(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "m2mauth.server.cli", *args],
                          capture_output=True, text=True, timeout=60, env=_clean_env(**env))


def test_m2mauth_token_and_decode_against_a_tls_issuer(tls_idp):
    ca = str(tls_idp.ca_bundle)
    got = _m2mauth("token", "--issuer", tls_idp.issuer, "--client-id", DEMO[0], "--scope",
                   "read", REQUESTS_CA_BUNDLE=ca, M2MAUTH_CLIENT_SECRET=DEMO[1])
    assert got.returncode == 0, got.stderr
    token = got.stdout.strip()
    # --ca-bundle wins over a REQUESTS_CA_BUNDLE that names other CAs.
    decoded = _m2mauth("decode", token, "--issuer", tls_idp.issuer, "--ca-bundle", ca,
                       REQUESTS_CA_BUNDLE=certifi_bundle())
    assert decoded.returncode == 0, decoded.stderr
    assert "signature: valid" in decoded.stdout
    assert f"iss: matches {tls_idp.issuer}" in decoded.stdout
    refused = CliRunner().invoke(main, ["token", "--issuer", tls_idp.issuer, "--client-id",
                                        DEMO[0], "--client-secret", DEMO[1]],
                                 env={"REQUESTS_CA_BUNDLE": certifi_bundle()})
    assert refused.exit_code == 1
    assert "CERTIFICATE_VERIFY_FAILED" in refused.output and "--ca-bundle" in refused.output
    assert "Traceback" not in refused.output
    bad = CliRunner().invoke(main, ["decode", token, "--issuer", tls_idp.issuer, "--ca-bundle",
                                    str(Path(__file__))])
    assert bad.exit_code == 2 and "not a PEM certificate bundle" in bad.output


# -- openid-client (node) -----------------------------------------------------------------------

_GRANT_SCRIPT = """\
import * as client from "openid-client";

const [issuer, clientId, secret] = process.argv.slice(2);
const config = await client.discovery(new URL(issuer), clientId, undefined,
  client.ClientSecretBasic(secret), { algorithm: "oauth2" });
const tokens = await client.clientCredentialsGrant(config, { scope: "read" });
console.log(JSON.stringify({ issuer: config.serverMetadata().issuer,
  access_token: tokens.access_token, token_type: tokens.token_type, scope: tokens.scope }));
"""


def test_openid_client_gets_a_token_over_tls_with_node_extra_ca_certs(tls_idp, openid_client):
    (openid_client / "grant.mjs").write_text(_GRANT_SCRIPT)

    def grant(**env: str) -> subprocess.CompletedProcess:
        return subprocess.run(["node", "grant.mjs", tls_idp.issuer, *DEMO], cwd=openid_client,
                              capture_output=True, text=True, timeout=60, env=_clean_env(**env))

    done = grant(NODE_EXTRA_CA_CERTS=str(tls_idp.ca_bundle))
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["issuer"] == tls_idp.issuer
    assert (answer["token_type"].lower(), answer["scope"]) == ("bearer", "read")
    untrusted = grant()
    assert untrusted.returncode != 0 and "UNABLE_TO_VERIFY_LEAF_SIGNATURE" in untrusted.stderr


# -- the TLS channel against slow, stalled and confused clients ---------------------------------


@pytest.mark.parametrize("first_bytes", [
    b"GET /jwks.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",  # plain HTTP to the TLS port
    b"\x16\x03\x01\x00\x10" + b"\x00" * 16,  # a handshake record that is no ClientHello
    b"\x00" * 64,  # garbage
])
def test_what_is_not_tls_is_closed_quietly_and_the_server_goes_on(tls_idp, caplog, capfd,
                                                                  first_bytes):
    caplog.set_level("DEBUG", logger="m2mauth.access")
    with socket.create_connection(("127.0.0.1", tls_idp.server.port), timeout=5) as sock:
        sock.sendall(first_bytes)
        assert _closed_by_peer(sock, 5)
    assert _token(tls_idp).status_code == 200
    closed = [r for r in caplog.records if "TLS connection from 127.0.0.1 closed" in r.message]
    assert len(closed) == 1 and closed[0].levelname == "DEBUG"
    assert not [r for r in caplog.records if r.levelno >= 30]
    assert "Traceback" not in capfd.readouterr().err


def test_tls_1_1_is_refused():
    with IdentityProvider.start(tls=True) as idp, pytest.warns(DeprecationWarning):
        context = client_context(idp.ca_bundle)
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # the client would; the server must not
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
        with socket.create_connection(("127.0.0.1", idp.server.port), timeout=5) as sock, \
                pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION"):
            context.wrap_socket(sock, server_hostname="127.0.0.1")


def test_a_handshake_that_stalls_halfway_is_cut_at_the_request_deadline(quick_tls):
    # Half a ClientHello, then one byte each time the server has not closed: every byte is
    # activity, so only the request deadline (which a handshake counts against) ends it.
    hello = _client_hello(quick_tls.ca_bundle)
    with socket.create_connection(("127.0.0.1", quick_tls.server.port), timeout=5) as sock:
        sock.sendall(hello[: len(hello) // 2])
        assert _token(quick_tls).status_code == 200  # others are answered meanwhile
        closed = False
        for byte in hello[len(hello) // 2: -1]:  # bounded: never the whole hello
            if _closed_by_peer(sock, 0.2):
                closed = True
                break
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
    assert closed, "the server kept a handshake that never finished"
    assert _token(quick_tls).status_code == 200


def test_a_connection_that_sends_nothing_is_closed_when_idle(quick_tls):
    with socket.create_connection(("127.0.0.1", quick_tls.server.port), timeout=5) as sock:
        assert _token(quick_tls).status_code == 200
        assert _closed_by_peer(sock, 15)


def test_a_request_trickled_in_over_tls_is_closed_at_the_request_deadline(quick_tls):
    with _tls_socket(quick_tls) as sock:
        sock.sendall(PARTIAL)
        closed = False
        for _ in range(60):  # bounded: 60 bytes, one each time the server has not closed
            if _closed_by_peer(sock, 0.2):
                closed = True
                break
            try:
                sock.sendall(b"X")
            except OSError:
                closed = True
                break
    assert closed, "the server kept a request that never finished arriving"


def test_stalled_handshakes_do_not_starve_well_behaved_clients(tls_idp):
    # Handshakes run on the event loop like reads: 200 stalled ones hold no thread.
    half = _client_hello(tls_idp.ca_bundle)[:100]
    socks = []
    try:
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", tls_idp.server.port), timeout=5)
            sock.sendall(half)
            socks.append(sock)
        with requests.Session() as session:
            for _ in range(10):
                response = session.post(tls_idp.token_endpoint, data=GRANT, auth=DEMO,
                                        verify=str(tls_idp.ca_bundle), timeout=5)
                assert response.status_code == 200, response.text
    finally:
        for sock in socks:
            sock.close()


def test_early_answers_and_dropped_connections_over_tls(tls_idp):
    # 431 and 413 close with a lingering close after close_notify; the answer arrives whole.
    big = requests.get(tls_idp.jwks_uri, headers={"X-Big": "a" * 40_000},
                       verify=str(tls_idp.ca_bundle), timeout=5)
    assert big.status_code == 431 and big.json()["error"] == "invalid_request"
    body = requests.post(tls_idp.token_endpoint, data="x" * 200_000, auth=DEMO, timeout=5,
                         verify=str(tls_idp.ca_bundle),
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert body.status_code == 413
    # The lab's drop fault closes the socket under the TLS connection.
    tls_idp.fail_next(kind="drop")
    with pytest.raises(requests.ConnectionError):
        _token(tls_idp)
    assert _token(tls_idp).status_code == 200


def test_a_large_answer_to_a_slow_reader_arrives_whole(tmp_path):
    # 8 MiB is more than the kernel buffers: the channel holds ciphertext the socket has not
    # taken, takes no more plaintext meanwhile, and closes (Connection: close) only when all
    # of it is sent.
    payload = hashlib.shake_256(b"m2mauth").digest(8 * 1024 * 1024)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(len(payload)))])
        return [payload]

    tls = load_server_tls(ServerSettings(tls=True, tls_dir=tmp_path))
    server, _ = bind_app("127.0.0.1", 0, lambda _port: app, tls=tls.context)
    channels = server._server.active_channels
    filled = threading.Event()

    def tick() -> None:  # on the server's event loop, after each poll
        if any(c._pending for c in list(channels.values())):
            filled.set()

    with BackgroundServer(server, tick=tick) as background:
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.settimeout(10)
        raw.connect(("127.0.0.1", background.port))
        with client_context(tls.ca_bundle).wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert filled.wait(timeout=10), "the socket never filled up"
            received = bytearray()
            while chunk := sock.recv(65536):
                received += chunk
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert len(body) == len(payload) and body == payload


# -- the pytest plugin --------------------------------------------------------------------------


def test_the_plugin_starts_a_tls_issuer_and_hands_out_its_ca_bundle(pytester, monkeypatch):
    for name in ("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTEST_PLUGINS", "PYTEST_XDIST_WORKER",
                 "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)
    pytester.makeconftest("""
        import pytest


        @pytest.fixture(scope="session")
        def m2mauth_tls():
            return True
    """)
    pytester.makepyfile(test_tls_user=textwrap.dedent("""
        import httpx
        import requests

        from m2mauth.client import TokenValidator


        def test_the_session_issuer_speaks_https(idp):
            assert idp.issuer.startswith("https://127.0.0.1:")
            assert idp.ca_bundle.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
            token = requests.post(idp.token_endpoint, auth=("demo-client", "demo-secret"),
                                  data={"grant_type": "client_credentials"},
                                  verify=str(idp.ca_bundle), timeout=5).json()["access_token"]
            validator = TokenValidator(idp.issuer, "api://default",
                                       session=idp.requests_session())
            assert validator.validate(token).client_id == "demo-client"

        def test_idp_factory_tls_has_its_own_ca(idp, idp_factory):
            other = idp_factory(tls=True)
            assert other.ca_bundle != idp.ca_bundle
            response = httpx.get(other.jwks_uri, verify=other.ssl_context(), timeout=5)
            assert response.status_code == 200
            plain = idp_factory()
            assert plain.issuer.startswith("http://") and plain.ca_bundle is None
    """))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_a_tls_identity_provider_removes_its_throwaway_ca_when_it_stops():
    idp = IdentityProvider.start(tls=True)
    directory = idp.ca_bundle.parent
    assert (directory / CA_KEY_FILE).exists()
    assert datetime.datetime.now(datetime.timezone.utc) < idp.tls.not_after
    idp.stop()
    assert not directory.exists()


def test_further_issuers_on_a_tls_port_are_https_and_share_its_ca():
    with IdentityProvider.start(ServerSettings(issuers={"a": {}}), tls=True) as idp:
        ca = str(idp.ca_bundle)
        further = idp.issuers["a"]
        assert further.issuer == idp.issuer + "/a" and further.ca_bundle == idp.ca_bundle
        metadata = requests.get(further.metadata_url, verify=ca, timeout=5).json()
        assert metadata["issuer"] == further.issuer
        response = requests.post(metadata["token_endpoint"], data=GRANT, auth=DEMO, verify=ca,
                                 timeout=5)
        assert response.status_code == 200, response.text
        assert idp.add_issuer("b").issuer.startswith("https://")
