"""DPoP end to end: a client proves its key to the real token endpoint (``idp``, server/dpop.py)
and gets a DPoP-bound token (``token_type: DPoP``, ``cnf.jkt``); an API protected by
require_token (client/dpop_validation.py, an independent implementation) takes it with a
fresh proof per request. The proofs come from the lab's minting (joserfc) – valid ones, and
each of its defects, which the API must refuse as the token endpoint does – and from the
tests' own builder (PyJWT's algorithm objects). Also ``m2mauth serve``'s demo API at /demo."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from _dpop_support import ProofKey, serving_m2mauth
from flask import Flask, g, jsonify

from m2mauth.client import DPoPPolicy, TokenValidator
from m2mauth.client.flask import require_token
from m2mauth.server.lab import DPOP_DEFECTS
from m2mauth.server.serving import BackgroundServer, bind_app

AUDIENCE = "https://api.test"
SECRET = "e2e-secret"


@pytest.fixture
def client(idp):
    idp.clock.freeze(at=float(int(idp.clock.now())))
    return idp.add_client("dpop-e2e", client_secret=SECRET, scopes=["read"],
                          audiences=[AUDIENCE], dpop="required")


@pytest.fixture
def api(idp, client) -> Iterator[str]:
    """An API trusting the idp's tokens, on its clock; yields the URL of its /orders."""
    validator = TokenValidator(idp.issuer, AUDIENCE, clock=idp.clock.now)
    app = Flask(__name__)

    @app.get("/orders")
    @require_token(validator, "read")
    def orders() -> Any:
        return jsonify(client_id=g.token.client_id, jkt=g.token.jkt)

    server, _ = bind_app("127.0.0.1", 0, lambda _port: app)
    with BackgroundServer(server) as running:
        yield running.url + "/orders"


def dpop_token(idp, key) -> dict:
    """The token endpoint's answer to a client_credentials request with a proof of ``key``."""
    proof = idp.dpop_proof(key, method="POST", url=idp.token_endpoint).proof
    r = requests.post(idp.token_endpoint, timeout=5, headers={"DPoP": proof},
                      data={"grant_type": "client_credentials", "scope": "read",
                            "resource": AUDIENCE}, auth=("dpop-e2e", SECRET))
    assert r.status_code == 200, r.text
    return r.json()


def call(url: str, token: str, proof: str | None, scheme: str = "DPoP") -> requests.Response:
    headers = {"Authorization": f"{scheme} {token}"}
    if proof is not None:
        headers["DPoP"] = proof
    return requests.get(url, headers=headers, timeout=5)


def test_a_token_from_the_token_endpoint_works_at_the_api(idp, client, api):
    key = idp.dpop_key()
    answer = dpop_token(idp, key)
    assert answer["token_type"] == "DPoP"
    token = answer["access_token"]
    for _ in range(3):  # a fresh proof per request; the token's signature checked once
        proof = idp.dpop_proof(key, method="GET", url=api, token=token).proof
        r = call(api, token, proof)
        assert r.status_code == 200, r.text
        assert r.json() == {"client_id": "dpop-e2e", "jkt": key.jkt}


def test_the_servers_token_with_the_tests_own_proofs(idp, client, api):
    """The lab's thumbprint (joserfc, in cnf.jkt) and the client library's agree."""
    mine = ProofKey.generate("ES256")
    token = dpop_token(idp, idp.dpop_key(mine.private_jwk()))["access_token"]
    r = call(api, token, mine.proof("GET", api, idp.clock(), token=token))
    assert r.status_code == 200, r.text
    assert r.json()["jkt"] == mine.jkt


@pytest.mark.parametrize("defect", [d for d in DPOP_DEFECTS if d != "replayed_jti"])
def test_every_lab_defect_is_refused_at_the_api(idp, client, api, defect):
    key = idp.dpop_key()
    token = dpop_token(idp, key)["access_token"]
    bad = idp.dpop_proof(key, method="GET", url=api, token=token, defect=defect).proof
    r = call(api, token, bad)
    assert r.status_code == 401, (defect, r.text)
    assert r.json()["error"] == "invalid_dpop_proof", defect
    assert r.headers["WWW-Authenticate"].startswith('DPoP realm="https://api.test", '
                                                    'error="invalid_dpop_proof"')


def test_a_replayed_lab_proof_is_refused_at_the_api(idp, client, api):
    key = idp.dpop_key()
    token = dpop_token(idp, key)["access_token"]
    assert call(api, token, idp.dpop_proof(key, method="GET", url=api,
                                           token=token).proof).status_code == 200
    again = idp.dpop_proof(key, method="GET", url=api, token=token, defect="replayed_jti")
    r = call(api, token, again.proof)
    assert r.status_code == 401 and r.json()["error_description"] == (
        "the proof's jti was used before")


def test_the_servers_dpop_token_as_bearer_is_refused(idp, client, api):
    key = idp.dpop_key()
    token = dpop_token(idp, key)["access_token"]
    r = call(api, token, None, scheme="Bearer")
    assert r.status_code == 401
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    assert "DPoP-bound" in r.json()["error_description"]


def test_a_proof_for_the_token_endpoint_is_not_one_for_the_api(idp, client, api):
    key = idp.dpop_key()
    token = dpop_token(idp, key)["access_token"]
    token_proof = idp.dpop_proof(key, method="POST", url=idp.token_endpoint).proof
    r = call(api, token, token_proof)
    assert r.status_code == 401  # htm, htu and the missing ath all say no
    assert r.json()["error"] == "invalid_dpop_proof"


def test_the_apis_nonce_flow_with_the_servers_token(idp, client):
    validator = TokenValidator(idp.issuer, AUDIENCE, clock=idp.clock.now,
                               dpop=DPoPPolicy(require_nonce=True))
    app = Flask(__name__)
    app.add_url_rule("/orders", "orders", require_token(validator, "read")(
        lambda: jsonify(jkt=g.token.jkt)))
    server, _ = bind_app("127.0.0.1", 0, lambda _port: app)
    key = idp.dpop_key()
    token = dpop_token(idp, key)["access_token"]
    with BackgroundServer(server) as running:
        url = running.url + "/orders"
        first = call(url, token, idp.dpop_proof(key, method="GET", url=url, token=token).proof)
        assert first.status_code == 401
        assert 'error="use_dpop_nonce"' in first.headers["WWW-Authenticate"]
        nonce = first.headers["DPoP-Nonce"]
        second = call(url, token, idp.dpop_proof(key, method="GET", url=url, token=token,
                                                 nonce=nonce).proof)
        assert second.status_code == 200, second.text
        assert second.json() == {"jkt": key.jkt}


# -- m2mauth serve: the token endpoint and the demo API of one server -------------------------


@pytest.fixture
def served() -> Iterator[tuple[str, Any]]:
    with serving_m2mauth() as served:
        yield served


def test_serve_issues_dpop_tokens_its_demo_api_accepts(served):
    url, controls = served
    key = controls.dpop_key()
    proof = controls.dpop_proof(key, method="POST", url=url + "/token").proof
    r = requests.post(url + "/token", headers={"DPoP": proof}, timeout=5,
                      data={"grant_type": "client_credentials", "scope": "read"},
                      auth=("demo-client", "demo-secret"))
    assert r.status_code == 200, r.text
    assert r.json()["token_type"] == "DPoP"
    token = r.json()["access_token"]
    hello = url + "/demo/hello"
    ok = call(hello, token, controls.dpop_proof(key, method="GET", url=hello,
                                                token=token).proof)
    assert ok.status_code == 200, ok.text
    assert ok.json()["jkt"] == key.jkt and ok.json()["client_id"] == "demo-client"
    wrong = call(hello, token, controls.dpop_proof(key, method="GET", url=hello, token=token,
                                                   defect="wrong_ath").proof)
    assert wrong.status_code == 401
    assert wrong.json()["error_description"] == "ath is not the hash of this access token"
