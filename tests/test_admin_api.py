"""The HTTP admin API under /admin: every operation over real HTTP against the session's
server (as curl would call it), mirrored by the Python handle; bad input is a 400 naming the
field with nothing half-applied; and when the API is on at all (Flask test client, no
network binding)."""

from __future__ import annotations

import jwt
import pytest
import requests

from m2mauth.server import ServerSettings, create_app
from m2mauth.server.errors import ConfigError

SECRET = "s3cret-for-tests"
T0 = 1_700_000_000
JSON = "application/json"


def admin(idp, method: str, path: str = "", body=None, **kwargs) -> requests.Response:
    """One admin call; ``body`` is sent as JSON (Content-Type: application/json)."""
    response = requests.request(method, idp.admin_url + path, json=body, timeout=5, **kwargs)
    assert response.headers["Content-Type"].startswith(JSON), response.text
    return response


def ok(response: requests.Response, status: int = 200) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Cache-Control"] == "no-store"
    return response.json()


def fetch(idp, client_id: str = "secret-client", secret: str = SECRET, **form):
    return requests.post(idp.token_endpoint, data={"grant_type": "client_credentials", **form},
                         auth=(client_id, secret), timeout=5)


def published(idp) -> dict:
    return requests.get(idp.jwks_uri, timeout=5).json()


def verify(idp, token: str, **options) -> dict:
    kid = jwt.get_unverified_header(token)["kid"]
    (jwk,) = [k for k in published(idp)["keys"] if k["kid"] == kid]
    return jwt.decode(token, jwt.PyJWK(jwk), algorithms=[jwk["alg"]], issuer=idp.issuer,
                      options={"verify_aud": False, **options})


def unverified(token: str) -> tuple[dict, dict]:
    return jwt.get_unverified_header(token), jwt.decode(token, options={"verify_signature": False})


# -- the index --------------------------------------------------------------------------

#: Every operation GET /admin lists, and the test below that exercises it.
COVERED = {
    ("GET", "/admin"): "test_index_lists_every_operation",
    ("GET", "/admin/clients"): "test_clients_add_list_remove",
    ("POST", "/admin/clients"): "test_clients_add_list_remove",
    ("DELETE", "/admin/clients/<client_id>"): "test_clients_add_list_remove",
    ("POST", "/admin/tokens"): "test_tokens",
    ("GET", "/admin/clock"): "test_clock",
    ("POST", "/admin/clock"): "test_clock",
    ("GET", "/admin/faults"): "test_faults",
    ("POST", "/admin/faults"): "test_faults",
    ("DELETE", "/admin/faults"): "test_faults",
    ("GET", "/admin/requests/token"): "test_request_logs",
    ("GET", "/admin/requests/jwks"): "test_request_logs",
    ("GET", "/admin/requests/introspection"): "test_introspection.py::test_requests_are_logged",
    ("GET", "/admin/requests/revocation"): "test_introspection.py::test_requests_are_logged",
    ("POST", "/admin/introspect"): "test_introspection.py::test_the_lab_revokes_and_introspects",
    ("POST", "/admin/revoke"): "test_introspection.py::test_the_lab_revokes_and_introspects",
    ("DELETE", "/admin/requests"): "test_request_logs",
    ("GET", "/admin/keys"): "test_keys_rotate_and_retire",
    ("POST", "/admin/keys/rotate"): "test_keys_rotate_and_retire",
    ("POST", "/admin/keys/<kid>/retire"): "test_keys_rotate_and_retire",
    ("POST", "/admin/reset"): "test_reset",
    ("POST", "/admin/dpop/proofs"): "test_dpop_lab.py::test_admin_api_mints_proofs",
    ("POST", "/admin/dpop/tokens"): "test_dpop_lab.py::test_admin_api_mints_dpop_tokens",
    ("GET", "/admin/dpop/nonce"): "test_dpop_lab.py::test_admin_api_switches_nonces",
    ("POST", "/admin/dpop/nonce"): "test_dpop_lab.py::test_admin_api_switches_nonces",
    ("GET", "/admin/issuers"): "test_issuers.py::test_admin_api_adds_lists_and_removes_issuers",
    ("POST", "/admin/issuers"): "test_issuers.py::test_admin_api_adds_lists_and_removes_issuers",
    ("DELETE", "/admin/issuers/<name>"):
        "test_issuers.py::test_admin_api_adds_lists_and_removes_issuers",
}


def test_index_lists_every_operation(idp):
    operations = ok(admin(idp, "GET"))["operations"]
    assert {(op["method"], op["path"]) for op in operations} == set(COVERED)
    assert all(op["does"] for op in operations)
    fields = {(op["method"], op["path"]): op.get("fields") for op in operations}
    assert "retry_after" in fields[("POST", "/admin/faults")]


# -- each operation, mirrored by the Python handle ---------------------------------------


def test_clients_add_list_remove(idp):
    added = ok(admin(idp, "POST", "/clients", {
        "client_id": "http-client", "scopes": ["orders:read"],
        "audiences": ["https://orders.test"], "claims": {"tenant": "t9"}, "token_lifetime": 90,
    }), 201)
    assert added["client_id"] == "http-client" and len(added["client_secret"]) >= 16
    response = fetch(idp, "http-client", added["client_secret"])
    assert response.status_code == 200, response.text
    claims = verify(idp, response.json()["access_token"])
    assert (claims["aud"], claims["scope"], claims["tenant"]) == (
        "https://orders.test", "orders:read", "t9")
    assert claims["exp"] - claims["iat"] == 90
    listed = ok(admin(idp, "GET", "/clients"))["clients"]
    (entry,) = [c for c in listed if c["client_id"] == "http-client"]
    assert "client_secret" not in entry and added["client_secret"] not in str(listed)
    assert "http-client" in [c.client_id for c in idp.clients()]  # the handle sees it
    given = ok(admin(idp, "POST", "/clients", {"client_id": "given", "client_secret":
                                                 "a-given-secret-123"}), 201)
    assert given["client_secret"] == "a-given-secret-123"
    assert ok(admin(idp, "DELETE", "/clients/http-client")) == {"removed": "http-client"}
    assert fetch(idp, "http-client", added["client_secret"]).status_code == 401
    assert "http-client" not in [c["client_id"] for c in ok(admin(idp, "GET", "/clients"))[
        "clients"]]
    idp.add_client("from-python")
    ok(admin(idp, "DELETE", "/clients/from-python"))
    assert "from-python" not in [c.client_id for c in idp.clients()]


def test_tokens(idp):
    body = ok(admin(idp, "POST", "/tokens", {"client_id": "secret-client"}))
    header, claims = unverified(body["access_token"])
    assert header["typ"] == "at+jwt"
    assert verify(idp, body["access_token"])["client_id"] == "secret-client"
    shaped = ok(admin(idp, "POST", "/tokens", {
        "client_id": "anyone", "scope": "a b", "audience": ["https://x.test"],
        "expires_in": 33, "claims": {"extra": 1, "jti": None}, "headers": {"typ": "JWT"},
    }))["access_token"]
    header, claims = unverified(shaped)
    assert header["typ"] == "JWT"
    assert (claims["scope"], claims["aud"], claims["extra"]) == ("a b", "https://x.test", 1)
    assert claims["exp"] - claims["iat"] == 33 and "jti" not in claims
    expired = ok(admin(idp, "POST", "/tokens", {"client_id": "c", "expires_in": -10}))
    with pytest.raises(jwt.ExpiredSignatureError):
        verify(idp, expired["access_token"])
    unsigned = ok(admin(idp, "POST", "/tokens", {"client_id": "c", "alg": "none"}))
    assert unsigned["access_token"].endswith(".")
    assert unverified(unsigned["access_token"])[0]["alg"] == "none"
    foreign = ok(admin(idp, "POST", "/tokens", {"client_id": "c",
                                                "signing_key": "unpublished"}))
    kid = unverified(foreign["access_token"])[0]["kid"]
    assert kid not in {k["kid"] for k in published(idp)["keys"]}
    assert idp.token_requests == []  # minted, not requested


def test_clock(idp):
    status = ok(admin(idp, "GET", "/clock"))
    assert status["frozen"] is False and status["offset"] == 0
    assert ok(admin(idp, "POST", "/clock", {"at": T0})) == {
        "now": T0, "offset": 0, "frozen": True}
    assert idp.clock.frozen and idp.clock.now() == T0  # the handle sees it
    token = fetch(idp).json()["access_token"]
    assert unverified(token)[1]["iat"] == T0
    assert ok(admin(idp, "POST", "/clock", {"advance": 3600}))["now"] == T0 + 3600
    assert unverified(fetch(idp).json()["access_token"])[1]["iat"] == T0 + 3600
    idp.clock.advance(10)
    assert ok(admin(idp, "GET", "/clock"))["now"] == T0 + 3610
    unfrozen = ok(admin(idp, "POST", "/clock", {"freeze": False}))
    assert unfrozen["frozen"] is False and T0 + 3610 <= unfrozen["now"] < T0 + 3670
    assert ok(admin(idp, "POST", "/clock", {"reset": True, "offset": -120}))["offset"] == -120
    assert idp.clock.offset == -120 and not idp.clock.frozen
    assert ok(admin(idp, "POST", "/clock", {"reset": True}))["offset"] == 0
    assert ok(admin(idp, "POST", "/clock", {"freeze": True}))["frozen"] is True


def test_faults(idp):
    fault = ok(admin(idp, "POST", "/faults", {
        "n": 2, "status": 429, "error": "temporarily_unavailable", "retry_after": 3}), 201)
    assert (fault["status"], fault["remaining"], fault["retry_after"]) == (429, 2, 3)
    assert [f.remaining for f in idp.faults()] == [2]  # the handle sees it
    first = fetch(idp)
    assert (first.status_code, first.headers["Retry-After"]) == (429, "3")
    assert first.json()["error"] == "temporarily_unavailable"
    assert ok(admin(idp, "GET", "/faults"))["faults"][0]["remaining"] == 1
    assert fetch(idp).status_code == 429
    assert fetch(idp).status_code == 200
    assert ok(admin(idp, "GET", "/faults")) == {"faults": []}
    ok(admin(idp, "POST", "/faults", {"endpoint": "jwks", "kind": "malformed"}), 201)
    ok(admin(idp, "POST", "/faults", {"kind": "delay", "delay": 0.05}), 201)
    idp.fail_next(kind="drop")
    listed = ok(admin(idp, "GET", "/faults"))["faults"]
    assert [(f["endpoint"], f["kind"]) for f in listed] == [
        ("token", "delay"), ("token", "drop"), ("jwks", "malformed")]
    broken = requests.get(idp.jwks_uri, timeout=5)
    with pytest.raises(ValueError):
        broken.json()
    assert fetch(idp).status_code == 200  # the delay
    assert ok(admin(idp, "DELETE", "/faults")) == {"faults": []}
    assert idp.faults() == []
    assert fetch(idp).status_code == 200  # the drop was cleared


def test_request_logs(idp):
    token = fetch(idp, scope="read").json()["access_token"]
    fetch(idp, "secret-client", "wrong")
    idp.fail_next(status=500)
    fetch(idp)
    published(idp)
    logged = ok(admin(idp, "GET", "/requests/token"))["requests"]
    assert [(r["client_id"], r["auth_method"], r["scope"], r["status"], r["outcome"], r["fault"])
            for r in logged] == [
        ("secret-client", "client_secret_basic", "read", 200, "issued", None),
        ("secret-client", "client_secret_basic", None, 401, "invalid_client", None),
        ("secret-client", "client_secret_basic", None, 500, "server_error", "error"),
    ]
    assert logged[0]["jti"] == unverified(token)[1]["jti"]
    assert logged[0]["resource"] == [] and logged[0]["granted_scope"] == ["read"]
    assert SECRET not in str(logged) and "wrong" not in str(logged)
    jwks_log = ok(admin(idp, "GET", "/requests/jwks"))["requests"]
    assert [(r["status"], r["fault"]) for r in jwks_log] == [(200, None)]
    assert ok(admin(idp, "DELETE", "/requests")) == {"requests": []}
    assert idp.token_requests == [] and idp.jwks_requests == []
    assert ok(admin(idp, "GET", "/requests/token")) == {"requests": []}


def test_keys_rotate_and_retire(idp):
    keys = ok(admin(idp, "GET", "/keys"))["keys"]
    assert keys == idp.keys()
    old_token = fetch(idp).json()["access_token"]
    old_kid = unverified(old_token)[0]["kid"]
    rotated = ok(admin(idp, "POST", "/keys/rotate", {"alg": "RS256"}), 201)
    new_kid = rotated["kid"]
    statuses = {k["kid"]: k["status"] for k in rotated["keys"]}
    assert (statuses[old_kid], statuses[new_kid]) == ("published", "active")
    verify(idp, old_token)
    assert unverified(fetch(idp).json()["access_token"])[0]["kid"] == new_kid
    refused = admin(idp, "POST", f"/keys/{new_kid}/retire")
    assert refused.status_code == 400 and refused.json()["field"] == "kid"
    retired = ok(admin(idp, "POST", f"/keys/{old_kid}/retire"))
    assert retired["retired"] == old_kid
    assert old_kid not in {k["kid"] for k in published(idp)["keys"]}
    default_alg = ok(admin(idp, "POST", "/keys/rotate"), 201)  # no body: the server's alg
    assert unverified(idp.issue_token("x"))[0]["kid"] == default_alg["kid"]


def test_reset(idp):
    clients, keys, jwks = idp.clients(), idp.keys(), published(idp)
    ok(admin(idp, "POST", "/clients", {"client_id": "gone-soon"}), 201)
    ok(admin(idp, "POST", "/clock", {"at": T0}))
    ok(admin(idp, "POST", "/faults", {"n": 4}), 201)
    ok(admin(idp, "POST", "/keys/rotate", {}), 201)
    assert ok(admin(idp, "POST", "/reset")) == {"reset": True}
    assert idp.clients() == clients and idp.keys() == keys and idp.faults() == []
    assert not idp.clock.frozen and idp.token_requests == [] and idp.jwks_requests == []
    assert published(idp) == jwks


# -- bad input ---------------------------------------------------------------------------


def state(idp) -> dict:
    """Everything an admin call could change, as the admin API reports it."""
    return {
        "clients": ok(admin(idp, "GET", "/clients")),
        "faults": ok(admin(idp, "GET", "/faults")),
        "keys": ok(admin(idp, "GET", "/keys")),
        "clock": ok(admin(idp, "GET", "/clock")),
        "jwks": published(idp),
    }


@pytest.fixture
def changed_idp(idp):
    """The server with some non-default state (frozen clock, a client, a fault, a rotated
    key), so a half-applied reset or change would show."""
    idp.clock.freeze(T0)
    idp.add_client("existing", client_secret="existing-secret-1")
    idp.fail_next(5, status=500)
    idp.rotate_key("ES256")  # fast to generate, unlike RSA
    return idp


BAD = [
    # (method, path, body, field)
    ("POST", "/faults", {"n": "2"}, "n"),
    ("POST", "/faults", {"n": 0}, "n"),
    ("POST", "/faults", {"n": -3}, "n"),
    ("POST", "/faults", {"n": True}, "n"),
    ("POST", "/faults", {"n": 1.5}, "n"),
    ("POST", "/faults", {"n": 2, "bogus": 1}, "bogus"),
    ("POST", "/faults", {"status": "500"}, "status"),
    ("POST", "/faults", {"status": 302}, "status"),
    ("POST", "/faults", {"error": ["server_error"]}, "error"),
    ("POST", "/faults", {"kind": "drop", "status": 500}, "status"),
    ("POST", "/faults", {"kind": "explode"}, "kind"),
    ("POST", "/faults", {"kind": None, "delay": "0.1"}, "delay"),
    ("POST", "/faults", {"endpoint": "metadata"}, "endpoint"),
    ("POST", "/faults", {"endpoint": ["token"]}, "endpoint"),
    ("POST", "/faults", {"retry_after": -5}, "retry_after"),
    ("POST", "/faults", {"kind": "delay"}, "delay"),
    ("POST", "/faults", {"kind": "delay", "delay": 0}, "delay"),
    ("POST", "/clients", {"client_id": ["a"]}, "client_id"),
    ("POST", "/clients", {"client_id": "existing"}, "client_id"),
    ("POST", "/clients", {"client_id": "x", "scopes": 5}, "scopes"),
    ("POST", "/clients", {"client_id": "x", "token_lifetime": -1}, "token_lifetime"),
    ("POST", "/clients", {"client_id": "x", "token_lifetime": "60"}, "token_lifetime"),
    ("POST", "/clients", {"client_id": "x", "algorithm": "HS256"}, "algorithm"),
    ("POST", "/clients", {"client_id": "x", "jwks": {"keys": [{"kty": "RSA"}]}}, "jwks"),
    ("POST", "/clients", {"client_id": "x", "jwks": "keys"}, "jwks"),
    ("POST", "/clients", {"client_id": "x", "claims": []}, "claims"),
    ("POST", "/clients", {"client_id": "x", "auth_methods": ["magic"]}, "auth_methods"),
    ("POST", "/clients", {"client_id": "x", "secret": "s"}, "secret"),
    ("POST", "/tokens", {}, "client_id"),
    ("POST", "/tokens", {"client_id": 5}, "client_id"),
    ("POST", "/tokens", {"client_id": ["x"]}, "client_id"),
    ("POST", "/tokens", {"client_id": "x", "expires_in": "60"}, "expires_in"),
    ("POST", "/tokens", {"client_id": "x", "alg": "HS256"}, "alg"),
    ("POST", "/tokens", {"client_id": "x", "signing_key": "mine"}, "signing_key"),
    ("POST", "/tokens", {"client_id": "x", "signing_key": {"kty": "oct"}}, "signing_key"),
    ("POST", "/tokens", {"client_id": "x", "headers": {"kid": 5}}, "headers"),
    ("POST", "/tokens", {"client_id": "x", "claims": [1]}, "claims"),
    ("POST", "/tokens", {"client_id": "x", "scope": [1]}, "scope"),
    ("POST", "/tokens", {"client_id": "x", "lifetime": 5}, "lifetime"),
    ("POST", "/clock", {"advance": "60"}, "advance"),
    ("POST", "/clock", {"freeze": "yes"}, "freeze"),
    ("POST", "/clock", {"reset": 1}, "reset"),
    ("POST", "/clock", {"at": T0, "freeze": False}, "at"),
    ("POST", "/clock", {"reset": True, "advance": "1"}, "advance"),  # reset not applied
    ("POST", "/clock", {"tick": 1}, "tick"),
    ("POST", "/keys/rotate", {"alg": "HS256"}, "alg"),
    ("POST", "/keys/rotate", {"alg": ["RS256"]}, "alg"),
    ("POST", "/keys/rotate", {"kid": "x"}, "kid"),
    ("POST", "/keys/no-such-kid/retire", None, "kid"),
    ("POST", "/keys/no-such-kid/retire", {"force": True}, "force"),
    ("DELETE", "/clients/no-such-client", None, "client_id"),
    ("POST", "/reset", {"everything": True}, "everything"),
]


@pytest.mark.parametrize(("method", "path", "body", "field"), BAD)
def test_bad_input_is_400_naming_the_field_and_changes_nothing(changed_idp, method, path,
                                                               body, field):
    before = state(changed_idp)
    response = admin(changed_idp, method, path, body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["error"] == "invalid_request" and error["field"] == field
    assert field in error["error_description"]
    assert state(changed_idp) == before


def test_infinite_clock_values_are_refused(changed_idp):
    before = state(changed_idp)
    for body in ('{"advance": Infinity}', '{"offset": -Infinity}', '{"at": NaN}'):
        response = requests.post(changed_idp.admin_url + "/clock", data=body, timeout=5,
                                 headers={"Content-Type": JSON})
        assert response.status_code == 400, body
        assert response.json()["field"] in body
    assert state(changed_idp) == before


@pytest.mark.parametrize(("data", "content_type", "field"), [
    ("n=2", JSON, "(body)"),
    ("{not json", JSON, "(body)"),
    ('[{"n": 2}]', JSON, "(body)"),
    ('"n"', JSON, "(body)"),
    ("null", JSON, "(body)"),
    ('{"n": 2}', "application/x-www-form-urlencoded", "Content-Type"),
    ('{"n": 2}', "text/plain", "Content-Type"),
])
def test_body_that_is_not_a_json_object(changed_idp, data, content_type, field):
    before = state(changed_idp)
    response = requests.post(changed_idp.admin_url + "/faults", data=data, timeout=5,
                             headers={"Content-Type": content_type})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert response.json()["field"] == field
    assert state(changed_idp) == before


def test_python_handle_refuses_alike(changed_idp):
    from m2mauth.server.lab.controls import ControlError

    before = state(changed_idp)
    for call in (lambda: changed_idp.fail_next("2"), lambda: changed_idp.retire_key("nope"),
                 lambda: changed_idp.add_client("existing"),
                 lambda: changed_idp.set_clock(reset=True, advance="1")):
        with pytest.raises(ControlError):
            call()
    assert state(changed_idp) == before


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/nothing-here", 404),
    ("GET", "/keys/x/retire", 405),
    ("PUT", "/clock", 405),
    ("DELETE", "/clock", 405),
    ("PATCH", "/clients", 405),
])
def test_unknown_paths_and_methods_are_json(idp, method, path, status):
    response = admin(idp, method, path)
    assert response.status_code == status
    assert response.json()["error"] == "invalid_request"
    if status == 405:
        assert "Allow" in response.headers


# -- when the admin API is on (Flask test client, nothing bound) --------------------------


def test_admin_on_by_default_on_loopback():
    for host in ("127.0.0.1", "::1", "localhost"):
        client = create_app(ServerSettings(host=host)).test_client()
        response = client.get("/admin")
        assert response.status_code == 200, host
        assert response.get_json()["operations"]


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "::"])
def test_admin_off_off_loopback_without_a_token(host):
    app = create_app(ServerSettings(host=host))
    client = app.test_client()
    for method, path, body in (("GET", "/admin", None), ("POST", "/admin/faults", {"n": 1}),
                               ("POST", "/admin/reset", None)):
        response = client.open(path, method=method, json=body)
        assert response.status_code == 403, path
        error = response.get_json()
        assert error["error"] == "access_denied"
        assert "admin token" in error["error_description"]
        assert "loopback" in error["error_description"]
    assert app.extensions["m2mauth_lab"].controls.faults() == []
    # The OAuth endpoints are unaffected.
    assert client.get("/jwks.json").status_code == 200


ADMIN_TOKEN = "an-admin-token-of-some-length"


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "192.0.2.1"])
def test_admin_token_is_required_once_set(host):
    app = create_app(ServerSettings(host=host, admin_token=ADMIN_TOKEN))
    client = app.test_client()
    for headers in ({}, {"Authorization": "Bearer wrong-token"},
                    {"Authorization": f"Basic {ADMIN_TOKEN}"},
                    {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
                    {"Authorization": "Bearer"}):
        response = client.post("/admin/faults", json={"n": 1}, headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.get_json()["error"] == "invalid_token"
    assert app.extensions["m2mauth_lab"].controls.faults() == []
    good = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert client.get("/admin", headers=good).status_code == 200
    assert client.post("/admin/faults", json={"n": 1}, headers=good).status_code == 201
    assert len(app.extensions["m2mauth_lab"].controls.faults()) == 1
    assert ADMIN_TOKEN not in repr(app.extensions["m2mauth"].settings)


def test_short_admin_token_is_a_config_error():
    with pytest.raises(ConfigError):
        create_app(ServerSettings(admin_token="short"))


def test_admin_api_can_be_switched_off():
    client = create_app(ServerSettings(admin_api=False)).test_client()
    for path in ("/admin", "/admin/clock", "/admin/faults"):
        response = client.get(path)
        assert response.status_code == 404
        assert response.get_json()["error"] == "invalid_request"
    assert client.post("/admin/reset").status_code == 404
    assert client.get("/jwks.json").status_code == 200


def test_remove_client_whose_id_has_a_slash(idp):
    idp.add_client("team/orders", scopes=["read"])
    r = requests.delete(idp.admin_url + "/clients/team/orders", timeout=5)
    assert r.status_code == 200, r.text
    assert r.json() == {"removed": "team/orders"}
    assert "team/orders" not in [c.client_id for c in idp.clients()]


# -- browsers: no cross-site requests to the tokenless loopback API ----------------------


@pytest.mark.parametrize("headers", [
    # A <form method=post> on any web page: form content type, an empty body, an Origin.
    {"Origin": "https://evil.example", "Content-Type": "application/x-www-form-urlencoded"},
    {"Origin": "null"},
    {"Sec-Fetch-Site": "cross-site"},
    # DNS rebinding: the browser thinks it talks to evil.example (same origin), so the Host
    # header names it.
    {"Host": "evil.example:8000"},
])
def test_tokenless_admin_refuses_browser_cross_site_requests(headers):
    app = create_app(ServerSettings(host="127.0.0.1"))
    state = app.extensions["m2mauth"]
    client = app.test_client()
    keys_before = [k.kid for k in state.keys.all_keys()]
    for path in ("/admin/faults", "/admin/keys/rotate", "/admin/clients", "/admin/reset"):
        response = client.post(path, data=b"", headers=headers)
        assert response.status_code == 403, (path, response.get_data(as_text=True))
        assert response.get_json()["error"] == "access_denied"
    assert client.get("/admin/clients", headers=headers).status_code == 403
    assert app.extensions["m2mauth_lab"].controls.faults() == []
    assert [k.kid for k in state.keys.all_keys()] == keys_before
    assert [c.client_id for c in state.clients] == ["demo-client"]


def test_tokenless_admin_still_serves_curl_and_the_issuer_host():
    app = create_app(ServerSettings(host="127.0.0.1", issuer="http://idp.test:8000"))
    client = app.test_client()
    for host in ("localhost", "127.0.0.1:8000", "[::1]:8000", "idp.test:8000"):
        assert client.post("/admin/reset", headers={"Host": host}).status_code == 200, host
    assert client.post("/admin/faults", data=b"").status_code == 201  # curl -X POST, no body
    assert client.get("/admin", headers={"Sec-Fetch-Site": "none"}).status_code == 200


def test_admin_token_makes_origin_and_host_irrelevant():
    app = create_app(ServerSettings(host="0.0.0.0", admin_token=ADMIN_TOKEN))
    client = app.test_client()
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Origin": "https://ui.example",
               "Host": "idp.internal:8000"}
    assert client.get("/admin", headers=headers).status_code == 200


def test_clock_values_beyond_any_date_are_refused(changed_idp):
    # A JSON integer too large for a float was a 500 (OverflowError); finite values that add up
    # to infinity left a clock at Infinity, after which every token request was a 500.
    before = state(changed_idp)
    for body in ({"at": 10**400}, {"offset": -(10**400)}, {"advance": 10**309},
                 {"at": 1e308, "advance": 1e308}, {"offset": 1e308, "advance": 1e308},
                 {"at": 1e300}):
        response = admin(changed_idp, "POST", "/clock", body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["field"] in body
        assert state(changed_idp) == before
    changed_idp.clear_faults()
    assert fetch(changed_idp).status_code == 200


def test_huge_integer_delay_is_refused(changed_idp):
    before = state(changed_idp)
    response = admin(changed_idp, "POST", "/faults", {"kind": "delay", "delay": 10**400})
    assert response.status_code == 400, response.text
    assert response.json()["field"] == "delay"
    assert state(changed_idp) == before


@pytest.mark.parametrize("data", ["[" * 30000, '{"n": ' + "[" * 30000])
def test_deeply_nested_json_body_is_400(changed_idp, data):
    before = state(changed_idp)
    response = requests.post(changed_idp.admin_url + "/faults", data=data, timeout=5,
                             headers={"Content-Type": JSON})
    assert response.status_code == 400, response.text
    assert response.json()["field"] == "(body)"
    assert state(changed_idp) == before


def test_claims_nested_970_deep_are_refused_and_the_server_keeps_serving(idp):
    """Issue 9 item 7: such a client was registered (201), then every token request for it
    was a 500 (RecursionError). The body is written by hand: it is deeper than the JSON
    encoder of the test process may go."""
    body = '{"client_id": "deep", "client_secret": "s3cret-s3cret", "claims": ' \
        + '{"n": ' * 970 + "1" + "}" * 970 + "}"
    response = requests.post(idp.admin_url + "/clients", data=body, timeout=5,
                             headers={"Content-Type": JSON})
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["field"] == "claims" and "claims" in error["error_description"]
    assert "deep" not in [c.client_id for c in idp.clients()]
    token = requests.post(idp.issuer + "/token", data={"grant_type": "client_credentials"},
                          auth=("demo-client", "demo-secret"), timeout=5)
    assert token.status_code == 200
