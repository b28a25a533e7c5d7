"""The test controls through the Python handle (the plugin's ``idp`` fixture), end to end over
real HTTP against the session's server. Tokens are checked independently with PyJWT against
the published JWKS, never with server code."""

from __future__ import annotations

import json
import uuid

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from m2mauth.server.lab.controls import ControlError

SECRET = "s3cret-for-tests"  # conftest's shared secret for its session clients
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
T0 = 1_700_000_000  # a fixed instant to freeze the server's clock at


# -- helpers ---------------------------------------------------------------------------


def fetch(idp, client_id: str = "secret-client", secret: str = SECRET,
          **form) -> requests.Response:
    """A client-credentials request with HTTP Basic."""
    return requests.post(idp.token_endpoint, data={"grant_type": "client_credentials", **form},
                         auth=(client_id, secret), timeout=5)


def access_token(idp, *args, **form) -> str:
    response = fetch(idp, *args, **form)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def published(idp) -> dict:
    response = requests.get(idp.jwks_uri, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def kids(jwks: dict) -> set[str]:
    return {k["kid"] for k in jwks["keys"]}


def verify(idp, token: str, *, audience=None, jwks: dict | None = None, **options) -> dict:
    """Verify ``token`` with PyJWT against the issuer's JWKS (fetched over HTTP)."""
    kid = jwt.get_unverified_header(token)["kid"]
    matches = [k for k in (jwks or published(idp))["keys"] if k["kid"] == kid]
    assert matches, f"kid {kid!r} is not in the JWKS"
    key = jwt.PyJWK(matches[0])
    return jwt.decode(token, key, algorithms=[matches[0]["alg"]], issuer=idp.issuer,
                      audience=audience, options={"verify_aud": audience is not None, **options})


def unverified(token: str) -> tuple[dict, dict]:
    return jwt.get_unverified_header(token), jwt.decode(token, options={"verify_signature": False})


def client_key() -> tuple[ec.EllipticCurvePrivateKey, dict]:
    """An ES256 key for private_key_jwt and its public JWK (built with PyJWT)."""
    private = ec.generate_private_key(ec.SECP256R1())
    public = jwt.algorithms.ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    public.update(kid=f"k-{uuid.uuid4().hex[:8]}", alg="ES256", use="sig")
    return private, public


def assertion(idp, client_id: str, private, kid: str, *, lifetime: int = 60) -> str:
    """A private_key_jwt assertion dated by the *server's* clock."""
    now = int(idp.clock.now())
    claims = {"iss": client_id, "sub": client_id, "aud": idp.token_endpoint, "iat": now,
              "exp": now + lifetime, "jti": uuid.uuid4().hex}
    return jwt.encode(claims, private, algorithm="ES256", headers={"kid": kid})


def with_assertion(idp, token: str) -> requests.Response:
    return requests.post(idp.token_endpoint, timeout=5, data={
        "grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": token})


# -- add_client / remove_client --------------------------------------------------------


def test_add_client_generated_secret_works_at_the_token_endpoint(idp):
    client = idp.add_client("orders", scopes=["orders:read"], audiences=["https://orders.test"])
    assert client.client_id == "orders"
    assert isinstance(client.client_secret, str) and len(client.client_secret) >= 16
    assert client.client_secret not in repr(client)
    response = fetch(idp, "orders", client.client_secret)
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "orders:read"
    claims = verify(idp, response.json()["access_token"], audience="https://orders.test")
    assert claims["sub"] == claims["client_id"] == "orders"
    assert claims["scope"] == "orders:read"
    assert fetch(idp, "orders", client.client_secret + "x").status_code == 401
    assert "orders" in [c.client_id for c in idp.clients()]


def test_add_client_without_id_gets_a_fresh_one(idp):
    first, second = idp.add_client(), idp.add_client()
    assert first.client_id != second.client_id
    assert fetch(idp, first.client_id, first.client_secret).status_code == 200


def test_add_client_with_given_secret_and_scopes(idp):
    client = idp.add_client("given", client_secret="a-given-secret-123", scopes="a b")
    assert client.client_secret == "a-given-secret-123"
    assert client.scopes == ("a", "b")
    assert fetch(idp, "given", "a-given-secret-123").json()["scope"] == "a b"
    assert fetch(idp, "given", "a-given-secret-123", scope="b").json()["scope"] == "b"
    denied = fetch(idp, "given", "a-given-secret-123", scope="c")
    assert (denied.status_code, denied.json()["error"]) == (400, "invalid_scope")


def test_add_client_with_jwks_for_private_key_jwt(idp):
    private, public = client_key()
    client = idp.add_client("pkjwt", jwks={"keys": [public]}, scopes=["read"])
    assert client.client_secret is None
    assert client.auth_methods == ("private_key_jwt",)
    response = with_assertion(idp, assertion(idp, "pkjwt", private, public["kid"]))
    assert response.status_code == 200, response.text
    assert verify(idp, response.json()["access_token"])["client_id"] == "pkjwt"
    (entry,) = idp.token_requests
    assert (entry.client_id, entry.auth_method, entry.outcome) == (
        "pkjwt", "private_key_jwt", "issued")
    # A key the client did not register does not authenticate it.
    other, _ = client_key()
    refused = with_assertion(idp, assertion(idp, "pkjwt", other, public["kid"]))
    # No Basic header, so 400 (RFC 6749 section 5.2 requires 401 only after Basic).
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_client")


def test_add_client_claims_lifetime_audiences_and_algorithm_are_honoured(idp):
    client = idp.add_client(
        "custom", scopes=["x", "y"], default_scopes=["x"],
        audiences=["https://aud-1.test", "aud-2"], default_audience=["aud-2"],
        claims={"tenant": "t1", "tier": 3}, token_lifetime=120, algorithm="ES256",
    )
    body = fetch(idp, "custom", client.client_secret).json()
    assert body["expires_in"] == 120 and body["scope"] == "x"
    header, _ = unverified(body["access_token"])
    assert header["alg"] == "ES256" and header["typ"] == "at+jwt"
    claims = verify(idp, body["access_token"], audience="aud-2")
    assert (claims["tenant"], claims["tier"], claims["scope"]) == ("t1", 3, "x")
    assert claims["exp"] - claims["iat"] == 120
    chosen = fetch(idp, "custom", client.client_secret, resource="https://aud-1.test",
                   scope="x y").json()
    claims = verify(idp, chosen["access_token"], audience="https://aud-1.test")
    assert claims["aud"] == "https://aud-1.test" and claims["scope"] == "x y"
    refused = fetch(idp, "custom", client.client_secret, resource="https://aud-3.test")
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_target")


def test_add_client_auth_methods_are_enforced(idp):
    client = idp.add_client("post-client", auth_methods=["client_secret_post"])
    assert fetch(idp, "post-client", client.client_secret).status_code == 401
    posted = requests.post(idp.token_endpoint, timeout=5, data={
        "grant_type": "client_credentials", "client_id": "post-client",
        "client_secret": client.client_secret})
    assert posted.status_code == 200, posted.text


def test_a_client_added_in_one_test_is_added_here(idp):
    idp.add_client("leak-check", client_secret="leak-check-secret")
    assert fetch(idp, "leak-check", "leak-check-secret").status_code == 200


def test_and_is_gone_in_the_next(idp):
    assert "leak-check" not in [c.client_id for c in idp.clients()]
    assert fetch(idp, "leak-check", "leak-check-secret").status_code == 401


def test_clients_added_are_gone_after_reset(idp):
    client = idp.add_client("temporary")
    idp.reset()
    assert "temporary" not in [c.client_id for c in idp.clients()]
    refused = fetch(idp, "temporary", client.client_secret)
    assert (refused.status_code, refused.json()["error"]) == (401, "invalid_client")


def test_remove_client(idp):
    client = idp.add_client("short-lived")
    idp.remove_client("short-lived")
    assert fetch(idp, "short-lived", client.client_secret).status_code == 401
    with pytest.raises(ControlError) as info:
        idp.remove_client("short-lived")
    assert info.value.field == "client_id"
    # A session client can be removed for one test; reset brings it back.
    idp.remove_client("demo-client")
    assert fetch(idp, "demo-client", "demo-secret").status_code == 401
    idp.reset()
    assert fetch(idp, "demo-client", "demo-secret").status_code == 200


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"client_id": "demo-client"}, "client_id"),  # already registered
    ({"client_id": ["a"]}, "client_id"),
    ({"client_id": "x", "scopes": 5}, "scopes"),
    ({"client_id": "x", "scopes": ["bad\\scope"]}, "scopes"),
    ({"client_id": "x", "token_lifetime": 0}, "token_lifetime"),
    ({"client_id": "x", "token_lifetime": "60"}, "token_lifetime"),
    ({"client_id": "x", "algorithm": "HS256"}, "algorithm"),
    ({"client_id": "x", "auth_methods": ["magic"]}, "auth_methods"),
    ({"client_id": "x", "claims": ["tenant"]}, "claims"),
    ({"client_id": "x", "jwks": {"keys": [{"kty": "RSA"}]}}, "jwks"),
    ({"client_id": "x", "jwks": {"nokeys": []}}, "jwks"),
    ({"client_id": "x", "default_scopes": ["z"], "scopes": ["y"]}, "default_scopes"),
])
def test_add_client_bad_arguments_name_the_field_and_change_nothing(idp, kwargs, field):
    before = idp.clients()
    with pytest.raises(ControlError) as info:
        idp.add_client(**kwargs)
    assert info.value.field == field
    assert idp.clients() == before


# -- issue_token ----------------------------------------------------------------------


def test_issue_token_defaults_match_an_http_issued_token(idp):
    over_http = access_token(idp, "secret-client")
    minted = idp.issue_token("secret-client")
    (h_header, h_claims), (m_header, m_claims) = unverified(over_http), unverified(minted)
    assert h_header == m_header  # typ at+jwt, alg, kid
    assert set(h_claims) == set(m_claims)
    for name in ("iss", "sub", "client_id", "aud", "scope", "tenant"):
        assert h_claims[name] == m_claims[name], name
    assert m_claims["exp"] - m_claims["iat"] == h_claims["exp"] - h_claims["iat"]
    assert m_claims["jti"] != h_claims["jti"]
    verify(idp, minted, audience="https://api.test")


def test_issue_token_scope_audience_expires_in(idp):
    token = idp.issue_token("secret-client", scope=["read", "write"],
                            audience="https://other.test", expires_in=42)
    claims = verify(idp, token, audience="https://other.test")
    assert claims["scope"] == "read write"
    assert claims["aud"] == "https://other.test"
    assert claims["exp"] - claims["iat"] == 42
    several = verify(idp, idp.issue_token("secret-client", audience=["a", "b"], scope="read"),
                     audience="b")
    assert several["aud"] == ["a", "b"]


def test_issue_token_claims_and_headers_add_override_and_remove(idp):
    token = idp.issue_token(
        "secret-client",
        claims={"tenant": "other", "extra": [1, 2], "sub": "someone", "jti": None},
        headers={"x-test": "yes", "jku": "https://evil.test/jwks", "typ": None},
    )
    header, claims = unverified(token)
    assert (header["x-test"], header["jku"]) == ("yes", "https://evil.test/jwks")
    assert "typ" not in header
    assert (claims["tenant"], claims["extra"], claims["sub"]) == ("other", [1, 2], "someone")
    assert "jti" not in claims
    verify(idp, token)  # still properly signed


def test_issue_token_for_unknown_client_id(idp):
    claims = verify(idp, idp.issue_token("nobody-registered"))
    assert claims["sub"] == claims["client_id"] == "nobody-registered"
    assert claims["aud"] == "api://default"
    assert "scope" not in claims


def test_issue_token_any_scope_for_any_client(idp):
    # Nothing is checked: not the client's allowed scopes, not whether it is registered.
    assert verify(idp, idp.issue_token("nobody", scope="orders:write"))["scope"] == \
        "orders:write"
    assert verify(idp, idp.issue_token("basic-only", scope="admin"))["scope"] == "admin"
    assert "scope" not in verify(idp, idp.issue_token("secret-client", scope=[]))


def test_expired_token(idp):
    token = idp.issue_token("secret-client", expires_in=-10)
    with pytest.raises(jwt.ExpiredSignatureError):
        verify(idp, token)
    claims = verify(idp, token, verify_exp=False)
    assert claims["exp"] < claims["iat"]


def test_not_yet_valid_token(idp):
    now = int(idp.clock.now())
    token = idp.issue_token("secret-client", claims={"nbf": now + 3600})
    with pytest.raises(jwt.ImmatureSignatureError):
        verify(idp, token)


def test_wrong_issuer_token(idp):
    token = idp.issue_token("secret-client", claims={"iss": "https://evil.test"})
    with pytest.raises(jwt.InvalidIssuerError):
        verify(idp, token)


def test_wrong_audience_token(idp):
    token = idp.issue_token("secret-client", audience="https://someone-else.test")
    with pytest.raises(jwt.InvalidAudienceError):
        verify(idp, token, audience="https://api.test")


def test_token_without_exp(idp):
    token = idp.issue_token("secret-client", claims={"exp": None})
    assert "exp" not in unverified(token)[1]
    with pytest.raises(jwt.MissingRequiredClaimError):
        verify(idp, token, require=["exp"])


def test_token_signed_by_an_unpublished_key(idp):
    token = idp.issue_token("secret-client", signing_key="unpublished")
    header, _ = unverified(token)
    jwks = published(idp)
    assert header["kid"] not in kids(jwks)
    # Even claiming a published kid, the signature does not verify against that key.
    active_kid = unverified(idp.issue_token("secret-client"))[0]["kid"]
    forged = idp.issue_token("secret-client", signing_key="unpublished",
                             headers={"kid": active_kid})
    with pytest.raises(jwt.InvalidSignatureError):
        verify(idp, forged, jwks=jwks)


def test_unsigned_alg_none_token(idp):
    token = idp.issue_token("secret-client", alg="none")
    assert token.count(".") == 2 and token.endswith(".")
    header, claims = unverified(token)
    assert header["alg"] == "none" and "kid" not in header
    assert claims["client_id"] == "secret-client"
    key = jwt.PyJWK(published(idp)["keys"][0])
    with pytest.raises(jwt.InvalidTokenError):
        jwt.decode(token, key, algorithms=["RS256"], options={"verify_aud": False})


def test_tampered_signature(idp):
    good = idp.issue_token("secret-client")
    bad = idp.tampered(good)
    assert bad.rsplit(".", 1)[0] == good.rsplit(".", 1)[0]
    assert bad != good
    with pytest.raises(jwt.InvalidSignatureError):
        verify(idp, bad)
    with pytest.raises(ValueError):
        idp.tampered(idp.issue_token("secret-client", alg="none"))


def test_wrong_typ(idp):
    token = idp.issue_token("secret-client", headers={"typ": "JWT"})
    assert unverified(token)[0]["typ"] == "JWT"
    verify(idp, token)  # validly signed: only a typ check catches it


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"client_id": ""}, "client_id"),
    ({"client_id": 5}, "client_id"),
    ({"client_id": "x", "scope": 5}, "scope"),
    ({"client_id": "x", "audience": [1]}, "audience"),
    ({"client_id": "x", "expires_in": "60"}, "expires_in"),
    ({"client_id": "x", "claims": ["a"]}, "claims"),
    ({"client_id": "x", "headers": {"kid": 5}}, "headers"),
    ({"client_id": "x", "headers": {"alg": "HS256"}}, "headers"),
    ({"client_id": "x", "alg": "HS256"}, "alg"),
    ({"client_id": "x", "signing_key": "mine"}, "signing_key"),
    ({"client_id": "x", "signing_key": {"kty": "oct"}}, "signing_key"),
])
def test_issue_token_bad_arguments(idp, kwargs, field):
    with pytest.raises(ControlError) as info:
        idp.issue_token(**kwargs)
    assert info.value.field == field


# -- clock ------------------------------------------------------------------------------


def test_freeze_and_advance_move_tokens_over_http(idp):
    idp.clock.freeze(T0)
    claims = verify(idp, access_token(idp), verify_exp=False, verify_iat=False)
    assert (claims["iat"], claims["exp"]) == (T0, T0 + 300)
    idp.clock.advance(100)
    claims = verify(idp, access_token(idp), verify_exp=False, verify_iat=False)
    assert (claims["iat"], claims["exp"]) == (T0 + 100, T0 + 400)
    minted = unverified(idp.issue_token("secret-client"))[1]
    assert minted["iat"] == T0 + 100
    (first, second) = idp.token_requests
    assert (first.time, second.time) == (T0, T0 + 100)


def test_set_offset_puts_the_server_behind_or_ahead(idp):
    reference = unverified(access_token(idp))[1]["iat"]
    idp.clock.set_offset(-7200)
    behind = unverified(access_token(idp))[1]["iat"]
    idp.clock.set_offset(7200)
    ahead = unverified(access_token(idp))[1]["iat"]
    # Relative to each other only (the requests take a moment): about 2 hours apart.
    assert abs((reference - behind) - 7200) <= 5
    assert abs((ahead - reference) - 7200) <= 5
    assert idp.clock.offset == 7200
    with pytest.raises(jwt.ImmatureSignatureError):  # iat 2 hours in the validator's future
        verify(idp, access_token(idp))


def test_unfreeze_continues_from_the_frozen_instant(idp):
    idp.clock.freeze(T0)
    assert idp.clock.frozen
    idp.clock.unfreeze()
    assert not idp.clock.frozen
    assert T0 <= idp.clock.now() < T0 + 60
    iat = unverified(access_token(idp))[1]["iat"]
    assert T0 <= iat < T0 + 60


def test_clock_reset_returns_to_real_time(idp):
    reference = idp.clock.now()
    idp.clock.freeze(T0)
    idp.clock.reset()
    assert not idp.clock.frozen and idp.clock.offset == 0
    assert idp.clock.now() >= reference
    verify(idp, access_token(idp))  # valid for PyJWT's real-time checks again


def test_advancing_the_server_clock_expires_a_client_assertion(idp):
    private, public = client_key()
    idp.add_client("pk-clock", jwks={"keys": [public]})
    stale = assertion(idp, "pk-clock", private, public["kid"], lifetime=60)
    idp.clock.advance(3600)
    refused = with_assertion(idp, stale)
    # Why (expired) is in the server log only: every failed authentication answers alike.
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_client")
    fresh = with_assertion(idp, assertion(idp, "pk-clock", private, public["kid"]))
    assert fresh.status_code == 200, fresh.text


# -- fail_next -------------------------------------------------------------------------


def test_fail_next_errors_with_retry_after_then_success(idp):
    fault = idp.fail_next(2, status=429, error="temporarily_unavailable", retry_after=7)
    assert (fault.status, fault.error, fault.remaining) == (429, "temporarily_unavailable", 2)
    for _ in range(2):
        response = fetch(idp)
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "7"
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.json() == {"error": "temporarily_unavailable"}
    assert fetch(idp).status_code == 200
    assert [r.status for r in idp.token_requests] == [429, 429, 200]
    assert [r.fault for r in idp.token_requests] == ["error", "error", None]
    assert [r.outcome for r in idp.token_requests] == [
        "temporarily_unavailable", "temporarily_unavailable", "issued"]


@pytest.mark.parametrize(("status", "error"), [
    (None, "temporarily_unavailable"), (400, "invalid_request"), (401, "invalid_client"),
    (403, "access_denied"), (418, "invalid_request"), (429, "temporarily_unavailable"),
    (500, "server_error"), (502, "server_error"), (503, "temporarily_unavailable"),
])
def test_fail_next_default_error_for_each_status(idp, status, error):
    fault = idp.fail_next(status=status, error_description="injected for a test")
    response = fetch(idp)
    assert response.status_code == (status or 503) == fault.status
    assert response.json() == {"error": error, "error_description": "injected for a test"}
    assert "Retry-After" not in response.headers
    # a 401 always carries a challenge (RFC 9110 section 15.5.2)
    assert ("WWW-Authenticate" in response.headers) == (status == 401)


def test_fail_next_delay_answers_normally(idp):
    idp.fail_next(kind="delay", delay=0.05)
    idp.fail_next(delay=0.05)  # delay alone means kind "delay"
    for _ in range(2):
        verify(idp, access_token(idp))
    assert [r.fault for r in idp.token_requests] == ["delay", "delay"]
    assert [r.outcome for r in idp.token_requests] == ["issued", "issued"]


def test_fail_next_drop_closes_the_connection_and_the_server_keeps_serving(idp):
    idp.fail_next(kind="drop")
    with pytest.raises(requests.ConnectionError):
        fetch(idp)
    assert fetch(idp).status_code == 200
    (dropped, served) = idp.token_requests
    assert (dropped.fault, dropped.outcome) == ("drop", "drop")
    assert served.fault is None


def test_fail_next_malformed_is_a_200_without_json(idp):
    idp.fail_next(kind="malformed")
    response = fetch(idp)
    assert response.status_code == 200
    with pytest.raises(ValueError):
        json.loads(response.text)
    assert idp.token_requests[0].outcome == "malformed"
    assert fetch(idp).json()["token_type"].lower() == "bearer"


def test_fail_next_no_expires_in(idp):
    idp.fail_next(kind="no_expires_in")
    body = fetch(idp).json()
    assert "expires_in" not in body
    assert body["token_type"].lower() == "bearer"
    verify(idp, body["access_token"], audience="https://api.test")
    (entry,) = idp.token_requests
    assert (entry.outcome, entry.fault) == ("issued", "no_expires_in")
    assert "expires_in" in fetch(idp).json()


@pytest.mark.parametrize("kind", ["error", "malformed", "drop", "delay"])
def test_jwks_endpoint_faults(idp, kind):
    idp.fail_next(endpoint="jwks", kind=kind, **({"delay": 0.05} if kind == "delay" else {}))
    if kind == "drop":
        with pytest.raises(requests.ConnectionError):
            requests.get(idp.jwks_uri, timeout=5)
    else:
        response = requests.get(idp.jwks_uri, timeout=5)
        if kind == "error":
            assert response.status_code == 503
            assert response.json()["error"] == "temporarily_unavailable"
        elif kind == "malformed":
            assert response.status_code == 200
            with pytest.raises(ValueError):
                json.loads(response.text)
        else:
            assert response.json()["keys"]
    assert published(idp)["keys"]  # the next fetch is normal
    assert [r.fault for r in idp.jwks_requests] == [kind, None]
    assert idp.jwks_requests[1].status == 200
    assert idp.token_requests == []  # token endpoint untouched
    assert fetch(idp).status_code == 200


def test_token_faults_leave_the_jwks_endpoint_alone(idp):
    idp.fail_next(3, status=500)
    assert published(idp)["keys"]
    assert idp.faults()[0].remaining == 3


def test_several_faults_run_in_order(idp):
    idp.fail_next(status=500)
    idp.fail_next(kind="malformed")
    idp.fail_next(2, status=429, retry_after=1)
    idp.fail_next(kind="no_expires_in")
    statuses = [fetch(idp) for _ in range(6)]
    assert [r.status_code for r in statuses] == [500, 200, 429, 429, 200, 200]
    assert [r.fault for r in idp.token_requests] == [
        "error", "malformed", "error", "error", "no_expires_in", None]
    assert "expires_in" not in statuses[4].json() and "expires_in" in statuses[5].json()


def test_faults_show_remaining_counts_and_clear(idp):
    idp.fail_next(3, status=500)
    idp.fail_next(endpoint="jwks", kind="malformed")
    assert [(f.endpoint, f.kind, f.remaining) for f in idp.faults()] == [
        ("token", "error", 3), ("jwks", "malformed", 1)]
    fetch(idp)
    assert [f.remaining for f in idp.faults()] == [2, 1]
    idp.clear_faults()
    assert idp.faults() == []
    assert fetch(idp).status_code == 200
    assert published(idp)["keys"]


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"n": 0}, "n"), ({"n": -1}, "n"), ({"n": "2"}, "n"), ({"n": True}, "n"), ({"n": 1.5}, "n"),
    ({"status": 200}, "status"), ({"status": 600}, "status"), ({"status": "500"}, "status"),
    ({"error": 'bad"quote'}, "error"), ({"error": 5}, "error"),
    ({"error_description": "new\nline"}, "error_description"),
    ({"retry_after": -1}, "retry_after"), ({"retry_after": "7"}, "retry_after"),
    ({"kind": "explode"}, "kind"), ({"kind": ""}, "kind"), ({"kind": ["drop"]}, "kind"),
    ({"endpoint": "metadata"}, "endpoint"),
    ({"endpoint": "jwks", "kind": "no_expires_in"}, "kind"),
    ({"kind": "delay"}, "delay"), ({"delay": 0}, "delay"), ({"delay": -1}, "delay"),
    ({"delay": 61}, "delay"), ({"delay": float("nan")}, "delay"), ({"delay": "1"}, "delay"),
    ({"kind": "drop", "status": 500}, "status"), ({"kind": "malformed", "delay": 1}, "delay"),
    ({"status": 500, "delay": 1}, "delay"),
])
def test_fail_next_bad_arguments_queue_nothing(idp, kwargs, field):
    with pytest.raises(ControlError) as info:
        idp.fail_next(**kwargs)
    assert info.value.field == field
    assert idp.faults() == []


# -- request logs ----------------------------------------------------------------------


def test_token_requests_in_order_with_their_fields(idp):
    first = fetch(idp, "secret-client", scope="read write").json()["access_token"]
    second = requests.post(idp.token_endpoint, timeout=5, data={
        "grant_type": "client_credentials", "client_id": "aud-client",
        "client_secret": SECRET, "resource": "https://billing.test"}).json()["access_token"]
    fetch(idp, "secret-client", "wrong-secret")
    fetch(idp, "secret-client", scope="nope")
    log = idp.token_requests
    assert [r.client_id for r in log] == ["secret-client", "aud-client", "secret-client",
                                          "secret-client"]
    assert [r.auth_method for r in log] == ["client_secret_basic", "client_secret_post",
                                            "client_secret_basic", "client_secret_basic"]
    assert [r.scope for r in log] == ["read write", None, None, "nope"]
    assert [r.resource for r in log] == [(), ("https://billing.test",), (), ()]
    assert [r.status for r in log] == [200, 200, 401, 400]
    assert [r.outcome for r in log] == ["issued", "issued", "invalid_client", "invalid_scope"]
    assert [r.jti for r in log] == [unverified(first)[1]["jti"], unverified(second)[1]["jti"],
                                    None, None]
    assert log[0].granted_scope == ("read", "write")
    assert log[1].audience == ("https://billing.test",)
    assert all(r.grant_type == "client_credentials" and r.fault is None for r in log)
    assert SECRET not in repr(log)


def test_request_logs_are_cleared_by_reset(idp):
    fetch(idp)
    published(idp)
    published(idp)
    assert len(idp.token_requests) == 1
    assert [r.status for r in idp.jwks_requests] == [200, 200]
    idp.reset()
    assert idp.token_requests == [] and idp.jwks_requests == []


def test_clear_requests(idp):
    fetch(idp)
    published(idp)
    idp.clear_requests()
    assert idp.token_requests == [] and idp.jwks_requests == []


def test_issue_token_is_not_a_token_request(idp):
    idp.issue_token("secret-client")
    assert idp.token_requests == []


# -- keys -------------------------------------------------------------------------------


def test_rotate_then_retire(idp):
    before = published(idp)
    old_token = access_token(idp)
    old_kid = unverified(old_token)[0]["kid"]
    new_kid = idp.rotate_key()
    assert new_kid != old_kid
    statuses = {entry["kid"]: entry["status"] for entry in list(idp.keys())}
    assert (statuses[old_kid], statuses[new_kid]) == ("published", "active")
    during = published(idp)
    assert {old_kid, new_kid} <= kids(during)
    verify(idp, old_token, jwks=during)  # in flight: still valid
    new_token = access_token(idp)
    assert unverified(new_token)[0]["kid"] == new_kid
    assert unverified(idp.issue_token("secret-client"))[0]["kid"] == new_kid
    verify(idp, new_token, jwks=during)
    idp.retire_key(old_kid)
    after = published(idp)
    assert old_kid not in kids(after) and new_kid in kids(after)
    with pytest.raises(AssertionError, match="not in the JWKS"):
        verify(idp, old_token, jwks=after)
    verify(idp, new_token, jwks=after)
    idp.reset()
    assert published(idp) == before
    assert unverified(access_token(idp))[0]["kid"] == old_kid


def test_rotate_another_algorithm(idp):
    es_kid = unverified(access_token(idp, "alg-es256"))[0]["kid"]
    rs_kid = unverified(access_token(idp))[0]["kid"]
    new_kid = idp.rotate_key(alg="ES256")
    token = access_token(idp, "alg-es256")
    assert unverified(token)[0]["kid"] == new_kid != es_kid
    verify(idp, token)
    assert unverified(access_token(idp))[0]["kid"] == rs_kid  # RS256 unchanged


def test_retire_errors(idp):
    active = unverified(access_token(idp))[0]["kid"]
    keys_before = idp.keys()
    with pytest.raises(ControlError) as info:
        idp.retire_key(active)
    assert info.value.field == "kid" and "active" in info.value.why
    with pytest.raises(ControlError) as info:
        idp.retire_key("no-such-kid")
    assert info.value.field == "kid"
    with pytest.raises(ControlError):
        idp.retire_key(5)
    with pytest.raises(ControlError) as info:
        idp.rotate_key(alg="HS256")
    assert info.value.field == "alg"
    assert idp.keys() == keys_before


# -- reset -----------------------------------------------------------------------------


def test_reset_undoes_everything(idp):
    clients, keys, jwks = idp.clients(), idp.keys(), published(idp)
    idp.add_client("extra")
    idp.remove_client("demo-client")
    idp.clock.freeze(T0)
    idp.fail_next(5, status=500)
    idp.fail_next(endpoint="jwks", kind="malformed")
    fetch(idp)
    old = unverified(idp.issue_token("secret-client"))[0]["kid"]
    idp.rotate_key()
    idp.retire_key(old)
    idp.reset()
    assert idp.clients() == clients
    assert idp.keys() == keys
    assert not idp.clock.frozen and idp.clock.offset == 0
    assert idp.faults() == []
    assert idp.token_requests == [] and idp.jwks_requests == []
    assert published(idp) == jwks
    verify(idp, access_token(idp))


# -- several issuers -------------------------------------------------------------------


def test_two_issuers_in_one_process(idp_factory):
    a, b = idp_factory(), idp_factory()
    assert a.issuer != b.issuer
    jwks_a, jwks_b = published(a), published(b)
    assert kids(jwks_a) and kids(jwks_b) and not kids(jwks_a) & kids(jwks_b)
    only_a = a.add_client("only-a", scopes=["read"])
    assert fetch(a, "only-a", only_a.client_secret).status_code == 200
    assert fetch(b, "only-a", only_a.client_secret).status_code == 401
    assert "only-a" not in [c.client_id for c in b.clients()]
    token = access_token(a, "only-a", only_a.client_secret)
    assert verify(a, token)["iss"] == a.issuer
    with pytest.raises(AssertionError, match="not in the JWKS"):
        verify(b, token)
    # Even with b's key of the same algorithm, a's signature does not verify.
    (b_key,) = [k for k in jwks_b["keys"] if k["alg"] == "ES256"]
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, jwt.PyJWK(b_key), algorithms=["ES256"], options={"verify_aud": False})
    # Controls are separate too.
    a.fail_next(status=500)
    assert fetch(b, "demo-client", "demo-secret").status_code == 200
    assert fetch(a, "only-a", only_a.client_secret).status_code == 500
    a.clock.freeze(T0)
    assert not b.clock.frozen


def test_issuers_from_the_factory_are_independent_of_idp(idp, idp_factory):
    other = idp_factory()
    assert not kids(published(idp)) & kids(published(other))
    token = idp.issue_token("secret-client")
    with pytest.raises(AssertionError, match="not in the JWKS"):
        verify(other, token)



def test_plugin_server_with_a_configured_issuer_listens_on_its_port():
    # What m2mauth_server does with settings that name an issuer: bind the issuer's port.
    import socket

    from m2mauth.server import IdentityProvider, ServerSettings
    from m2mauth.server.lab.pytest_plugin import m2mauth_server

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = ServerSettings(issuer=f"http://127.0.0.1:{port}", port=port)
    fixture = m2mauth_server.__wrapped__(settings, False)  # m2mauth_tls: plain HTTP
    server: IdentityProvider = next(fixture)
    try:
        assert server.url == server.issuer == f"http://127.0.0.1:{port}"
        assert requests.get(server.metadata_url, timeout=5).json()["issuer"] == server.issuer
    finally:
        fixture.close()
