"""Client authentication at the token endpoint over real HTTP: every method, per-client
restrictions, and the RFC 7523 assertion checks. Assertions are built here with PyJWT."""

from __future__ import annotations

import base64
import json
import uuid

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization

SECRET = "s3cret-for-tests"
# conftest's shared secret is 16 bytes; PyJWT warns that HS256 keys should have 32.
SHORT_HMAC_KEY = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
GRANT = {"grant_type": "client_credentials"}


def post(live_server, data=None, **kwargs) -> requests.Response:
    return requests.post(live_server.issuer + "/token", data=data, timeout=5, **kwargs)


def assertion(live_server, client_id: str, key, alg: str, *, headers=None, **claims) -> str:
    """A client assertion; ``claims`` override the defaults (a value of None drops the claim)."""
    now = live_server.clock()
    payload = {"iss": client_id, "sub": client_id, "aud": live_server.issuer + "/token",
               "iat": now, "exp": now + 60, "jti": uuid.uuid4().hex}
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def key_assertion(live_server, client_keys, alg: str, **claims) -> tuple[str, str]:
    """(client_id, assertion) for the private_key_jwt client of ``alg``."""
    ck = client_keys[alg]
    client_id = f"jwt-{alg.lower()}"
    return client_id, assertion(live_server, client_id, ck.pem(), alg,
                                headers={"kid": ck.jwk.kid}, **claims)


def with_assertion(token: str, **extra) -> dict:
    return {**GRANT, "client_assertion_type": ASSERTION_TYPE, "client_assertion": token, **extra}


def issued_token(live_server, response: requests.Response, client_id: str) -> dict:
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    token = response.json()["access_token"]
    kid = jwt.get_unverified_header(token)["kid"]
    keys = requests.get(live_server.issuer + "/jwks.json", timeout=5).json()["keys"]
    (jwk,) = [k for k in keys if k["kid"] == kid]
    claims = jwt.decode(token, jwt.PyJWK(jwk), algorithms=[jwk["alg"]],
                        issuer=live_server.issuer, options={"verify_aud": False})
    assert claims["sub"] == claims["client_id"] == client_id
    return claims


def assert_invalid_client(response: requests.Response, *, basic: bool) -> None:
    """RFC 6749 §5.2: 401 with a Basic challenge when the client used Basic, else 400 (a 401
    must carry WWW-Authenticate, and there is no challenge for body credentials)."""
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Cache-Control"] == "no-store"
    assert response.json()["error"] == "invalid_client", response.text
    if basic:
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith('Basic realm="')
    else:
        assert response.status_code == 400
        assert "WWW-Authenticate" not in response.headers


def last_entry(live_server):
    return live_server.token_requests[-1]


# -- each method works ---------------------------------------------------------------------


def test_client_secret_basic(live_server):
    r = post(live_server, GRANT, auth=("secret-client", SECRET))
    issued_token(live_server, r, "secret-client")
    entry = last_entry(live_server)
    assert (entry.client_id, entry.auth_method, entry.outcome) == (
        "secret-client", "client_secret_basic", "issued")
    assert entry.jti == jwt.decode(r.json()["access_token"],
                                   options={"verify_signature": False})["jti"]


def test_client_secret_basic_with_form_encoded_credentials(live_server):
    """RFC 6749 §2.3.1: id and secret are form-urlencoded before Basic encoding, so '+' is
    a space and a literal '+' arrives as %2B (clients that skip the encoding, e.g. curl -u,
    work as long as their credentials hold none of '+', '%')."""
    live_server.core.store.add_client(_settings("odd id:1", "p@ss:wörd%+ x"))
    try:
        creds = "odd+id%3A1:p%40ss%3Aw%C3%B6rd%25%2B+x"
        header = "Basic " + base64.b64encode(creds.encode()).decode()
        issued_token(live_server, post(live_server, GRANT, headers={"Authorization": header}),
                     "odd id:1")
    finally:
        live_server.core.store.remove_client("odd id:1")


def _settings(client_id, secret):
    from m2mauth.server import ClientSettings

    return ClientSettings(client_id, secret, scopes=("read",))


def test_client_secret_post(live_server):
    r = post(live_server, {**GRANT, "client_id": "secret-client", "client_secret": SECRET})
    issued_token(live_server, r, "secret-client")
    assert last_entry(live_server).auth_method == "client_secret_post"


@SHORT_HMAC_KEY
def test_client_secret_jwt(live_server):
    token = assertion(live_server, "hmac-jwt", SECRET.encode(), "HS256")
    r = post(live_server, with_assertion(token))
    issued_token(live_server, r, "hmac-jwt")
    entry = last_entry(live_server)
    assert (entry.client_id, entry.auth_method, entry.outcome) == (
        "hmac-jwt", "client_secret_jwt", "issued")


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_private_key_jwt(live_server, client_keys, alg):
    client_id, token = key_assertion(live_server, client_keys, alg)
    r = post(live_server, with_assertion(token))
    issued_token(live_server, r, client_id)
    entry = last_entry(live_server)
    assert (entry.client_id, entry.auth_method, entry.outcome) == (
        client_id, "private_key_jwt", "issued")
    assert entry.jti


@pytest.mark.parametrize("aud", ["token_endpoint", "issuer", "list"])
def test_assertion_audience_may_be_token_endpoint_or_issuer(live_server, client_keys, aud):
    """RFC 7523 §3: the token endpoint URL or the issuer identifier."""
    value = {"token_endpoint": live_server.issuer + "/token", "issuer": live_server.issuer,
             "list": ["https://elsewhere.test", live_server.issuer]}[aud]
    _, token = key_assertion(live_server, client_keys, "ES256", aud=value)
    assert post(live_server, with_assertion(token)).status_code == 200


def test_private_key_jwt_with_client_id_in_body(live_server, client_keys):
    client_id, token = key_assertion(live_server, client_keys, "ES256")
    issued_token(live_server, post(live_server, with_assertion(token, client_id=client_id)),
                 client_id)


def test_private_key_jwt_client_id_must_match_assertion(live_server, client_keys):
    _, token = key_assertion(live_server, client_keys, "ES256")
    r = post(live_server, with_assertion(token, client_id="secret-client"))
    # RFC 7521 §4.2: a client_id, if present, MUST identify the assertion's client. Two
    # identities in one request is a malformed request (invalid_request), as with a Basic
    # header whose id differs from the body's client_id.
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"


# -- per-client restrictions and wrong credentials -----------------------------------------


def test_basic_only_client_refuses_post(live_server):
    assert post(live_server, GRANT, auth=("basic-only", SECRET)).status_code == 200
    r = post(live_server, {**GRANT, "client_id": "basic-only", "client_secret": SECRET})
    assert_invalid_client(r, basic=False)
    assert last_entry(live_server).outcome == "invalid_client"


def test_post_only_client_refuses_basic(live_server):
    ok = post(live_server, {**GRANT, "client_id": "post-only", "client_secret": SECRET})
    assert ok.status_code == 200
    assert_invalid_client(post(live_server, GRANT, auth=("post-only", SECRET)), basic=True)


def test_secret_jwt_only_client_refuses_plain_secrets(live_server):
    assert_invalid_client(post(live_server, GRANT, auth=("hmac-jwt", SECRET)), basic=True)


def test_private_key_client_refuses_secrets(live_server):
    assert_invalid_client(post(live_server, GRANT, auth=("jwt-es256", SECRET)), basic=True)


@pytest.mark.parametrize("how", ["basic", "post"])
@pytest.mark.parametrize("client_id,secret", [
    ("secret-client", "wrong"), ("secret-client", SECRET + "x"), ("secret-client", ""),
    ("nobody", SECRET), ("", SECRET),
])
def test_wrong_credentials(live_server, how, client_id, secret):
    if how == "basic":
        r = post(live_server, GRANT, auth=(client_id, secret))
    else:
        r = post(live_server, {**GRANT, "client_id": client_id, "client_secret": secret})
    assert_invalid_client(r, basic=how == "basic")
    assert SECRET not in r.text
    entry = last_entry(live_server)
    assert entry.outcome == "invalid_client" and entry.jti is None


def test_no_credentials_at_all(live_server):
    assert_invalid_client(post(live_server, GRANT), basic=False)


def test_wrong_secret_and_unknown_client_answer_alike(live_server):
    """No client enumeration: the answer does not say whether the id exists."""
    wrong = post(live_server, GRANT, auth=("secret-client", "wrong"))
    unknown = post(live_server, GRANT, auth=("nobody", "wrong"))
    assert wrong.json() == unknown.json()
    assert wrong.headers["WWW-Authenticate"] == unknown.headers["WWW-Authenticate"]


# -- assertion checks ----------------------------------------------------------------------


def test_assertion_with_bad_signature(live_server, client_keys):
    _, token = key_assertion(live_server, client_keys, "ES256")
    head, body, _ = token.split(".")
    other = jwt.encode({"x": 1}, client_keys["ES256"].pem(), algorithm="ES256").split(".")[2]
    assert_invalid_client(post(live_server, with_assertion(f"{head}.{body}.{other}")),
                          basic=False)


def test_assertion_signed_by_another_clients_key(live_server, client_keys):
    token = assertion(live_server, "jwt-es256", client_keys["RS256"].pem(), "RS256",
                      headers={"kid": client_keys["RS256"].jwk.kid})
    assert_invalid_client(post(live_server, with_assertion(token)), basic=False)


def test_assertion_with_wrong_audience(live_server, client_keys):
    _, token = key_assertion(live_server, client_keys, "ES256", aud="https://other.test/token")
    assert_invalid_client(post(live_server, with_assertion(token)), basic=False)


def test_assertion_expired_on_the_server_clock(live_server, client_keys):
    _, token = key_assertion(live_server, client_keys, "ES256")
    # exp is now + 60 and the leeway is 60 s: two minutes and a bit later it is expired.
    live_server.clock.advance(60 + live_server.settings.assertion_leeway + 1)
    assert_invalid_client(post(live_server, with_assertion(token)), basic=False)


def test_assertion_expiring_within_leeway_is_accepted(live_server, client_keys):
    _, token = key_assertion(live_server, client_keys, "ES256")
    live_server.clock.advance(60 + live_server.settings.assertion_leeway - 5)
    assert post(live_server, with_assertion(token)).status_code == 200


def test_assertion_not_yet_valid(live_server, client_keys):
    now = live_server.clock()
    _, token = key_assertion(live_server, client_keys, "ES256", nbf=now + 600, iat=now + 600,
                             exp=now + 660)
    assert_invalid_client(post(live_server, with_assertion(token)), basic=False)


def test_assertion_iss_differs_from_sub(live_server, client_keys):
    _, token = key_assertion(live_server, client_keys, "ES256", iss="jwt-rs256")
    assert_invalid_client(post(live_server, with_assertion(token)), basic=False)


@pytest.mark.parametrize("claim", ["jti", "exp", "aud", "iss", "sub"])
def test_assertion_missing_claim(live_server, client_keys, claim):
    _, token = key_assertion(live_server, client_keys, "ES256", **{claim: None})
    assert_invalid_client(post(live_server, with_assertion(token)), basic=False)


@pytest.mark.parametrize("jti", ["", 42, ["a"]])
def test_assertion_with_unusable_jti(live_server, client_keys, jti):
    _, token = key_assertion(live_server, client_keys, "ES256", jti=jti)
    assert_invalid_client(post(live_server, with_assertion(token)), basic=False)


@pytest.mark.parametrize("sub", [42, ["jwt-es256"], None, {"id": "jwt-es256"}])
def test_assertion_with_non_string_sub(live_server, client_keys, sub):
    now = live_server.clock()
    claims = {"iss": sub, "sub": sub, "aud": live_server.issuer + "/token", "exp": now + 60,
              "jti": uuid.uuid4().hex}
    # PyJWT's jwt.encode refuses a non-string iss/sub; sign the raw payload instead.
    token = jwt.api_jws.encode(json.dumps(claims).encode(), client_keys["ES256"].pem(),
                               algorithm="ES256", headers={"kid": client_keys["ES256"].jwk.kid})
    assert_invalid_client(post(live_server, with_assertion(token)), basic=False)


def test_assertion_jti_replay_is_rejected(live_server, client_keys):
    _, token = key_assertion(live_server, client_keys, "ES256")
    assert post(live_server, with_assertion(token)).status_code == 200
    assert_invalid_client(post(live_server, with_assertion(token)), basic=False)
    # Same jti in a fresh assertion is a replay too.
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    _, again = key_assertion(live_server, client_keys, "ES256", jti=jti)
    assert_invalid_client(post(live_server, with_assertion(again)), basic=False)


def test_assertion_jti_is_per_client(live_server, client_keys):
    """The replay cache is keyed on (client, jti): another client may use the same value."""
    _, one = key_assertion(live_server, client_keys, "ES256", jti="shared-jti")
    _, two = key_assertion(live_server, client_keys, "RS256", jti="shared-jti")
    assert post(live_server, with_assertion(one)).status_code == 200
    assert post(live_server, with_assertion(two)).status_code == 200


def test_assertion_jti_reuse_after_expiry(live_server, client_keys):
    """Once the first assertion has expired (plus leeway), the jti may be used again in a
    new, unexpired assertion: the old one itself can no longer be replayed, so remembering
    the jti longer buys nothing (RFC 7523 §3 item 7 only asks for it within the lifetime)."""
    live_server.clock.freeze()
    _, first = key_assertion(live_server, client_keys, "ES256", jti="again")
    assert post(live_server, with_assertion(first)).status_code == 200
    live_server.clock.advance(60 + live_server.settings.assertion_leeway + 1)
    assert_invalid_client(post(live_server, with_assertion(first)), basic=False)  # expired
    _, second = key_assertion(live_server, client_keys, "ES256", jti="again")
    assert post(live_server, with_assertion(second)).status_code == 200
    assert_invalid_client(post(live_server, with_assertion(second)), basic=False)  # replay


def test_rejected_assertion_does_not_burn_its_jti(live_server, client_keys):
    """An assertion with a bad signature must not enter the replay cache: an attacker could
    otherwise pre-empt the real client's jti values."""
    _, real = key_assertion(live_server, client_keys, "ES256", jti="victim")
    forged = assertion(live_server, "jwt-es256", client_keys["RS256"].pem(), "RS256",
                       jti="victim")
    assert_invalid_client(post(live_server, with_assertion(forged)), basic=False)
    assert post(live_server, with_assertion(real)).status_code == 200


def test_assertion_alg_none(live_server):
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    now = live_server.clock()
    claims = {"iss": "jwt-es256", "sub": "jwt-es256", "aud": live_server.issuer + "/token",
              "exp": now + 60, "jti": uuid.uuid4().hex}
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    for token in (f"{header}.{body}.", f"{header}.{body}"):
        assert_invalid_client(post(live_server, with_assertion(token)), basic=False)


@pytest.mark.parametrize("form", ["pem", "jwk"])
def test_hs256_assertion_signed_with_the_public_key(live_server, client_keys, form):
    """Key confusion: the registered public key used as an HMAC secret."""
    ck = client_keys["RS256"]
    if form == "pem":
        secret = ck.jwk.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    else:
        secret = json.dumps(ck.jwk.as_dict(private=False)).encode()
    token = _hs256(live_server, "jwt-rs256", secret)
    assert_invalid_client(post(live_server, with_assertion(token)), basic=False)


def _hs256(live_server, client_id: str, secret: bytes) -> str:
    """PyJWT refuses to HMAC with a PEM-looking key, so this one is built by hand."""
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    now = live_server.clock()
    claims = {"iss": client_id, "sub": client_id, "aud": live_server.issuer + "/token",
              "exp": now + 60, "jti": uuid.uuid4().hex}
    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(claims).encode())
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(sig)


@SHORT_HMAC_KEY
def test_hs256_assertion_with_the_secret_of_another_client(live_server):
    token = assertion(live_server, "jwt-es256", SECRET.encode(), "HS256")
    assert_invalid_client(post(live_server, with_assertion(token)), basic=False)


def test_client_secret_jwt_refuses_an_asymmetric_assertion(live_server, client_keys):
    token = assertion(live_server, "hmac-jwt", client_keys["ES256"].pem(), "ES256")
    assert_invalid_client(post(live_server, with_assertion(token)), basic=False)


def test_assertion_exp_too_far_in_the_future(live_server, client_keys):
    now = live_server.clock()
    far = now + live_server.settings.assertion_max_lifetime + 3600
    _, token = key_assertion(live_server, client_keys, "ES256", exp=far)
    assert_invalid_client(post(live_server, with_assertion(token)), basic=False)


@pytest.mark.parametrize("exp", ["soon", 1.5e12, True])
def test_assertion_with_unusable_exp(live_server, client_keys, exp):
    _, token = key_assertion(live_server, client_keys, "ES256", exp=exp)
    assert_invalid_client(post(live_server, with_assertion(token)), basic=False)


@pytest.mark.parametrize("value", ["not-a-jwt", "a.b.c", "..", "e30.e30.", "x" * 5000])
def test_malformed_assertion(live_server, value):
    assert_invalid_client(post(live_server, with_assertion(value)), basic=False)


def test_wrong_assertion_type(live_server, client_keys):
    _, token = key_assertion(live_server, client_keys, "ES256")
    r = post(live_server, {**GRANT, "client_assertion_type": "urn:x", "client_assertion": token})
    assert_invalid_client(r, basic=False)


def test_assertion_headers_carrying_keys_are_not_trusted(live_server):
    """A jwk header naming the attacker's own key must not be used to verify."""
    from cryptography.hazmat.primitives.asymmetric import ec

    attacker = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(attacker.public_key()))
    token = assertion(live_server, "jwt-es256", attacker, "ES256",
                      headers={"jwk": jwk, "jku": "http://127.0.0.1:9/jwks.json"})
    assert_invalid_client(post(live_server, with_assertion(token)), basic=False)


# -- status, challenge, request log ---------------------------------------------------------


def test_invalid_client_challenge_names_the_realm(live_server):
    r = post(live_server, GRANT, auth=("secret-client", "wrong"))
    assert_invalid_client(r, basic=True)
    assert f'realm="{live_server.issuer}"' in r.headers["WWW-Authenticate"]


def test_request_log_records_failures_with_claimed_identity(live_server, client_keys):
    post(live_server, GRANT, auth=("secret-client", "wrong"))
    post(live_server, {**GRANT, "client_id": "post-only", "client_secret": "wrong"})
    _, token = key_assertion(live_server, client_keys, "ES256", aud="https://other.test")
    post(live_server, with_assertion(token))
    entries = live_server.token_requests[-3:]
    assert [(e.client_id, e.auth_method, e.outcome, e.status, e.jti) for e in entries] == [
        ("secret-client", "client_secret_basic", "invalid_client", 401, None),
        ("post-only", "client_secret_post", "invalid_client", 400, None),
        ("jwt-es256", "private_key_jwt", "invalid_client", 400, None),
    ]
    for e in entries:
        assert "wrong" not in repr(e) and token not in repr(e)


# -- hostile assertions: an RFC 6749 error, never a 500 --------------------------------------

def _b64(value) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def _hostile_assertions(live_server, client_keys):
    ck = client_keys["ES256"]
    aud = live_server.issuer + "/token"
    claims = {"iss": "jwt-es256", "sub": "jwt-es256", "aud": aud, "jti": uuid.uuid4().hex,
              "exp": live_server.clock() + 60}
    signed = jwt.encode(claims, ck.pem(), algorithm="ES256")
    return {
        # joserfc quotes header names in its message; '"' and '\' are forbidden there
        "crit with quote": jwt.encode(
            {**claims, "iss": "hmac-jwt", "sub": "hmac-jwt"}, SECRET, algorithm="HS256",
            headers={"crit": ['a"b\\'], 'a"b\\': 1}),
        "kid with quote": jwt.encode(claims, ck.pem(), algorithm="ES256",
                                     headers={"kid": 'no"such\\kid'}),
        "alg with quote": _b64({"alg": 'ES"256'}) + "." + _b64(claims) + ".c2ln",
        "header not JSON": "bm90anNvbg." + _b64(claims) + ".c2ln",
        "header a list": _b64([1]) + "." + _b64(claims) + ".c2ln",
        "payload a string": _b64({"alg": "ES256"}) + "." + _b64("x") + ".c2ln",
        "sub a list": _b64({"alg": "ES256"}) + "." + _b64({**claims, "sub": ["x"]}) + ".c2ln",
        "sub unknown with quote": _b64({"alg": "ES256"}) + "."
        + _b64({**claims, "sub": 'a"b'}) + ".c2ln",
        "signature not base64url": signed[:-4] + "!!!!",
        "two segments": signed.rsplit(".", 1)[0],
        "JWE shape": "a.b.c.d.e",
        "aud with quote": jwt.encode({**claims, "aud": ['x"y']}, ck.pem(), algorithm="ES256"),
        "exp a string": _b64({"alg": "ES256"}) + "." + _b64({**claims, "exp": "soon"}) + ".c2ln",
        "empty": "",
        "dots only": "..",
    }


@SHORT_HMAC_KEY
def test_hostile_assertions_get_invalid_client_not_500(live_server, client_keys):
    for name, token in _hostile_assertions(live_server, client_keys).items():
        r = post(live_server, with_assertion(token))
        assert r.status_code in (400, 401), (name, r.status_code, r.text)
        assert r.headers["Content-Type"].startswith("application/json"), name
        assert r.json()["error"] in ("invalid_client", "invalid_request"), (name, r.text)
        description = r.json().get("error_description", "")
        assert '"' not in description and "\\" not in description, (name, description)
    ok = post(live_server, GRANT, auth=("secret-client", SECRET))
    assert ok.status_code == 200


# -- one answer for every failed authentication ---------------------------------------------


def _comparable(response: requests.Response) -> tuple:
    """What a caller can compare between two answers: status, headers (but Date, which
    follows the wall clock) and the body's bytes."""
    headers = tuple(sorted(
        (k.lower(), v) for k, v in response.headers.items() if k.lower() != "date"))
    return response.status_code, headers, response.content


@SHORT_HMAC_KEY
def test_every_failed_authentication_gets_one_answer(live_server, client_keys, caplog):
    """No client enumeration (issue 9 item 3): unknown id, wrong secret, no secret, no keys,
    bad signature, bad claims, replayed jti and a forbidden method answer byte for byte alike,
    per status rule; the server log keeps the detail (and no secret or assertion)."""
    es = client_keys["ES256"]
    kid = {"kid": es.jwk.kid}
    live_server.add_client("keys-but-basic", client_secret=SECRET, jwks=es.public_jwks(),
                           auth_methods=["client_secret_basic"])
    used = assertion(live_server, "jwt-es256", es.pem(), "ES256", headers=kid)
    assert post(live_server, with_assertion(used)).status_code == 200
    head, body, _ = assertion(live_server, "jwt-es256", es.pem(), "ES256", headers=kid).split(".")
    forged = jwt.encode({"x": 1}, es.pem(), algorithm="ES256").split(".")[2]
    # name → (request for a known client, the same request for an unknown one)
    body_failures = {
        "post, wrong secret": ({**GRANT, "client_id": "post-only", "client_secret": "wrong"},
                               {**GRANT, "client_id": "nobody", "client_secret": "wrong"}),
        "post, no secret": ({**GRANT, "client_id": "jwt-es256", "client_secret": SECRET},
                            {**GRANT, "client_id": "nobody", "client_secret": SECRET}),
        "post, method not allowed": (
            {**GRANT, "client_id": "basic-only", "client_secret": SECRET},
            {**GRANT, "client_id": "nobody", "client_secret": SECRET}),
        "client_secret_jwt, wrong secret": (
            with_assertion(assertion(live_server, "hmac-jwt", "w" * 32, "HS256")),
            with_assertion(assertion(live_server, "nobody", "w" * 32, "HS256"))),
        "client_secret_jwt, no secret": (
            with_assertion(assertion(live_server, "jwt-es256", SECRET, "HS256")),
            with_assertion(assertion(live_server, "nobody", SECRET, "HS256"))),
        "private_key_jwt, no keys": (
            with_assertion(assertion(live_server, "secret-client", es.pem(), "ES256")),
            with_assertion(assertion(live_server, "nobody", es.pem(), "ES256"))),
        "private_key_jwt, bad signature": (
            with_assertion(f"{head}.{body}.{forged}"),
            with_assertion(assertion(live_server, "nobody", es.pem(), "ES256", headers=kid))),
        "private_key_jwt, bad claims": (
            with_assertion(assertion(live_server, "jwt-es256", es.pem(), "ES256", headers=kid,
                                     aud="https://other.test/token")),
            with_assertion(assertion(live_server, "nobody", es.pem(), "ES256", headers=kid,
                                     aud="https://other.test/token"))),
        "private_key_jwt, replayed jti": (
            with_assertion(used),
            with_assertion(assertion(live_server, "nobody", es.pem(), "ES256", headers=kid))),
        "private_key_jwt, method not allowed": (
            with_assertion(assertion(live_server, "keys-but-basic", es.pem(), "ES256",
                                     headers=kid)),
            with_assertion(assertion(live_server, "nobody", es.pem(), "ES256", headers=kid))),
    }
    basic_failures = {
        "basic, wrong secret": (("secret-client", "wrong"), ("nobody", "wrong")),
        "basic, no secret": (("jwt-es256", SECRET), ("nobody", SECRET)),
        "basic, method not allowed": (("post-only", SECRET), ("nobody", SECRET)),
    }
    caplog.set_level("INFO", logger="m2mauth.server")
    answers = {}
    for name, (known, unknown) in body_failures.items():
        answers[name] = _comparable(post(live_server, known))
        answers[name + " (unknown)"] = _comparable(post(live_server, unknown))
    for name, (known, unknown) in basic_failures.items():
        answers[name] = _comparable(post(live_server, GRANT, auth=known))
        answers[name + " (unknown)"] = _comparable(post(live_server, GRANT, auth=unknown))
    in_body = {answers[n] for n in answers if not n.startswith("basic")}
    with_basic = {answers[n] for n in answers if n.startswith("basic")}
    assert len(in_body) == 1, answers
    assert len(with_basic) == 1, answers
    (status, headers, content), = in_body
    assert status == 400 and "www-authenticate" not in dict(headers)
    assert json.loads(content) == {
        "error": "invalid_client",
        "error_description": "Client authentication failed: unknown client, wrong"
                             " credentials, or an auth method this client may not use."}
    (status, headers, _), = with_basic
    assert status == 401 and dict(headers)["www-authenticate"].startswith('Basic realm="')

    lines = [r.getMessage() for r in caplog.records
             if r.name == "m2mauth.server" and "client authentication failed" in r.getMessage()]
    assert len(lines) == len(answers)
    text = "\n".join(lines)
    for detail in ("client_id='post-only' detail='client_secret_post: wrong client secret'",
                   "client_id='nobody' detail='client_secret_basic: unknown client'",
                   "client_id='jwt-es256' detail='client_secret_basic: the client has no"
                   " secret'",
                   "client_id='basic-only' detail='client_secret_post: not an auth method",
                   "client_id='secret-client' detail='The client has no registered public",
                   "client_id='keys-but-basic' detail='The client cannot authenticate with"
                   " method: private_key_jwt'",
                   "detail='Client assertion: jti was used before.'",
                   "detail='Client assertion: bad_signature",
                   "client_id='nobody' detail='The client does not exist"):
        assert detail in text, (detail, text)
    assert SECRET not in text and used not in text and "wrong'" not in text


def test_the_failure_log_escapes_the_client_id(live_server, caplog):
    caplog.set_level("INFO", logger="m2mauth.server")
    r = post(live_server, {**GRANT, "client_id": "evil\nclient_id=admin", "client_secret": "x"})
    assert r.status_code == 400
    (line,) = [r.getMessage() for r in caplog.records if "authentication failed" in r.getMessage()]
    assert "\n" not in line and r"client_id='evil\nclient_id=admin'" in line
