"""RFC 7662 introspection, RFC 7009 revocation and opaque tokens, end to end over HTTP:
never ``active`` for a token the server would not honour, the RFC's errors, bounded stores,
and the lab's controls, logs and faults on both endpoints."""

from __future__ import annotations

import base64
import json
import os
import subprocess

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey

from m2mauth.client import client_secret_jwt_assertion, private_key_jwt_assertion
from m2mauth.server import ClientSettings
from m2mauth.server.introspection import revocation_key
from m2mauth.server.lab.controls import ControlError
from m2mauth.server.store import MemoryStore

GRANT = {"grant_type": "client_credentials"}
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
RS = ("resource-server", "rs-secret-0123456")
SVC = ("svc", "svc-secret-0123456")
OPAQUE = ("opaque-svc", "opaque-secret-01234")
OTHER = ("other-svc", "other-secret-01234")
INACTIVE = {"active": False}
#: The order n of the P-256 group (SEC 2), for the other signature (r, n - s).
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _clients() -> list[ClientSettings]:
    return [
        ClientSettings(RS[0], client_secret=RS[1], introspect=True),
        ClientSettings(SVC[0], client_secret=SVC[1], scopes=("read", "write")),
        ClientSettings(OPAQUE[0], client_secret=OPAQUE[1], scopes=("read",),
                       token_format="opaque"),
        ClientSettings(OTHER[0], client_secret=OTHER[1], scopes=("read",)),
    ]


@pytest.fixture
def server(idp_factory):
    return idp_factory(clients=_clients())


def token(server, auth=SVC, **form) -> str:
    answer = requests.post(server.token_endpoint, data={**GRANT, **form}, auth=auth, timeout=5)
    assert answer.status_code == 200, answer.text
    return answer.json()["access_token"]


def introspect(server, tok: str, auth=RS, **form) -> requests.Response:
    return requests.post(server.issuer + "/introspect", data={"token": tok, **form}, auth=auth,
                         timeout=5)


def active(server, tok: str) -> dict:
    answer = introspect(server, tok)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Cache-Control"] == "no-store"
    return answer.json()


def revoke(server, tok: str, auth=SVC, **form) -> requests.Response:
    return requests.post(server.issuer + "/revoke", data={"token": tok, **form}, auth=auth,
                         timeout=5)


# -- metadata -----------------------------------------------------------------------------


def test_metadata_names_both_endpoints(server):
    meta = requests.get(server.metadata_url, timeout=5).json()
    assert meta["introspection_endpoint"] == server.issuer + "/introspect"
    assert meta["revocation_endpoint"] == server.issuer + "/revoke"
    for name in ("introspection", "revocation"):
        assert meta[f"{name}_endpoint_auth_methods_supported"] == meta[
            "token_endpoint_auth_methods_supported"]
        assert "ES256" in meta[f"{name}_endpoint_auth_signing_alg_values_supported"]


# -- active answers -----------------------------------------------------------------------


def test_an_active_jwt_is_described(server):
    tok = token(server, scope="read")
    answer = active(server, tok)
    assert answer["active"] is True
    assert set(answer) == {"active", "scope", "client_id", "sub", "aud", "iss", "exp", "iat",
                           "nbf", "jti", "token_type"}
    assert (answer["client_id"], answer["sub"], answer["scope"]) == ("svc", "svc", "read")
    assert answer["iss"] == server.issuer and answer["token_type"] == "Bearer"
    assert answer["exp"] - answer["iat"] == 300


def test_opaque_tokens_are_random_and_answered_only_by_introspection(server):
    answer = requests.post(server.token_endpoint, data=GRANT, auth=OPAQUE, timeout=5).json()
    assert set(answer) == {"access_token", "token_type", "expires_in", "scope"}
    tok = answer["access_token"]
    assert "." not in tok and len(tok) == 43  # 32 random bytes, base64url
    described = active(server, tok)
    assert described["active"] is True and described["client_id"] == OPAQUE[0]
    assert described["exp"] - described["iat"] == answer["expires_in"]
    assert token(server, auth=OPAQUE) != tok
    # The store holds a hash of the token, never the token itself.
    assert tok not in repr(vars(server.core.store))


def test_a_server_default_of_opaque(idp_factory):
    server = idp_factory(clients=_clients(), token_format="opaque")
    tok = token(server)
    assert "." not in tok and active(server, tok)["active"] is True


# -- never active for a token the server would not honour ---------------------------------


@pytest.mark.parametrize("case", [
    "expired", "expired-opaque", "not-yet-valid", "issued-in-the-future", "unknown-opaque",
    "garbage", "malformed-jwt", "tampered", "unpublished-key", "alg-none", "wrong-typ",
    "no-exp", "no-jti", "no-iat", "no-sub", "no-aud", "aud-not-strings", "exp-as-string",
    "other-issuer", "retired-key", "revoked",
    "revoked-opaque",
])
def test_inactive_tokens_get_active_false_and_nothing_more(server, idp_factory, case):
    now = server.clock.now()
    if case == "expired":
        tok = token(server)
        server.clock.advance(301)
    elif case == "expired-opaque":
        tok = token(server, auth=OPAQUE)
        server.clock.advance(301)
    elif case == "not-yet-valid":
        tok = server.issue_token("svc", claims={"nbf": int(now) + 120})
    elif case == "issued-in-the-future":
        tok = server.issue_token("svc", claims={"iat": int(now) + 120})
    elif case == "unknown-opaque":
        tok = "x" * 43
    elif case == "garbage":
        tok = "not a token at all"
    elif case == "malformed-jwt":
        tok = "eyJhbGciOiJSUzI1NiJ9.e30.c2ln"
    elif case == "tampered":
        tok = server.tampered(token(server))
    elif case == "unpublished-key":
        tok = server.issue_token("svc", signing_key="unpublished")
    elif case == "alg-none":
        tok = server.issue_token("svc", alg="none")
    elif case == "wrong-typ":
        tok = server.issue_token("svc", headers={"typ": "JWT"})
    elif case == "no-exp":
        tok = server.issue_token("svc", claims={"exp": None})
    elif case == "no-jti":
        tok = server.issue_token("svc", claims={"jti": None})
    elif case in ("no-iat", "no-sub", "no-aud"):
        tok = server.issue_token("svc", claims={case.removeprefix("no-"): None})
    elif case == "aud-not-strings":
        tok = server.issue_token("svc", claims={"aud": [1, 2]})
    elif case == "exp-as-string":
        tok = server.issue_token("svc", claims={"exp": str(int(now) + 300)})
    elif case == "other-issuer":
        tok = token(idp_factory(clients=_clients()))
    elif case == "retired-key":
        tok = token(server)
        old = next(k["kid"] for k in server.keys() if k["status"] == "active")  # noqa: SIM118
        server.rotate_key()
        server.retire_key(old)
    elif case == "revoked":
        tok = token(server)
        assert revoke(server, tok).status_code == 200
    else:
        tok = token(server, auth=OPAQUE)
        assert revoke(server, tok, auth=OPAQUE).status_code == 200
    assert active(server, tok) == INACTIVE


@pytest.mark.parametrize(("claim", "value"), [
    ("exp", 10**400), ("nbf", -(10**400)), ("iat", -(10**400))], ids=["exp", "nbf", "iat"])
def test_a_time_beyond_any_float_is_inactive_not_a_500(server, claim, value):
    """JSON numbers have no bound: an integer no float can hold is no time (the validator
    says "out of range"); it was an OverflowError, a 500, at both endpoints."""
    tok = server.issue_token("svc", claims={claim: value})
    assert active(server, tok) == INACTIVE
    answer = revoke(server, tok)
    assert (answer.status_code, answer.json()) == (200, {})


# -- who may ask --------------------------------------------------------------------------


def test_only_clients_allowed_to_introspect_may(server):
    tok = token(server)
    refused = introspect(server, tok, auth=SVC)
    assert refused.status_code == 400
    assert refused.json()["error"] == "unauthorized_client"
    assert "svc" not in refused.text.replace("svc-", "")  # nothing about the token either
    wrong = introspect(server, tok, auth=(RS[0], "wrong-secret"))
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    assert wrong.headers["WWW-Authenticate"].startswith("Basic")
    anonymous = requests.post(server.issuer + "/introspect", data={"token": tok}, timeout=5)
    assert anonymous.status_code in (400, 401) and anonymous.json()["error"] == "invalid_client"


def test_every_client_auth_method_can_introspect(server):
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = ECKey.import_key(key).as_dict(private=False)
    server.add_client("rs-jwt", jwks={"keys": [jwk]}, introspect=True)
    server.add_client("rs-hmac", client_secret="rs-hmac-secret-0123456789abcdefghij",
                      introspect=True)
    tok = token(server)
    url = server.issuer + "/introspect"
    by_post = requests.post(url, timeout=5, data={"token": tok, "client_id": RS[0],
                                                   "client_secret": RS[1]})
    by_key = requests.post(url, timeout=5, data={
        "token": tok, "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": private_key_jwt_assertion("rs-jwt", url, key)})
    by_hmac = requests.post(url, timeout=5, data={
        "token": tok, "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client_secret_jwt_assertion(
            "rs-hmac", url, "rs-hmac-secret-0123456789abcdefghij")})
    for answer in (by_post, by_key, by_hmac):
        assert answer.status_code == 200, answer.text
        assert answer.json()["active"] is True


# -- bad input ----------------------------------------------------------------------------


def test_bad_introspection_requests_get_rfc_errors(server):
    url = server.issuer + "/introspect"
    tok = token(server)
    missing = requests.post(url, data={}, auth=RS, timeout=5)
    assert (missing.status_code, missing.json()["error"]) == (400, "invalid_request")
    repeated = requests.post(url, data=[("token", tok), ("token", tok)], auth=RS, timeout=5)
    assert (repeated.status_code, repeated.json()["error"]) == (400, "invalid_request")
    huge = requests.post(url, data={"token": "a" * 20_000}, auth=RS, timeout=5)
    assert (huge.status_code, huge.json()["error"]) == (400, "invalid_request")
    assert "longer than" in huge.json()["error_description"]
    as_json = requests.post(url, json={"token": tok}, auth=RS, timeout=5)
    assert (as_json.status_code, as_json.json()["error"]) == (400, "invalid_request")
    in_query = requests.post(url + "?token=" + tok, auth=RS, timeout=5)
    assert (in_query.status_code, in_query.json()["error"]) == (400, "invalid_request")
    # RFC 7662 section 2.1: an unknown hint is no error, and a wrong one does not hide it.
    for hint in ("refresh_token", "something_else"):
        assert active(server, tok) == introspect(server, tok, token_type_hint=hint).json()
    assert requests.get(url, timeout=5).status_code == 405


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize(("path", "caller"), [("/introspect", RS), ("/revoke", SVC)])
def test_both_endpoints_check_the_request_as_the_token_endpoint_does(server, path, caller):
    """RFC 6749 section 2.3 (one authentication method per request) and the token
    endpoint's other checks of the request itself, at introspection and revocation too: they
    were accepted there, and an assertion nested too deeply was a 500."""
    tok = token(server)
    url = server.issuer + path
    client_id, secret = caller
    nested = ".".join((_b64url(b'{"alg": "HS256"}'), _b64url(b"[" * 20_000 + b"]" * 20_000),
                       "c2ln"))
    refused = {
        "header and body": dict(auth=caller, data={"token": tok, "client_id": client_id,
                                                   "client_secret": secret}),
        "another client_id": dict(auth=caller, data={"token": tok, "client_id": "other-svc"}),
        "secret and assertion": dict(data={
            "token": tok, "client_id": client_id, "client_secret": secret,
            "client_assertion_type": ASSERTION_TYPE, "client_assertion": "a.b.c"}),
        "repeated client_id": dict(data=[("token", tok), ("client_id", client_id),
                                         ("client_id", client_id), ("client_secret", secret)]),
        "repeated hint": dict(auth=caller, data=[("token", tok), ("token_type_hint", "a"),
                                                 ("token_type_hint", "b")]),
    }
    for case, request in refused.items():
        answer = requests.post(url, timeout=5, **request)
        assert (answer.status_code, answer.json()["error"]) == (400, "invalid_request"), case
    deep = requests.post(url, timeout=5, data={
        "token": tok, "client_id": client_id, "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": nested})
    assert (deep.status_code, deep.json()["error"]) == (400, "invalid_client")
    assert active(server, tok)["active"] is True


# -- revocation ---------------------------------------------------------------------------


def test_a_client_revokes_its_own_token_until_it_expires(server):
    tok = token(server)
    key = revocation_key(active(server, tok))
    answer = revoke(server, tok, token_type_hint="access_token")
    assert (answer.status_code, answer.json()) == (200, {})
    assert active(server, tok) == INACTIVE
    assert server.core.store.is_revoked(key, server.clock.now())
    again = revoke(server, tok)  # RFC 7009 section 2.2: an invalid token is no error
    assert (again.status_code, again.json()) == (200, {})
    # The entry leaves once the token would have expired anyway.
    server.clock.advance(301)
    assert not server.core.store.is_revoked(key, server.clock.now())
    assert active(server, tok) == INACTIVE
    other = token(server)
    assert active(server, other)["active"] is True  # only that one token


def test_revoking_someone_elses_or_an_unknown_token_changes_nothing(server):
    tok = token(server)
    for attempt in (revoke(server, tok, auth=OTHER), revoke(server, "unknown-token"),
                    revoke(server, tok, token_type_hint="weird", auth=OTHER)):
        assert (attempt.status_code, attempt.json()) == (200, {})
    assert active(server, tok)["active"] is True


def test_revocation_needs_a_client_and_a_token(server):
    tok = token(server)
    wrong = revoke(server, tok, auth=(SVC[0], "wrong-secret"))
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    anonymous = requests.post(server.issuer + "/revoke", data={"token": tok}, timeout=5)
    assert anonymous.json()["error"] == "invalid_client"
    missing = requests.post(server.issuer + "/revoke", data={}, auth=SVC, timeout=5)
    assert (missing.status_code, missing.json()["error"]) == (400, "invalid_request")
    assert active(server, tok)["active"] is True


def test_revoking_a_token_never_revokes_another_clients_with_the_same_jti(server):
    """RFC 7009 section 2.1: a client revokes only tokens issued to it. The lab mints tokens
    with any jti, so two clients' tokens may share one; the list was keyed by jti alone."""
    mine = server.issue_token("svc", claims={"jti": "shared-jti"})
    theirs = server.issue_token("other-svc", claims={"jti": "shared-jti"})
    assert revoke(server, mine).status_code == 200
    assert active(server, mine) == INACTIVE
    assert active(server, theirs)["active"] is True
    assert server.revoke(theirs) is True  # the lab's revoke keys alike
    assert active(server, theirs) == INACTIVE


def test_a_revocation_lasts_until_the_revoked_tokens_exp(server):
    """Two tokens of one client with one jti (minted so): revoking the later-expiring one
    after the other keeps it revoked until its own exp, not the first one's."""
    short = server.issue_token("svc", claims={"jti": "reused"}, expires_in=60)
    long = server.issue_token("svc", claims={"jti": "reused"}, expires_in=3600)
    assert revoke(server, short).status_code == revoke(server, long).status_code == 200
    server.clock.advance(120)
    assert active(server, long) == INACTIVE


def test_a_revocation_entry_is_extended_in_place():
    """The store's list under repeated revocations of one key: the later expiry wins, and
    the list (its heap too) holds one entry, which leaves at that expiry."""
    store = MemoryStore(max_revocations=1)
    for expires_at in (100.0, 50.0, 300.0, 200.0):
        assert store.revoke("key", expires_at, now=0.0)
    assert store.is_revoked("key", 250.0)
    assert (len(store._revoked.entries), len(store._revoked.expiry)) == (1, 1)
    assert store.revoke("another", 400.0, now=301.0)  # "key" left at 300: room again
    assert not store.is_revoked("key", 301.0)


def test_a_revoked_es256_token_stays_revoked_in_its_other_signature(server):
    """ECDSA signatures are malleable: (r, n - s) verifies as well as (r, s), so a revoked
    ES256 token has a twin string the server also honours. Revocation follows the token's
    identity (client and jti), never the string's hash, so the twin is revoked too."""
    tok = token(server)
    head, _, signature = tok.rpartition(".")
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    s_value = int.from_bytes(raw[32:], "big")
    other = raw[:32] + (P256_ORDER - s_value).to_bytes(32, "big")
    twin = head + "." + base64.urlsafe_b64encode(other).rstrip(b"=").decode()
    assert twin != tok and active(server, twin)["active"] is True
    assert revoke(server, tok).status_code == 200
    assert active(server, tok) == active(server, twin) == INACTIVE


def test_the_revocation_list_is_bounded_and_never_forgets(idp_factory):
    server = idp_factory(clients=_clients(), max_revocations=2)
    first, second, third = token(server), token(server), token(server)
    assert revoke(server, first).status_code == revoke(server, second).status_code == 200
    full = revoke(server, third)
    assert (full.status_code, full.json()["error"]) == (503, "temporarily_unavailable")
    assert active(server, first) == active(server, second) == INACTIVE
    assert active(server, third)["active"] is True  # refused, and it says so
    server.clock.advance(301)  # the two leave with their tokens' expiry
    fourth = token(server)
    assert revoke(server, fourth).status_code == 200


def test_the_opaque_token_store_is_bounded(idp_factory):
    server = idp_factory(clients=_clients(), max_opaque_tokens=2)
    kept = [token(server, auth=OPAQUE), token(server, auth=OPAQUE)]
    full = requests.post(server.token_endpoint, data=GRANT, auth=OPAQUE, timeout=5)
    assert (full.status_code, full.json()["error"]) == (503, "temporarily_unavailable")
    assert all(active(server, tok)["active"] for tok in kept)
    assert token(server)  # JWTs are not held, so not refused
    server.clock.advance(301)
    assert token(server, auth=OPAQUE)


# -- the lab ------------------------------------------------------------------------------


def test_requests_are_logged_without_tokens(server):
    tok = token(server)
    active(server, tok)
    introspect(server, tok, auth=SVC)
    revoke(server, tok)
    revoke(server, tok, auth=OTHER)
    active(server, tok)
    outcomes = [(r.client_id, r.status, r.outcome) for r in server.introspection_requests]
    assert outcomes == [(RS[0], 200, "active"), (SVC[0], 400, "unauthorized_client"),
                        (RS[0], 200, "inactive")]
    assert server.introspection_requests[0].jti == server.revocation_requests[0].jti
    assert [(r.client_id, r.outcome) for r in server.revocation_requests] == [
        (SVC[0], "revoked"), (OTHER[0], "unchanged")]
    everything = repr(server.introspection_requests) + repr(server.revocation_requests)
    assert tok not in everything and RS[1] not in everything
    logged = requests.get(server.admin_url + "/requests/revocation", timeout=5).json()
    assert [r["outcome"] for r in logged["requests"]] == ["revoked", "unchanged"]


def test_faults_on_both_endpoints(server):
    tok = token(server)
    server.fail_next(endpoint="introspection", status=503)
    assert introspect(server, tok).status_code == 503
    assert active(server, tok)["active"] is True
    server.fail_next(endpoint="introspection", kind="malformed")
    malformed = introspect(server, tok)
    assert malformed.status_code == 200 and malformed.text == '{"active": tr'
    server.fail_next(endpoint="revocation", status=500)
    assert revoke(server, tok).status_code == 500
    assert active(server, tok)["active"] is True  # the fault answered; nothing revoked
    assert [r.fault for r in server.introspection_requests] == [
        "error", None, "malformed", None]
    assert [r.fault for r in server.revocation_requests] == ["error"]


def test_the_lab_revokes_and_introspects_without_http(server):
    tok = token(server)
    assert server.introspect(tok)["active"] is True
    assert server.revoke(tok) is True
    assert server.introspect(tok) == INACTIVE == active(server, tok)
    assert server.revoke(tok) is False
    minted = server.issue_token("svc", token_format="opaque")
    assert "." not in minted and active(server, minted)["active"] is True
    over_http = requests.post(server.admin_url + "/revoke", json={"token": minted}, timeout=5)
    assert over_http.json() == {"revoked": True}
    assert requests.post(server.admin_url + "/introspect", json={"token": minted},
                         timeout=5).json() == INACTIVE
    revoked = token(server)
    server.revoke(revoked)
    server.reset()  # revocations and opaque tokens go with the reset, as every change does
    assert server.introspect(revoked)["active"] is True
    assert server.introspect(minted) == INACTIVE


def test_the_lab_refuses_an_opaque_token_it_cannot_keep(idp_factory):
    """An opaque token lives in the store until its exp: minting one without a usable exp, or
    with the store full, is a control error naming the field (it was a 500 at
    /admin/tokens, a KeyError or OverflowError from idp.issue_token)."""
    server = idp_factory(clients=_clients(), max_opaque_tokens=1)
    url = server.admin_url + "/tokens"
    for exp in (None, 10**400, "soon", True):
        with pytest.raises(ControlError) as caught:
            server.issue_token("svc", claims={"exp": exp}, token_format="opaque")
        assert caught.value.field == "claims"
    refused = requests.post(url, timeout=5, json={
        "client_id": "svc", "token_format": "opaque", "claims": {"exp": None}})
    assert (refused.status_code, refused.json()["field"]) == (400, "claims")
    assert server.issue_token("svc", claims={"exp": None})  # a JWT needs no exp to be minted
    kept = server.issue_token("svc", token_format="opaque")
    full = requests.post(url, timeout=5, json={"client_id": "svc", "token_format": "opaque"})
    assert (full.status_code, full.json()["field"]) == (400, "token_format")
    assert "max_opaque_tokens" in full.json()["error_description"]
    assert active(server, kept)["active"] is True


def test_admin_api_adds_an_introspecting_client(server):
    added = requests.post(server.admin_url + "/clients", timeout=5,
                          json={"client_id": "rs2", "introspect": True, "token_format": "jwt"})
    assert added.status_code == 201, added.text
    secret = added.json()["client_secret"]
    assert introspect(server, token(server), auth=("rs2", secret)).json()["active"] is True
    bad = requests.post(server.admin_url + "/clients", timeout=5,
                        json={"client_id": "rs3", "token_format": "paseto"})
    assert bad.status_code == 400 and bad.json()["field"] == "token_format"


# -- a third-party client -----------------------------------------------------------------


def test_authlib_introspects_and_revokes(server):
    from authlib.integrations.requests_client import OAuth2Session

    tok = token(server)
    with OAuth2Session(RS[0], RS[1]) as rs:
        described = rs.introspect_token(server.issuer + "/introspect", token=tok).json()
    assert described["active"] is True and described["client_id"] == SVC[0]
    with OAuth2Session(SVC[0], SVC[1]) as svc:
        assert svc.revoke_token(server.issuer + "/revoke", token=tok).status_code == 200
    with OAuth2Session(RS[0], RS[1], token_endpoint_auth_method="client_secret_post") as rs:
        assert rs.introspect_token(server.issuer + "/introspect",
                                   token=tok).json() == INACTIVE


_OPENID_CLIENT_SCRIPT = """\
import * as client from "openid-client";

const [issuer, token, rsId, rsSecret, svcId, svcSecret] = process.argv.slice(2);
const discover = (id, secret) => client.discovery(new URL(issuer), id, undefined,
  client.ClientSecretBasic(secret), { algorithm: "oauth2" });
const rs = await discover(rsId, rsSecret);
const svc = await discover(svcId, svcSecret);
const before = await client.tokenIntrospection(rs, token);
await client.tokenRevocation(svc, token);
const after = await client.tokenIntrospection(rs, token);
console.log(JSON.stringify({ before, after }));
"""


def test_openid_client_introspects_and_revokes(idp_factory, openid_client):
    """openid-client 6 over TLS (it wants https), trusting the test CA: the metadata it
    needs is there (it failed with OAUTH_MISSING_SERVER_METADATA before)."""
    server = idp_factory(clients=_clients(), tls=True)
    tok = token_over_tls(server)
    (openid_client / "introspect.mjs").write_text(_OPENID_CLIENT_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("M2MAUTH_")}
    env["NODE_EXTRA_CA_CERTS"] = str(server.ca_bundle)
    done = subprocess.run(["node", "introspect.mjs", server.issuer, tok, *RS, *SVC],
                          cwd=openid_client, capture_output=True, text=True, timeout=60,
                          env=env)
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)
    assert answers["before"]["active"] is True and answers["before"]["client_id"] == SVC[0]
    assert answers["after"] == INACTIVE


def token_over_tls(server) -> str:
    answer = requests.post(server.token_endpoint, data=GRANT, auth=SVC, timeout=5,
                           verify=str(server.ca_bundle))
    assert answer.status_code == 200, answer.text
    return answer.json()["access_token"]


def test_serve_issues_opaque_tokens_on_request(cli_process):
    served = cli_process("serve", "--port", "0", "--token-format", "opaque")
    issuer = served.field("issuer")
    answer = requests.post(issuer + "/token", data=GRANT, auth=("demo-client", "demo-secret"),
                           timeout=5)
    assert answer.status_code == 200, answer.text
    assert "." not in answer.json()["access_token"]


def test_the_application_prefix_of_typ_is_the_same_type(server):
    for typ in ("application/at+jwt", "AT+JWT"):
        tok = server.issue_token("svc", headers={"typ": typ})
        assert active(server, tok)["active"] is True, typ
