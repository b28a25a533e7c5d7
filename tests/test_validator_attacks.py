"""Every attack of REFERENCES.md against m2mauth.client.TokenValidator, one test each, with
real tokens from the session's authorization server (the ``idp`` fixture) where a valid
signature is needed. Attacker tokens are built here by hand (base64/hmac) or with PyJWT and
locally generated keys; nothing is verified with server code. No sleeping: clocks are moved."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwt.algorithms import ECAlgorithm, RSAAlgorithm, get_default_algorithms

from m2mauth.client import InvalidTokenError, JWKSCache, JWKSError, TokenValidator
from m2mauth.server.serving import BackgroundServer, bind_app

AUD = "api://default"


def b64(data: bytes | dict) -> str:
    if isinstance(data, dict):
        data = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def parts(token: str) -> tuple[dict, dict, bytes]:
    head, payload, sig = token.split(".")
    return json.loads(unb64(head)), json.loads(unb64(payload)), unb64(sig)


def with_header(token: str, **changes) -> str:
    """``token`` with its header changed (so its signature no longer matches)."""
    head, payload, sig = token.split(".")
    header = {**json.loads(unb64(head)), **changes}
    return f"{b64({k: v for k, v in header.items() if v is not None})}.{payload}.{sig}"


def reason(validator: TokenValidator, token, **kw) -> str:
    with pytest.raises(InvalidTokenError) as info:
        validator.validate(token, **kw)
    return info.value.reason


@pytest.fixture
def make_validator(idp):
    """A validator trusting the test's server, on the server's clock (one clock)."""

    def make(**options) -> TokenValidator:
        options.setdefault("clock", idp.clock.now)
        options.setdefault("jwks_uri", idp.jwks_uri)
        return TokenValidator(idp.issuer, AUD, **options)

    return make


@pytest.fixture
def validator(make_validator):
    return make_validator()


@pytest.fixture
def good(idp, validator) -> str:
    """A valid RS256 token, already validated once (so the JWKS is cached)."""
    token = idp.issue_token("demo-client")
    validator.validate(token)
    return token


def rsa_jwk(idp, alg: str = "RS256") -> dict:
    return next(k for k in idp.jwks["keys"] if k.get("alg") == alg)


def attacker_token(idp, key, alg: str, header: dict, claims: dict | None = None) -> str:
    """A token with valid-looking claims signed by a key the issuer never had."""
    now = idp.clock()
    claims = claims or {"iss": idp.issuer, "sub": "demo-client", "client_id": "demo-client",
                        "aud": AUD, "exp": now + 300, "iat": now, "jti": "evil",
                        "scope": "read write"}
    headers = {k: v for k, v in {"typ": "at+jwt", **header}.items() if v is not None}
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


# -- 1. alg none and algorithms outside the allow-list ----------------------------------


def test_alg_none_is_refused_without_a_key_lookup(idp, make_validator):
    validator = make_validator()
    token = idp.issue_token("demo-client", alg="none")
    assert token.endswith(".")
    assert reason(validator, token) == "algorithm_not_allowed"
    for spelling in ("None", "NONE", "nOnE"):
        assert reason(validator, with_header(token, alg=spelling)) == "algorithm_not_allowed"
    assert idp.jwks_requests == []  # refused on the header alone


def test_none_cannot_even_be_configured(idp):
    with pytest.raises(ValueError, match="none"):
        TokenValidator(idp.issuer, AUD, algorithms=["RS256", "none"])


def test_algorithm_outside_the_allow_list(idp, make_validator):
    only_es = make_validator(algorithms=["ES256"])
    rs_token = idp.issue_token("demo-client")  # RS256, correctly signed
    with pytest.raises(InvalidTokenError) as info:
        only_es.validate(rs_token)
    assert info.value.reason == "algorithm_not_allowed"
    assert "RS256" in info.value.error_description
    es_token = idp.issue_token("alg-es256", audience=AUD)
    assert only_es.validate(es_token).client_id == "alg-es256"


# -- 2. HMAC/RSA key confusion -----------------------------------------------------------


def _hs256(header: dict, claims: dict, secret: bytes) -> str:
    signing_input = f"{b64(header)}.{b64(claims)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


@pytest.mark.parametrize("secret_form", ["pem", "pem-pkcs1", "jwk-json"])
def test_hs256_signed_with_the_public_key_is_refused(idp, validator, good, secret_form):
    jwk = rsa_jwk(idp)
    public = RSAAlgorithm.from_jwk(jwk)
    secret = {
        "pem": public.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo),
        "pem-pkcs1": public.public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.PKCS1),
        "jwk-json": json.dumps(jwk).encode(),
    }[secret_form]
    header, claims, _ = parts(good)
    forged = _hs256({**header, "alg": "HS256"}, {**claims, "jti": "forged"}, secret)
    assert reason(validator, forged) == "algorithm_not_allowed"


def test_hmac_validator_never_uses_jwks_keys_as_secrets(idp, make_validator, good):
    secret = b"k" * 32
    validator = make_validator(algorithms=["RS256", "HS256"], hmac_secret=secret)
    header, claims, _ = parts(good)
    pem = RSAAlgorithm.from_jwk(rsa_jwk(idp)).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert reason(validator, _hs256({**header, "alg": "HS256"}, claims, pem)) == "bad_signature"
    genuine = _hs256({**header, "alg": "HS256"}, claims, secret)
    assert validator.validate(genuine).subject == "demo-client"
    with pytest.raises(ValueError, match="public key"):
        make_validator(algorithms=["HS256"], hmac_secret=pem)
    with pytest.raises(ValueError, match="HMAC needs"):
        make_validator(algorithms=["RS256", "HS256"])


# -- 3. keys carried in the token ---------------------------------------------------------


class _CountingServer:
    """A loopback HTTP server that counts requests (the attacker's jku/x5u host)."""

    def __init__(self) -> None:
        self.hits = 0
        self._running = BackgroundServer(bind_app("127.0.0.1", 0, lambda _port: self._count)[0])
        self.url = self._running.url

    def _count(self, environ, start_response):
        self.hits += 1
        start_response("404 Not Found", [("Content-Length", "0")])
        return [b""]

    def close(self) -> None:
        self._running.stop()


@pytest.fixture
def attacker_host():
    server = _CountingServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def attacker_rsa():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_embedded_jwk_header_is_ignored(idp, validator, good, attacker_rsa):
    evil_jwk = json.loads(RSAAlgorithm.to_jwk(attacker_rsa.public_key()))
    own_kid = attacker_token(idp, attacker_rsa, "RS256", {"kid": "evil", "jwk": evil_jwk})
    assert reason(validator, own_kid) == "unknown_key"
    real_kid = parts(good)[0]["kid"]
    borrowed = attacker_token(idp, attacker_rsa, "RS256", {"kid": real_kid, "jwk": evil_jwk})
    assert reason(validator, borrowed) == "bad_signature"


@pytest.mark.parametrize("name", ["jku", "x5u"])
def test_jku_and_x5u_are_never_fetched(idp, validator, good, attacker_rsa, attacker_host,
                                       name):
    url = attacker_host.url + "/keys.json"
    for kid in ("evil", parts(good)[0]["kid"], None):
        token = attacker_token(idp, attacker_rsa, "RS256", {name: url, "kid": kid})
        assert reason(validator, token) in ("unknown_key", "bad_signature")
    assert attacker_host.hits == 0
    assert all(r.status == 200 for r in idp.jwks_requests)  # only the issuer's JWKS


def test_x5c_chain_is_ignored(idp, validator, good, attacker_rsa):
    der = attacker_rsa.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    chain = [base64.b64encode(der).decode()]
    token = attacker_token(idp, attacker_rsa, "RS256",
                           {"kid": parts(good)[0]["kid"], "x5c": chain, "x5t": "AAAA"})
    assert reason(validator, token) == "bad_signature"


# -- 4. kid abuse ---------------------------------------------------------------------------


def test_burst_of_unknown_kids_costs_one_fetch_per_cooldown(idp, validator, good):
    assert len(idp.jwks_requests) == 1  # the first validation fetched the JWKS
    reasons = {reason(validator, with_header(good, kid=f"junk-{i}")) for i in range(200)}
    assert reasons == {"unknown_key"}
    assert len(idp.jwks_requests) == 2  # one refetch for the whole burst
    idp.clock.advance(validator.jwks.cooldown / 2)
    reasons = {reason(validator, with_header(good, kid=f"more-junk-{i}")) for i in range(200)}
    assert len(idp.jwks_requests) == 2  # still cooling down
    idp.clock.advance(validator.jwks.cooldown / 2)
    # Kids first seen during the cooldown are looked for at the next permitted refetch (a
    # key published meanwhile must be found): one refetch for the whole burst again.
    for i in range(200):
        reason(validator, with_header(good, kid=f"junk-{i}"))
    assert len(idp.jwks_requests) == 3
    reason(validator, with_header(good, kid="new-junk"))
    assert len(idp.jwks_requests) == 3  # cooling down again
    assert validator.validate(good).subject == "demo-client"


def test_concurrent_unknown_kids_share_one_fetch(idp, make_validator):
    validator = make_validator()
    good = idp.issue_token("demo-client")
    idp.fail_next(endpoint="jwks", kind="delay", delay=0.2)  # keep the first fetch in flight
    results: list[str] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        token = good if i % 2 else with_header(good, kid=f"junk-{i}")
        try:
            validator.validate(token)
            outcome = "ok"
        except InvalidTokenError as exc:
            outcome = exc.reason
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert sorted(set(results)) == ["ok", "unknown_key"]
    assert results.count("ok") == 20
    assert len(idp.jwks_requests) <= 2  # the first fetch, at most one refetch for junk kids


@pytest.mark.parametrize("kid", [123, ["a"], {"a": 1}, "", "k" * 300])
def test_kid_that_is_not_a_short_string_is_malformed(idp, validator, good, kid):
    assert reason(validator, with_header(good, kid=kid)) == "malformed"


def test_kid_is_only_an_opaque_lookup_string(idp, validator, good, attacker_host):
    fetched = len(idp.jwks_requests)
    for kid in ("../../../../etc/passwd", "' OR 1=1 --", attacker_host.url, "file:///x",
                "\u0000"):
        assert reason(validator, with_header(good, kid=kid)) == "unknown_key"
    assert attacker_host.hits == 0
    assert len(idp.jwks_requests) <= fetched + 1


# -- 5. crit --------------------------------------------------------------------------------


def test_unknown_crit_is_refused(idp, validator, good):
    """CVE-2026-32597: a token whose crit lists an extension the validator does not
    implement must be refused, signed or not."""
    signed = idp.issue_token("demo-client", headers={"crit": ["b64"], "b64": True})
    assert parts(signed)[0]["crit"] == ["b64"]
    assert reason(validator, signed) == "unsupported_crit"
    for crit in (["exp"], ["urn:example:unknown"], ["kid"], ["b64", "x"]):
        extra = {name: 1 for name in crit if name != "kid"}
        assert reason(validator, with_header(good, crit=crit, **extra)) == "unsupported_crit"


def test_malformed_crit_and_bare_b64(idp, validator, good):
    assert reason(validator, with_header(good, crit=[])) == "malformed"
    assert reason(validator, with_header(good, crit="exp")) == "malformed"
    assert reason(validator, with_header(good, b64=False)) == "malformed"


# -- 6. ECDSA: psychic signatures, lengths, curves ----------------------------------------------


@pytest.fixture
def es_token(idp, validator) -> str:
    token = idp.issue_token("alg-es256", audience=AUD)
    assert validator.validate(token).client_id == "alg-es256"
    return token


def _with_signature(token: str, signature: bytes) -> str:
    head, payload, _ = token.split(".")
    return f"{head}.{payload}.{b64(signature)}"


def test_ecdsa_zero_signature_is_refused(idp, validator, es_token):
    """CVE-2022-21449 ("psychic signatures"): r = s = 0 must never verify."""
    assert reason(validator, _with_signature(es_token, bytes(64))) == "bad_signature"
    real = parts(es_token)[2]
    r, s = real[:32], real[32:]
    assert reason(validator, _with_signature(es_token, bytes(32) + s)) == "bad_signature"
    assert reason(validator, _with_signature(es_token, r + bytes(32))) == "bad_signature"
    n = ec.SECP256R1().key_size and int(
        "FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551", 16)
    order = n.to_bytes(32, "big")  # r = n is r = 0 mod n
    assert reason(validator, _with_signature(es_token, order + s)) == "bad_signature"


def test_pyjwt_and_cryptography_refuse_psychic_signatures():
    """What the validator relies on, checked directly on PyJWT's ES256 verifier."""
    key = ec.generate_private_key(ec.SECP256R1())
    es256 = get_default_algorithms()["ES256"]
    message = b"header.payload"
    signature = es256.sign(message, key)
    assert es256.verify(message, key.public_key(), signature)
    assert not es256.verify(message, key.public_key(), bytes(64))
    assert not es256.verify(message, key.public_key(), signature[:63])
    assert not es256.verify(message, key.public_key(), signature + b"\x00")
    der = key.sign(message, ec.ECDSA(hashes.SHA256()))
    assert not es256.verify(message, key.public_key(), der)  # DER form is not JWS form
    zero_der = encode_dss_signature(0, 0)
    with pytest.raises(Exception):  # noqa: B017 - cryptography's InvalidSignature
        key.public_key().verify(zero_der, message, ec.ECDSA(hashes.SHA256()))
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(jwt.InvalidKeyError):
        es256.prepare_key(p384.public_key())  # a P-384 key is not an ES256 key


@pytest.mark.parametrize("length", [0, 1, 63, 65, 70, 72, 96, 128])
def test_ecdsa_signature_of_the_wrong_length(idp, validator, es_token, length):
    real = parts(es_token)[2]
    signature = (real * 3)[:length]
    assert reason(validator, _with_signature(es_token, signature)) == "bad_signature"


def test_ecdsa_der_encoded_signature_is_refused(idp, validator, es_token):
    real = parts(es_token)[2]
    der = encode_dss_signature(int.from_bytes(real[:32], "big"), int.from_bytes(real[32:], "big"))
    assert reason(validator, _with_signature(es_token, der)) == "bad_signature"


def test_ecdsa_key_of_the_wrong_curve(idp, es_token):
    """An ES256 token naming a P-384 key, and a token signed on the wrong curve."""
    p384 = ec.generate_private_key(ec.SECP384R1())
    p384_jwk = {**json.loads(ECAlgorithm.to_jwk(p384.public_key())), "kid": "p384"}
    lying = {**p384_jwk, "kid": "p384-says-es256", "alg": "ES256"}
    real_jwk = next(k for k in idp.jwks["keys"] if k.get("alg") == "ES256")
    cache = JWKSCache(None, algorithms=["ES256", "ES384"], clock=idp.clock.now,
                      fetch=lambda: ({"keys": [real_jwk, p384_jwk, lying]}, None))
    validator = TokenValidator(idp.issuer, AUD, jwks_cache=cache, algorithms=["ES256", "ES384"],
                               clock=idp.clock.now)
    assert validator.validate(es_token).client_id == "alg-es256"
    assert [i.split(":")[0] for i in cache.current.ignored] == ["'p384-says-es256'"]
    signed_p384 = attacker_token(idp, p384, "ES384", {"kid": "p384"})
    assert validator.validate(signed_p384).jti == "evil"  # the one correct use of that key
    claims_es256 = with_header(signed_p384, alg="ES256")
    assert reason(validator, claims_es256) == "key_mismatch"
    forged = attacker_token(idp, p384, "ES384", {"kid": real_jwk["kid"]})
    assert reason(validator, with_header(forged, alg="ES256")) == "bad_signature"
    assert reason(validator, forged) == "key_mismatch"
    assert reason(validator, with_header(es_token, kid="p384-says-es256")) == "unknown_key"


def test_algorithm_must_fit_the_key_type(idp, validator, good):
    """An RS256 key named by a PS256 or ES256 token: the alg must fit the JWK."""
    assert reason(validator, with_header(good, alg="PS256")) == "key_mismatch"
    assert reason(validator, with_header(good, alg="ES256")) == "key_mismatch"
    assert reason(validator, with_header(good, alg="EdDSA")) == "key_mismatch"


# -- 7. oversized input and nesting ------------------------------------------------------------


def test_oversized_token_is_refused_before_decoding(idp, make_validator):
    validator = make_validator()
    big = idp.issue_token("demo-client", claims={"blob": "x" * 9000})
    assert reason(validator, big) == "too_large"
    assert reason(validator, "a" * 10_000_000) == "too_large"
    assert reason(validator, b"a" * 10_000) == "too_large"
    assert idp.jwks_requests == []
    roomy = make_validator(max_token_bytes=16384)
    assert roomy.validate(big).claims["blob"] == "x" * 9000


def test_deeply_nested_header_is_refused(idp, validator, good):
    _, payload, sig = good.split(".")
    for nested in ("[" * 2000 + "]" * 2000, '{"alg":"RS256","x":' + "[" * 50 + "]" * 50 + "}",
                   '{"alg":"RS256","x":"' + "y" * 4100 + '"}'):
        token = f"{b64(nested.encode())}.{payload}.{sig}"
        assert reason(validator, token) == "malformed"


def test_deeply_nested_claims_never_reach_the_parser_unsigned(idp, validator, good):
    head, _, sig = good.split(".")
    payload = b64(("[" * 2000 + "]" * 2000).encode())
    assert reason(validator, f"{head}.{payload}.{sig}") == "bad_signature"


def test_signed_but_deeply_nested_claims(idp, validator):
    nested: list = []
    for _ in range(100):
        nested = [nested]
    token = idp.issue_token("demo-client", claims={"deep": nested})
    assert validator.validate(token).claims["deep"]  # bounded by the size cap; parses fine


# -- 8. other serializations ---------------------------------------------------------------------


def test_jws_json_serialization_is_refused(idp, validator, good):
    head, payload, sig = good.split(".")
    flattened = json.dumps({"protected": head, "payload": payload, "signature": sig})
    general = json.dumps({"payload": payload, "signatures": [{"protected": head,
                                                             "signature": sig}]})
    for token in (flattened, general):
        with pytest.raises(InvalidTokenError) as info:
            validator.validate(token)
        assert info.value.reason == "malformed"
        assert "JSON serialization" in info.value.error_description


def test_jwe_is_refused(idp, validator, good):
    header = b64({"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": parts(good)[0]["kid"]})
    jwe = f"{header}.{b64(b'k' * 256)}.{b64(b'i' * 12)}.{b64(b'c' * 100)}.{b64(b't' * 16)}"
    with pytest.raises(InvalidTokenError) as info:
        validator.validate(jwe)
    assert info.value.reason == "malformed"
    assert "JWE" in info.value.error_description
    three = with_header(good, enc="A256GCM")  # a JWE header squeezed into three segments
    assert reason(validator, three) == "malformed"


@pytest.mark.parametrize("bad", ["", ".", "..", "a.b", "a.b.c.d", "a.b.c.d.e.f", "abc",
                                 "e30.e30.e30=", "e30=.e30.sig", "a b.c.d", "é.é.é",
                                 "e30.e30.e3", "e31.e30.e30"])
def test_not_a_compact_jws(validator, bad):
    assert reason(validator, bad) == "malformed"


@pytest.mark.parametrize("bad", [None, 42, ["a.b.c"], {"token": 1}])
def test_not_a_string(validator, bad):
    assert reason(validator, bad) == "malformed"


# -- 9. token-type confusion ---------------------------------------------------------------------


def test_id_token_is_not_an_access_token(idp, validator):
    id_token = idp.issue_token("demo-client", headers={"typ": "JWT"},
                               claims={"nonce": "n-0S6_WzA2Mj", "azp": "demo-client",
                                       "auth_time": idp.clock()})
    assert reason(validator, id_token) == "wrong_type"
    for typ in ("jwt", "application/jwt", "dpop+jwt", "at+jwt ", "secevent+jwt"):
        token = idp.issue_token("demo-client", headers={"typ": typ})
        assert reason(validator, token) == "wrong_type"
    good = idp.issue_token("demo-client")
    for typ in (1, ["at+jwt"], {"typ": "at+jwt"}, True):
        assert reason(validator, with_header(good, typ=typ)) == "wrong_type"


def test_missing_typ_is_refused_unless_the_switch_allows_it(idp, make_validator):
    token = idp.issue_token("demo-client", headers={"typ": None})
    assert "typ" not in parts(token)[0]
    assert reason(make_validator(), token) == "wrong_type"
    lenient = make_validator(require_typ=False)
    assert lenient.validate(token).subject == "demo-client"
    assert reason(lenient, idp.issue_token("demo-client", headers={"typ": "JWT"})) == \
        "wrong_type"


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt", "Application/AT+JWT"])
def test_access_token_types_accepted(idp, validator, typ):
    assert validator.validate(idp.issue_token("demo-client", headers={"typ": typ}))


# -- 10. issuer and audience substitution ----------------------------------------------------------


def test_issuer_is_compared_exactly(idp, validator):
    issuer = idp.issuer
    for iss in (issuer + "/", issuer + "/evil", issuer + ".evil.test", issuer[:-1],
                issuer[7:], issuer[:-3],  # CVE-2024-53861: a substring of the issuer
                issuer.upper(), " " + issuer, ""):
        token = idp.issue_token("demo-client", claims={"iss": iss})
        assert reason(validator, token) == "wrong_issuer", iss
    for iss in ([issuer], {"iss": issuer}, 1):  # not a string: a claim of the wrong type
        token = idp.issue_token("demo-client", claims={"iss": iss})
        assert reason(validator, token) == "invalid_claim", iss


def test_audience_must_name_this_api(idp, validator):
    for aud in ("https://other.test", "api://default/", "api://defaul", "API://DEFAULT",
                ["https://other.test"], ["api://def", "default"]):
        token = idp.issue_token("demo-client", audience=aud)
        assert reason(validator, token) == "wrong_audience", aud
    listed = idp.issue_token("demo-client", audience=["https://other.test", AUD])
    assert validator.validate(listed).audience == ("https://other.test", AUD)
    for aud in ([], [AUD, 1], 5, {"aud": AUD}):
        token = idp.issue_token("demo-client", claims={"aud": aud})
        assert reason(validator, token) == "invalid_claim", aud


# -- 11. exp, nbf, iat -----------------------------------------------------------------------------


@pytest.mark.parametrize("claim", ["exp", "iat", "iss", "aud", "sub", "client_id", "jti"])
def test_required_claims(idp, validator, claim):
    token = idp.issue_token("demo-client", claims={claim: None})
    with pytest.raises(InvalidTokenError) as info:
        validator.validate(token)
    assert (info.value.reason, info.value.claim) == ("missing_claim", claim)


@pytest.mark.parametrize("claim,value", [("exp", "9999999999"), ("exp", True), ("iat", "0"),
                                         ("nbf", [1]), ("exp", float("inf")),
                                         ("iat", float("nan")), ("sub", 5), ("client_id", ""),
                                         ("jti", 7), ("scope", ["read"])])
def test_claims_of_the_wrong_type(idp, validator, claim, value):
    token = idp.issue_token("demo-client", claims={claim: value})
    with pytest.raises(InvalidTokenError) as info:
        validator.validate(token)
    assert (info.value.reason, info.value.claim) == ("invalid_claim", claim)


@pytest.fixture
def frozen(idp):
    """The server's clock stopped at a whole second (claims are whole seconds)."""
    idp.clock.freeze(at=float(int(idp.clock.now())))
    return idp.clock


def test_expiry_beyond_the_leeway(idp, validator, frozen):
    token = idp.issue_token("demo-client", expires_in=-95)
    with pytest.raises(InvalidTokenError) as info:
        validator.validate(token)
    assert info.value.reason == "expired"
    assert info.value.error_description == "expired 95 s ago (leeway 30 s)"


def test_expiry_within_the_leeway_is_accepted(idp, validator, frozen):
    token = idp.issue_token("demo-client", expires_in=-29)
    assert validator.validate(token)
    idp.clock.advance(1)
    with pytest.raises(InvalidTokenError, match="expired 30 s ago"):
        validator.validate(token)


def test_nbf_and_iat_in_the_future(idp, validator, frozen):
    now = idp.clock()
    with pytest.raises(InvalidTokenError) as info:
        validator.validate(idp.issue_token("demo-client", claims={"nbf": now + 600}))
    assert (info.value.reason, info.value.error_description) == (
        "not_yet_valid", "not valid for another 600 s (nbf; leeway 30 s)")
    with pytest.raises(InvalidTokenError) as info:
        validator.validate(idp.issue_token("demo-client", claims={"iat": now + 31,
                                                                  "nbf": None}))
    assert (info.value.reason, info.value.error_description) == (
        "not_yet_valid", "issued 31 s in the future (iat; leeway 30 s)")
    assert validator.validate(idp.issue_token("demo-client", claims={"iat": now + 30,
                                                                     "nbf": now + 30}))


# -- 12. stale keys --------------------------------------------------------------------------------


def test_jwks_is_refetched_when_its_ttl_ends(idp, validator, good):
    assert len(idp.jwks_requests) == 1
    ttl = validator.jwks.current.expires_at - validator.jwks.current.fetched_at
    assert ttl == 300  # the server's Cache-Control: max-age=300
    idp.clock.advance(ttl - 1)
    validator.validate(idp.issue_token("demo-client"))
    assert len(idp.jwks_requests) == 1
    idp.clock.advance(1)
    validator.validate(idp.issue_token("demo-client"))
    assert len(idp.jwks_requests) == 2


def test_failed_refresh_keeps_the_last_good_keys_for_a_bounded_time(idp, validator, good):
    jwks = validator.jwks
    long_lived = idp.issue_token("demo-client", expires_in=7200)
    assert validator.validate(long_lived)  # in the cache of verified tokens
    idp.fail_next(1000, endpoint="jwks")  # the JWKS endpoint is down from now on
    idp.clock.advance(301)  # the cached set has expired
    assert validator.validate(idp.issue_token("demo-client")).subject == "demo-client"
    assert [r.status for r in idp.jwks_requests] == [200, 503]
    for _ in range(50):  # no hammering: one attempt per failure_backoff
        validator.validate(idp.issue_token("demo-client"))
    assert len(idp.jwks_requests) == 2
    idp.clock.advance(jwks.failure_backoff)
    validator.validate(idp.issue_token("demo-client"))
    assert len(idp.jwks_requests) == 3
    idp.clock.advance(jwks.max_stale - jwks.failure_backoff)  # now past the stale bound
    fresh = idp.issue_token("demo-client")
    with pytest.raises(JWKSError, match="stale keys are used for at most 900 s"):
        validator.validate(fresh)
    with pytest.raises(JWKSError):
        validator.validate(long_lived)  # a cached verified token fails closed too
    idp.clear_faults()
    idp.clock.advance(jwks.failure_backoff)
    assert validator.validate(fresh).subject == "demo-client"


def test_drop_and_malformed_jwks_responses_keep_the_old_set(idp, validator, good):
    for kind in ("drop", "malformed"):
        idp.fail_next(endpoint="jwks", kind=kind)
        idp.clock.advance(301)
        assert validator.validate(idp.issue_token("demo-client"))
        idp.clock.advance(validator.jwks.failure_backoff)
        validator.validate(idp.issue_token("demo-client"))
    assert validator.jwks.failures == 2


def test_first_fetch_failing_fails_closed(idp, make_validator):
    validator = make_validator()
    idp.fail_next(endpoint="jwks", status=500)
    token = idp.issue_token("demo-client")
    with pytest.raises(JWKSError, match="HTTP 500"):
        validator.validate(token)
    with pytest.raises(JWKSError):
        validator.validate(token)  # within the backoff: no new attempt
    assert len(idp.jwks_requests) == 1
    idp.clock.advance(validator.jwks.failure_backoff)
    assert validator.validate(token)


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
@pytest.mark.parametrize("value", [10**400, -(10**400), 10**309], ids=["1e400", "-1e400", "1e309"])
def test_numeric_date_beyond_float_range_is_invalid_claim(make_validator, idp, claim, value):
    # A validly signed token whose time claim no float can hold: an InvalidTokenError, never
    # Python's OverflowError (which a resource server would answer with a 500).
    token = idp.issue_token("demo-client", claims={claim: value})
    validator = make_validator()
    with pytest.raises(InvalidTokenError) as info:
        validator.validate(token)
    assert info.value.reason == "invalid_claim"
    assert info.value.claim == claim
