"""TokenValidator.validate_dpop and the DPoP proof checks (RFC 9449 §4.3, §7, §8, §11): every
DPoP attack of REFERENCES.md as its own test, with proofs built from real keys and access
tokens signed by the session's authorization server (``idp``: ``cnf.jkt`` added as a claim),
verified over its JWKS. The validator reads the server's frozen clock; nothing sleeps."""

from __future__ import annotations

import json
import time

import pytest
from _dpop_support import ProofKey, b64, bound_token
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc.jwk import ECKey, OKPKey, RSAKey

from m2mauth.client import (
    DPoPNonces,
    DPoPPolicy,
    DPoPProofChecker,
    InvalidDPoPProofError,
    InvalidTokenError,
    TokenValidator,
    UseDPoPNonceError,
    ValidatedToken,
    jwk_thumbprint,
)
from m2mauth.client.dpop_validation import normalized_htu

AUD = "api://default"
URL = "https://api.test/orders/7"
NOW = 1_900_000_000


@pytest.fixture
def clock(idp):
    idp.clock.freeze(at=NOW)
    return idp.clock


@pytest.fixture
def make_validator(idp, clock):
    def make(**options) -> TokenValidator:
        options.setdefault("jwks_uri", idp.jwks_uri)
        return TokenValidator(idp.issuer, AUD, clock=clock.now, **options)

    return make


@pytest.fixture
def validator(make_validator) -> TokenValidator:
    return make_validator()


@pytest.fixture
def key() -> ProofKey:
    return ProofKey.generate("ES256")


@pytest.fixture
def token(idp, clock, key) -> str:
    return bound_token(idp, key)


def proof_of(key: ProofKey, token: str, **kw) -> str:
    kw.setdefault("iat", NOW)
    return key.proof(kw.pop("htm", "GET"), kw.pop("htu", URL), token=token, **kw)


def refused(validator: TokenValidator, token: str, proof, *, method: str = "GET",
            url: str = URL) -> InvalidDPoPProofError:
    with pytest.raises(InvalidDPoPProofError) as info:
        validator.validate_dpop(token, proof, method=method, url=url)
    assert info.value.error == "invalid_dpop_proof" and info.value.status == 401
    return info.value


# -- the good case ------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES256", "ES384", "RS256", "PS256", "EdDSA", "Ed25519"])
def test_valid_proof_is_accepted(idp, validator, alg):
    key = ProofKey.generate(alg)
    token = bound_token(idp, key, scope="read write")
    validated = validator.validate_dpop(token, proof_of(key, token), method="GET", url=URL,
                                        scopes="read")
    assert isinstance(validated, ValidatedToken)
    assert validated.jkt == key.jkt and validated.client_id == "demo-client"


def test_proof_as_a_list_of_header_values(validator, key, token):
    assert validator.validate_dpop(token, [proof_of(key, token)], method="GET", url=URL).jkt


def test_thumbprint_is_rfc_7638_as_joserfc_computes_it():
    for alg, importer in (("ES256", ECKey), ("RS256", RSAKey), ("EdDSA", OKPKey)):
        key = ProofKey.generate(alg)
        assert key.jkt == importer.import_key(key.jwk).thumbprint()
    # RFC 7638 §3.1: members sorted, no whitespace; others (alg, kid, use) do not count.
    jwk = {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AQ", "kid": "k1", "alg": "ES256"}
    assert jwk_thumbprint(jwk) == jwk_thumbprint({"y": "AQ", "x": "AA", "kty": "EC",
                                                  "crv": "P-256"})
    with pytest.raises(ValueError):
        jwk_thumbprint({"kty": "oct", "k": "AA"})


# -- the attacks ------------------------------------------------------------------------------


def test_alg_none_is_refused(validator, key, token):
    exc = refused(validator, token, proof_of(key, token, header={"alg": "none"}))
    assert exc.reason == "algorithm_not_allowed"


def test_hs256_is_refused_even_keyed_with_the_public_jwk(validator, key, token):
    secret = json.dumps(key.jwk).encode()  # the key-confusion attack
    exc = refused(validator, token, proof_of(key, token, header={"alg": "HS256"},
                                             sign_with=secret))
    assert exc.reason == "algorithm_not_allowed"


def test_hmac_and_none_cannot_be_configured():
    for alg in ("HS256", "none"):
        with pytest.raises(ValueError, match="asymmetric"):
            DPoPPolicy(algorithms=("ES256", alg))


def test_algorithm_outside_the_allow_list(idp, make_validator):
    only_es = make_validator(dpop=DPoPPolicy(algorithms=("ES256",)))
    key = ProofKey.generate("PS256")
    token = bound_token(idp, key)
    assert refused(only_es, token, proof_of(key, token)).reason == "algorithm_not_allowed"


def test_private_jwk_is_refused(validator, key, token):
    exc = refused(validator, token, proof_of(key, token, header={"jwk": key.private_jwk()}))
    assert exc.reason == "bad_key" and "d" in exc.error_description
    assert "private" in exc.error_description


def test_private_rsa_jwk_is_refused(idp, validator):
    key = ProofKey.generate("RS256")
    token = bound_token(idp, key)
    exc = refused(validator, token, proof_of(key, token, header={"jwk": key.private_jwk()}))
    assert exc.reason == "bad_key"


def test_symmetric_jwk_is_refused(validator, key, token):
    exc = refused(validator, token, proof_of(key, token, header={"jwk": {"kty": "oct",
                                                                         "k": "c2VjcmV0"}}))
    assert exc.reason == "bad_key"


def test_jwk_of_the_wrong_curve_for_alg(validator, token):
    p384 = ProofKey.generate("ES384")
    exc = refused(validator, token, p384.proof("GET", URL, NOW, token=token,
                                               header={"alg": "ES256"}))
    assert exc.reason == "bad_key"


def test_small_rsa_key_is_refused(idp, validator):
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    jwk = RSAAlgorithm.to_jwk(small.public_key(), as_dict=True)
    key = ProofKey("RS256", small, jwk, jwk_thumbprint(jwk))
    token = bound_token(idp, key)
    assert refused(validator, token, proof_of(key, token)).reason == "bad_key"


def test_missing_jwk_is_refused(validator, key, token):
    assert refused(validator, token, proof_of(key, token, header={"jwk": None})).reason \
        == "bad_key"


def test_signature_by_another_key(validator, key, token):
    other = ProofKey.generate("ES256")
    exc = refused(validator, token, proof_of(key, token, sign_with=other.private))
    assert exc.reason == "bad_signature"


def test_tampered_claims_break_the_signature(validator, key, token):
    head, _, sig = proof_of(key, token).split(".")
    forged = {"jti": "x", "htm": "POST", "htu": URL, "iat": NOW}
    assert refused(validator, token, f"{head}.{b64(forged)}.{sig}").reason == "bad_signature"


@pytest.mark.parametrize("typ", ["JWT", "at+jwt", "dpop", None])
def test_wrong_typ(validator, key, token, typ):
    exc = refused(validator, token, proof_of(key, token, header={"typ": typ}))
    assert exc.reason == "wrong_type"


def test_wrong_htm(validator, key, token):
    exc = refused(validator, token, proof_of(key, token, htm="POST"))
    assert exc.reason == "wrong_method"
    assert refused(validator, token, proof_of(key, token, htm="get")).reason == "wrong_method"


@pytest.mark.parametrize("htu", ["https://api.test/orders/8", "https://evil.test/orders/7",
                                 "http://api.test/orders/7", "https://api.test:8443/orders/7",
                                 "https://api.test/orders/7/"])
def test_wrong_htu(validator, key, token, htu):
    assert refused(validator, token, proof_of(key, token, htu=htu)).reason == "wrong_url"


@pytest.mark.parametrize("htu", [URL + "?page=2", URL + "#top", URL + "?a=1#b"])
def test_htu_query_and_fragment_are_ignored(validator, key, token, htu):
    assert validator.validate_dpop(token, proof_of(key, token, htu=htu), method="GET",
                                   url=URL + "?other=1").jkt == key.jkt


@pytest.mark.parametrize("htu", ["HTTPS://API.test/orders/7", "https://api.test:443/orders/7",
                                 "https://api.test/%6Frders/7"])
def test_htu_is_compared_normalised(validator, key, token, htu):
    assert validator.validate_dpop(token, proof_of(key, token, htu=htu), method="GET",
                                   url=URL).jkt == key.jkt


def test_normalised_htu():
    assert normalized_htu("HTTP://Example.COM:80") == "http://example.com/"
    assert normalized_htu("http://[::1]:8080/a%2fb?q#f") == "http://[::1]:8080/a%2Fb"
    for bad in ("ftp://x/", "/relative", "https://user@host/", "http://host:99999/"):
        with pytest.raises(ValueError):
            normalized_htu(bad)


def test_stale_iat(validator, key, token):
    # default window: 60 s back, plus the validator's 30 s leeway
    assert validator.validate_dpop(token, proof_of(key, token, iat=NOW - 90), method="GET",
                                   url=URL)
    exc = refused(validator, token, proof_of(key, token, iat=NOW - 91))
    assert exc.reason == "stale" and "91 s ago" in exc.error_description


def test_future_iat_beyond_leeway(validator, key, token):
    assert validator.validate_dpop(token, proof_of(key, token, iat=NOW + 30), method="GET",
                                   url=URL)
    exc = refused(validator, token, proof_of(key, token, iat=NOW + 31))
    assert exc.reason == "future"


def test_iat_of_the_wrong_type(validator, key, token):
    exc = refused(validator, token, proof_of(key, token, claims={"iat": str(NOW)}))
    assert exc.reason == "invalid_claim"


def test_the_window_follows_the_validators_clock(validator, key, token, clock):
    proof = proof_of(key, token)
    clock.advance(91)
    assert refused(validator, token, proof).reason == "stale"


def test_replayed_jti(validator, key, token):
    proof = proof_of(key, token, jti="once")
    validator.validate_dpop(token, proof, method="GET", url=URL)
    assert refused(validator, token, proof).reason == "replayed"
    # the same jti in a fresh proof (another iat, another signature) is a replay too
    again = proof_of(key, token, jti="once", iat=NOW + 1)
    assert refused(validator, token, again).reason == "replayed"


def test_refused_proofs_do_not_burn_their_jti(validator, key, token):
    assert refused(validator, token, proof_of(key, token, jti="j", htm="POST")).reason \
        == "wrong_method"
    assert validator.validate_dpop(token, proof_of(key, token, jti="j"), method="GET", url=URL)


def test_replay_cache_is_bounded_and_fails_closed(make_validator, key, token, clock):
    validator = make_validator(dpop=DPoPPolicy(replay_max_entries=3))
    for _ in range(3):
        validator.validate_dpop(token, proof_of(key, token), method="GET", url=URL)
    assert refused(validator, token, proof_of(key, token)).reason == "replay_cache_full"
    assert validator.dpop.replay_cache_size == 3
    clock.advance(91)  # the remembered proofs are past the window: their jtis may go
    assert validator.validate_dpop(token, proof_of(key, token, iat=NOW + 91), method="GET",
                                   url=URL)
    assert validator.dpop.replay_cache_size == 1


class _SharedReplays:
    """A replay cache two validators share (as two processes would share Redis): the
    :class:`~m2mauth.client.DPoPReplayCache` protocol over one dict, bounded at 2."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], float] = {}

    def remember(self, jkt: str, jti: str, expires_at: float, now: float) -> bool:
        self.seen = {k: t for k, t in self.seen.items() if t >= now}
        if (jkt, jti) in self.seen or len(self.seen) >= 2:
            return False
        self.seen[(jkt, jti)] = expires_at
        return True


def test_a_shared_replay_cache_refuses_a_proof_another_validator_accepted(
        make_validator, key, token, clock):
    shared = _SharedReplays()
    first, second = (make_validator(dpop=DPoPPolicy(replay_cache=shared)) for _ in range(2))
    proof = proof_of(key, token)
    assert first.validate_dpop(token, proof, method="GET", url=URL)
    assert refused(second, token, proof).reason == "replayed"
    assert list(shared.seen.values()) == [NOW + 60 + 30]  # until the iat window closes
    assert second.validate_dpop(token, proof_of(key, token), method="GET", url=URL)
    assert refused(first, token, proof_of(key, token)).reason == "replayed"  # full: closed
    assert first.dpop.replay_cache_size == 0  # the in-process cache is not used


def test_wrong_ath(idp, validator, key, token):
    other = bound_token(idp, key, scope="write")
    exc = refused(validator, token, proof_of(key, other))
    assert exc.reason == "wrong_token_hash"


def test_missing_ath(validator, key, token):
    assert refused(validator, token, proof_of(key, None)).reason == "missing_claim"


def test_thumbprint_mismatch_with_cnf_jkt(idp, validator, key):
    other = ProofKey.generate("ES256")
    token = bound_token(idp, other)  # bound to another key than the proof's
    exc = refused(validator, token, proof_of(key, token))
    assert exc.reason == "key_mismatch"


def test_dpop_bound_token_as_bearer_is_refused(validator, token):
    with pytest.raises(InvalidTokenError) as info:
        validator.validate(token)
    assert info.value.reason == "wrong_type" and "DPoP" in info.value.error_description
    with pytest.raises(InvalidTokenError):  # also once it is cached
        validator.validate(token)


def test_bearer_token_with_the_dpop_scheme_is_refused(idp, validator, key):
    token = idp.issue_token("demo-client", scope="read", audience=AUD)
    with pytest.raises(InvalidTokenError) as info:
        validator.validate_dpop(token, proof_of(key, token), method="GET", url=URL)
    assert info.value.reason == "wrong_type"
    assert validator.validate(token).jkt is None


def test_cnf_without_jkt_is_refused(idp, validator):
    token = idp.issue_token("demo-client", audience=AUD, claims={"cnf": {"x5t#S256": "abc"}})
    with pytest.raises(InvalidTokenError) as info:
        validator.validate(token)
    assert info.value.reason == "invalid_claim" and info.value.claim == "cnf"


def test_missing_proof(validator, token):
    assert refused(validator, token, None).reason == "missing"
    assert refused(validator, token, []).reason == "missing"
    assert refused(validator, token, " ").reason == "missing"


def test_two_proofs(validator, key, token):
    one, two = proof_of(key, token), proof_of(key, token)
    assert refused(validator, token, [one, two]).reason == "multiple"
    assert refused(validator, token, f"{one}, {two}").reason == "multiple"


def test_oversized_proof_is_refused_before_decoding(validator, key, token):
    huge = proof_of(key, token, claims={"pad": "x" * 9000})
    assert refused(validator, token, huge).reason == "too_large"


@pytest.mark.parametrize("proof", ["a.b", "a.b.c.d.e", "{}", "eA.e30.e30", "e3.e30.e30",
                                   "!!.e30.e30"])
def test_malformed_proof(validator, token, proof):
    assert refused(validator, token, proof).reason == "malformed"


# -- nonces -----------------------------------------------------------------------------------


@pytest.fixture
def long_token(idp, clock, key) -> str:
    return bound_token(idp, key, expires_in=3600)


@pytest.fixture
def nonce_validator(make_validator) -> TokenValidator:
    return make_validator(dpop=DPoPPolicy(require_nonce=True, nonce_lifetime=300))


def test_missing_nonce_asks_for_one(nonce_validator, key, token):
    with pytest.raises(UseDPoPNonceError) as info:
        nonce_validator.validate_dpop(token, proof_of(key, token), method="GET", url=URL)
    exc = info.value
    assert exc.error == "use_dpop_nonce" and exc.status == 401
    assert exc.nonce == nonce_validator.dpop_nonce()
    assert isinstance(exc, InvalidDPoPProofError)


def test_nonce_flow(nonce_validator, key, long_token, clock):
    with pytest.raises(UseDPoPNonceError) as info:
        nonce_validator.validate_dpop(long_token, proof_of(key, long_token), method="GET", url=URL)
    nonce = info.value.nonce
    assert nonce_validator.validate_dpop(long_token, proof_of(key, long_token, nonce=nonce),
                                         method="GET", url=URL).jkt == key.jkt
    clock.advance(300)  # the next window: the previous nonce is still good
    assert nonce_validator.dpop_nonce() != nonce
    assert nonce_validator.validate_dpop(long_token, proof_of(key, long_token, nonce=nonce,
                                                         iat=NOW + 300),
                                         method="GET", url=URL)


def test_stale_nonce(nonce_validator, key, long_token, clock):
    nonce = nonce_validator.dpop_nonce()
    clock.advance(600)  # two windows on
    with pytest.raises(UseDPoPNonceError) as info:
        late = proof_of(key, long_token, nonce=nonce, iat=NOW + 600)
        nonce_validator.validate_dpop(long_token, late, method="GET", url=URL)
    assert info.value.nonce == nonce_validator.dpop_nonce() != nonce
    assert "not current" in info.value.error_description


def test_forged_nonce(nonce_validator, key, token):
    other = DPoPNonces(300, clock=lambda: NOW).current()  # another validator's secret
    with pytest.raises(UseDPoPNonceError):
        nonce_validator.validate_dpop(token, proof_of(key, token, nonce=other), method="GET",
                                      url=URL)


def test_nonces_are_shared_with_the_same_secret():
    secret = b"s" * 32
    one, two = (DPoPNonces(60, secret=secret, clock=lambda: NOW) for _ in range(2))
    assert one.current() == two.current() and two.is_valid(one.current())
    assert not two.is_valid(None) and not two.is_valid("x" * 32)


# -- the cached path --------------------------------------------------------------------------


class _CountingAlgorithm:
    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, 0

    def verify(self, *args):
        self.calls += 1
        return self.inner.verify(*args)


def test_token_signature_is_verified_once_the_proof_every_time(idp, validator, key, clock):
    token = bound_token(idp, key)
    counting = _CountingAlgorithm(validator._pyjwt["RS256"])
    validator._pyjwt["RS256"] = counting
    for i in range(5):
        validator.validate_dpop(token, proof_of(key, token, iat=NOW + i), method="GET",
                                url=URL)
    assert counting.calls == 1  # the token's signature: once
    assert validator.cache_size[0] == 1
    assert validator.dpop.replay_cache_size == 5  # every proof checked and remembered
    clock.advance(1)
    assert refused(validator, token, proof_of(key, token, htm="POST")).reason \
        == "wrong_method"


def test_expired_cached_token_is_refused_before_the_proof(validator, key, token, clock):
    validator.validate_dpop(token, proof_of(key, token), method="GET", url=URL)
    clock.advance(3600)
    with pytest.raises(InvalidTokenError) as info:
        validator.validate_dpop(token, proof_of(key, token, iat=NOW + 3600), method="GET",
                                url=URL)
    assert info.value.reason == "expired"


def test_errors_say_nothing_secret(validator, key, token):
    exc = refused(validator, token, proof_of(key, token, header={"jwk": key.private_jwk()}))
    text = f"{exc} {exc!r} {exc.error_description}"
    assert key.private_jwk()["d"] not in text and token not in text


def test_real_time_default(idp, key):
    validator = TokenValidator(idp.issuer, AUD, jwks_uri=idp.jwks_uri)
    token = bound_token(idp, key)
    proof = key.proof("GET", URL, time.time(), token=token)
    assert validator.validate_dpop(token, proof, method="GET", url=URL).jkt == key.jkt


def test_a_known_header_still_needs_a_good_signature(validator, key, token):
    """The checked header is kept after a proof verified; the next proof's signature is still
    verified with its key."""
    validator.validate_dpop(token, proof_of(key, token), method="GET", url=URL)
    other = ProofKey.generate("ES256")
    exc = refused(validator, token, proof_of(key, token, sign_with=other.private))
    assert exc.reason == "bad_signature"
    assert refused(validator, token, proof_of(key, token, htm="PUT")).reason == "wrong_method"


# -- untrusted input never escapes as anything but a refusal ----------------------------------

_FUZZ = settings(derandomize=True, max_examples=150, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])
_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
_JSON = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                     max_leaves=8)


@_FUZZ
@given(header=st.dictionaries(st.sampled_from(["typ", "alg", "jwk", "crit", "kid"]), _JSON),
       claims=st.dictionaries(st.sampled_from(["jti", "htm", "htu", "iat", "ath", "nonce"]),
                              _JSON),
       signature=st.binary(max_size=80))
def test_fuzzed_proofs_are_refused_cleanly(header, claims, signature):
    checker = DPoPProofChecker(DPoPPolicy(require_nonce=True), clock=lambda: NOW)
    proof = f"{b64(header)}.{b64(claims)}.{b64(signature) if signature else ''}"
    with pytest.raises(InvalidDPoPProofError):
        checker.check(proof, method="GET", url=URL, access_token_hash="x", jkt="y")


@_FUZZ
@given(text=st.text(max_size=200))
def test_fuzzed_header_values_are_refused_cleanly(text):
    checker = DPoPProofChecker(clock=lambda: NOW)
    with pytest.raises(InvalidDPoPProofError):
        checker.check(text, method="GET", url=URL)


_SIGNER = ProofKey.generate("ES256")


@_FUZZ
@given(claims=st.dictionaries(st.sampled_from(["jti", "htm", "htu", "iat", "ath", "nonce"]),
                              _JSON | st.just(URL) | st.just("GET")),
       jwk=st.dictionaries(st.sampled_from(["kty", "crv", "x", "y", "d", "n", "e"]), _JSON))
def test_fuzzed_claims_and_keys_under_a_real_signature_are_refused_cleanly(claims, jwk):
    checker = DPoPProofChecker(DPoPPolicy(require_nonce=True), clock=lambda: NOW)
    good = _SIGNER.proof("GET", URL, NOW, claims=claims)  # the fuzzed claims, signed
    odd = _SIGNER.proof("GET", URL, NOW, header={"jwk": {**_SIGNER.jwk, **jwk}})
    for proof in (good, odd):
        with pytest.raises(InvalidDPoPProofError):
            checker.check(proof, method="GET", url=URL, access_token_hash="x", jkt="y")


def test_a_proof_made_by_joserfc_is_accepted(idp, validator):
    """Another JOSE implementation makes the proof and the thumbprint: the two sides agree."""
    import hashlib

    from joserfc import jws

    private = ECKey.generate_key("P-256")
    jkt = private.thumbprint()
    token = idp.issue_token("demo-client", scope="read", audience=AUD,
                            claims={"cnf": {"jkt": jkt}})
    ath = b64(hashlib.sha256(token.encode()).digest())
    claims = {"jti": "joserfc-1", "htm": "POST", "htu": URL, "iat": NOW, "ath": ath}
    proof = jws.serialize_compact(
        {"typ": "dpop+jwt", "alg": "ES256", "jwk": private.as_dict(private=False)},
        json.dumps(claims), private)
    assert validator.validate_dpop(token, proof, method="POST", url=URL).jkt == jkt


def test_the_checker_alone_returns_the_proof(key):
    from m2mauth.client import DPoPProof

    checker = DPoPProofChecker(clock=lambda: NOW)
    checked = checker.check(key.proof("GET", URL, NOW, jti="j1"), method="GET", url=URL)
    assert isinstance(checked, DPoPProof)
    assert (checked.jkt, checked.jti, checked.iat) == (key.jkt, "j1", NOW)
    assert checked.header["jwk"] == key.jwk and checked.claims["htm"] == "GET"
    with pytest.raises(TypeError):
        checked.claims["htm"] = "POST"  # type: ignore[index]
    assert "jwk" not in repr(checked) and "DPoPProofChecker" in repr(checker)


def test_a_proof_replayed_concurrently_passes_once(validator, key, token):
    import threading

    validator.validate_dpop(token, proof_of(key, token), method="GET", url=URL)  # cached
    proof = proof_of(key, token, jti="race")
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def attempt() -> None:
        barrier.wait()
        try:
            validator.validate_dpop(token, proof, method="GET", url=URL)
            outcomes.append("ok")
        except InvalidDPoPProofError as exc:
            outcomes.append(exc.reason)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(outcomes) == ["ok"] + ["replayed"] * 7
