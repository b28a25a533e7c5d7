"""The client's DPoP (RFC 9449) at the token endpoint: ``DPoPKey`` proofs checked by an
independent implementation (joserfc: signature, header, claims, ``ath``, ``htu``, thumbprint),
then ``fetch_token`` and the providers against the real server (the ``idp`` fixture): a
DPoP-bound token whose ``cnf.jkt`` is the key's thumbprint, cache keys per key, the nonce
retry exactly once (counted in the server's request log), and a Bearer answer to a proof
refused. Clocks are the server's frozen clock."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import pickle

import jwt
import pytest
from _dpop_support import serving
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Flask, jsonify
from joserfc import jws
from joserfc.jwk import JWKRegistry
from joserfc.jws import JWSRegistry

from m2mauth.client import (
    AsyncTokenProvider,
    DPoPKey,
    DPoPNonceStore,
    DPoPTokenTypeError,
    OAuthError,
    RetryPolicy,
    TokenCache,
    TokenProvider,
    afetch_token,
    fetch_token,
)

NOW = 1_900_000_000
ALGS = ["ES256", "ES384", "ES512", "RS256", "PS256", "EdDSA"]


def b64url_sha256(text: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()


def verified(proof: str) -> tuple[dict, dict]:
    """(header, claims) of a proof, its signature verified by joserfc with the header's jwk."""
    header = json.loads(base64.urlsafe_b64decode(proof.split(".")[0] + "=="))
    key = JWKRegistry.import_key(header["jwk"])
    registry = JWSRegistry(algorithms=[header["alg"]])
    registry.max_header_length = 4096  # a jwk header of an RSA key is larger than the default
    obj = jws.deserialize_compact(proof, key, registry=registry)
    return obj.headers(), json.loads(obj.payload)


@pytest.fixture
def clock(idp):
    idp.clock.freeze(at=NOW)
    return idp.clock


@pytest.fixture
def client(idp):
    return idp.add_client("dpop-client", scopes=["read", "write"])


@pytest.fixture
def token_url(idp) -> str:
    return idp.issuer + "/token"


# -- proofs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGS)
def test_a_proof_verifies_with_joserfc(alg):
    key = DPoPKey.generate(alg, clock=lambda: NOW + 0.7)
    proof = key.proof("get", "https://api.test:8443/a/b?x=1#frag", access_token="tok-1",
                      nonce="n-1")
    header, claims = verified(proof)
    assert header == {"typ": "dpop+jwt", "alg": alg, "jwk": dict(key.public_jwk)}
    assert set(header["jwk"]) <= {"kty", "crv", "x", "y", "n", "e"}  # no private member
    assert claims["htm"] == "GET"
    assert claims["htu"] == "https://api.test:8443/a/b"  # without query and fragment
    assert claims["iat"] == NOW
    assert claims["ath"] == b64url_sha256("tok-1")
    assert claims["nonce"] == "n-1"
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16
    assert set(claims) == {"jti", "htm", "htu", "iat", "ath", "nonce"}
    # RFC 7638 thumbprint, computed by joserfc
    assert key.thumbprint == JWKRegistry.import_key(header["jwk"]).thumbprint()


def test_a_proof_without_token_or_nonce_has_neither_and_a_fresh_jti():
    key = DPoPKey.generate()
    first = verified(key.proof("POST", "http://127.0.0.1:9/token", now=NOW))[1]
    second = verified(key.proof("POST", "http://127.0.0.1:9/token", now=NOW))[1]
    assert "ath" not in first and "nonce" not in first
    assert first["jti"] != second["jti"]
    assert first["htu"] == "http://127.0.0.1:9/token"
    assert verified(key.proof("GET", "http://h.test", now=NOW))[1]["htu"] == "http://h.test/"


@pytest.mark.parametrize("url", ["ftp://h/x", "/relative", "", "http://"])
def test_a_proof_needs_an_absolute_http_url(url):
    with pytest.raises(ValueError):
        DPoPKey.generate().proof("GET", url)


def test_keys_from_pem_and_jwk_and_objects_agree():
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    from_object = DPoPKey(private)
    from_pem = DPoPKey.from_pem(pem)
    private_jwk = jwt.algorithms.ECAlgorithm.to_jwk(private, as_dict=True)
    from_jwk = DPoPKey.from_jwk(private_jwk)
    from_json = DPoPKey.from_jwk(json.dumps(private_jwk))
    assert from_object.alg == from_pem.alg == from_jwk.alg == "ES256"
    assert len({k.thumbprint for k in (from_object, from_pem, from_jwk, from_json)}) == 1
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert DPoPKey(rsa_key).alg == "RS256"
    assert DPoPKey(rsa_key, alg="PS256").alg == "PS256"


@pytest.mark.parametrize(("make", "alg"), [
    (lambda: ec.generate_private_key(ec.SECP256R1()), "ES384"),
    (lambda: ec.generate_private_key(ec.SECP256R1()), "RS256"),
    (lambda: ec.generate_private_key(ec.SECP256R1()), "HS256"),
    (lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024), "RS256"),
])
def test_a_key_must_fit_its_algorithm(make, alg):
    with pytest.raises(ValueError):
        DPoPKey(make(), alg)


def test_a_public_jwk_is_not_a_dpop_key():
    public = jwt.algorithms.ECAlgorithm.to_jwk(
        ec.generate_private_key(ec.SECP256R1()).public_key(), as_dict=True)
    with pytest.raises(ValueError):
        DPoPKey.from_jwk(public)


def test_the_private_key_stays_out_of_repr_and_pickles():
    private = ec.generate_private_key(ec.SECP256R1())
    key = DPoPKey(private)
    d = jwt.algorithms.ECAlgorithm.to_jwk(private, as_dict=True)["d"]
    assert d not in repr(key) and d not in str(key) and key.thumbprint in repr(key)
    assert "d" not in key.public_jwk
    with pytest.raises(TypeError):
        pickle.dumps(key)
    with pytest.raises(TypeError):
        key.public_jwk["d"] = d  # read-only


def test_the_nonce_store_is_per_origin_bounded_and_takes_only_nonces():
    store = DPoPNonceStore(max_entries=2)
    assert store.update("https://a.test/x?y", "n1") == "n1"
    assert store.get("https://A.test:443/other") == "n1"  # same origin, default port
    assert store.get("http://a.test/x") is None  # another scheme, another origin
    for bad in ("", "has space", 'quo"te', "back\\slash", "x" * 513, None, 7, "é"):
        assert store.update("https://a.test/", bad) is None
    assert store.get("https://a.test/") == "n1"  # unchanged by what is not a nonce
    store.update("https://b.test/", "n2")
    store.update("https://c.test/", "n3")  # the least recently used (a.test) goes
    assert len(store) == 2 and store.get("https://a.test/") is None
    assert store.get("https://c.test/") == "n3" and "n3" not in repr(store)


# -- the token endpoint -------------------------------------------------------------------------


def test_the_provider_gets_a_dpop_bound_token(idp, clock, client, token_url):
    provider = TokenProvider(token_url, client.client_id, client.client_secret, "read",
                             dpop=True, clock=clock.now)
    assert isinstance(provider.dpop_key, DPoPKey) and provider.dpop_key.alg == "ES256"
    token = provider.get()
    assert token.token_type.lower() == "dpop"
    claims = jwt.decode(token.access_token, options={"verify_signature": False})
    assert claims["cnf"] == {"jkt": provider.dpop_key.thumbprint}
    (logged,) = idp.token_requests
    assert logged.dpop and logged.dpop_jkt == provider.dpop_key.thumbprint
    assert provider.get() is token  # cached
    assert len(idp.token_requests) == 1
    assert provider.dpop_key.thumbprint in repr(provider)


def test_a_given_key_is_used_and_kept(idp, clock, client, token_url):
    key = DPoPKey.generate("EdDSA")
    provider = TokenProvider(token_url, client.client_id, client.client_secret, "read",
                             dpop_key=key, clock=clock.now)
    assert provider.dpop_key is key and provider.dpop
    claims = jwt.decode(provider.get_token(), options={"verify_signature": False})
    assert claims["cnf"]["jkt"] == key.thumbprint


def test_fetch_token_with_a_dpop_key(clock, client, token_url):
    key = DPoPKey.generate("RS256")
    token = fetch_token(token_url, client_id=client.client_id,
                        client_secret=client.client_secret, scope="read", dpop_key=key,
                        clock=clock.now)
    assert token.token_type.lower() == "dpop"
    assert jwt.decode(token.access_token, options={"verify_signature": False})["cnf"] == {
        "jkt": key.thumbprint}


def test_the_cache_key_includes_the_dpop_thumbprint(idp, clock, client, token_url):
    cache: TokenCache = TokenCache()
    args = (token_url, client.client_id, client.client_secret, "read")
    key = DPoPKey.generate()
    bearer = TokenProvider(*args, cache=cache, clock=clock.now)
    bound = TokenProvider(*args, cache=cache, clock=clock.now, dpop_key=key)
    same_key = TokenProvider(*args, cache=cache, clock=clock.now, dpop_key=key)
    other_key = TokenProvider(*args, cache=cache, clock=clock.now, dpop=True)
    assert len({bearer.cache_key, bound.cache_key, other_key.cache_key}) == 3
    assert bound.cache_key == same_key.cache_key
    tokens = [p.get() for p in (bearer, bound, same_key, other_key)]
    assert tokens[0].token_type == "Bearer"
    assert tokens[1] is tokens[2]  # same key: shared
    assert tokens[1].access_token != tokens[3].access_token
    assert len(idp.token_requests) == 3 and len(cache) == 3


def test_a_nonce_is_retried_exactly_once_and_remembered(idp, clock, client, token_url):
    idp.require_dpop_nonce()
    provider = TokenProvider(token_url, client.client_id, client.client_secret, "read",
                             dpop=True, clock=clock.now)
    token = provider.get()
    assert token.token_type.lower() == "dpop"
    assert [r.outcome for r in idp.token_requests] == ["use_dpop_nonce", "issued"]
    provider.invalidate()
    provider.get()  # the nonce it was given is still current: no second round trip
    assert [r.outcome for r in idp.token_requests] == ["use_dpop_nonce", "issued", "issued"]


def test_a_client_that_wants_nonces_with_private_key_jwt(idp, clock, token_url):
    """The retry makes a new client assertion too (an assertion's jti is used only once)."""
    signing = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = jwt.algorithms.RSAAlgorithm.to_jwk(signing.public_key(), as_dict=True)
    client = idp.add_client("dpop-pkjwt", jwks={"keys": [public | {"kid": "k1"}]},
                            scopes=["read"], dpop_nonce=True, dpop="required")
    provider = TokenProvider(token_url, client.client_id, scope="read", private_key=signing,
                             kid="k1", dpop=True, clock=clock.now)
    assert provider.get().token_type.lower() == "dpop"
    assert [r.outcome for r in idp.token_requests] == ["use_dpop_nonce", "issued"]


def test_the_async_provider_and_afetch_token_with_dpop(idp, clock, client, token_url):
    idp.require_dpop_nonce()

    async def main():
        provider = AsyncTokenProvider(token_url, client.client_id, client.client_secret,
                                      "read", dpop=True, clock=clock.now)
        tokens = await asyncio.gather(*(provider.get() for _ in range(5)))  # single flight
        key = DPoPKey.generate()
        other = await afetch_token(token_url, client_id=client.client_id,
                                   client_secret=client.client_secret, scope="read",
                                   dpop_key=key, clock=clock.now)
        return provider, tokens, other, key

    provider, tokens, other, key = asyncio.run(main())
    assert len({t.access_token for t in tokens}) == 1
    assert jwt.decode(tokens[0].access_token, options={"verify_signature": False})["cnf"][
        "jkt"] == provider.dpop_key.thumbprint
    assert jwt.decode(other.access_token, options={"verify_signature": False})["cnf"][
        "jkt"] == key.thumbprint
    assert [r.outcome for r in idp.token_requests] == ["use_dpop_nonce", "issued"] * 2


def test_a_stale_proof_is_the_servers_error(idp, clock, client, token_url):
    provider = TokenProvider(token_url, client.client_id, client.client_secret, "read",
                             dpop_key=DPoPKey.generate(), clock=lambda: NOW - 3600,
                             retry=RetryPolicy(max_attempts=1))
    with pytest.raises(OAuthError) as caught:
        provider.get()
    assert caught.value.error == "invalid_dpop_proof" and caught.value.status == 400


# -- servers that are not m2mauth's -------------------------------------------------------------


def test_a_bearer_answer_to_a_proof_is_refused():
    """An authorization server without DPoP ignores the header and issues a bearer token."""
    app = Flask(__name__)
    seen: list = []

    @app.post("/token")
    def token():
        from flask import request

        seen.append(request.headers.get("DPoP"))
        return jsonify(access_token="plain-bearer-token", token_type="Bearer", expires_in=300)

    with serving(app) as url:
        provider = TokenProvider(url + "/token", "c", "s", "read", dpop=True)
        with pytest.raises(DPoPTokenTypeError) as caught:
            provider.get()
        assert caught.value.token_type == "Bearer" and caught.value.error == "dpop_not_bound"
        assert "plain-bearer-token" not in str(caught.value)
        twin = pickle.loads(pickle.dumps(caught.value))
        assert (type(twin), twin.token_type, twin.status, str(twin)) == (
            DPoPTokenTypeError, "Bearer", 200, str(caught.value))
        assert len(seen) == 1 and seen[0]  # a proof was sent, and the error not retried
        # the same server is fine for a provider without DPoP
        assert TokenProvider(url + "/token", "c", "s", "read").get_token() == (
            "plain-bearer-token")


def test_a_server_that_always_wants_a_new_nonce_gets_one_retry():
    app = Flask(__name__)
    nonces: list = []

    @app.post("/token")
    def token():
        from flask import request

        claims = jwt.decode(request.headers["DPoP"], options={"verify_signature": False})
        nonces.append(claims.get("nonce"))
        response = jsonify(error="use_dpop_nonce", error_description="use this one")
        response.headers["DPoP-Nonce"] = f"nonce-{len(nonces)}"
        return response, 400

    with serving(app) as url:
        provider = TokenProvider(url + "/token", "c", "s", dpop=True,
                                 retry=RetryPolicy(max_attempts=1))
        with pytest.raises(OAuthError) as caught:
            provider.get()
        assert caught.value.error == "use_dpop_nonce"
        assert nonces == [None, "nonce-1"]  # once, with the nonce it was given
        with pytest.raises(OAuthError):
            provider.get()
        assert nonces[2:] == ["nonce-2", "nonce-3"]  # the latest nonce was kept
