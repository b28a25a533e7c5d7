"""The lab's DPoP controls (RFC 9449): DPoP-bound tokens and proofs, valid and with each
defect, the nonce switch, the use_dpop_nonce fault – in Python and over the admin API, against
the real token endpoint. Thumbprints and signatures are checked here with PyJWT."""

from __future__ import annotations

import base64
import hashlib
import json

import jwt
import pytest
import requests

from m2mauth.server.lab.dpop import DPOP_DEFECTS

SECRET = "s3cret-for-tests"
GRANT = {"grant_type": "client_credentials"}

#: What the token endpoint says of each defect (wrong_ath: the token endpoint has no token
#: to hash, see test_a_wrong_ath_is_not_the_hash_of_the_token).
REFUSALS = {"wrong_htm": "htm", "wrong_htu": "htu", "stale_iat": "too old",
            "future_iat": "future", "replayed_jti": "replay", "other_key": "signature",
            "private_key": "private", "alg_none": "alg", "hs256": "alg", "wrong_typ": "typ"}


@pytest.fixture
def dpop_idp(idp):
    idp.add_client("dpop-opt", client_secret=SECRET, scopes=["read"])
    idp.add_client("rs", client_secret=SECRET, introspect=True)
    return idp


def post(idp, proof: str | None) -> requests.Response:
    return requests.post(idp.token_endpoint, data=GRANT, auth=("dpop-opt", SECRET),
                         headers={"DPoP": proof} if proof else {}, timeout=5)


def thumbprint(jwk: dict) -> str:
    required = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"),
                "OKP": ("crv", "kty", "x")}[jwk["kty"]]
    text = json.dumps({k: jwk[k] for k in required}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()


def admin(idp, method: str, path: str, body=None) -> requests.Response:
    return requests.request(method, idp.admin_url + path, json=body, timeout=5)


# -- Python ---------------------------------------------------------------------------------


def test_a_valid_proof_from_the_lab_gets_a_dpop_token(dpop_idp):
    minted = dpop_idp.dpop_proof()
    r = post(dpop_idp, minted.proof)
    assert r.status_code == 200, r.text
    assert r.json()["token_type"] == "DPoP"
    claims = jwt.decode(r.json()["access_token"], options={"verify_signature": False})
    assert claims["cnf"]["jkt"] == minted.jkt == thumbprint(minted.key.public_jwk)


def test_the_proof_is_signed_by_the_header_key(dpop_idp):
    dpop_idp.clock.freeze()  # iat is whole seconds of the server's clock: no second may pass
    minted = dpop_idp.dpop_proof(alg=None)
    header = jwt.get_unverified_header(minted.proof)
    key = jwt.PyJWK(header["jwk"], algorithm="ES256")
    claims = jwt.decode(minted.proof, key.key, algorithms=["ES256"])
    assert (header["typ"], claims["htm"], claims["htu"], claims["jti"]) == (
        "dpop+jwt", "POST", dpop_idp.token_endpoint, minted.jti)
    assert claims["iat"] == int(dpop_idp.clock.now())


@pytest.mark.parametrize("defect", sorted(REFUSALS))
def test_each_defect_is_refused_at_the_token_endpoint(dpop_idp, defect):
    key = dpop_idp.dpop_key()
    if defect == "replayed_jti":
        first = dpop_idp.dpop_proof(key)
        assert post(dpop_idp, first.proof).status_code == 200
    minted = dpop_idp.dpop_proof(key, defect=defect)
    if defect == "replayed_jti":
        assert minted.jti == first.jti
    r = post(dpop_idp, minted.proof)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_dpop_proof"
    assert REFUSALS[defect] in r.json()["error_description"].lower()


def test_every_defect_is_covered():
    assert set(DPOP_DEFECTS) == {*REFUSALS, "wrong_ath"}


def test_a_wrong_ath_is_not_the_hash_of_the_token(dpop_idp):
    # The refusal at a resource server: test_dpop_end_to_end and test_dpop_api.
    token = dpop_idp.issue_dpop_token("dpop-opt")
    good = dpop_idp.dpop_proof(token.key, method="GET", url="https://api.test/orders",
                               token=token.access_token)
    bad = dpop_idp.dpop_proof(token.key, method="GET", url="https://api.test/orders",
                              token=token.access_token, defect="wrong_ath")
    expected = base64.urlsafe_b64encode(
        hashlib.sha256(token.access_token.encode()).digest()).rstrip(b"=").decode()
    public = token.key.key.as_dict(private=False)
    key = jwt.PyJWK(public, "ES256")
    assert jwt.decode(good.proof, key, algorithms=["ES256"])["ath"] == expected
    assert jwt.decode(bad.proof, key, algorithms=["ES256"])["ath"] != expected


def test_replayed_jti_needs_an_earlier_proof(idp):
    from m2mauth.server.lab.controls import Controls

    fresh = Controls(idp.core)
    with pytest.raises(ValueError, match="earlier proof"):
        fresh.dpop_proof(defect="replayed_jti")
    with pytest.raises(ValueError, match="not one of"):
        fresh.dpop_proof(defect="bogus")


@pytest.mark.parametrize("token_format", ["jwt", "opaque"])
def test_issue_dpop_token_binds_the_token_to_the_key(dpop_idp, token_format):
    minted = dpop_idp.issue_dpop_token("dpop-opt", token_format=token_format)
    assert minted.token_type == "DPoP" and minted.jkt == thumbprint(minted.key.public_jwk)
    answer = requests.post(dpop_idp.core.introspection_endpoint, auth=("rs", SECRET), timeout=5,
                           data={"token": minted.access_token}).json()
    assert answer["active"] is True and answer["cnf"] == {"jkt": minted.jkt}
    assert answer["token_type"] == "DPoP"
    assert minted.access_token not in repr(minted)


def test_a_given_private_jwk_is_used(dpop_idp):
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from jwt.algorithms import OKPAlgorithm

    private = json.loads(OKPAlgorithm.to_jwk(ed25519.Ed25519PrivateKey.generate()))
    minted = dpop_idp.dpop_proof(private)
    assert minted.key.alg == "EdDSA"
    assert minted.jkt == thumbprint(private)
    assert post(dpop_idp, minted.proof).status_code == 200


def test_a_public_jwk_is_no_key_to_sign_with(dpop_idp):
    key = dpop_idp.dpop_key()
    with pytest.raises(ValueError, match="private"):
        dpop_idp.dpop_proof(key.public_jwk)


def test_requiring_a_nonce_at_run_time_and_reading_it(dpop_idp):
    assert dpop_idp.dpop_nonce_required() is False
    dpop_idp.require_dpop_nonce()
    assert dpop_idp.dpop_nonce_required() is True
    key = dpop_idp.dpop_key()
    r = post(dpop_idp, dpop_idp.dpop_proof(key).proof)
    assert r.json()["error"] == "use_dpop_nonce"
    assert r.headers["DPoP-Nonce"] == dpop_idp.dpop_nonce()
    assert post(dpop_idp, dpop_idp.dpop_proof(key, nonce=dpop_idp.dpop_nonce()).proof
                ).status_code == 200
    dpop_idp.reset()
    assert dpop_idp.dpop_nonce_required() is False


def test_a_queued_use_dpop_nonce_fault_gives_a_nonce(dpop_idp):
    dpop_idp.fail_next(status=400, error="use_dpop_nonce",
                       error_description="Use the DPoP nonce.")
    key = dpop_idp.dpop_key()
    first = post(dpop_idp, dpop_idp.dpop_proof(key).proof)
    assert first.status_code == 400 and first.json()["error"] == "use_dpop_nonce"
    nonce = first.headers["DPoP-Nonce"]
    again = post(dpop_idp, dpop_idp.dpop_proof(key, nonce=nonce).proof)
    assert again.status_code == 200, again.text


# -- the admin API --------------------------------------------------------------------------


def test_admin_api_mints_proofs(dpop_idp):
    made = admin(dpop_idp, "POST", "/dpop/proofs", {})
    assert made.status_code == 200, made.text
    body = made.json()
    assert body["key"]["d"] and body["jkt"] == thumbprint(body["key"])
    assert post(dpop_idp, body["proof"]).status_code == 200
    again = admin(dpop_idp, "POST", "/dpop/proofs", {"key": body["key"],
                                                      "defect": "replayed_jti"}).json()
    assert again["jti"] == body["jti"] and again["jkt"] == body["jkt"]
    assert post(dpop_idp, again["proof"]).json()["error"] == "invalid_dpop_proof"
    for defect in ("wrong_htu", "alg_none", "hs256", "private_key"):
        made = admin(dpop_idp, "POST", "/dpop/proofs", {"defect": defect}).json()
        assert post(dpop_idp, made["proof"]).json()["error"] == "invalid_dpop_proof"
    bad = admin(dpop_idp, "POST", "/dpop/proofs", {"defect": "nope"})
    assert bad.status_code == 400 and bad.json()["field"] == "defect"
    bad = admin(dpop_idp, "POST", "/dpop/proofs", {"key": {"kty": "oct", "k": "AAAA"}})
    assert bad.status_code == 400 and bad.json()["field"] == "key"
    bad = admin(dpop_idp, "POST", "/dpop/proofs", {"colour": "red"})
    assert bad.status_code == 400


def test_admin_api_adds_and_lists_a_dpop_required_client(dpop_idp):
    added = admin(dpop_idp, "POST", "/clients", {"client_id": "dpop-http", "scopes": ["read"],
                                                 "dpop": "required"})
    assert added.status_code == 201 and added.json()["dpop"] == "required"
    listed = admin(dpop_idp, "GET", "/clients").json()["clients"]
    assert [c["dpop"] for c in listed if c["client_id"] == "dpop-http"] == ["required"]
    r = requests.post(dpop_idp.token_endpoint, data=GRANT, timeout=5,
                      auth=("dpop-http", added.json()["client_secret"]))
    assert r.json()["error"] == "invalid_dpop_proof"
    bad = admin(dpop_idp, "POST", "/clients", {"client_id": "x", "dpop": "always"})
    assert bad.status_code == 400 and bad.json()["field"] == "dpop"


def test_admin_api_mints_dpop_tokens(dpop_idp):
    body = admin(dpop_idp, "POST", "/dpop/tokens", {"client_id": "dpop-opt"}).json()
    assert body["token_type"] == "DPoP"
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["cnf"]["jkt"] == body["jkt"] == thumbprint(body["key"])
    proof = admin(dpop_idp, "POST", "/dpop/proofs", {
        "key": body["key"], "method": "GET", "url": "https://api.test/x",
        "token": body["access_token"]}).json()["proof"]
    ath = jwt.decode(proof, options={"verify_signature": False})["ath"]
    assert ath == base64.urlsafe_b64encode(
        hashlib.sha256(body["access_token"].encode()).digest()).rstrip(b"=").decode()
    missing = admin(dpop_idp, "POST", "/dpop/tokens", {})
    assert missing.status_code == 400 and missing.json()["field"] == "client_id"
    not_ascii = admin(dpop_idp, "POST", "/dpop/proofs", {"token": "t\u00e9"})
    assert not_ascii.status_code == 400 and not_ascii.json()["field"] == "token"


def test_admin_api_switches_nonces(dpop_idp):
    assert admin(dpop_idp, "GET", "/dpop/nonce").json()["required"] is False
    on = admin(dpop_idp, "POST", "/dpop/nonce", {"required": True}).json()
    assert on["required"] is True and on["nonce"] == dpop_idp.dpop_nonce()
    r = post(dpop_idp, dpop_idp.dpop_proof().proof)
    assert r.json()["error"] == "use_dpop_nonce"
    assert admin(dpop_idp, "POST", "/dpop/nonce", {"required": None}).json()["required"] is False
    bad = admin(dpop_idp, "POST", "/dpop/nonce", {"required": "yes"})
    assert bad.status_code == 400 and bad.json()["field"] == "required"
