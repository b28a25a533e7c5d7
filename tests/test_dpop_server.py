"""DPoP (RFC 9449) at the token endpoint over real HTTP: every proof the server must refuse as
its own test, the bound token (token_type DPoP, cnf.jkt), nonces, per-client requirement,
metadata, introspection, and the shared stores. Proofs are built here with PyJWT and
cryptography from real keys, independently of the server's code."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import secrets
import time
from urllib.parse import urlsplit

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

SECRET = "s3cret-for-tests"
GRANT = {"grant_type": "client_credentials"}


# -- proofs built independently of the server ---------------------------------------------


def public_jwk(key) -> dict:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return json.loads(ECAlgorithm.to_jwk(key.public_key()))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return json.loads(OKPAlgorithm.to_jwk(key.public_key()))
    return json.loads(RSAAlgorithm.to_jwk(key.public_key()))


def private_jwk(key) -> dict:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return json.loads(ECAlgorithm.to_jwk(key))
    return json.loads(RSAAlgorithm.to_jwk(key))


def thumbprint(jwk: dict) -> str:
    """RFC 7638 by hand: the required members, sorted, no whitespace, SHA-256."""
    required = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"),
                "OKP": ("crv", "kty", "x")}[jwk["kty"]]
    text = json.dumps({k: jwk[k] for k in required}, separators=(",", ":"), sort_keys=True)
    return b64(hashlib.sha256(text.encode()).digest())


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def proof(key, url: str, *, method: str = "POST", alg: str = "ES256", nonce: str | None = None,
          claims: dict | None = None, header: dict | None = None, jwk: dict | None = None,
          token: str | None = None) -> str:
    payload = {"jti": secrets.token_urlsafe(16), "htm": method, "htu": url,
               "iat": int(time.time())}
    if nonce is not None:
        payload["nonce"] = nonce
    if token is not None:
        payload["ath"] = b64(hashlib.sha256(token.encode()).digest())
    payload.update(claims or {})
    headers = {"typ": "dpop+jwt", "jwk": jwk if jwk is not None else public_jwk(key),
               **(header or {})}
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def unsigned(header: dict, payload: dict) -> str:
    def part(value: dict) -> str:
        return b64(json.dumps(value).encode())
    return f"{part(header)}.{part(payload)}."


@pytest.fixture(scope="module")
def key():
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def dpop_idp(idp):
    """The session issuer with a DPoP-optional and a DPoP-required client."""
    idp.add_client("dpop-opt", client_secret=SECRET, scopes=["read"])
    idp.add_client("dpop-req", client_secret=SECRET, scopes=["read"], dpop="required")
    return idp


def token_url(idp) -> str:
    return idp.issuer + "/token"


def post(idp, dpop: str | None, client_id: str = "dpop-opt", **kwargs) -> requests.Response:
    headers = {"DPoP": dpop} if dpop is not None else {}
    return requests.post(token_url(idp), data=GRANT, auth=(client_id, SECRET), timeout=5,
                         headers=headers, **kwargs)


def refused(response: requests.Response, words: str, error: str = "invalid_dpop_proof") -> None:
    assert response.status_code == 400, response.text
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert body["error"] == error
    assert words.lower() in body["error_description"].lower(), body


def claims_of(idp, token: str) -> dict:
    signing = jwt.PyJWKClient(idp.issuer + "/jwks.json", timeout=5).get_signing_key_from_jwt(token)
    return jwt.decode(token, signing, algorithms=["RS256", "ES256", "PS256", "EdDSA"],
                      options={"verify_aud": False})


# -- a valid proof -------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES256", "RS256", "PS256", "EdDSA"])
def test_a_valid_proof_gets_a_dpop_token_bound_to_its_key(dpop_idp, alg):
    signer = {"ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
              "RS256": lambda: rsa.generate_private_key(65537, 2048),
              "PS256": lambda: rsa.generate_private_key(65537, 2048),
              "EdDSA": ed25519.Ed25519PrivateKey.generate}[alg]()
    r = post(dpop_idp, proof(signer, token_url(dpop_idp), alg=alg))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "DPoP"
    assert claims_of(dpop_idp, body["access_token"])["cnf"] == {
        "jkt": thumbprint(public_jwk(signer))}


def test_the_thumbprint_matches_joserfcs(dpop_idp, key):
    from joserfc.jwk import ECKey

    r = post(dpop_idp, proof(key, token_url(dpop_idp)))
    expected = ECKey.import_key(public_jwk(key)).thumbprint()
    assert claims_of(dpop_idp, r.json()["access_token"])["cnf"]["jkt"] == expected


def test_without_a_proof_an_optional_client_gets_a_bearer_token(dpop_idp):
    r = post(dpop_idp, None)
    assert r.json()["token_type"] == "Bearer"
    assert "cnf" not in claims_of(dpop_idp, r.json()["access_token"])


def test_htu_with_query_and_fragment_is_accepted(dpop_idp, key):
    r = post(dpop_idp, proof(key, token_url(dpop_idp) + "?a=1#frag"))
    assert r.status_code == 200, r.text


def test_htu_scheme_and_host_case_and_default_port_are_normalised(dpop_idp, key):
    parts = urlsplit(token_url(dpop_idp))
    url = f"HTTP://{parts.hostname.upper()}:{parts.port}{parts.path}"
    assert post(dpop_idp, proof(key, url)).status_code == 200



def test_htu_percent_encoding_is_normalised(dpop_idp, key):
    # RFC 3986 section 6.2.2.2: %74 is "t"; the path is the same resource.
    url = token_url(dpop_idp)
    encoded = url[: url.rindex("/token")] + "/%74oken"
    assert post(dpop_idp, proof(key, encoded)).status_code == 200
    refused(post(dpop_idp, proof(key, encoded.replace("%74", "%2F"))), "htu")


def test_the_record_notes_dpop_and_the_jkt_never_the_proof(dpop_idp, key):
    sent = proof(key, token_url(dpop_idp))
    post(dpop_idp, sent)
    post(dpop_idp, None)
    dpop_record, bearer_record = dpop_idp.token_requests[-2:]
    assert dpop_record.dpop is True and dpop_record.dpop_jkt == thumbprint(public_jwk(key))
    assert bearer_record.dpop is False and bearer_record.dpop_jkt is None
    assert sent not in json.dumps([vars(r) for r in dpop_idp.token_requests], default=str)


# -- proofs the endpoint refuses (REFERENCES.md), one test each ----------------------------


def test_alg_none_is_refused(dpop_idp, key):
    now = int(time.time())
    sent = unsigned({"alg": "none", "typ": "dpop+jwt", "jwk": public_jwk(key)},
                    {"jti": "n1", "htm": "POST", "htu": token_url(dpop_idp), "iat": now})
    refused(post(dpop_idp, sent), "alg")


def test_hs256_is_refused(dpop_idp, key):
    sent = jwt.encode({"jti": "h1", "htm": "POST", "htu": token_url(dpop_idp),
                       "iat": int(time.time())}, "a-shared-secret-of-32-bytes-long!",
                      algorithm="HS256", headers={"typ": "dpop+jwt", "jwk": public_jwk(key)})
    refused(post(dpop_idp, sent), "alg")


def test_a_symmetric_jwk_is_refused(dpop_idp):
    secret = b"a-shared-secret-of-32-bytes-long!"
    sent = jwt.encode({"jti": "h2", "htm": "POST", "htu": token_url(dpop_idp),
                       "iat": int(time.time())}, secret, algorithm="HS256",
                      headers={"typ": "dpop+jwt", "jwk": {"kty": "oct", "k": b64(secret)}})
    refused(post(dpop_idp, sent), "alg")


def test_a_private_key_in_the_jwk_is_refused(dpop_idp, key):
    refused(post(dpop_idp, proof(key, token_url(dpop_idp), jwk=private_jwk(key))), "private")


def test_a_signature_by_another_key_is_refused(dpop_idp, key):
    other = ec.generate_private_key(ec.SECP256R1())
    refused(post(dpop_idp, proof(other, token_url(dpop_idp), jwk=public_jwk(key))),
            "signature")


def test_a_jwk_of_the_wrong_type_for_the_alg_is_refused(dpop_idp, key):
    rsa_key = rsa.generate_private_key(65537, 2048)
    sent = proof(rsa_key, token_url(dpop_idp), alg="RS256", jwk=public_jwk(key))
    refused(post(dpop_idp, sent), "not a key for RS256")


@pytest.mark.filterwarnings("ignore:.*2048 bits")  # PyJWT signing, joserfc importing
def test_an_rsa_key_under_2048_bits_is_refused(dpop_idp):
    small = rsa.generate_private_key(65537, 1024)
    refused(post(dpop_idp, proof(small, token_url(dpop_idp), alg="RS256")), "2048")


def test_no_jwk_is_refused(dpop_idp, key):
    sent = jwt.encode({"jti": "j", "htm": "POST", "htu": token_url(dpop_idp),
                       "iat": int(time.time())}, key, algorithm="ES256",
                      headers={"typ": "dpop+jwt"})
    refused(post(dpop_idp, sent), "jwk")


@pytest.mark.parametrize("typ", ["JWT", "at+jwt", "DPOP+JWT", None])
def test_a_wrong_typ_is_refused(dpop_idp, key, typ):
    sent = proof(key, token_url(dpop_idp), header={"typ": typ})
    refused(post(dpop_idp, sent), "typ")


def test_a_wrong_htm_is_refused(dpop_idp, key):
    refused(post(dpop_idp, proof(key, token_url(dpop_idp), method="GET")), "htm")


def test_a_wrong_htu_is_refused(dpop_idp, key):
    refused(post(dpop_idp, proof(key, dpop_idp.issuer + "/other")), "htu")


def test_a_htu_of_another_host_is_refused(dpop_idp, key):
    refused(post(dpop_idp, proof(key, "https://elsewhere.test/token")), "htu")


def test_a_stale_iat_is_refused(dpop_idp, key):
    sent = proof(key, token_url(dpop_idp), claims={"iat": int(time.time()) - 120})
    refused(post(dpop_idp, sent), "too old")


def test_a_future_iat_is_refused(dpop_idp, key):
    sent = proof(key, token_url(dpop_idp), claims={"iat": int(time.time()) + 120})
    refused(post(dpop_idp, sent), "future")


def test_the_iat_window_is_on_the_servers_clock(dpop_idp, key):
    dpop_idp.clock.advance(3600)  # the server is an hour ahead: a proof of "now" is old
    refused(post(dpop_idp, proof(key, token_url(dpop_idp))), "too old")
    sent = proof(key, token_url(dpop_idp), claims={"iat": int(time.time()) + 3600})
    assert post(dpop_idp, sent).status_code == 200


def test_a_replayed_jti_is_refused(dpop_idp, key):
    sent = proof(key, token_url(dpop_idp))
    assert post(dpop_idp, sent).status_code == 200
    refused(post(dpop_idp, sent), "replay")


def test_a_missing_or_overlong_jti_is_refused(dpop_idp, key):
    refused(post(dpop_idp, proof(key, token_url(dpop_idp), claims={"jti": None})), "jti")
    refused(post(dpop_idp, proof(key, token_url(dpop_idp), claims={"jti": "x" * 300})), "jti")


def test_two_dpop_headers_are_refused(dpop_idp, key):
    parts = urlsplit(token_url(dpop_idp))
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    body = "grant_type=client_credentials"
    conn.putrequest("POST", parts.path)
    conn.putheader("Authorization",
                   "Basic " + base64.b64encode(f"dpop-opt:{SECRET}".encode()).decode())
    conn.putheader("Content-Type", "application/x-www-form-urlencoded")
    conn.putheader("Content-Length", str(len(body)))
    conn.putheader("DPoP", proof(key, token_url(dpop_idp)))
    conn.putheader("DPoP", proof(key, token_url(dpop_idp)))
    conn.endheaders(body.encode())
    response = conn.getresponse()
    answer = json.loads(response.read())
    conn.close()
    assert response.status == 400
    assert answer["error"] == "invalid_dpop_proof"
    assert "exactly one" in answer["error_description"]


def test_an_oversized_proof_is_refused(dpop_idp, key):
    sent = proof(key, token_url(dpop_idp), claims={"pad": "x" * 9000})
    refused(post(dpop_idp, sent), "longer than")


@pytest.mark.parametrize("garbage", ["not-a-jwt", "a.b", "a.b.c.d", "!!!.???.###",
                                     b64(b"[1]") + "." + b64(b"{}") + ".",
                                     b64(b"[" * 5000) + "." + b64(b"{}") + ".sig", ""])
def test_garbage_proofs_are_refused_without_echo(dpop_idp, garbage):
    r = post(dpop_idp, garbage)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_dpop_proof"
    if garbage:
        assert garbage not in r.text


def test_a_required_client_without_a_proof_is_refused(dpop_idp):
    refused(post(dpop_idp, None, client_id="dpop-req"), "DPoP proof required")


def test_a_required_client_with_a_proof_gets_a_dpop_token(dpop_idp, key):
    r = post(dpop_idp, proof(key, token_url(dpop_idp)), client_id="dpop-req")
    assert r.json()["token_type"] == "DPoP"


def test_client_authentication_comes_first(dpop_idp, key):
    r = requests.post(token_url(dpop_idp), data=GRANT, auth=("dpop-opt", "wrong"), timeout=5,
                      headers={"DPoP": "garbage"})
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


# -- nonces --------------------------------------------------------------------------------


def test_without_nonces_no_dpop_nonce_header(dpop_idp, key):
    r = post(dpop_idp, proof(key, token_url(dpop_idp)))
    assert "DPoP-Nonce" not in r.headers


def test_a_required_nonce_is_asked_for_then_accepted(dpop_idp, key):
    dpop_idp.require_dpop_nonce()
    first = post(dpop_idp, proof(key, token_url(dpop_idp)))
    refused(first, "nonce", error="use_dpop_nonce")
    nonce = first.headers["DPoP-Nonce"]
    second = post(dpop_idp, proof(key, token_url(dpop_idp), nonce=nonce))
    assert second.status_code == 200, second.text
    assert second.json()["token_type"] == "DPoP"
    assert second.headers["DPoP-Nonce"]  # every answer carries a fresh one


def test_a_made_up_nonce_is_refused(dpop_idp, key):
    dpop_idp.require_dpop_nonce()
    refused(post(dpop_idp, proof(key, token_url(dpop_idp), nonce="1.forged")), "stale",
            error="use_dpop_nonce")


def test_nonces_rotate_with_the_servers_clock(dpop_idp, key):
    dpop_idp.clock.freeze(at=1_900_000_020.0)
    dpop_idp.require_dpop_nonce()
    nonce = dpop_idp.dpop_nonce()
    dpop_idp.clock.advance(60)  # the next window: the previous nonce still counts
    now = int(dpop_idp.clock.now())
    r = post(dpop_idp, proof(key, token_url(dpop_idp), nonce=nonce, claims={"iat": now}))
    assert r.status_code == 200, r.text
    assert r.headers["DPoP-Nonce"] != nonce
    dpop_idp.clock.advance(60)  # two windows on: stale
    now = int(dpop_idp.clock.now())
    r = post(dpop_idp, proof(key, token_url(dpop_idp), nonce=nonce, claims={"iat": now}))
    refused(r, "stale", error="use_dpop_nonce")
    fresh = r.headers["DPoP-Nonce"]
    r = post(dpop_idp, proof(key, token_url(dpop_idp), nonce=fresh, claims={"iat": now}))
    assert r.status_code == 200, r.text


def test_a_client_may_require_nonces_of_its_own(dpop_idp, key):
    dpop_idp.add_client("dpop-nonce", client_secret=SECRET, scopes=["read"], dpop_nonce=True)
    first = post(dpop_idp, proof(key, token_url(dpop_idp)), client_id="dpop-nonce")
    refused(first, "nonce", error="use_dpop_nonce")
    second = post(dpop_idp, proof(key, token_url(dpop_idp), nonce=first.headers["DPoP-Nonce"]),
                  client_id="dpop-nonce")
    assert second.status_code == 200 and second.headers["DPoP-Nonce"]
    other = post(dpop_idp, proof(key, token_url(dpop_idp)))  # the issuer's other clients: none
    assert other.status_code == 200 and "DPoP-Nonce" not in other.headers


def test_stopping_the_nonce_requirement(dpop_idp, key):
    dpop_idp.require_dpop_nonce()
    dpop_idp.require_dpop_nonce(False)
    assert post(dpop_idp, proof(key, token_url(dpop_idp))).status_code == 200


# -- metadata and introspection ------------------------------------------------------------


def test_metadata_lists_the_proof_algorithms(dpop_idp):
    doc = requests.get(dpop_idp.issuer + "/.well-known/oauth-authorization-server",
                       timeout=5).json()
    assert doc["dpop_signing_alg_values_supported"] == ["RS256", "PS256", "ES256", "EdDSA",
                                                         "Ed25519"]


@pytest.mark.parametrize("token_format", ["jwt", "opaque"])
def test_introspection_answers_the_cnf(dpop_idp, key, token_format):
    dpop_idp.add_client("dpop-fmt", client_secret=SECRET, scopes=["read"],
                        token_format=token_format)
    dpop_idp.add_client("rs", client_secret=SECRET, introspect=True)
    r = post(dpop_idp, proof(key, token_url(dpop_idp)), client_id="dpop-fmt")
    answer = requests.post(dpop_idp.issuer + "/introspect", auth=("rs", SECRET), timeout=5,
                           data={"token": r.json()["access_token"]}).json()
    assert answer["active"] is True
    assert answer["token_type"] == "DPoP"
    assert answer["cnf"] == {"jkt": thumbprint(public_jwk(key))}


# -- settings ------------------------------------------------------------------------------


def test_client_dpop_setting_is_validated():
    from m2mauth.server.errors import ConfigError
    from m2mauth.server.settings import ClientSettings

    with pytest.raises(ConfigError, match="dpop"):
        ClientSettings("c", "secret", dpop="always").validate("test", "clients[0]")


# -- shared stores: two servers, one issuer ------------------------------------------------


@pytest.fixture(params=["sqlite", "redis"])
def shared_target(request, tmp_path):
    if request.param == "sqlite":
        return "sqlite", str(tmp_path / "state.db")
    url = request.getfixturevalue("redis_server").url(5)
    import redis

    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return "redis", url


def test_two_servers_on_a_shared_store_share_replays_and_nonces(shared_target, key):
    """A jti used at one server is a replay at the other; a nonce one server gave is
    accepted by the other (the secret is in the store); the nonce switch reaches both."""
    from _store_support import open_shared

    from m2mauth.server import ServerSettings
    from m2mauth.server.lab.idp import IdentityProvider

    kind, where = shared_target
    settings = ServerSettings(ephemeral_keys=True, algorithm="ES256",
                              issuer="http://dpop.test")
    a = IdentityProvider.start(settings, store=open_shared(kind, where, ""))
    b = IdentityProvider.start(settings, store=open_shared(kind, where, ""))
    try:
        a.add_client("dpop-opt", client_secret=SECRET, scopes=["read"])
        url = "http://dpop.test/token"  # the configured token endpoint, as both check htu

        def send(idp, sent):
            return requests.post(idp.url + "/token", data=GRANT, auth=("dpop-opt", SECRET),
                                 headers={"DPoP": sent}, timeout=10)

        sent = proof(key, url)
        assert send(a, sent).json()["token_type"] == "DPoP"
        refused(send(b, sent), "replay")
        a.require_dpop_nonce()
        first = send(b, proof(key, url))
        refused(first, "nonce", error="use_dpop_nonce")
        r = send(a, proof(key, url, nonce=first.headers["DPoP-Nonce"]))
        assert r.status_code == 200, r.text
        b.require_dpop_nonce(False)
        assert send(a, proof(key, url)).status_code == 200
    finally:
        a.stop()
        b.stop()


def test_the_dpop_nonce_setting_from_file_environment_and_flag(tmp_path):
    from m2mauth.server.errors import ConfigError
    from m2mauth.server.settings import load_settings

    assert load_settings(env={}).dpop_nonce is False
    path = tmp_path / "m2mauth.toml"
    path.write_text('dpop_nonce = true\n[[clients]]\nclient_id = "c"\nclient_secret = "s"\n'
                    'dpop = "required"\n')
    settings = load_settings(path, env={})
    assert settings.dpop_nonce is True and settings.clients[0].dpop == "required"
    assert load_settings(env={"M2MAUTH_DPOP_NONCE": "true"}).dpop_nonce is True
    assert load_settings(env={}, overrides={"dpop_nonce": True}).dpop_nonce is True
    path.write_text('dpop_nonce = "sometimes"\n')
    with pytest.raises(ConfigError, match="dpop_nonce"):
        load_settings(path, env={})
    path.write_text('[[clients]]\nclient_id = "c"\nclient_secret = "s"\ndpop = "always"\n')
    with pytest.raises(ConfigError, match="dpop"):
        load_settings(path, env={})


def test_serve_with_a_bad_dpop_nonce_exits_2_naming_the_key(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "m2mauth.server.cli", "serve", "--port", "0"],
                            env={"M2MAUTH_DPOP_NONCE": "maybe", "PATH": ""}, timeout=30,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "dpop_nonce" in result.stderr.lower()


def test_the_issuer_setting_turns_nonces_on(key):
    from m2mauth.server import ServerSettings
    from m2mauth.server.lab.idp import IdentityProvider

    idp = IdentityProvider.start(ServerSettings(ephemeral_keys=True, algorithm="ES256",
                                                dpop_nonce=True))
    try:
        idp.add_client("dpop-opt", client_secret=SECRET, scopes=["read"])
        bearer = post(idp, None)
        assert bearer.status_code == 200 and bearer.headers["DPoP-Nonce"]
        first = post(idp, proof(key, token_url(idp)))
        refused(first, "nonce", error="use_dpop_nonce")
        assert post(idp, proof(key, token_url(idp), nonce=first.headers["DPoP-Nonce"])
                    ).status_code == 200
    finally:
        idp.stop()


def test_serve_with_dpop_nonce_and_two_workers(cli_process, key, tmp_path):
    """``m2mauth serve --dpop-nonce --workers 2``: a nonce one worker gave is taken by
    whichever answers next (the secret is in the shared store); the log line names the jkt
    and never the proof."""
    server = cli_process("serve", "--port", "0", "--dpop-nonce", "--workers", "2",
                         "--ephemeral-keys", "--algorithm", "ES256",
                         stderr_file=tmp_path / "stderr.log")
    issuer = server.field("issuer")
    url = issuer + "/token"

    def send(sent):
        return requests.post(url, data=GRANT, auth=("demo-client", "demo-secret"), timeout=10,
                             headers={"DPoP": sent})

    first = send(proof(key, url))
    refused(first, "nonce", error="use_dpop_nonce")
    nonce = first.headers["DPoP-Nonce"]
    sent = [proof(key, url, nonce=nonce) for _ in range(4)]
    answers = [send(p) for p in sent]
    assert [a.json().get("token_type") for a in answers] == ["DPoP"] * 4
    err = server.stop()
    assert f"dpop=yes dpop_jkt={thumbprint(public_jwk(key))}" in err
    assert not any(p in err for p in sent)


# -- any header value: an RFC error, never a crash -----------------------------------------


def _fuzzed_verifier():
    from m2mauth.server.clock import Clock
    from m2mauth.server.dpop import DPoPVerifier
    from m2mauth.server.store import MemoryStore

    store = MemoryStore()
    return DPoPVerifier(clock=Clock(store), store=store)


def test_any_header_value_is_refused_as_invalid_dpop_proof():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from m2mauth.server.dpop import InvalidDPoPProofError

    verifier = _fuzzed_verifier()
    segment = st.text(alphabet="ABCDEFabcdef0123456789-_", max_size=40)
    jsonish = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() |
                           st.text(max_size=10),
                           lambda inner: st.lists(inner, max_size=3) |
                           st.dictionaries(st.sampled_from(
                               ["alg", "typ", "jwk", "kty", "crv", "x", "y", "n", "e", "d",
                                "jti", "htm", "htu", "iat"]), inner, max_size=5),
                           max_leaves=10)

    def encoded(value) -> str:
        return b64(json.dumps(value).encode())

    structured = st.builds(lambda h, p, s: f"{encoded(h)}.{encoded(p)}.{s}",
                           jsonish, jsonish, segment)

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(st.text(max_size=200), structured))
    def check(value):
        with pytest.raises(InvalidDPoPProofError):
            verifier.verify(value, method="POST", url="http://x.test/token", client_id="c")

    check()


def test_eddsa_is_verified_without_joserfc_s_warning_and_other_names_are_unchanged():
    """joserfc warns on every EdDSA use; silencing that per request with catch_warnings is
    not thread-safe, so the server's verifying registry does not raise it at all."""
    import warnings

    from joserfc.errors import UnsupportedAlgorithmError
    from joserfc.jws import JWSRegistry

    from m2mauth.server.verification import QuietJWSRegistry

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(Warning):  # what the plain registry does
            JWSRegistry(algorithms=["EdDSA"]).get_alg("EdDSA")
        assert QuietJWSRegistry(algorithms=["EdDSA"]).get_alg("EdDSA").name == "EdDSA"
        with pytest.raises(UnsupportedAlgorithmError):  # the allow-list still holds
            QuietJWSRegistry(algorithms=["ES256"]).get_alg("EdDSA")
        with pytest.raises(UnsupportedAlgorithmError):  # joserfc's default refusals too
            QuietJWSRegistry().get_alg("EdDSA")
