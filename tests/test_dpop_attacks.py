"""Red-team tests of DPoP (RFC 9449): inputs that once broke the token endpoint, the
resource-server checks or the client (each named for the defect), and a few attacks that
hold. Real keys, real HTTP where an endpoint is concerned; clocks are frozen, nothing sleeps."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import jwt
import pytest
import requests
from _dpop_support import ProofKey, b64, bound_token
from flask import Flask, g, jsonify

from m2mauth.client import (
    DPoPKey,
    DPoPProofChecker,
    InvalidDPoPProofError,
    TokenValidator,
    parse_challenges,
)
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


# -- attacks that hold ------------------------------------------------------------------------


def test_extra_jwk_members_do_not_change_the_thumbprint(idp, clock, key, token_client, api):
    # RFC 7638: cnf.jkt is over the required members only, so a kid/use/alg/key_ops in the
    # proof's jwk binds the token to the same key the API then sees (whose jwk has none).
    jwk = {**key.jwk, "kid": "k1", "use": "sig", "alg": "ES256", "key_ops": ["verify"]}
    r = post_token(idp, key.proof("POST", idp.issuer + "/token", NOW, header={"jwk": jwk}),
                   token_client)
    assert r.status_code == 200, r.text
    claims = jwt.decode(r.json()["access_token"], options={"verify_signature": False})
    assert claims["cnf"] == {"jkt": key.jkt}


def test_an_off_curve_ec_key_is_refused_on_both_sides(idp, clock, key, token_client):
    jwk = {**key.jwk, "y": b64(b"\x01" * 32)}  # (x, y) is not a point of P-256
    r = post_token(idp, key.proof("POST", idp.issuer + "/token", NOW, header={"jwk": jwk}),
                   token_client)
    assert r.status_code == 400 and r.json()["error"] == "invalid_dpop_proof"
    with pytest.raises(InvalidDPoPProofError) as info:
        DPoPProofChecker(clock=lambda: NOW).check(
            key.proof("GET", "https://api.test/x", NOW, header={"jwk": jwk}), method="GET",
            url="https://api.test/x")
    assert info.value.reason == "bad_key"


def test_key_urls_in_the_header_are_never_fetched(idp, clock, key, token_client, api, token):
    hits: list[str] = []
    trap = Flask(__name__)

    @trap.route("/<path:anything>")
    def record(anything):
        hits.append(anything)
        return jsonify(keys=[])

    with serving(trap) as trap_url:
        header = {"jku": trap_url + "/jwks", "x5u": trap_url + "/x5u", "kid": "k1"}
        r = post_token(idp, key.proof("POST", idp.issuer + "/token", NOW, header=header),
                       token_client)
        assert r.status_code == 200, r.text
        r = call_api(api, token, key.proof("GET", api + "/read", NOW, token=token,
                                           header=header))
        assert r.status_code == 200, r.text
    assert hits == []


def test_a_huge_rsa_modulus_is_refused_without_a_500(idp, clock, token_client):
    # A 16384-bit "key" (no key generation needed: any odd n) with a signature of its size.
    n = (1 << 16383) | int.from_bytes(b"\x5a" * 2047, "big") | 1
    jwk = {"kty": "RSA", "n": b64(n.to_bytes(2048, "big")), "e": "AQAB"}
    head = b64({"typ": "dpop+jwt", "alg": "RS256", "jwk": jwk})
    body = b64({"jti": "j1", "htm": "POST", "htu": idp.issuer + "/token", "iat": NOW})
    signature = b64(bytes([1]) * 2048)
    proof = f"{head}.{body}.{signature}"
    r = post_token(idp, proof, token_client)
    assert r.status_code == 400 and r.json()["error"] == "invalid_dpop_proof"
    with pytest.raises(InvalidDPoPProofError):
        DPoPProofChecker(clock=lambda: NOW).check(proof, method="POST",
                                                  url=idp.issuer + "/token")


def test_a_token_endpoint_proof_is_refused_at_the_api(idp, clock, key, token_client, api,
                                                      token):
    proof = key.proof("POST", idp.issuer + "/token", NOW)
    r = call_api(api, token, proof)
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_dpop_proof"


def test_hostile_claim_text_cannot_break_the_challenge(api, key, token):
    proof = key.proof('G"ET\\\r\n,x="y', api + "/read", NOW, token=token)
    r = call_api(api, token, proof)
    assert r.status_code == 401
    challenges = parse_challenges(r.headers["WWW-Authenticate"])
    assert [c.scheme for c in challenges] == ["dpop"]
    assert challenges[0].params["error"] == "invalid_dpop_proof"
    assert "x" not in challenges[0].params and "\r" not in r.headers["WWW-Authenticate"]
