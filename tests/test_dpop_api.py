"""DPoP at the API: require_token over real HTTP (m2mauth's WSGI server on 127.0.0.1, port
0) with tokens of the session's authorization server bound to real client keys (``cnf.jkt``)
and proofs built from those keys. Every DPoP attack of REFERENCES.md as its own test, with the
exact RFC 9449 §7.1 answer: status, ``WWW-Authenticate``, ``DPoP-Nonce``, JSON body. Then the
demo API that the server mounts at /demo. The API reads the server's frozen clock."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from _dpop_support import ProofKey, bound_token, serving, serving_m2mauth
from flask import Flask, g, jsonify

from m2mauth.client import DPoPPolicy, TokenValidator, parse_challenges
from m2mauth.client.flask import dpop_challenge, require_token

AUDIENCE = "https://api.test"
REALM = 'realm="https://api.test"'
ALGS = 'algs="ES256 ES384 ES512 RS256 PS256 EdDSA Ed25519"'
NOW = 1_900_000_000


def make_app(validator: TokenValidator, **options: Any) -> Flask:
    app = Flask(__name__)

    def show() -> Any:
        return jsonify(client_id=g.token.client_id, jkt=g.token.jkt,
                       scopes=list(g.token.scopes))

    methods = ["GET", "POST"]
    app.add_url_rule("/read", "read", require_token(validator, "read", **options)(show),
                     methods=methods)
    app.add_url_rule("/admin", "admin", require_token(validator, "admin", **options)(show))
    return app


@pytest.fixture
def clock(idp):
    idp.clock.freeze(at=NOW)
    return idp.clock


@pytest.fixture
def client(idp):
    return idp.add_client("dpop-api-client", scopes=["read", "write"], audiences=[AUDIENCE])


@pytest.fixture
def make_api(idp, clock):
    """An API for the test's server with these validator options; yields its base URL."""
    started: list = []

    def make(app_options: dict | None = None, **validator_options: Any) -> str:
        validator = TokenValidator(idp.issuer, AUDIENCE, clock=clock.now, **validator_options)
        cm = serving(make_app(validator, **(app_options or {})))
        started.append(cm)
        return cm.__enter__()

    yield make
    for cm in reversed(started):
        cm.__exit__(None, None, None)


@pytest.fixture
def url(make_api) -> str:
    return make_api()


@pytest.fixture
def key() -> ProofKey:
    return ProofKey.generate("ES256")


@pytest.fixture
def token(idp, client, key) -> str:
    return bound_token(idp, key, client_id=client.client_id, audience=AUDIENCE,
                       expires_in=3600)


def dpop_get(url: str, token: str, proof: str | None, *, path: str = "/read",
             method: str = "GET") -> requests.Response:
    headers = {"Authorization": f"DPoP {token}"}
    if proof is not None:
        headers["DPoP"] = proof
    return requests.request(method, url + path, headers=headers, timeout=5)


def proof_for(key: ProofKey, url: str, token: str, *, path: str = "/read", **kw) -> str:
    kw.setdefault("iat", NOW)
    return key.proof(kw.pop("htm", "GET"), kw.pop("htu", url + path), token=token, **kw)


def assert_refused(r: requests.Response, description: str,
                   error: str = "invalid_dpop_proof", status: int = 401) -> None:
    assert r.status_code == status, r.text
    assert r.headers["WWW-Authenticate"] == (
        f'DPoP {REALM}, error="{error}", error_description="{description}", {ALGS}')
    assert r.json() == {"error": error, "error_description": description}
    assert r.headers["Cache-Control"] == "no-store"


# -- the good case ----------------------------------------------------------------------------


def test_dpop_request_reaches_the_view(url, key, token, client):
    r = dpop_get(url, token, proof_for(key, url, token))
    assert r.status_code == 200, r.text
    assert r.json() == {"client_id": client.client_id, "jkt": key.jkt, "scopes": ["read"]}
    assert "DPoP-Nonce" not in r.headers  # nonces are off


@pytest.mark.parametrize("scheme", ["DPoP", "dpop", "DPOP"])
def test_scheme_is_case_insensitive(url, key, token, scheme):
    r = requests.get(url + "/read", timeout=5, headers={
        "Authorization": f"{scheme} {token}", "DPoP": proof_for(key, url, token)})
    assert r.status_code == 200


def test_post_with_htm_post(url, key, token):
    r = dpop_get(url, token, proof_for(key, url, token, htm="POST"), method="POST")
    assert r.status_code == 200


def test_no_token_offers_bearer_and_dpop(url):
    r = requests.get(url + "/read", timeout=5)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == f"Bearer {REALM}, DPoP {REALM}, {ALGS}"
    schemes = [c.scheme for c in parse_challenges(r.headers["WWW-Authenticate"])]
    assert schemes == ["bearer", "dpop"]


def test_insufficient_scope_with_dpop(url, key, token):
    r = dpop_get(url, token, proof_for(key, url, token, path="/admin"), path="/admin")
    assert r.status_code == 403
    assert r.headers["WWW-Authenticate"] == (
        f'DPoP {REALM}, error="insufficient_scope", error_description="the token lacks scope '
        f'admin", scope="admin", {ALGS}')


def test_malformed_dpop_authorization_is_400(url, key, token):
    r = requests.get(url + "/read", timeout=5, headers={
        "Authorization": f"DPoP  {token}", "DPoP": proof_for(key, url, token)})
    assert r.status_code == 400
    assert r.headers["WWW-Authenticate"].startswith(f'DPoP {REALM}, error="invalid_request"')


def test_bearer_token_sent_as_dpop_is_invalid_token(url, idp, client, key):
    bearer = idp.issue_token(client.client_id, scope="read", audience=AUDIENCE)
    r = dpop_get(url, bearer, proof_for(key, url, bearer))
    assert_refused(r, "the token is not DPoP-bound (no cnf.jkt): send it as Authorization: "
                   "Bearer", error="invalid_token")


def test_bearer_tokens_still_work(url, idp, client):
    bearer = idp.issue_token(client.client_id, scope="read", audience=AUDIENCE)
    r = requests.get(url + "/read", headers={"Authorization": f"Bearer {bearer}"}, timeout=5)
    assert r.status_code == 200 and r.json()["jkt"] is None


# -- the attacks ------------------------------------------------------------------------------


def test_alg_none(url, key, token):
    r = dpop_get(url, token, proof_for(key, url, token, header={"alg": "none"}))
    assert_refused(r, f"alg 'none' is not allowed for DPoP proofs (allowed: "
                   f"{ALGS[6:-1]})")


def test_hs256(url, key, token):
    r = dpop_get(url, token, proof_for(key, url, token, header={"alg": "HS256"},
                                       sign_with=json.dumps(key.jwk).encode()))
    assert r.status_code == 401 and "alg 'HS256' is not allowed" in r.json()[
        "error_description"]
    assert 'error="invalid_dpop_proof"' in r.headers["WWW-Authenticate"]


def test_private_jwk(url, key, token):
    r = dpop_get(url, token, proof_for(key, url, token, header={"jwk": key.private_jwk()}))
    assert_refused(r, "the proof's jwk has private or symmetric key members (d)")
    assert key.private_jwk()["d"] not in r.text


def test_signature_by_another_key(url, key, token):
    other = ProofKey.generate("ES256")
    r = dpop_get(url, token, proof_for(key, url, token, sign_with=other.private))
    assert_refused(r, "the proof's signature does not verify with its jwk")


def test_wrong_typ(url, key, token):
    r = dpop_get(url, token, proof_for(key, url, token, header={"typ": "JWT"}))
    assert_refused(r, "typ is 'JWT', not dpop+jwt")


def test_wrong_htm(url, key, token):
    r = dpop_get(url, token, proof_for(key, url, token, htm="POST"))
    assert_refused(r, "htm is 'POST', not the request's method 'GET'")


def test_wrong_htu(url, key, token):
    r = dpop_get(url, token, proof_for(key, url, token, htu=url + "/admin"))
    assert_refused(r, "htu is not this request's URL")


def test_htu_query_and_fragment_ignored(url, key, token):
    proof = proof_for(key, url, token, htu=url + "/read?page=1#top")
    r = requests.get(url + "/read?page=2", timeout=5,
                     headers={"Authorization": f"DPoP {token}", "DPoP": proof})
    assert r.status_code == 200, r.text


def test_stale_iat(url, key, token):
    r = dpop_get(url, token, proof_for(key, url, token, iat=NOW - 120))
    assert_refused(r, "the proof was made 120 s ago; at most 60 s (leeway 30 s)")


def test_future_iat_beyond_leeway(url, key, token):
    r = dpop_get(url, token, proof_for(key, url, token, iat=NOW + 45))
    assert_refused(r, "the proof is dated 45 s in the future (leeway 30 s)")


def test_replayed_jti(url, key, token):
    proof = proof_for(key, url, token)
    assert dpop_get(url, token, proof).status_code == 200
    assert_refused(dpop_get(url, token, proof), "the proof's jti was used before")


def test_wrong_ath(url, idp, client, key, token):
    other = bound_token(idp, key, client_id=client.client_id, audience=AUDIENCE)
    r = dpop_get(url, token, proof_for(key, url, other))
    assert_refused(r, "ath is not the hash of this access token")


def test_thumbprint_mismatch_with_cnf_jkt(url, idp, client, key):
    token = bound_token(idp, ProofKey.generate("ES256"), client_id=client.client_id,
                        audience=AUDIENCE)
    r = dpop_get(url, token, proof_for(key, url, token))
    assert_refused(r, "the proof's key is not the one the token is bound to (cnf.jkt)")


def test_dpop_bound_token_as_bearer(url, key, token):
    r = requests.get(url + "/read", headers={"Authorization": f"Bearer {token}",
                                             "DPoP": proof_for(key, url, token)}, timeout=5)
    assert r.status_code == 401
    description = ("the token is DPoP-bound (cnf.jkt): send it as Authorization: DPoP with a "
                   "DPoP proof")
    assert r.headers["WWW-Authenticate"] == (
        f'Bearer {REALM}, error="invalid_token", error_description="{description}"')


def test_missing_proof(url, token):
    assert_refused(dpop_get(url, token, None), "the request has no DPoP proof (DPoP header)")


def test_two_proofs(url, key, token):
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.putrequest("GET", "/read")
        conn.putheader("Authorization", f"DPoP {token}")
        conn.putheader("DPoP", proof_for(key, url, token))
        conn.putheader("DPoP", proof_for(key, url, token))
        conn.endheaders()
        response = conn.getresponse()
        body = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 401
    assert body["error"] == "invalid_dpop_proof"
    assert body["error_description"] in ("more than one DPoP header",
                                          "more than one DPoP proof in the DPoP header")


def test_replay_cache_full_is_503(make_api, key, token):
    url = make_api(dpop=DPoPPolicy(replay_max_entries=1))
    assert dpop_get(url, token, proof_for(key, url, token)).status_code == 200
    r = dpop_get(url, token, proof_for(key, url, token))
    assert r.status_code == 503 and "WWW-Authenticate" not in r.headers
    assert r.json()["error"] == "temporarily_unavailable"


# -- nonces -----------------------------------------------------------------------------------


@pytest.fixture
def nonce_url(make_api) -> str:
    return make_api(dpop=DPoPPolicy(require_nonce=True, nonce_lifetime=300))


def test_missing_nonce(nonce_url, key, token):
    r = dpop_get(nonce_url, token, proof_for(key, nonce_url, token))
    assert_refused(r, "the proof has no nonce", error="use_dpop_nonce")
    assert len(r.headers["DPoP-Nonce"]) == 32


def test_nonce_flow(nonce_url, key, token):
    first = dpop_get(nonce_url, token, proof_for(key, nonce_url, token))
    assert first.status_code == 401
    nonce = first.headers["DPoP-Nonce"]
    r = dpop_get(nonce_url, token, proof_for(key, nonce_url, token, nonce=nonce))
    assert r.status_code == 200, r.text
    assert r.headers["DPoP-Nonce"] == nonce  # still current: handed out again (§8.2)
    # another bad proof while nonces are on carries the nonce too
    bad = dpop_get(nonce_url, token, proof_for(key, nonce_url, token, nonce=nonce, htm="PUT"))
    assert bad.status_code == 401 and bad.headers["DPoP-Nonce"] == nonce


def test_stale_nonce(nonce_url, key, token, clock):
    nonce = dpop_get(nonce_url, token, proof_for(key, nonce_url, token)).headers["DPoP-Nonce"]
    clock.advance(600)
    r = dpop_get(nonce_url, token, proof_for(key, nonce_url, token, nonce=nonce,
                                             iat=NOW + 600))
    assert_refused(r, "the proof's nonce is not current", error="use_dpop_nonce")
    fresh = r.headers["DPoP-Nonce"]
    assert fresh != nonce
    ok = dpop_get(nonce_url, token, proof_for(key, nonce_url, token, nonce=fresh,
                                              iat=NOW + 600))
    assert ok.status_code == 200


# -- the URL the proof is compared with --------------------------------------------------


def test_public_url_is_what_htu_must_name(make_api, key, token):
    url = make_api({"public_url": "https://api.example/"})
    public = key.proof("GET", "https://api.example/read", NOW, token=token)
    assert dpop_get(url, token, public).status_code == 200
    local = dpop_get(url, token, proof_for(key, url, token))
    assert_refused(local, "htu is not this request's URL")


def test_the_apps_configured_public_url(idp, clock, key, token):
    validator = TokenValidator(idp.issuer, AUDIENCE, clock=clock.now)
    app = make_app(validator)
    app.config["M2MAUTH_PUBLIC_URL"] = "https://api.example/prefix"
    with serving(app) as url:
        public = key.proof("GET", "https://api.example/prefix/read", NOW, token=token)
        assert dpop_get(url, token, public).status_code == 200
        assert dpop_get(url, token, proof_for(key, url, token)).status_code == 401


def test_dpop_can_be_turned_off(make_api, key, token):
    url = make_api({"dpop": False})
    r = dpop_get(url, token, proof_for(key, url, token))
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == f"Bearer {REALM}"


def test_dpop_challenge_escapes():
    assert dpop_challenge('a"b', ["ES256"], "invalid_dpop_proof", 'x"y') == (
        r'DPoP realm="a\"b", error="invalid_dpop_proof", error_description="x\"y", '
        'algs="ES256"')


# -- the demo API the server mounts at /demo ------------------------------------------------


@pytest.fixture
def served() -> Iterator[tuple[str, Any]]:
    """``m2mauth serve``'s app (create_app, the lab on, the demo API at /demo) on loopback."""
    with serving_m2mauth() as served:
        yield served


def test_demo_api_takes_dpop_bound_tokens(served, key):
    url, controls = served
    controls.clock.freeze(at=NOW)
    token = controls.issue_token("demo-client", "read", claims={"cnf": {"jkt": key.jkt}})
    htu = url + "/demo/hello"
    proof = key.proof("GET", htu, NOW, token=token)
    r = requests.get(htu, headers={"Authorization": f"DPoP {token}", "DPoP": proof},
                     timeout=5)
    assert r.status_code == 200, r.text
    assert r.json()["jkt"] == key.jkt and r.json()["client_id"] == "demo-client"
    replay = requests.get(htu, headers={"Authorization": f"DPoP {token}", "DPoP": proof},
                          timeout=5)
    assert replay.status_code == 401
    assert 'error="invalid_dpop_proof"' in replay.headers["WWW-Authenticate"]
    as_bearer = requests.get(htu, headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert as_bearer.status_code == 401
    assert 'error="invalid_token"' in as_bearer.headers["WWW-Authenticate"]
    stale = key.proof("GET", htu, NOW - 300, token=token)
    r = requests.get(htu, headers={"Authorization": f"DPoP {token}", "DPoP": stale},
                     timeout=5)
    assert r.status_code == 401 and "ago" in r.json()["error_description"]
    index = requests.get(url + "/demo/", timeout=5).json()
    assert index["authorization"] == ["Bearer", "DPoP"]


@pytest.mark.parametrize("host", ["127.0.0.1:99999", "[::1", "a b", "127.0.0.1:x"])
def test_a_bad_host_header_is_a_refusal_not_a_500(url, key, token, host):
    base = url.removeprefix("http://")
    address, port = base.split(":")
    conn = http.client.HTTPConnection(address, int(port), timeout=5)
    try:
        conn.putrequest("GET", "/read", skip_host=True)
        conn.putheader("Host", host)
        conn.putheader("Authorization", f"DPoP {token}")
        conn.putheader("DPoP", proof_for(key, url, token))
        conn.endheaders()
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status in (400, 401), body
    assert response.getheader("Content-Type") == "application/json"
