"""Issuers with paths and several issuers on one port, over real HTTP: each endpoint under
its issuer's path, metadata at both locations, isolation of clients, keys, clock, faults and
request logs, ``[issuers.NAME]`` tables, the admin API that adds issuers, and the handles."""

from __future__ import annotations

import socket
import textwrap

import pytest
import requests

from m2mauth.client import InvalidTokenError, TokenProvider, TokenValidator
from m2mauth.server import ConfigError, IdentityProvider, ServerSettings, create_app, load_settings
from m2mauth.server.lab import issuers as lab_issuers
from m2mauth.server.settings import RESERVED_ISSUER_NAMES, ClientSettings

FORM = {"grant_type": "client_credentials"}
DEMO = ("demo-client", "demo-secret")


def token(url: str, auth=DEMO, **form) -> requests.Response:
    return requests.post(url, data={**FORM, **form}, auth=auth, timeout=5)


@pytest.fixture
def two(idp_factory) -> IdentityProvider:
    """A root issuer with further issuers a (ES256, 60 s tokens) and b (own client only)."""
    return idp_factory(issuers={
        "a": {"algorithm": "ES256", "token_lifetime": 60},
        "b": {"clients": [ClientSettings("bee", client_secret="bee-secret-0123", scopes=("x",))]},
    })


# -- an issuer with a path --------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_issuer_with_a_path_serves_everything_under_it(cli_process):
    port = _free_port()
    issuer = f"http://127.0.0.1:{port}/default"
    proc = cli_process("serve", "--port", str(port), "--issuer", issuer)
    assert proc.field("issuer") == issuer
    assert proc.field("token") == issuer + "/token"
    base = f"http://127.0.0.1:{port}"
    inserted = requests.get(base + "/.well-known/oauth-authorization-server/default", timeout=5)
    appended = requests.get(issuer + "/.well-known/openid-configuration", timeout=5)
    assert inserted.status_code == appended.status_code == 200
    meta = inserted.json()
    assert meta == appended.json()
    assert meta["issuer"] == issuer
    assert meta["token_endpoint"] == issuer + "/token"
    assert meta["jwks_uri"] == issuer + "/jwks.json"
    answer = token(meta["token_endpoint"])
    assert answer.status_code == 200, answer.text
    assert requests.get(meta["jwks_uri"], timeout=5).json()["keys"]
    assert requests.get(issuer + "/admin/clock", timeout=5).status_code == 200
    # Nothing answers at the root any more, but the probes, which are the whole server's.
    assert token(base + "/token").status_code == 404
    assert requests.get(base + "/admin", timeout=5).status_code == 404
    assert requests.get(base + "/healthz", timeout=5).status_code == 200
    assert requests.get(base + "/readyz", timeout=5).status_code == 200
    # The client discovers it from the issuer alone (RFC 8414 section 3.1) and validates.
    provider = TokenProvider(issuer=issuer, client_id=DEMO[0], client_secret=DEMO[1],
                             scope="read")
    claims = TokenValidator(issuer, audience="api://default").validate(provider.get_token())
    assert claims.claims["iss"] == issuer
    # The playground lives under the issuer's path and names its files there.
    page = requests.get(issuer + "/playground", timeout=5)
    assert page.status_code == 200
    assert '"/default/playground/static/playground.js"' in page.text
    assert requests.get(issuer + "/playground/static/playground.js", timeout=5).status_code == 200


# -- several issuers on one port --------------------------------------------------------


def test_each_issuer_has_its_own_endpoints_and_metadata(two):
    a, b = two.issuers["a"], two.issuers["b"]
    assert a.issuer == two.issuer + "/a" and b.issuer == two.issuer + "/b"
    for handle in (two, a, b):
        meta = requests.get(two.url + "/.well-known/oauth-authorization-server"
                            + handle.issuer.removeprefix(two.issuer), timeout=5).json()
        assert meta["issuer"] == handle.issuer
        assert meta["token_endpoint"] == handle.token_endpoint
        assert requests.get(handle.issuer + "/.well-known/openid-configuration",
                            timeout=5).json() == meta
    issued = token(a.token_endpoint).json()
    assert issued["expires_in"] == 60  # a's own lifetime
    validator = TokenValidator(a.issuer, audience="api://default")
    assert validator.validate(issued["access_token"]).claims["iss"] == a.issuer


def test_issuers_never_see_each_others_clients(two):
    a, b = two.issuers["a"], two.issuers["b"]
    assert token(b.token_endpoint, auth=("bee", "bee-secret-0123")).status_code == 200
    assert token(a.token_endpoint, auth=("bee", "bee-secret-0123")).status_code == 401
    assert token(two.token_endpoint, auth=("bee", "bee-secret-0123")).status_code == 401
    assert token(b.token_endpoint).status_code == 401  # b declared its clients: no demo one
    added = a.add_client("only-a", client_secret="only-a-secret-01", scopes=["read"])
    assert token(a.token_endpoint, auth=(added.client_id, "only-a-secret-01")).status_code == 200
    for other in (two, b):
        assert token(other.token_endpoint,
                     auth=(added.client_id, "only-a-secret-01")).status_code == 401


def test_issuers_never_share_keys(two):
    a = two.issuers["a"]
    kids = {name: {k["kid"] for k in requests.get(h.jwks_uri, timeout=5).json()["keys"]}
            for name, h in (("root", two), ("a", a), ("b", two.issuers["b"]))}
    assert not kids["root"] & kids["a"] and not kids["a"] & kids["b"]
    assert not kids["root"] & kids["b"]
    from_a = token(a.token_endpoint).json()["access_token"]
    # Given the root issuer's keys for a's tokens, a validator finds none that fits.
    wrong = TokenValidator(a.issuer, audience="api://default", jwks_uri=two.jwks_uri)
    with pytest.raises(InvalidTokenError) as caught:
        wrong.validate(from_a)
    assert caught.value.reason == "unknown_key", caught.value
    rotated = a.rotate_key()
    assert rotated in {k["kid"] for k in a.jwks["keys"]}
    assert rotated not in {k["kid"] for k in two.jwks["keys"]}


def test_issuers_never_take_the_servers_keys_dir(idp_factory, tmp_path):
    # The server's keys_dir holds the root issuer's private keys: a table (or an added
    # issuer) that only says "no ephemeral keys" must not sign with them, or the holder of
    # its own admin token mints tokens the root's JWKS verifies (/admin/tokens sets any iss).
    from m2mauth.server.keys import generate_key_files

    generate_key_files(tmp_path / "keys", ["ES256"])
    server = idp_factory(ServerSettings(
        keys_dir=tmp_path / "keys", algorithm="ES256",
        issuers={"t": {"ephemeral_keys": False, "admin_token": "t-admin-token-0123"}}))
    added = requests.post(server.admin_url + "/issuers", json={
        "name": "x", "ephemeral_keys": False}, timeout=10)
    assert added.status_code == 201, added.text

    def kids(url: str) -> set[str]:
        return {k["kid"] for k in requests.get(url, timeout=5).json()["keys"]}

    root = kids(server.jwks_uri)
    assert not root & kids(server.issuer + "/t/jwks.json")
    assert not root & kids(server.issuer + "/x/jwks.json")
    # Without a keys_dir of their own they sign with the shipped public test keys.
    assert server.issuers["t"].settings.keys_dir is None
    assert server.issuers["t"].settings.uses_shipped_keys
    forged = requests.post(server.issuer + "/t/admin/tokens", timeout=5, json={
        "client_id": "demo-client", "claims": {"iss": server.issuer}},
        headers={"Authorization": "Bearer t-admin-token-0123"}).json()["access_token"]
    with pytest.raises(InvalidTokenError):
        TokenValidator(server.issuer, audience="api://default").validate(forged)


def test_issuers_have_their_own_clock_faults_and_request_log(two):
    a, b = two.issuers["a"], two.issuers["b"]
    a.clock.freeze(at=1_000_000)
    assert a.clock.now() == 1_000_000
    assert abs(b.clock.now() - two.clock.now()) < 60 and two.clock.now() > 1_700_000_000
    issued = token(a.token_endpoint).json()["access_token"]
    claims = TokenValidator(a.issuer, audience="api://default",
                            clock=a.clock.now).validate(issued).claims
    assert claims["iat"] == 1_000_000
    a.fail_next(status=503)
    assert token(two.token_endpoint).status_code == 200
    assert token(b.token_endpoint, auth=("bee", "bee-secret-0123")).status_code == 200
    assert token(a.token_endpoint).status_code == 503
    assert token(a.token_endpoint).status_code == 200  # the fault fired once, at a
    assert [r.status for r in a.token_requests] == [200, 503, 200]
    assert [r.status for r in b.token_requests] == [200]
    assert [r.status for r in two.token_requests] == [200]


def test_reset_of_the_root_resets_every_issuer(two):
    a = two.issuers["a"]
    a.add_client("temp-client", client_secret="temp-secret-0123")
    a.clock.advance(3600)
    two.add_issuer("c", algorithm="ES256")
    assert token(two.issuer + "/c/token").status_code == 200
    two.reset()
    assert "c" not in two.issuers
    assert token(two.issuer + "/c/token").status_code == 404
    assert "temp-client" not in [c.client_id for c in a.clients()]
    assert abs(a.clock.now() - two.clock.now()) < 60
    # A further issuer's own reset is its own.
    b = two.issuers["b"]
    b.add_client("b-temp", client_secret="b-temp-secret-01")
    a.reset()
    assert "b-temp" in [c.client_id for c in b.clients()]


def test_unknown_names_are_not_created_on_first_use(two):
    answer = token(two.issuer + "/nobody/token")
    assert answer.status_code == 404
    body = answer.json()
    assert body["error"] == "invalid_request"
    assert "No issuer 'nobody'" in body["error_description"]
    assert "/a, /b" in body["error_description"]
    assert "nobody" not in two.issuers
    assert requests.get(two.url + "/.well-known/oauth-authorization-server/nobody",
                        timeout=5).status_code == 404


def test_readyz_answers_for_every_issuer(two):
    assert requests.get(two.url + "/readyz", timeout=5).json() == {"status": "ready",
                                                                   "store": "memory"}
    # The probes are the server's, outside any issuer's path.
    assert requests.get(two.issuer + "/a/readyz", timeout=5).status_code == 404


# -- the admin API ----------------------------------------------------------------------


def test_admin_api_adds_lists_and_removes_issuers(two):
    admin = two.admin_url + "/issuers"
    listed = requests.get(admin, timeout=5).json()["issuers"]
    assert [(i["name"], i["declared"]) for i in listed] == [("a", True), ("b", True)]
    created = requests.post(admin, json={
        "name": "svc", "algorithm": "ES256", "token_lifetime": 120,
        "clients": [{"client_id": "svc-client", "client_secret": "svc-secret-0123",
                     "scopes": ["orders:read"]}],
    }, timeout=10)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["issuer"] == two.issuer + "/svc"
    assert body["token_endpoint"] == two.issuer + "/svc/token"
    assert body["clients"] == ["svc-client"]
    assert "svc-secret" not in created.text
    issued = token(body["token_endpoint"], auth=("svc-client", "svc-secret-0123"))
    assert issued.status_code == 200 and issued.json()["expires_in"] == 120
    # It has an admin API of its own, which manages only itself.
    own = body["admin"]
    assert requests.get(own + "/clock", timeout=5).status_code == 200
    refused = requests.get(own + "/issuers", timeout=5)
    assert refused.status_code == 404 and "root issuer" in refused.json()["error_description"]
    assert [i["name"] for i in requests.get(admin, timeout=5).json()["issuers"]] == [
        "a", "b", "svc"]
    again = requests.post(admin, json={"name": "svc"}, timeout=5)
    assert again.status_code == 400 and again.json()["field"] == "name"
    assert requests.delete(admin + "/svc", timeout=5).json() == {"removed": "svc"}
    assert token(body["token_endpoint"]).status_code == 404
    declared = requests.delete(admin + "/a", timeout=5)
    assert declared.status_code == 400 and "declared" in declared.json()["error_description"]
    assert requests.delete(admin + "/nobody", timeout=5).status_code == 400


@pytest.mark.parametrize(("body", "field", "why"), [
    ({"name": "token"}, "name", "taken by the root issuer"),
    ({"name": "a/b"}, "name", "letters, digits"),
    ({"name": ""}, "name", "letters, digits"),
    ({"name": "x", "port": 1}, "port", "unknown field"),
    ({"name": "x", "keys_dir": "/etc"}, "keys_dir", "unknown field"),
    ({"name": "x", "token_lifetime": 0}, "token_lifetime", "positive"),
    ({"name": "x", "algorithm": "HS256"}, "algorithm", "RS256"),
    ({"name": "x", "clients": [{"client_id": "c"}]}, "clients[0]", "no credentials"),
    ({"name": "x", "clients": [{"client_id": "c", "jwks_file": "/etc/passwd"}]}, "clients",
     "jwks_file"),
    ({"name": "x", "admin_token": "short"}, "admin_token", "16 characters"),
])
def test_admin_api_refuses_bad_issuers_and_changes_nothing(two, body, field, why):
    answer = requests.post(two.admin_url + "/issuers", json=body, timeout=5)
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == field
    assert why in answer.json()["error_description"]
    assert "short" not in answer.text or field != "admin_token"
    assert sorted(two.issuers) == ["a", "b"]


def test_issuers_added_at_run_time_are_bounded(two, monkeypatch):
    monkeypatch.setattr(lab_issuers, "MAX_ADDED_ISSUERS", 2)
    two.add_issuer("one", algorithm="ES256")
    two.add_issuer("two", algorithm="ES256")
    answer = requests.post(two.admin_url + "/issuers", json={"name": "three"}, timeout=5)
    assert answer.status_code == 400 and "remove one first" in answer.text
    two.remove_issuer("one")
    two.add_issuer("three", algorithm="ES256")


# -- configuration ----------------------------------------------------------------------


def test_issuers_tables_in_toml(tmp_path):
    (tmp_path / "bee.json").write_text('{"kty": "EC", "crv": "P-256", '
                                       '"x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", '
                                       '"y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}')
    config = tmp_path / "m2mauth.toml"
    config.write_text(textwrap.dedent("""
        [issuers.orders]
        algorithm = "ES256"
        token_lifetime = 120

        [[issuers.orders.clients]]
        client_id = "orders-client"
        client_secret = "orders-secret-01"
        scopes = ["orders:read"]

        [[issuers.orders.clients]]
        client_id = "orders-jwt"
        jwks_file = "bee.json"

        [issuers.billing]
    """))
    settings = load_settings(config, env={})
    orders = settings.issuer_settings("orders")
    assert orders.issuer_url == "http://127.0.0.1:8000/orders"
    assert orders.token_lifetime == 120 and orders.ephemeral_keys
    assert [c.client_id for c in orders.clients] == ["orders-client", "orders-jwt"]
    assert orders.clients[1].jwks["keys"][0]["crv"] == "P-256"
    billing = settings.issuer_settings("billing")
    assert [c.client_id for c in billing.clients] == ["demo-client"]
    assert billing.algorithm == settings.algorithm
    assert "orders-secret" not in repr(settings)


@pytest.mark.parametrize(("toml", "key", "why"), [
    ("[issuers.orders]\nport = 1\n", "issuers.orders.port", "unknown key"),
    ("[issuers.orders]\ntoken_lifetime = 'x'\n", "issuers.orders.token_lifetime", "integer"),
    ("[issuers.orders]\ntoken_lifetime = -5\n", "issuers.orders.token_lifetime", "positive"),
    ("[issuers.admin]\n", "issuers.admin", "taken"),
    ("[issuers.orders]\n[[issuers.orders.clients]]\nclient_id = 'x'\n",
     "issuers.orders.clients[0]", "no credentials"),
    ("issuers = 3\n", "issuers", "table"),
    ("issuers = {orders = 3}\n", "issuers.orders", "table"),
    ("issuer = 'http://127.0.0.1:8000/orders'\n[issuers.orders]\n", "issuers.orders",
     "first segment"),
])
def test_bad_issuers_tables_name_the_key(tmp_path, toml, key, why):
    config = tmp_path / "m2mauth.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_settings(config, env={})
    assert caught.value.source == str(config)
    assert caught.value.key == key
    assert why in caught.value.why


@pytest.mark.parametrize(("table", "why"), [
    ("keys_dir = 'missing'\n", "no signing keys found"),
    ("keys_dir = 'keys'\nalgorithm = 'RS256'\n", "no active RS256 signing key"),
])
def test_an_issuers_key_problem_names_the_issuer(tmp_path, table, why):
    from click.testing import CliRunner

    from m2mauth.server.cli import main
    from m2mauth.server.keys import generate_key_files

    generate_key_files(tmp_path / "keys", ["ES256"])
    config = tmp_path / "m2mauth.toml"
    config.write_text("[issuers.orders]\n" + table)
    result = CliRunner().invoke(main, ["serve", "--port", "0", "--config", str(config)])
    assert result.exit_code == 2
    assert "issuers.orders: " in result.output and why in result.output, result.output


@pytest.mark.parametrize("path", ["/demo", "/demo/orders"])
def test_the_root_issuer_cannot_live_under_the_demo_api(cli_process, path):
    # The demo API is mounted in front of every issuer's app: it answered /demo/token with
    # an HTML 404, so no endpoint of such an issuer was reachable.
    with pytest.raises(ConfigError) as caught:
        load_settings(env={"M2MAUTH_ISSUER": f"http://127.0.0.1:8000{path}"})
    assert caught.value.key == "M2MAUTH_ISSUER"
    assert "its path starts with /demo" in caught.value.why
    with pytest.raises(ConfigError):
        create_app(ServerSettings(issuer=f"http://127.0.0.1:8000{path}"))
    # Without the lab there is no demo API, and the issuer is served.
    port = _free_port()
    issuer = f"http://127.0.0.1:{port}{path}"
    proc = cli_process("serve", "--port", str(port), "--issuer", issuer, "--no-lab")
    assert proc.field("issuer") == issuer
    assert token(issuer + "/token").status_code == 200
    # /demox is another segment, not the demo API's.
    assert ServerSettings(issuer="http://127.0.0.1:8000/demox").validate()
    from m2mauth.server import DEMO_API_PREFIX
    from m2mauth.server.settings import DEMO_API_SEGMENT

    assert DEMO_API_PREFIX == "/" + DEMO_API_SEGMENT


def test_reserved_names_are_every_first_segment_of_the_root_issuer():
    app = create_app(ServerSettings(port=8000))
    firsts = {rule.rule.split("/")[1] for rule in app.url_map.iter_rules()}
    firsts.discard("static")  # Flask's own static route, which this app has no folder for
    firsts.add("demo")  # the demo API, mounted beside the Flask app
    assert firsts == RESERVED_ISSUER_NAMES


def test_the_cli_serves_declared_issuers(cli_process, tmp_path):
    config = tmp_path / "m2mauth.toml"
    config.write_text("[issuers.orders]\nalgorithm = 'ES256'\n")
    proc = cli_process("serve", "--port", "0", "--config", str(config))
    root = proc.field("issuer")
    assert f"{root}/orders" in proc.text
    assert token(root + "/orders/token").status_code == 200


def test_a_doubled_slash_is_a_json_404_not_an_html_redirect(two):
    # ("//token" reaches /token: waitress reads a leading "//" as one slash.)
    for url in (two.issuer + "/a//token", two.issuer + "/token//", two.issuer + "/a/jwks.json//"):
        answer = token(url)
        assert answer.status_code == 404, url
        assert answer.json()["error"] == "invalid_request"
