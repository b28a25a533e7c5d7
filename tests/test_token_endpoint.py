"""The token endpoint over real HTTP: scopes, audiences (RFC 8707) and the per-request log line.
Tokens are checked with PyJWT against the server's JWKS."""

from __future__ import annotations

import logging

import jwt
import pytest
import requests

SECRET = "s3cret-for-tests"
GRANT = {"grant_type": "client_credentials"}


def post(live_server, data, client_id="secret-client", **kwargs) -> requests.Response:
    return requests.post(live_server.issuer + "/token", data=data, timeout=5,
                         auth=(client_id, SECRET), **kwargs)


def claims_of(live_server, response: requests.Response) -> dict:
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    client = jwt.PyJWKClient(live_server.issuer + "/jwks.json", timeout=5)
    key = client.get_signing_key_from_jwt(token)
    return jwt.decode(token, key, algorithms=["RS256"], issuer=live_server.issuer,
                      options={"verify_aud": False})


def assert_error(response: requests.Response, error: str, status: int = 400) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert body["error"] == error
    # RFC 6749 §5.2: error_description is %x20-21 / %x23-5B / %x5D-7E only.
    description = body.get("error_description", "")
    assert all(c == " " or ("\x21" <= c <= "\x7e" and c not in '"\\') for c in description)
    return body


# -- scopes ------------------------------------------------------------------------------


def test_default_scope_when_none_asked(live_server):
    r = post(live_server, GRANT)
    assert r.json()["scope"] == "read"
    assert claims_of(live_server, r)["scope"] == "read"


def test_default_scope_is_all_allowed_when_not_configured(live_server):
    r = requests.post(live_server.issuer + "/token", data=GRANT,
                      auth=("demo-client", "demo-secret"), timeout=5)
    assert r.json()["scope"] == "read write"


def test_empty_scope_means_default(live_server):
    assert post(live_server, {**GRANT, "scope": ""}).json()["scope"] == "read"


@pytest.mark.parametrize("scope", ["read", "write", "admin", "read write", "admin read write"])
def test_subset_of_allowed_scopes(live_server, scope):
    r = post(live_server, {**GRANT, "scope": scope})
    assert r.json()["scope"] == scope
    assert claims_of(live_server, r)["scope"] == scope


def test_repeated_scope_tokens_are_granted_once(live_server):
    r = post(live_server, {**GRANT, "scope": "read write read"})
    assert r.json()["scope"] == "read write"
    assert claims_of(live_server, r)["scope"] == "read write"


@pytest.mark.parametrize("scope", ["delete", "read delete", "READ", "rea", "read:all"])
def test_scope_outside_allowed_is_invalid_scope(live_server, scope):
    """Strict: a request with any scope the client may not have is refused, not trimmed."""
    assert_error(post(live_server, {**GRANT, "scope": scope}), "invalid_scope")
    entry = live_server.token_requests[-1]
    assert entry.outcome == "invalid_scope" and entry.jti is None


@pytest.mark.parametrize("scope", [
    'read"', "read\\", "re\x00ad", "read\x7f", "read\nwrite", "read\twrite", "lecture-é",
    "\u202eread", " read", "read ", "read  write", "\ud7ff",
])
def test_odd_characters_in_scope(live_server, scope):
    r = post(live_server, {**GRANT, "scope": scope})
    body = assert_error(r, "invalid_scope")
    assert scope not in body.get("error_description", "") or scope.strip() == "read"
    assert post(live_server, GRANT).status_code == 200


def test_raw_non_ascii_scope_is_not_echoed(live_server):
    r = post(live_server, {**GRANT, "scope": "read \u00e9\u4e2d"})
    body = assert_error(r, "invalid_scope")
    assert "\u00e9" not in r.text and "\\u" not in r.text
    assert body["error_description"].isascii()


def test_scope_not_allowed_is_named_safely(live_server):
    """The denied scope may be named in the description, but only as safe characters."""
    body = assert_error(post(live_server, {**GRANT, "scope": "read nope"}), "invalid_scope")
    assert "nope" in body["error_description"]


# -- audiences -----------------------------------------------------------------------------


def aud_list(claims: dict) -> list[str]:
    return [claims["aud"]] if isinstance(claims["aud"], str) else claims["aud"]


def test_default_audience_per_client(live_server):
    r = post(live_server, GRANT, client_id="aud-client")
    assert aud_list(claims_of(live_server, r)) == ["https://orders.test"]


def test_default_audience_is_the_first_allowed(live_server):
    assert aud_list(claims_of(live_server, post(live_server, GRANT))) == ["https://api.test"]


def test_server_default_audience_for_clients_without_audiences(live_server):
    r = post(live_server, GRANT, client_id="basic-only")
    assert aud_list(claims_of(live_server, r)) == [live_server.settings.default_audience]


def test_one_resource(live_server):
    r = post(live_server, {**GRANT, "resource": "https://billing.test"}, client_id="aud-client")
    claims = claims_of(live_server, r)
    assert claims["aud"] == "https://billing.test"  # one audience: a string (RFC 7519 §4.1.3)
    jwt.decode(r.json()["access_token"], options={"verify_signature": False},
               audience="https://billing.test")


def test_repeated_resource(live_server):
    data = {**GRANT, "resource": ["https://orders.test", "https://billing.test"]}
    r = post(live_server, data, client_id="aud-client")
    assert claims_of(live_server, r)["aud"] == ["https://orders.test", "https://billing.test"]


def test_same_resource_twice_is_one_audience(live_server):
    data = {**GRANT, "resource": ["https://orders.test", "https://orders.test"]}
    r = post(live_server, data, client_id="aud-client")
    assert claims_of(live_server, r)["aud"] == "https://orders.test"


@pytest.mark.parametrize("value", ["payments", "https://billing.test"])
def test_audience_alias(live_server, value):
    """``audience`` is not RFC 8707; it accepts any allowed audience, URI or not."""
    r = post(live_server, {**GRANT, "audience": value}, client_id="aud-client")
    assert claims_of(live_server, r)["aud"] == value


def test_resource_and_audience_mixed(live_server):
    data = {**GRANT, "resource": "https://orders.test", "audience": "payments"}
    r = post(live_server, data, client_id="aud-client")
    assert claims_of(live_server, r)["aud"] == ["https://orders.test", "payments"]
    entry = live_server.token_requests[-1]
    assert entry.audience == ("https://orders.test", "payments")


@pytest.mark.parametrize("data", [
    {"resource": "https://evil.test"},
    {"resource": ["https://orders.test", "https://evil.test"]},
    {"audience": "https://evil.test"},
    {"resource": "https://orders.test", "audience": "evil"},
    {"resource": "https://orders.test/"},  # compared exactly: a trailing slash is another URI
    {"resource": "HTTPS://orders.test"},
])
def test_resource_outside_allowed_is_invalid_target(live_server, data):
    assert_error(post(live_server, {**GRANT, **data}, client_id="aud-client"), "invalid_target")


@pytest.mark.parametrize("resource", [
    "payments",  # allowed as an audience, but not an absolute URI
    "/orders", "//orders.test", "orders.test", "https://orders.test#frag", "https://orders.test#",
    "", " ", "https://orders.test\x00", "http://[::1",
])
def test_resource_must_be_absolute_uri_without_fragment(live_server, resource):
    r = post(live_server, {**GRANT, "resource": resource}, client_id="aud-client")
    assert_error(r, "invalid_target")
    assert post(live_server, GRANT, client_id="aud-client").status_code == 200


def test_empty_audience_is_invalid_target(live_server):
    assert_error(post(live_server, {**GRANT, "audience": ""}, client_id="aud-client"),
                 "invalid_target")


# -- the log line -------------------------------------------------------------------------


@pytest.fixture
def server_log(caplog):
    caplog.set_level(logging.INFO, logger="m2mauth.server")
    return caplog


def token_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "m2mauth.server" and r.getMessage().startswith("token request")]


def test_log_line_for_an_issued_token(live_server, server_log):
    data = {**GRANT, "scope": "read", "resource": "https://billing.test"}
    r = post(live_server, data, client_id="aud-client")
    token = r.json()["access_token"]
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    (line,) = token_lines(server_log)
    for part in ("client_id='aud-client'", "auth_method=client_secret_basic", "scope='read'",
                 "audience='https://billing.test'", "outcome=issued", f"jti={jti}"):
        assert part in line, line
    assert SECRET not in line and token not in line
    assert token.split(".")[2] not in line and token.split(".")[1] not in line


def test_log_line_for_a_refused_request(live_server, server_log):
    requests.post(live_server.issuer + "/token", timeout=5,
                  data={**GRANT, "client_id": "post-only", "client_secret": "wrong-secret"})
    (line,) = token_lines(server_log)
    assert "client_id='post-only'" in line and "outcome=invalid_client" in line
    assert "auth_method=client_secret_post" in line and "jti=None" in line
    assert "wrong-secret" not in line


def test_log_line_never_holds_the_client_assertion(live_server, client_keys, server_log):
    import uuid

    ck = client_keys["ES256"]
    now = live_server.clock()
    assertion = jwt.encode(
        {"iss": "jwt-es256", "sub": "jwt-es256", "aud": live_server.issuer + "/token",
         "exp": now + 60, "jti": uuid.uuid4().hex}, ck.pem(), algorithm="ES256",
        headers={"kid": ck.jwk.kid})
    r = requests.post(live_server.issuer + "/token", timeout=5, data={
        **GRANT, "client_assertion": assertion,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"})
    assert r.status_code == 200
    (line,) = token_lines(server_log)
    assert "auth_method=private_key_jwt" in line and "client_id='jwt-es256'" in line
    for part in assertion.split("."):
        assert part not in line
    everything = "\n".join(rec.getMessage() for rec in server_log.records)
    assert assertion.split(".")[2] not in everything
    assert r.json()["access_token"].split(".")[2] not in everything


def test_log_line_escapes_hostile_input(live_server, server_log):
    """Caller input is quoted and escaped, so it cannot forge log lines."""
    post(live_server, {**GRANT, "scope": "read\ninjected outcome=issued"})
    (line,) = token_lines(server_log)
    assert "\n" not in line and "outcome=invalid_scope" in line


def test_no_logger_at_any_level_sees_a_token_or_secret(live_server, caplog):
    # Every logger, DEBUG included: Authlib's own grant logs the whole token response there.
    caplog.set_level(logging.DEBUG)
    r = requests.post(live_server.issuer + "/token", data={"grant_type": "client_credentials"},
                      auth=("secret-client", SECRET), timeout=5)
    assert r.status_code == 200
    token = r.json()["access_token"]
    text = "\n".join(rec.getMessage() for rec in caplog.records)
    assert "token request client_id='secret-client'" in text
    for part in token.split("."):
        assert part not in text
    assert SECRET not in text


def test_authlibs_client_authenticated_signal_still_reaches_its_listeners():
    """The server sends Authlib's Flask signals only when something listens (oauth.py);
    a listener still gets every authenticated client."""
    import base64

    from authlib.integrations.flask_oauth2.signals import client_authenticated

    from m2mauth.server import ServerSettings, create_app

    app = create_app(ServerSettings())
    seen = []

    def listener(sender, client, grant):
        seen.append(client.client_id)

    client_authenticated.connect(listener)
    try:
        basic = base64.b64encode(b"demo-client:demo-secret").decode()
        response = app.test_client().post("/token", data={"grant_type": "client_credentials"},
                                          headers={"Authorization": f"Basic {basic}"})
    finally:
        client_authenticated.disconnect(listener)
    assert response.status_code == 200
    assert seen == ["demo-client"]
