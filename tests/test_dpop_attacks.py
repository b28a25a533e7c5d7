"""Red-team tests of DPoP (RFC 9449): inputs that once broke the token endpoint, the
resource-server checks or the client (each named for the defect), and a few attacks that
hold. Real keys, real HTTP where an endpoint is concerned; clocks are frozen, nothing sleeps."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import jwt
import pytest
import requests
from _dpop_support import ProofKey, bound_token
from flask import Flask, g, jsonify

from m2mauth.client import DPoPKey, DPoPProofChecker, InvalidDPoPProofError, TokenValidator
from m2mauth.client.flask import require_token
from m2mauth.server.serving import BackgroundServer, bind_app

AUDIENCE = "https://api.test"
NOW = 1_900_000_000
SECRET = "s3cret-for-attacks"


@contextmanager
def serving(app: Flask) -> Iterator[str]:
    server, _ = bind_app("127.0.0.1", 0, lambda _port: app)
    with BackgroundServer(server) as running:
        yield running.url


@pytest.fixture
def clock(idp):
    idp.clock.freeze(at=NOW)
    return idp.clock


@pytest.fixture
def key() -> ProofKey:
    return ProofKey.generate("ES256")


@pytest.fixture
def api(idp, clock) -> Iterator[str]:
    """A DPoP-accepting API (require_token over a TokenValidator of the session's issuer)."""
    validator = TokenValidator(idp.issuer, AUDIENCE, clock=clock.now)
    app = Flask(__name__)

    @app.get("/read")
    @require_token(validator, "read")
    def read():
        return jsonify(jkt=g.token.jkt)

    with serving(app) as url:
        yield url


@pytest.fixture
def token(idp, key) -> str:
    idp.add_client("attack-api-client", scopes=["read"], audiences=[AUDIENCE])
    return bound_token(idp, key, client_id="attack-api-client", audience=AUDIENCE,
                       expires_in=3600)


def call_api(url: str, token: str, proof: str) -> requests.Response:
    return requests.get(url + "/read", timeout=5,
                        headers={"Authorization": f"DPoP {token}", "DPoP": proof})


# -- the resource server ----------------------------------------------------------------------


def test_api_answers_401_not_500_for_an_iat_too_large_for_a_float(api, key, token):
    # JSON integers have no bound: 10**400 is a valid iat to json.loads, but math.isfinite()
    # raised OverflowError on it, which escaped require_token as a 500.
    proof = key.proof("GET", api + "/read", 10**400, token=token)
    r = call_api(api, token, proof)
    assert r.status_code == 401, r.text
    assert r.json() == {"error": "invalid_dpop_proof",
                        "error_description": "the proof's iat is not a number"}


def test_checker_refuses_an_iat_too_large_for_a_float(key):
    checker = DPoPProofChecker(clock=lambda: NOW)
    with pytest.raises(InvalidDPoPProofError) as info:
        checker.check(key.proof("GET", "https://api.test/x", 10**400), method="GET",
                      url="https://api.test/x")
    assert info.value.reason == "invalid_claim"


# -- the client -------------------------------------------------------------------------------


def test_client_proof_htu_leaves_out_userinfo():
    # A URL's userinfo (https://user:password@host/) went into htu: the password was in every
    # proof (logged by servers), and the resource server refuses an htu with userinfo.
    key = DPoPKey.generate()
    proof = key.proof("GET", "https://user:pa55word@API.test:443/x?q=1")
    claims = jwt.decode(proof, options={"verify_signature": False})
    assert claims["htu"] == "https://API.test:443/x"
    checker = DPoPProofChecker(clock=lambda: claims["iat"])
    assert checker.check(proof, method="GET", url="https://api.test/x").jkt == key.thumbprint


# -- the token endpoint -----------------------------------------------------------------------


@pytest.fixture
def token_client(idp):
    idp.add_client("attack-token-client", client_secret=SECRET, scopes=["read"])
    return "attack-token-client"


def post_token(idp, proof: str, client_id: str) -> requests.Response:
    return requests.post(idp.issuer + "/token", data={"grant_type": "client_credentials"},
                         auth=(client_id, SECRET), headers={"DPoP": proof}, timeout=5)


def test_token_endpoint_refuses_an_htu_with_userinfo(idp, clock, key, token_client):
    # http://user:pw@host/token is another URI than http://host/token (RFC 3986 §3.2); the
    # server compared the host only, while the resource-server checker refuses userinfo.
    htu = (idp.issuer + "/token").replace("://", "://user:pw@")
    r = post_token(idp, key.proof("POST", htu, NOW), token_client)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_dpop_proof"
    assert "htu" in r.json()["error_description"]


@pytest.mark.parametrize("header", [{"crit": ["b64"], "b64": False}, {"b64": False}],
                         ids=["crit-b64", "b64-alone"])
def test_token_endpoint_refuses_unencoded_payload_proofs(idp, clock, key, token_client,
                                                         header):
    # joserfc understands RFC 7797 (b64: false): it then verifies the payload segment as raw
    # bytes, while the server read the claims by decoding that same segment – two readings
    # of one proof. A proof's payload is its JSON claims; b64 and crit are refused.
    r = post_token(idp, key.proof("POST", idp.issuer + "/token", NOW, header=header),
                   token_client)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_dpop_proof"


def test_checker_refuses_a_replay_at_the_last_instant_the_proof_is_fresh(key):
    # The jti left the replay cache at iat + max_age + leeway, the very instant at which the
    # iat check still let the proof through (it refuses only iat < now - max_age - leeway).
    now = [NOW]
    checker = DPoPProofChecker(clock=lambda: now[0], leeway=5)
    proof = key.proof("GET", "https://api.test/x", NOW)
    checker.check(proof, method="GET", url="https://api.test/x")
    now[0] = NOW + 60 + 5  # max_age + leeway: the proof is still fresh
    with pytest.raises(InvalidDPoPProofError) as info:
        checker.check(proof, method="GET", url="https://api.test/x")
    assert info.value.reason == "replayed"
    now[0] += 0.001
    with pytest.raises(InvalidDPoPProofError) as info:
        checker.check(proof, method="GET", url="https://api.test/x")
    assert info.value.reason == "stale"
