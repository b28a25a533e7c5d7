"""The core and the lab as separate pieces: the core alone (``--no-lab``, ``lab = false``,
``M2MAUTH_LAB=false``), the core never importing the lab, ``create_app()`` loading settings
like ``serve``, the admin API's peer-address guard, ``Lab`` as a Flask extension, minting
unusual tokens, and the lab's faults and request log as request hooks (each request recorded
exactly once, in order)."""

from __future__ import annotations

import ast
import base64
import json
import os
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jwt
import pytest
import requests
from click.testing import CliRunner

from m2mauth.client import InvalidTokenError, TokenValidator
from m2mauth.server import Clock, Lab, ServerSettings, create_app, create_core_app
from m2mauth.server.cli import main

SECRET = "s3cret-for-tests"  # conftest's shared secret for its session clients
GRANT = {"grant_type": "client_credentials"}
DEMO = ("demo-client", "demo-secret")
SERVER_DIR = Path(__file__).resolve().parent.parent / "server"
ADMIN_TOKEN = "an-admin-token-of-some-length"


@pytest.fixture
def clean_env(monkeypatch):
    """No M2MAUTH_* variable from the outer environment reaches the settings."""
    for name in list(os.environ):
        if name.startswith("M2MAUTH_"):
            monkeypatch.delenv(name)
    return monkeypatch


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("M2MAUTH_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def token_via(client, auth=DEMO, **kwargs):
    return client.post("/token", data=GRANT, auth=auth, **kwargs)


def assert_json_404(response) -> None:
    assert response.status_code == 404, response.get_data(as_text=True)
    assert response.headers["Content-Type"].startswith("application/json")
    assert "<html" not in response.get_data(as_text=True).lower()
    assert response.get_json()["error"] == "invalid_request"


def _part(segment: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def unverified(token: str) -> tuple[dict, dict]:
    """Header and claims, read by hand (PyJWT refuses to read a token with an unknown crit)."""
    head, payload, _ = token.split(".")
    return _part(head), _part(payload)


# -- the core alone: --no-lab, lab = false, M2MAUTH_LAB=false ------------------------------


def assert_core_only(app) -> None:
    """``app`` is the authorization server without the lab."""
    assert "m2mauth_lab" not in app.extensions
    hooks = [f for funcs in (*app.before_request_funcs.values(),
                             *app.after_request_funcs.values()) for f in funcs]
    assert not [f for f in hooks if type(getattr(f, "__self__", None)).__module__.startswith(
        "m2mauth.server.lab")]
    client = app.test_client()
    for method, path, body in (("GET", "/admin", None), ("GET", "/admin/clients", None),
                               ("POST", "/admin/clients", {"client_id": "x"}),
                               ("POST", "/admin/faults", {"n": 1}),
                               ("POST", "/admin/clock", {"freeze": True}),
                               ("POST", "/admin/reset", None)):
        assert_json_404(client.open(path, method=method, json=body))
    issuer = app.extensions["m2mauth"]
    response = token_via(client)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert "expires_in" in response.get_json()
    # No request log: the token request went nowhere.
    assert issuer.store.records("token") == [] and issuer.store.records("jwks") == []
    assert client.get("/jwks.json").status_code == 200
    assert issuer.store.records("jwks") == []
    # Real time: the core's clock, never moved.
    assert type(issuer.clock) is Clock
    assert issuer.clock.offset == 0 and issuer.clock.frozen is False


@pytest.fixture
def captured_serve(monkeypatch, clean_env):
    """``m2mauth serve`` that returns instead of serving; the app it would serve is kept."""
    from m2mauth.server.serving import HTTPServer

    apps = []

    def serve_forever(self):
        apps.append(self.app)
        self.close()

    monkeypatch.setattr(HTTPServer, "serve_forever", serve_forever)

    def run(*args: str, env: dict | None = None):
        result = CliRunner().invoke(main, ["serve", "--port", "0", *args], env=env)
        assert result.exit_code == 0, result.output
        (app,) = apps[-1:]
        return result, app

    return run


def test_serve_no_lab_serves_the_core_alone(captured_serve):
    result, app = captured_serve("--no-lab")
    assert_core_only(app)
    assert "lab       off" in result.output
    assert "admin     " not in result.output


def test_serve_with_the_lab_is_the_default(captured_serve):
    result, app = captured_serve()
    assert "m2mauth_lab" in app.extensions
    assert "lab       off" not in result.output
    assert "admin     http://127.0.0.1:" in result.output


def test_lab_false_in_a_config_file(captured_serve, tmp_path):
    config = tmp_path / "m2mauth.toml"
    config.write_text("lab = false\n")
    result, app = captured_serve("--config", str(config))
    assert_core_only(app)
    assert "lab       off" in result.output


def test_lab_false_in_the_environment(captured_serve):
    result, app = captured_serve(env={"M2MAUTH_LAB": "false"})
    assert_core_only(app)
    assert "lab       off" in result.output


def test_create_app_without_arguments_follows_lab_false(clean_env, tmp_path):
    clean_env.setenv("M2MAUTH_LAB", "false")
    assert_core_only(create_app())
    clean_env.delenv("M2MAUTH_LAB")
    config = tmp_path / "m2mauth.toml"
    config.write_text("lab = false\n")
    clean_env.setenv("M2MAUTH_CONFIG", str(config))
    assert_core_only(create_app())
    assert_core_only(create_app(ServerSettings(lab=False)))


def test_serve_no_lab_subprocess(cli_process):
    server = cli_process("serve", "--no-lab", "--port", "0")
    assert "lab       off (--no-lab)" in server.text, server.text
    assert "admin     " not in server.text
    issuer = server.field("issuer")
    assert issuer.startswith("http://127.0.0.1:") and not issuer.endswith(":0")
    for method, path in (("GET", "/admin"), ("GET", "/admin/clients"),
                         ("POST", "/admin/faults"), ("POST", "/admin/reset")):
        r = requests.request(method, issuer + path, json={"n": 1} if method == "POST"
                             else None, timeout=5)
        assert r.status_code == 404, (path, r.text)
        assert r.headers["Content-Type"].startswith("application/json")
        assert "<html" not in r.text.lower()
        assert r.json()["error"] == "invalid_request"
    r = requests.post(issuer + "/token", data=GRANT, auth=DEMO, timeout=5)
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    key = jwt.PyJWKClient(issuer + "/jwks.json").get_signing_key_from_jwt(token)
    claims = jwt.decode(token, key, algorithms=["RS256"], audience="api://default",
                        issuer=issuer)
    assert claims["client_id"] == "demo-client"
    err = server.stop()
    assert "token request client_id='demo-client'" in err
    assert "demo-secret" not in err


# -- the core never imports the lab ---------------------------------------------------------


def test_the_core_app_runs_without_importing_the_lab():
    code = textwrap.dedent("""
        import sys
        import m2mauth.server.app as core
        from m2mauth.server.settings import ServerSettings

        app = core.create_core_app(ServerSettings())
        client = app.test_client()
        r = client.post("/token", data={"grant_type": "client_credentials"},
                        auth=("demo-client", "demo-secret"))
        assert r.status_code == 200, r.get_data(as_text=True)
        assert client.get("/jwks.json").status_code == 200
        assert client.get("/admin").status_code == 404
        # create_app with the lab off does not import it either
        from m2mauth.server import create_app
        off = create_app(ServerSettings(lab=False))
        assert off.test_client().post("/token", data={"grant_type": "client_credentials"},
                                      auth=("demo-client", "demo-secret")).status_code == 200
        lab = sorted(n for n in sys.modules if n.startswith("m2mauth.server.lab"))
        assert not lab, lab
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def _package_of(path: Path) -> str:
    parts = path.relative_to(SERVER_DIR).parent.parts
    return ".".join(("m2mauth", "server", *parts))


def _is_lab(module: str) -> bool:
    return module == "m2mauth.server.lab" or module.startswith("m2mauth.server.lab.")


def _lab_imports(path: Path) -> list[str]:
    """Every import of the lab in one module under server/ (relative or absolute), and any
    string naming it (``importlib.import_module``)."""
    package = _package_of(path).split(".")
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if _is_lab(a.name)]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names = [module] if node.module else []
            names += [f"{module}.{a.name}" for a in node.names]
            found += [n for n in names if _is_lab(n)][:1]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                _is_lab(node.value) or node.value.startswith(".lab")):
            found.append(node.value)
    return found


def test_no_core_module_imports_the_lab():
    allowed = {SERVER_DIR / "__init__.py", SERVER_DIR / "cli.py"}
    core = sorted(p for p in SERVER_DIR.glob("*.py") if p not in allowed)
    assert len(core) >= 14  # settings, store, clock, keys, clients ... app, views
    offenders = {p.name: found for p in core if (found := _lab_imports(p))}
    assert offenders == {}
    # The check itself sees the lab imports that are allowed.
    assert _lab_imports(SERVER_DIR / "__init__.py")
    assert _lab_imports(SERVER_DIR / "lab" / "idp.py") == [
        "m2mauth.server.lab.admin", "m2mauth.server.lab.controls", "m2mauth.server.lab.extension"]


# -- create_app() loads settings like serve -------------------------------------------------


def test_create_app_without_settings_reads_the_environment(clean_env):
    clean_env.setenv("M2MAUTH_ISSUER", "https://idp.example.test")
    clean_env.setenv("M2MAUTH_TOKEN_LIFETIME", "120")
    app = create_app()
    assert "m2mauth_lab" in app.extensions  # the lab, unless lab = false
    client = app.test_client()
    meta = client.get("/.well-known/oauth-authorization-server").get_json()
    assert meta["issuer"] == "https://idp.example.test"
    assert meta["token_endpoint"] == "https://idp.example.test/token"
    body = token_via(client).get_json()
    assert body["expires_in"] == 120
    _, claims = unverified(body["access_token"])
    assert claims["iss"] == "https://idp.example.test"


def test_create_app_without_settings_reads_the_config_file(clean_env, tmp_path):
    config = tmp_path / "idp.toml"
    config.write_text(textwrap.dedent("""
        issuer = "https://from-file.test"
        algorithm = "ES256"
        [[clients]]
        client_id = "file-client"
        client_secret = "file-client-secret"
        scopes = ["orders:read"]
    """))
    clean_env.setenv("M2MAUTH_CONFIG", str(config))
    client = create_app().test_client()
    response = token_via(client, auth=("file-client", "file-client-secret"))
    assert response.status_code == 200, response.get_data(as_text=True)
    header, claims = unverified(response.get_json()["access_token"])
    assert header["alg"] == "ES256"
    assert (claims["iss"], claims["scope"]) == ("https://from-file.test", "orders:read")
    assert token_via(client).status_code == 401  # the file's clients replace the demo client
    # The environment wins over the file, as for `m2mauth serve`.
    clean_env.setenv("M2MAUTH_ISSUER", "https://from-env.test")
    _, claims = unverified(token_via(create_app().test_client(), auth=(
        "file-client", "file-client-secret")).get_json()["access_token"])
    assert claims["iss"] == "https://from-env.test"


def test_create_app_with_explicit_settings_ignores_the_environment(clean_env):
    clean_env.setenv("M2MAUTH_ISSUER", "https://from-env.test")
    clean_env.setenv("M2MAUTH_LAB", "false")
    app = create_app(ServerSettings(issuer="https://explicit.test"))
    assert "m2mauth_lab" in app.extensions
    _, claims = unverified(token_via(app.test_client()).get_json()["access_token"])
    assert claims["iss"] == "https://explicit.test"


# -- the admin API's guard: the peer address ------------------------------------------------

OUTSIDERS = ["203.0.113.9", "::ffff:203.0.113.9", "10.0.0.1"]  # REMOTE_ADDR strings only


def _state(app) -> tuple:
    controls = app.extensions["m2mauth_lab"].controls
    return ([c.client_id for c in controls.clients()], controls.faults(), controls.keys(),
            controls.clock_status()["frozen"])


@pytest.mark.parametrize("peer", OUTSIDERS)
def test_tokenless_admin_from_a_non_loopback_peer_is_refused(peer):
    app = create_app(ServerSettings())
    controls = app.extensions["m2mauth_lab"].controls
    controls.fail_next(status=500)  # what /admin/reset would clear
    before = _state(app)
    client = app.test_client()
    for method, path, body in (("GET", "/admin/clients", None), ("GET", "/admin", None),
                               ("POST", "/admin/clients", {"client_id": "intruder"}),
                               ("POST", "/admin/reset", None),
                               ("POST", "/admin/clock", {"freeze": True}),
                               ("DELETE", "/admin/clients/demo-client", None)):
        response = client.open(path, method=method, json=body,
                               environ_base={"REMOTE_ADDR": peer})
        assert response.status_code == 403, (method, path, response.get_data(as_text=True))
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.get_json()["error"] == "access_denied"
        assert "loopback" in response.get_json()["error_description"]
    assert _state(app) == before
    # The OAuth endpoints answer that peer as any other.
    assert token_via(client, environ_base={"REMOTE_ADDR": peer}).status_code == 500  # the fault
    assert token_via(client, environ_base={"REMOTE_ADDR": peer}).status_code == 200


@pytest.mark.parametrize("peer", OUTSIDERS)
def test_admin_token_admits_a_non_loopback_peer(peer):
    app = create_app(ServerSettings(admin_token=ADMIN_TOKEN))
    client = app.test_client()
    good = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    where = {"REMOTE_ADDR": peer}
    assert client.get("/admin/clients", environ_base=where).status_code == 401
    assert client.get("/admin/clients", headers=good, environ_base=where).status_code == 200
    added = client.post("/admin/clients", json={"client_id": "remote"}, headers=good,
                        environ_base=where)
    assert added.status_code == 201, added.get_data(as_text=True)
    assert client.post("/admin/reset", headers=good, environ_base=where).status_code == 200
    assert "remote" not in [c.client_id for c in
                            app.extensions["m2mauth_lab"].controls.clients()]


@pytest.mark.parametrize("peer", ["127.0.0.1", "::1"])
def test_tokenless_admin_from_loopback_peers(peer):
    app = create_app(ServerSettings())
    client = app.test_client()
    where = {"REMOTE_ADDR": peer}
    assert client.get("/admin/clients", environ_base=where).status_code == 200
    assert client.post("/admin/clients", json={"client_id": "local"},
                       environ_base=where).status_code == 201
    assert client.post("/admin/reset", environ_base=where).status_code == 200


def test_tokenless_admin_with_no_peer_address_is_refused():
    app = create_app(ServerSettings())
    for peer in ("", "localhost", "::ffff:127.0.0.1", "127.0.0.1, 203.0.113.9"):
        response = app.test_client().get("/admin/clients", environ_base={"REMOTE_ADDR": peer})
        assert response.status_code == 403, peer
    # A forwarding header is not the peer.
    response = app.test_client().get("/admin/clients", headers={"X-Forwarded-For": "127.0.0.1"},
                                     environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert response.status_code == 403


@pytest.mark.parametrize("header", [
    {"X-Forwarded-For": "203.0.113.9"}, {"Forwarded": "for=203.0.113.9;proto=https"},
    {"X-Real-IP": "203.0.113.9"}, {"X-Forwarded-For": "127.0.0.1"},
])
def test_tokenless_admin_through_a_local_proxy_is_refused(header):
    # A reverse proxy on the same host makes every peer 127.0.0.1; the client it forwards for
    # is anyone. Without an admin token, a forwarded request is refused.
    app = create_app(ServerSettings(issuer="https://idp.example.test"))
    before = _state(app)
    client = app.test_client()
    for method, path, body in (("GET", "/admin/clients", None),
                               ("POST", "/admin/clients", {"client_id": "intruder"}),
                               ("POST", "/admin/reset", None)):
        response = client.open(path, method=method, json=body, headers={
            **header, "Host": "idp.example.test"}, environ_base={"REMOTE_ADDR": "127.0.0.1"})
        assert response.status_code == 403, (path, response.get_data(as_text=True))
        assert response.get_json()["error"] == "access_denied"
        assert "proxy" in response.get_json()["error_description"]
    assert _state(app) == before
    # With an admin token, a forwarded request is fine.
    app = create_app(ServerSettings(admin_token=ADMIN_TOKEN))
    response = app.test_client().get("/admin/clients", headers={
        **header, "Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert response.status_code == 200


def test_tokenless_admin_through_a_proxy_over_http(idp):
    response = requests.get(idp.admin_url + "/clients", timeout=5,
                            headers={"X-Forwarded-For": "198.51.100.7"})
    assert response.status_code == 403
    assert requests.get(idp.admin_url + "/clients", timeout=5).status_code == 200


# -- Lab as a Flask extension --------------------------------------------------------------


def test_lab_attached_to_a_core_app():
    app = create_core_app(ServerSettings())
    assert "m2mauth_lab" not in app.extensions
    Lab(app)
    state = app.extensions["m2mauth_lab"]
    assert state.controls.core is app.extensions["m2mauth"]
    client = app.test_client()
    assert client.get("/admin").status_code == 200
    state.controls.fail_next(status=503, retry_after=2)
    refused = token_via(client)
    assert (refused.status_code, refused.headers["Retry-After"]) == (503, "2")
    assert token_via(client).status_code == 200
    assert [(r.status, r.fault) for r in state.controls.token_requests] == [
        (503, "error"), (200, None)]


def test_one_lab_for_two_apps_keeps_them_apart():
    lab = Lab()
    app1, app2 = create_core_app(ServerSettings()), create_core_app(ServerSettings())
    one, two = lab.init_app(app1), lab.init_app(app2)
    assert one is app1.extensions["m2mauth_lab"] and two is app2.extensions["m2mauth_lab"]
    assert one.controls is not two.controls and one.store is not two.store
    c1, c2 = app1.test_client(), app2.test_client()
    one.controls.fail_next(2, status=500)
    one.controls.fail_next(endpoint="jwks", kind="malformed")
    assert token_via(c2).status_code == 200
    assert c2.get("/jwks.json").get_json()["keys"]
    assert [f.remaining for f in one.controls.faults()] == [2, 1]
    assert two.controls.faults() == []
    assert token_via(c1).status_code == 500
    assert c1.get("/jwks.json").get_data() == b'{"keys": [{"kty": '
    assert [(r.status, r.fault) for r in one.controls.token_requests] == [(500, "error")]
    assert [(r.status, r.fault) for r in two.controls.token_requests] == [(200, None)]
    assert [r.fault for r in one.controls.jwks_requests] == ["malformed"]
    assert [r.fault for r in two.controls.jwks_requests] == [None]
    two.controls.clock.freeze(1_700_000_000)
    assert not one.controls.clock.frozen
    _, claims = unverified(token_via(c2).get_json()["access_token"])
    assert claims["iat"] == 1_700_000_000


@pytest.mark.parametrize("admin_api", [True, False])
def test_a_second_lab_on_one_app_is_refused_and_changes_nothing(admin_api):
    # A second Lab on an app used to add a second set of hooks: every token request was
    # logged twice and one request could take two faults.
    app = create_app(ServerSettings(admin_api=admin_api))
    state = app.extensions["m2mauth_lab"]
    with pytest.raises(RuntimeError, match="already has a lab"):
        Lab(app)
    with pytest.raises(RuntimeError, match="already has a lab"):
        Lab().init_app(app)
    assert app.extensions["m2mauth_lab"] is state
    client = app.test_client()
    assert token_via(client).status_code == 200
    assert len(state.controls.token_requests) == 1
    state.controls.fail_next(kind="delay", delay=0.01)
    state.controls.fail_next(kind="no_expires_in")
    assert "expires_in" in token_via(client).get_json()  # the delay only
    assert [f.kind for f in state.controls.faults()] == ["no_expires_in"]
    assert [r.fault for r in state.controls.token_requests] == [None, "delay"]


# -- minting unusual tokens -----------------------------------------------------------------


def _signature_verifies(token: str, jwks: dict) -> bool:
    """The JWS signature alone, with PyJWT's algorithm objects (no header checks)."""
    head, payload, signature = token.split(".")
    header = _part(head)
    (jwk,) = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
    key = jwt.PyJWK(jwk, algorithm=header["alg"])
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    return key.Algorithm.verify(f"{head}.{payload}".encode(), key.key, raw)


@pytest.mark.parametrize("headers", [
    {"crit": ["x-made-up"], "x-made-up": 1},
    {"crit": ["exp"]},  # names a header parameter that is absent
    {"crit": ["x-a", "x-b"], "x-a": "1", "x-b": [2]},
])
@pytest.mark.parametrize("client_id", ["secret-client", "alg-es256", "alg-eddsa"])
def test_minted_crit_tokens_are_signed_and_refused_by_the_validator(idp, headers, client_id):
    token = idp.issue_token(client_id, headers=headers)
    header, claims = unverified(token)
    assert {k: header[k] for k in headers} == headers
    assert header["typ"] == "at+jwt" and header["kid"]
    jwks = requests.get(idp.jwks_uri, timeout=5).json()
    assert _signature_verifies(token, jwks)
    assert not _signature_verifies(idp.tampered(token), jwks)
    # PyJWT checks crit itself, and refuses it too.
    with pytest.raises(jwt.InvalidTokenError, match="critical extension"):
        jwt.decode(token, jwt.PyJWK(jwks["keys"][0]), algorithms=["RS256", "ES256", "EdDSA"],
                   options={"verify_aud": False})
    validator = TokenValidator(idp.issuer, claims["aud"], jwks_uri=idp.jwks_uri,
                               clock=idp.clock.now)
    assert validator.validate(idp.issue_token(client_id)).client_id == client_id
    with pytest.raises(InvalidTokenError) as info:
        validator.validate(token)
    assert info.value.reason == "unsupported_crit"


def test_minted_crit_through_the_admin_api(idp):
    response = requests.post(idp.admin_url + "/tokens", timeout=5, json={
        "client_id": "secret-client", "headers": {"crit": ["x-made-up"], "x-made-up": True}})
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    assert unverified(token)[0]["crit"] == ["x-made-up"]
    assert _signature_verifies(token, requests.get(idp.jwks_uri, timeout=5).json())


# -- faults as request hooks: each request recorded once, in order --------------------------


def fetch(idp, **kwargs) -> requests.Response:
    return requests.post(idp.token_endpoint, data=GRANT, auth=("secret-client", SECRET),
                         timeout=5, **kwargs)


def jwks_fetch(idp) -> requests.Response:
    return requests.get(idp.jwks_uri, timeout=5)


def test_faults_and_normal_requests_interleaved_are_each_recorded_once(idp):
    seen: list[tuple[str, object]] = []  # (endpoint, what the client saw), in order

    def call(endpoint, request):
        try:
            response = request(idp)
        except requests.ConnectionError:
            seen.append((endpoint, "dropped"))
            return None
        seen.append((endpoint, response.status_code))
        return response

    def token():
        return call("token", fetch)

    def keys():
        return call("jwks", jwks_fetch)

    first = token()
    keys()
    idp.fail_next(status=503, retry_after=3)
    refused = token()
    assert (refused.headers["Retry-After"], refused.json()["error"]) == (
        "3", "temporarily_unavailable")
    keys()  # a JWKS fetch does not take a token fault, nor the other way round
    idp.fail_next(endpoint="jwks", status=500)
    second = token()
    assert keys().status_code == 500
    idp.fail_next(delay=0.01)
    delayed = token()
    idp.fail_next(kind="drop")
    assert token() is None
    idp.fail_next(endpoint="jwks", kind="drop")
    assert keys() is None
    third = token()
    idp.fail_next(kind="malformed")
    with pytest.raises(ValueError):
        token().json()
    idp.fail_next(endpoint="jwks", kind="malformed")
    with pytest.raises(ValueError):
        keys().json()
    idp.fail_next(kind="no_expires_in")
    bare = token()
    assert "expires_in" not in bare.json()
    idp.fail_next(endpoint="jwks", delay=0.01)
    assert keys().json()["keys"]
    last = token()
    assert idp.faults() == []

    log = idp.token_requests
    assert [(r.status, r.fault, r.outcome) for r in log] == [
        (200, None, "issued"),
        (503, "error", "temporarily_unavailable"),
        (200, None, "issued"),
        (200, "delay", "issued"),
        (500, "drop", "drop"),  # the status that was never sent
        (200, None, "issued"),
        (200, "malformed", "malformed"),
        (200, "no_expires_in", "issued"),
        (200, None, "issued"),
    ]
    issued = [first, second, delayed, third, bare, last]
    assert [r.jti for r in log if r.jti] == [unverified(r.json()["access_token"])[1]["jti"]
                                            for r in issued]
    assert all(r.client_id == "secret-client" for r in log)
    assert all(r.auth_method == "client_secret_basic" for r in log)
    assert [(r.status, r.fault) for r in idp.jwks_requests] == [
        (200, None), (200, None), (500, "error"), (500, "drop"), (200, "malformed"),
        (200, "delay")]
    assert len(log) == sum(1 for endpoint, _ in seen if endpoint == "token")
    assert len(idp.jwks_requests) == sum(1 for endpoint, _ in seen if endpoint == "jwks")
    assert [r.time for r in log] == sorted(r.time for r in log)


def test_a_fault_for_n_requests_is_taken_exactly_n_times_under_concurrency(idp):
    idp.fail_next(3, status=500)
    idp.fail_next(2, kind="no_expires_in")
    start = threading.Barrier(8, timeout=10)

    def one(_):
        start.wait()
        return fetch(idp)

    with ThreadPoolExecutor(8) as pool:
        responses = [f.result(timeout=30) for f in [pool.submit(one, i) for i in range(8)]]
        responses += [f.result(timeout=30) for f in [pool.submit(fetch, idp)
                                                     for _ in range(8)]]
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 13 + [500] * 3
    without = [r for r in responses if r.status_code == 200 and "expires_in" not in r.json()]
    # Faults run in queue order: the 3 errors, then 2 without expires_in.
    assert len(without) == 2
    log = idp.token_requests
    assert len(log) == 16
    assert sorted(str(r.fault) for r in log) == sorted(
        ["error"] * 3 + ["no_expires_in"] * 2 + ["None"] * 11)
    assert len({r.jti for r in log if r.jti}) == 13
    assert idp.faults() == []


def test_every_request_is_logged_once_under_concurrency(idp):
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(fetch, idp) for _ in range(24)]
        futures += [pool.submit(jwks_fetch, idp) for _ in range(12)]
        responses = [f.result(timeout=30) for f in futures]
    assert all(r.status_code == 200 for r in responses)
    jtis = [unverified(r.json()["access_token"])[1]["jti"] for r in responses[:24]]
    assert sorted(r.jti for r in idp.token_requests) == sorted(jtis)
    assert len(idp.jwks_requests) == 12


# -- attacks on the hooks: found while writing these tests ---------------------------------


@pytest.mark.parametrize("kind", ["error", "drop", "malformed", "no_expires_in", "delay"])
def test_options_requests_take_no_fault(idp, kind):
    # An OPTIONS request (a CORS preflight) is answered by Flask, not by the token endpoint:
    # it used to take the queued fault (a no_expires_in one made it a 500), and the next real
    # token request then went unspoiled, with nothing in the request log.
    idp.fail_next(kind=kind, **({"delay": 0.01} if kind == "delay" else {}))
    options = requests.options(idp.token_endpoint, timeout=5)
    assert options.status_code == 204
    assert "POST" in options.headers["Allow"]
    assert [f.kind for f in idp.faults()] == [kind]
    assert idp.token_requests == []
    idp.fail_next(endpoint="jwks", kind="malformed")
    assert requests.options(idp.jwks_uri, timeout=5).status_code == 204
    assert [f.kind for f in idp.faults()] == [kind, "malformed"]
    assert idp.jwks_requests == []


@pytest.mark.parametrize("kind", ["error", "malformed"])
def test_an_oversized_body_under_an_answering_fault_is_not_a_500(kind):
    # The lab wrote the record of a fault-answered request by reading the form, which raised
    # 413 inside after_request: the client got a 500 and the log had no entry.
    app = create_app(ServerSettings())
    controls = app.extensions["m2mauth_lab"].controls
    controls.fail_next(kind=kind)
    response = app.test_client().post("/token", data={**GRANT, "pad": "x" * 70_000},
                                      auth=DEMO)
    assert response.status_code == (503 if kind == "error" else 200)
    assert "<html" not in response.get_data(as_text=True).lower()
    (entry,) = controls.token_requests
    assert (entry.fault, entry.status, entry.client_id) == (kind, response.status_code,
                                                            "demo-client")
    assert entry.grant_type is None  # the body was not read


def test_an_oversized_body_is_413_and_recorded(idp):
    response = requests.post(idp.token_endpoint, data={**GRANT, "pad": "x" * 70_000},
                             auth=("secret-client", SECRET), timeout=5)
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "invalid_request"
    (entry,) = idp.token_requests
    assert (entry.status, entry.outcome, entry.client_id, entry.auth_method) == (
        413, "invalid_request", "secret-client", "client_secret_basic")
    assert fetch(idp).status_code == 200
    assert len(idp.token_requests) == 2


def test_an_oversized_chunked_body_is_413_not_truncated(idp):
    # Without Content-Length, werkzeug stops reading at max_body_bytes and returns what it
    # read: the request was processed on its first 64 KiB as if that were all of it.
    def body():
        yield b"grant_type=client_credentials&scope=read&pad="
        for _ in range(8):
            yield b"x" * 10_000

    with requests.Session() as session:
        response = session.post(idp.token_endpoint, data=body(), timeout=5,
                                auth=("secret-client", SECRET),
                                headers={"Content-Type": "application/x-www-form-urlencoded",
                                         "Connection": "close"})
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "invalid_request"
    (entry,) = idp.token_requests
    assert (entry.status, entry.outcome) == (413, "invalid_request")

    def small():
        yield b"grant_type=client_credentials"
        yield b"&scope=read"

    ok = requests.post(idp.token_endpoint, data=small(), auth=("secret-client", SECRET),
                       timeout=5, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert ok.status_code == 200, ok.text
    assert ok.json()["scope"] == "read"


@pytest.mark.parametrize("jwks", [
    {"keys": [{"kty": "RSA"}]},  # no n, e
    {"keys": ["not-a-key"]},
    {"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]},  # not on the curve
    {"keys": [{"kty": "magic"}]},
    {"keys": [{"kty": "EC", "crv": "P-999", "x": "AA", "y": "AA"}]},  # joserfc: KeyError
    {"keys": [{"kty": ["RSA"]}]},  # joserfc: TypeError
    {"keys": []},
])
def test_a_configured_client_with_an_unusable_jwks_is_a_config_error(jwks, tmp_path,
                                                                      captured_serve):
    # It used to start: then every assertion naming the client was a 500 from the token
    # endpoint, with no entry in the request log, and GET /admin/clients was a 500 too.
    from m2mauth.server import ClientSettings, ConfigError

    settings = ServerSettings(clients=[ClientSettings("pk", jwks=jwks)])
    with pytest.raises(ConfigError) as info:
        create_app(settings)
    assert info.value.key == "clients[0].jwks"
    config = tmp_path / "m2mauth.toml"
    config.write_text("[[clients]]\nclient_id = \"pk\"\njwks_file = \"pk.json\"\n")
    (tmp_path / "pk.json").write_text(json.dumps(jwks))
    result = CliRunner().invoke(main, ["serve", "--config", str(config), "--port", "0"])
    assert result.exit_code == 2, result.output
    assert f"{config}: clients[0].jwks:" in result.output
    assert "Traceback" not in result.output
    # The admin API: a 400 naming the field (KeyError and TypeError from joserfc were 500s).
    app = create_app(ServerSettings())
    response = app.test_client().post("/admin/clients", json={"client_id": "pk", "jwks": jwks})
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["field"] == "jwks"
    assert "pk" not in [c.client_id for c in app.extensions["m2mauth_lab"].controls.clients()]


def test_concurrent_admin_adds_of_one_client_id_register_it_once(idp):
    start = threading.Barrier(10, timeout=10)

    def add(i: int) -> requests.Response:
        start.wait()
        return requests.post(idp.admin_url + "/clients", timeout=10, json={
            "client_id": "raced", "client_secret": f"raced-secret-{i:04d}"})

    with ThreadPoolExecutor(10) as pool:
        responses = [f.result(timeout=30) for f in [pool.submit(add, i) for i in range(10)]]
    assert sorted(r.status_code for r in responses) == [201] + [400] * 9
    (winner,) = [r.json() for r in responses if r.status_code == 201]
    assert all(r.json()["field"] == "client_id" for r in responses if r.status_code == 400)
    assert [c.client_id for c in idp.clients()].count("raced") == 1
    ok = requests.post(idp.token_endpoint, data=GRANT, timeout=5,
                       auth=("raced", winner["client_secret"]))
    assert ok.status_code == 200, ok.text
