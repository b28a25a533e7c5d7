"""m2mauth.client.flask.require_token over real HTTP (werkzeug on 127.0.0.1, port 0) with
tokens of the real server (``idp``): the exact ``WWW-Authenticate`` string, status, JSON body
and ``Cache-Control`` of every RFC 6750 §3 answer, where a token may and may not be sent, and
what the view gets in ``g.token``. The server's clock is frozen on a whole second and shared
with the validator, so the time-dependent descriptions are exact."""

from __future__ import annotations

import http.client
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests
from flask import Flask, g, jsonify, request

from m2mauth.client import TokenValidator, ValidatedToken, parse_challenges
from m2mauth.client.flask import bearer_challenge, require_token
from m2mauth.server.serving import BackgroundServer, bind_app

AUDIENCE = "https://api.test"
REALM = 'realm="https://api.test"'
NEEDS_TOKEN = ("this resource needs an access token (Authorization: Bearer <token>, or DPoP "
               "<token> with a DPoP proof header)")
ALGS = 'algs="ES256 ES384 ES512 RS256 PS256 EdDSA Ed25519"'
#: The 401 without credentials of a TokenValidator's app: Bearer, and DPoP (RFC 9449 §7.1).
NO_TOKEN = f'Bearer {REALM}, DPoP {REALM}, {ALGS}'


@contextmanager
def serving(app: Flask) -> Iterator[str]:
    """``app`` on a free loopback port in a background thread; yields its base URL."""
    server, _ = bind_app("127.0.0.1", 0, lambda _port: app)
    with BackgroundServer(server) as running:
        yield running.url


def make_app(validator: Any, *, realm: str | None = None) -> tuple[Flask, list[ValidatedToken]]:
    """Routes: /read (scope read), /read-write (read and write), /any (no scope); GET and the
    body methods. Views record what they saw in g.token."""
    app = Flask(__name__)
    seen: list[ValidatedToken] = []

    def show() -> Any:
        token = g.token
        seen.append(token)
        return jsonify(sub=token.subject, client_id=token.client_id, scopes=list(token.scopes),
                       form=dict(request.form))

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    app.add_url_rule("/read", "read", require_token(validator, ["read"], realm=realm)(show),
                     methods=methods)
    app.add_url_rule("/read-write", "read_write",
                     require_token(validator, "read write", realm=realm)(show), methods=methods)
    app.add_url_rule("/any", "any", require_token(validator, realm=realm)(show), methods=methods)
    return app, seen


@pytest.fixture
def frozen(idp):
    idp.clock.freeze(at=round(time.time()))
    return idp.clock


@pytest.fixture
def validator(idp, frozen) -> TokenValidator:
    return TokenValidator(idp.issuer, AUDIENCE, clock=frozen.now)


@pytest.fixture
def api(validator) -> Iterator[tuple[str, list[ValidatedToken]]]:
    app, seen = make_app(validator)
    with serving(app) as url:
        yield url, seen


@pytest.fixture
def url(api) -> str:
    return api[0]


@pytest.fixture
def client(idp):
    return idp.add_client("flask-client", scopes=["read", "write"], audiences=[AUDIENCE],
                          claims={"tenant": "acme"})


@pytest.fixture
def token(idp, client) -> str:
    return idp.issue_token(client.client_id, scope="read", audience=AUDIENCE)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def raw_get(url: str, path: str, headers: list[tuple[str, str]]) -> tuple[int, str | None]:
    """A GET with exactly these header lines (repeats and empty values included), which
    requests cannot send."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.putrequest("GET", path)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("WWW-Authenticate")
    finally:
        conn.close()


def assert_answer(r: requests.Response, status: int, challenge: str | None,
                  body: dict[str, str]) -> None:
    assert r.status_code == status, r.text
    assert r.headers.get("WWW-Authenticate") == challenge
    assert r.headers["Cache-Control"] == "no-store"
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == body


# -- 200 -------------------------------------------------------------------------------------


def test_valid_token_reaches_the_view_with_g_token(api, token, client):
    url, seen = api
    r = requests.get(url + "/read", headers=bearer(token), timeout=5)
    assert r.status_code == 200
    assert r.json() == {"sub": client.client_id, "client_id": client.client_id,
                        "scopes": ["read"], "form": {}}
    assert "WWW-Authenticate" not in r.headers
    (seen_token,) = seen
    assert isinstance(seen_token, ValidatedToken)
    assert seen_token.subject == seen_token.client_id == "flask-client"
    assert seen_token.scopes == ("read",)
    assert seen_token.audience == (AUDIENCE,)
    assert seen_token.claims["tenant"] == "acme"
    assert seen_token.header["typ"] == "at+jwt"


def test_token_from_the_real_token_endpoint(api, idp, client):
    url, _ = api
    r = requests.post(idp.token_endpoint, data={"grant_type": "client_credentials",
                                                "scope": "read write", "resource": AUDIENCE},
                      auth=(client.client_id, client.client_secret), timeout=5)
    assert r.status_code == 200, r.text
    access_token = r.json()["access_token"]
    r = requests.get(url + "/read-write", headers=bearer(access_token), timeout=5)
    assert r.status_code == 200
    assert r.json()["scopes"] == ["read", "write"]


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "beaRer"])
def test_scheme_is_case_insensitive(url, token, scheme):
    r = requests.get(url + "/read", headers={"Authorization": f"{scheme} {token}"}, timeout=5)
    assert r.status_code == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
def test_form_body_token_is_accepted(url, token, method):
    r = requests.request(method, url + "/read", data={"access_token": token, "item": "tea"},
                         timeout=5)
    assert r.status_code == 200, r.text
    assert r.json()["form"] == {"access_token": token, "item": "tea"}


def test_no_scope_required_accepts_a_token_without_scope(url, idp, client):
    token = idp.issue_token(client.client_id, scope=[], audience=AUDIENCE)
    r = requests.get(url + "/any", headers=bearer(token), timeout=5)
    assert r.status_code == 200
    assert r.json()["scopes"] == []


# -- 401 without credentials -----------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Basic Zm9vOmJhcg=="},
                                     {"Authorization": "Bearertoken"}])
def test_no_bearer_credentials_is_a_bare_401(url, headers):
    r = requests.get(url + "/read", headers=headers, timeout=5)
    assert_answer(r, 401, NO_TOKEN, {"error_description": NEEDS_TOKEN})


@pytest.mark.parametrize("how", ["get-form-body", "post-json-body", "post-multipart-body"])
def test_a_body_token_outside_rfc6750_section_2_2_is_not_a_credential(url, token, how):
    if how == "get-form-body":  # GET must not carry it (its body has no defined semantics)
        r = requests.get(url + "/read", data={"access_token": token}, timeout=5)
    elif how == "post-json-body":
        r = requests.post(url + "/read", json={"access_token": token}, timeout=5)
    else:
        r = requests.post(url + "/read", files={"access_token": (None, token)}, timeout=5)
    assert_answer(r, 401, NO_TOKEN, {"error_description": NEEDS_TOKEN})


def test_delete_body_is_not_a_credential(url, token):
    r = requests.delete(url + "/read", data={"access_token": token}, timeout=5)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == NO_TOKEN


# -- 400 invalid_request ---------------------------------------------------------------------


def invalid_request(description: str) -> str:
    return f'Bearer {REALM}, error="invalid_request", error_description="{description}"'


@pytest.mark.parametrize(("authorization", "description"), [
    ("Bearer", "the Bearer scheme without a token"),
    ("bearer", "the Bearer scheme without a token"),
    ("Bearer  TOKEN", "Bearer and the token must be separated by exactly one space "
                      "(RFC 6750 section 2.1)"),
    ("Bearer\tTOKEN", "Bearer and the token must be separated by exactly one space "
                      "(RFC 6750 section 2.1)"),
    ("Bearer TOKEN junk", "the Bearer credentials are not one token68 (RFC 6750 section 2.1)"),
    ("Bearer TOKEN=junk", "the Bearer credentials are not one token68 (RFC 6750 section 2.1)"),
    ('Bearer "TOKEN"', "the Bearer credentials are not one token68 (RFC 6750 section 2.1)"),
    ("Bearer TOKEN, Basic Zm9vOmJhcg==", "more than one Authorization header, or more than "
                                         "one set of credentials in it"),
])
def test_malformed_bearer_header_is_400(url, token, authorization, description):
    r = requests.get(url + "/read", headers={"Authorization":
                                             authorization.replace("TOKEN", token)}, timeout=5)
    body = {"error": "invalid_request", "error_description": description}
    assert_answer(r, 400, invalid_request(description), body)


def test_two_authorization_headers_are_400(url, token):
    status, challenge = raw_get(url, "/read", [("Authorization", f"Bearer {token}"),
                                               ("Authorization", f"Bearer {token}")])
    assert status == 400
    assert challenge == invalid_request("more than one Authorization header, or more than "
                                        "one set of credentials in it")


def test_empty_authorization_header_is_400(url):
    status, challenge = raw_get(url, "/read", [("Authorization", "")])
    assert status == 400
    assert challenge == invalid_request("the Authorization header is empty")


QUERY = ("an access_token in the URL query is not accepted (RFC 6750 section 2.3); send it "
         "in the Authorization header")


def test_query_token_is_rejected(url, token, api):
    r = requests.get(url + "/read", params={"access_token": token}, timeout=5)
    assert_answer(r, 400, invalid_request(QUERY),
                  {"error": "invalid_request", "error_description": QUERY})
    assert api[1] == []  # the view never ran


def test_query_token_is_rejected_even_with_a_good_header(url, token):
    r = requests.get(url + "/read", params={"access_token": token}, headers=bearer(token),
                     timeout=5)
    assert r.status_code == 400
    assert r.headers["WWW-Authenticate"] == invalid_request(QUERY)


def test_token_sent_two_ways_is_400(url, token):
    r = requests.post(url + "/read", headers=bearer(token), data={"access_token": token},
                      timeout=5)
    description = ("the token was sent in more than one way (Authorization header and form "
                   "body; RFC 6750 section 2)")
    assert_answer(r, 400, invalid_request(description),
                  {"error": "invalid_request", "error_description": description})


def test_two_body_tokens_are_400(url, token):
    r = requests.post(url + "/read", data=[("access_token", token), ("access_token", token)],
                      timeout=5)
    assert r.status_code == 400
    assert r.headers["WWW-Authenticate"] == invalid_request(
        "more than one access_token in the body")


def test_body_token_that_is_not_a_token68_is_400(url):
    r = requests.post(url + "/read", data={"access_token": "a b"}, timeout=5)
    assert r.status_code == 400
    assert r.headers["WWW-Authenticate"] == invalid_request(
        "the access_token in the body is not a token68 (RFC 6750 section 2.1)")


# -- 401 invalid_token -----------------------------------------------------------------------


def invalid_token(description: str) -> str:
    return f'Bearer {REALM}, error="invalid_token", error_description="{description}"'


def _bad_tokens(idp, good: str) -> dict[str, tuple[str, str]]:
    cid, now = "flask-client", idp.clock()
    return {
        "expired": (idp.issue_token(cid, audience=AUDIENCE, expires_in=-100),
                    "expired 100 s ago (leeway 30 s)"),
        "not yet valid": (idp.issue_token(cid, audience=AUDIENCE, claims={"nbf": now + 600}),
                          "not valid for another 600 s (nbf; leeway 30 s)"),
        "issued in the future": (idp.issue_token(cid, audience=AUDIENCE,
                                                 claims={"iat": now + 90}),
                                 "issued 90 s in the future (iat; leeway 30 s)"),
        "bad signature": (idp.tampered(good), "the signature does not verify"),
        "wrong audience": (idp.issue_token(cid, audience="https://other.test"),
                           "aud does not name this API"),
        "wrong issuer": (idp.issue_token(cid, audience=AUDIENCE,
                                         claims={"iss": "https://evil.test"}),
                         "iss is 'https://evil.test', not the configured issuer"),
        "missing claim": (idp.issue_token(cid, audience=AUDIENCE, claims={"exp": None}),
                          "claim exp is missing"),
        "unsigned": (idp.issue_token(cid, audience=AUDIENCE, alg="none"),
                     "alg 'none' is not allowed"),
        "not an access token": (idp.issue_token(cid, audience=AUDIENCE,
                                                headers={"typ": "JWT"}),
                                "typ is 'JWT', not at+jwt: not an access token (RFC 9068)"),
        "not a JWT": ("abc", "1 segments; a compact JWS has three"),
    }


@pytest.mark.parametrize("case", ["expired", "not yet valid", "issued in the future",
                                  "bad signature", "wrong audience", "wrong issuer",
                                  "missing claim", "unsigned", "not an access token",
                                  "not a JWT"])
def test_invalid_token_is_401_with_the_validators_description(url, idp, token, case):
    bad, description = _bad_tokens(idp, token)[case]
    r = requests.get(url + "/read", headers=bearer(bad), timeout=5)
    assert_answer(r, 401, invalid_token(description),
                  {"error": "invalid_token", "error_description": description})


def test_unknown_key_is_401_naming_the_kid(url, idp, client):
    bad = idp.issue_token(client.client_id, audience=AUDIENCE, signing_key="unpublished")
    r = requests.get(url + "/read", headers=bearer(bad), timeout=5)
    assert r.status_code == 401
    assert re.fullmatch(
        r'Bearer realm="https://api\.test", error="invalid_token", '
        r"error_description=\"no key '[A-Za-z0-9_-]{40}\.\.\.' in the issuer's JWKS\"",
        r.headers["WWW-Authenticate"])


def test_invalid_body_token_is_401_too(url, idp, token):
    r = requests.post(url + "/read", data={"access_token": idp.tampered(token)}, timeout=5)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == invalid_token("the signature does not verify")


def test_token_expiring_between_calls(url, token, frozen):
    assert requests.get(url + "/read", headers=bearer(token), timeout=5).status_code == 200
    frozen.advance(300 + 30 + 5)  # default lifetime 300 s, then past the leeway
    r = requests.get(url + "/read", headers=bearer(token), timeout=5)
    assert r.headers["WWW-Authenticate"] == invalid_token("expired 35 s ago (leeway 30 s)")


def test_no_token_in_logs(url, idp, token, caplog):
    caplog.set_level(logging.DEBUG, logger="m2mauth")
    requests.get(url + "/read", headers=bearer(idp.tampered(token)), timeout=5)
    requests.get(url + "/read-write", headers=bearer(token), timeout=5)
    assert "invalid_token (bad_signature) for GET /read" in caplog.text
    assert "insufficient_scope for GET /read-write: missing write" in caplog.text
    assert token.split(".")[2][:20] not in caplog.text
    assert token.split(".")[1][:20] not in caplog.text


# -- 403 insufficient_scope ------------------------------------------------------------------


def test_insufficient_scope_is_403_listing_the_required_scopes(url, token):
    r = requests.get(url + "/read-write", headers=bearer(token), timeout=5)
    assert_answer(
        r, 403,
        f'Bearer {REALM}, error="insufficient_scope", '
        'error_description="the token lacks scope write", scope="read write"',
        {"error": "insufficient_scope", "error_description": "the token lacks scope write",
         "scope": "read write"})


def test_insufficient_scope_lists_all_missing(url, idp, client):
    token = idp.issue_token(client.client_id, scope=[], audience=AUDIENCE)
    r = requests.get(url + "/read-write", headers=bearer(token), timeout=5)
    assert r.status_code == 403
    assert r.headers["WWW-Authenticate"] == (
        f'Bearer {REALM}, error="insufficient_scope", '
        'error_description="the token lacks scope read write", scope="read write"')


# -- 503: keys cannot be had -----------------------------------------------------------------

UNAVAILABLE = {"error": "temporarily_unavailable",
               "error_description": "the access token cannot be checked now: the issuer's "
                                    "signing keys are unavailable; try again later"}


def test_failing_jwks_and_nothing_cached_is_503_then_recovers(api, idp, token, frozen):
    url, seen = api
    idp.fail_next(1, endpoint="jwks", status=500, error="server_error")
    r = requests.get(url + "/read", headers=bearer(token), timeout=5)
    assert_answer(r, 503, None, UNAVAILABLE)
    assert [q.status for q in idp.jwks_requests] == [500]
    assert seen == []
    # within the JWKS cache's failure backoff no new fetch; after it the keys are fetched
    r = requests.get(url + "/read", headers=bearer(token), timeout=5)
    assert r.status_code == 503
    assert len(idp.jwks_requests) == 1
    frozen.advance(6)
    r = requests.get(url + "/read", headers=bearer(token), timeout=5)
    assert r.status_code == 200
    assert [q.status for q in idp.jwks_requests] == [500, 200]


def test_dropped_jwks_connection_is_503(url, idp, token):
    idp.fail_next(1, endpoint="jwks", kind="drop")
    r = requests.get(url + "/read", headers=bearer(token), timeout=5)
    assert_answer(r, 503, None, UNAVAILABLE)


def test_cached_keys_keep_working_while_the_jwks_fails(url, idp, token, client):
    assert requests.get(url + "/read", headers=bearer(token), timeout=5).status_code == 200
    idp.fail_next(5, endpoint="jwks", status=503)
    other = idp.issue_token(client.client_id, scope="read write", audience=AUDIENCE)
    r = requests.get(url + "/read-write", headers=bearer(other), timeout=5)
    assert r.status_code == 200
    assert len(idp.jwks_requests) == 1  # the cached set served; no fetch was even needed


def test_unreachable_issuer_is_503(token):
    with socket_closed_port() as port:
        validator = TokenValidator(f"http://127.0.0.1:{port}", AUDIENCE, timeout=2)
        app, _ = make_app(validator)
        with serving(app) as url:
            r = requests.get(url + "/read", headers=bearer(token), timeout=5)
    assert_answer(r, 503, None, UNAVAILABLE)


@contextmanager
def socket_closed_port() -> Iterator[int]:
    """A loopback port nobody listens on (bound without listen, so connections are refused
    and no other test can take it meanwhile)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# -- realm, escaping, decoration ----------------------------------------------------------------


def test_explicit_realm_is_escaped(validator, token):
    realm = 'the "orders" API \\ eu'
    app, _ = make_app(validator, realm=realm)
    with serving(app) as url:
        r = requests.get(url + "/read", timeout=5)
        bad = requests.get(url + "/read-write", headers=bearer(token), timeout=5)
    assert r.headers["WWW-Authenticate"] == (r'Bearer realm="the \"orders\" API \\ eu", '
                                             r'DPoP realm="the \"orders\" API \\ eu", ' + ALGS)
    (challenge,) = parse_challenges(bad.headers["WWW-Authenticate"])
    assert challenge.scheme.lower() == "bearer"
    assert challenge.params["realm"] == realm
    assert challenge.params["scope"] == "read write"


def test_default_realm_is_the_first_audience_else_the_issuer(idp):
    several = TokenValidator(idp.issuer, ["https://a.test", "https://b.test"])
    app = Flask(__name__)
    app.add_url_rule("/a", "a", require_token(several)(lambda: "ok"))

    class IssuerOnly:
        issuer = "https://issuer.test"

        def validate(self, token, scopes=()):
            raise AssertionError("not reached")

    app.add_url_rule("/b", "b", require_token(IssuerOnly())(lambda: "ok"))
    with serving(app) as url:
        assert requests.get(url + "/a", timeout=5).headers["WWW-Authenticate"] == \
            f'Bearer realm="https://a.test", DPoP realm="https://a.test", {ALGS}'
        assert requests.get(url + "/b", timeout=5).headers["WWW-Authenticate"] == \
            'Bearer realm="https://issuer.test"'


def test_bearer_challenge_escapes_quoted_strings():
    assert bearer_challenge("r") == 'Bearer realm="r"'
    value = bearer_challenge('a"b\\c', "invalid_token", 'say "x" \\ \x00 é', "s1 s2")
    assert value == (r'Bearer realm="a\"b\\c", error="invalid_token", '
                     r'error_description="say \"x\" \\ ? ?", scope="s1 s2"')
    (challenge,) = parse_challenges(value)
    assert dict(challenge.params) == {"realm": 'a"b\\c', "error": "invalid_token",
                                      "error_description": 'say "x" \\ ? ?', "scope": "s1 s2"}


@pytest.mark.parametrize("scopes", [["a b"], ['x"y'], [""], ["é"], [1]])
def test_bad_scope_is_refused_when_decorating(validator, scopes):
    with pytest.raises(ValueError, match="not a valid scope"):
        require_token(validator, scopes)


def test_wraps_keeps_the_view_name(validator):
    def orders():
        """List orders."""

    wrapped = require_token(validator, "read")(orders)
    assert wrapped.__name__ == "orders" and wrapped.__doc__ == "List orders."


def test_async_view(validator, token):
    pytest.importorskip("asgiref", reason="Flask runs async views with flask[async]")
    app = Flask(__name__)

    @app.get("/async")
    @require_token(validator, "read")
    async def view():
        return {"client_id": g.token.client_id}

    with serving(app) as url:
        assert requests.get(url + "/async", timeout=5).status_code == 401
        r = requests.get(url + "/async", headers=bearer(token), timeout=5)
    assert r.json() == {"client_id": "flask-client"}


def test_async_wrapper_without_a_server(validator, token):
    """The async wrapper itself (Flask needs asgiref to run it; called directly here)."""
    import asyncio
    import inspect

    async def view():
        return {"client_id": g.token.client_id}

    wrapped = require_token(validator, "read")(view)
    assert inspect.iscoroutinefunction(wrapped)
    app = Flask(__name__)
    with app.test_request_context("/", headers=bearer(token)):
        assert asyncio.run(wrapped()) == {"client_id": "flask-client"}
    with app.test_request_context("/"):
        answer = asyncio.run(wrapped())
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"] == NO_TOKEN
