"""m2mauth.client.TokenValidator against the session's real authorization server: the result
object, scopes, every algorithm, discovery, key rotation mid-test, clock skew both ways, and
the cache of verified tokens. Attacks are in test_validator_attacks.py. No sleeping."""

from __future__ import annotations

import base64
import copy
import json
import pickle
import re
import threading

import pytest
import requests

from m2mauth.client import (
    INVALID_TOKEN_REASONS,
    DiscoveryError,
    InsufficientScopeError,
    InvalidTokenError,
    JWKSCache,
    OAuthError,
    TokenValidator,
    ValidatedToken,
)

AUD = "api://default"
SECRET = "s3cret-for-tests"
#: RFC 6750 §3: error_description characters.
_RFC6750_TEXT = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")


class FakeClock:
    """The API's own clock, moved by hand."""

    def __init__(self, now: float) -> None:
        self.now = float(now)

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make_validator(idp):
    def make(**options) -> TokenValidator:
        options.setdefault("clock", idp.clock.now)
        options.setdefault("jwks_uri", idp.jwks_uri)
        return TokenValidator(idp.issuer, options.pop("audience", AUD), **options)

    return make


@pytest.fixture
def validator(make_validator):
    return make_validator()


def http_token(idp, client_id="demo-client", secret="demo-secret", **form) -> str:
    response = requests.post(idp.token_endpoint, auth=(client_id, secret), timeout=5,
                             data={"grant_type": "client_credentials", **form})
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def reason(validator, token, **kw) -> InvalidTokenError:
    with pytest.raises(InvalidTokenError) as info:
        validator.validate(token, **kw)
    return info.value


# -- the result ------------------------------------------------------------------------------


def test_token_from_the_token_endpoint(idp, validator):
    token = http_token(idp, scope="read")
    result = validator.validate(token, scopes="read")
    assert isinstance(result, ValidatedToken)
    assert (result.subject, result.client_id, result.scopes, result.audience) == (
        "demo-client", "demo-client", ("read",), (AUD,))
    assert result.issuer == idp.issuer
    assert result.expires_at - result.issued_at == 300
    assert result.claims["jti"] == result.jti == idp.token_requests[-1].jti
    assert result.header["typ"] == "at+jwt" and result.header["alg"] == "RS256"
    assert result.scope == "read" and result.has_scopes("read")
    with pytest.raises(TypeError):
        result.claims["sub"] = "someone-else"  # read-only: shared by every use of the token
    with pytest.raises(AttributeError):
        result.subject = "x"
    assert token not in repr(result)


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256", "EdDSA"])
def test_every_server_algorithm(idp, validator, alg):
    token = http_token(idp, f"alg-{alg.lower()}", SECRET, scope="read")
    result = validator.validate(token, ["read"])
    assert result.header["alg"] == alg and result.client_id == f"alg-{alg.lower()}"


def test_custom_claims_and_several_audiences(idp, make_validator):
    token = http_token(idp, "aud-client", SECRET, resource="https://billing.test")
    orders = make_validator(audience="https://orders.test")
    assert reason(orders, token).reason == "wrong_audience"
    billing = make_validator(audience=["https://orders.test", "https://billing.test"])
    assert billing.validate(token).audience == ("https://billing.test",)
    tenant = http_token(idp, "secret-client", SECRET, resource="https://api.test")
    api = make_validator(audience="https://api.test")
    assert api.validate(tenant).claims["tenant"] == "acme"


def test_jwks_uri_discovered_from_the_issuer_metadata(idp):
    validator = TokenValidator(idp.issuer, AUD, clock=idp.clock.now)
    assert validator.validate(idp.issue_token("demo-client")).subject == "demo-client"
    assert validator.jwks.jwks_uri == idp.jwks_uri
    other = TokenValidator(idp.issuer + "/elsewhere", AUD)
    with pytest.raises(DiscoveryError):
        other.validate(idp.issue_token("demo-client"))


# -- scopes ----------------------------------------------------------------------------------


def test_insufficient_scope(idp, validator):
    token = idp.issue_token("demo-client", scope="read")
    assert validator.validate(token, scopes=["read"])
    with pytest.raises(InsufficientScopeError) as info:
        validator.validate(token, scopes="read admin")
    error = info.value
    assert (error.required, error.granted, error.missing) == (("read", "admin"), ("read",),
                                                             ("admin",))
    assert (error.error, error.status, error.scope) == ("insufficient_scope", 403, "read admin")
    assert "admin" in error.error_description
    assert isinstance(error, OAuthError) and not isinstance(error, InvalidTokenError)
    for _ in range(2):  # the cached path checks scopes too
        with pytest.raises(InsufficientScopeError):
            validator.validate(token, scopes=("write",))


def test_token_without_scope_claim(idp, validator):
    token = idp.issue_token("demo-client", scope=[])
    assert validator.validate(token).scopes == ()
    with pytest.raises(InsufficientScopeError):
        validator.validate(token, "read")


# -- errors ----------------------------------------------------------------------------------


def test_invalid_token_error_carries_what_rfc6750_needs(idp, validator):
    error = reason(validator, idp.issue_token("demo-client", expires_in=-100))
    assert (error.error, error.status, error.reason, error.claim) == (
        "invalid_token", 401, "expired", "exp")
    assert error.reason in INVALID_TOKEN_REASONS
    copied = pickle.loads(pickle.dumps(error))
    assert (copied.reason, copied.error_description, copied.claim) == (
        error.reason, error.error_description, error.claim)
    scope_error = copy.copy(InsufficientScopeError(["a", "b"], ["a"]))
    assert scope_error.missing == ("b",)
    with pytest.raises(ValueError):
        InvalidTokenError("not-a-reason")


def test_error_descriptions_are_header_safe(idp, validator):
    good = idp.issue_token("demo-client")
    _, payload, sig = good.split(".")

    def with_header(header: dict) -> str:
        head = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
        return ".".join((head, payload, sig))

    nasty = 'a"b\\c\n\u00e9\x00'
    hostile = [
        with_header({"alg": "RS256", "typ": "at+jwt", "kid": nasty}),
        with_header({"alg": nasty * 5, "typ": "at+jwt"}),
        with_header({"alg": "RS256", "typ": nasty}),
        with_header({"alg": "RS256", "typ": "at+jwt", "crit": [nasty]}),
        idp.issue_token("demo-client", claims={"iss": "https://evil.test/" + nasty}),
    ]
    for token in hostile:
        error = reason(validator, token)
        assert _RFC6750_TEXT.fullmatch(error.error_description), error.error_description
        assert token not in str(error)


# -- key rotation ----------------------------------------------------------------------------


def test_rotated_key_is_picked_up_without_restart(idp, validator):
    old = idp.issue_token("demo-client")
    assert validator.validate(old)
    assert len(idp.jwks_requests) == 1
    old_kid = validator.validate(old).header["kid"]
    new_kid = idp.rotate_key()
    new = idp.issue_token("demo-client")
    assert validator.validate(new).header["kid"] == new_kid
    assert len(idp.jwks_requests) == 2  # one refetch for the new kid
    assert validator.validate(old)      # the old key is still published
    idp.retire_key(old_kid)
    assert validator.validate(old)      # cached set: not yet known that it left
    idp.clock.advance(validator.jwks.current.expires_at - idp.clock.now())
    with pytest.raises(InvalidTokenError, match="no longer in the issuer's JWKS") as info:
        validator.validate(old)  # after the TTL refresh the cached verified token leaves
    assert info.value.reason == "unknown_key"
    assert validator.cache_size[0] == 1  # only the new token remains
    assert reason(validator, old).reason == "unknown_key"
    assert validator.validate(new)


def test_key_objects_are_parsed_once(idp, validator):
    token = idp.issue_token("demo-client")
    validator.validate(token)
    first = validator.jwks.current
    idp.clock.advance(301)
    validator.validate(idp.issue_token("demo-client"))
    second = validator.jwks.current
    assert second.generation == first.generation + 1
    kid = validator.validate(token).header["kid"]
    assert first.by_kid[kid][0] is second.by_kid[kid][0]


# -- clock skew -------------------------------------------------------------------------------


@pytest.fixture
def skew(idp, make_validator):
    """(validator on the API's own frozen clock, set(offset)): the server's clock runs
    ``offset`` seconds ahead of (positive) or behind (negative) the API's."""
    api_clock = FakeClock(0)
    validator = make_validator(clock=api_clock)

    def set_offset(offset: float) -> None:
        idp.clock.reset()
        idp.clock.set_offset(offset)
        idp.clock.freeze()
        idp.clock.freeze(at=float(int(idp.clock.now())))
        api_clock.now = idp.clock.now() - offset

    return validator, set_offset


@pytest.mark.parametrize("offset", [-25, -10, 10, 25])
def test_skew_within_the_leeway_is_tolerated(idp, skew, offset):
    """nbf/iat up to 25 s in the API's future, exp up to 15 s in its past: accepted."""
    validator, set_offset = skew
    set_offset(offset)
    assert validator.validate(idp.issue_token("demo-client"))  # nbf = iat = server's now
    assert validator.validate(idp.issue_token("demo-client", claims={"nbf": None}))
    assert validator.validate(idp.issue_token("demo-client", expires_in=10))


@pytest.mark.parametrize("offset", [45, 100])
def test_server_ahead_by_more_than_the_leeway(idp, skew, offset):
    """Tokens look issued (iat/nbf) in the future to the API: refused, saying by how much."""
    validator, set_offset = skew
    set_offset(offset)
    error = reason(validator, idp.issue_token("demo-client"))
    assert (error.reason, error.claim) == ("not_yet_valid", "nbf")
    assert error.error_description == f"not valid for another {offset} s (nbf; leeway 30 s)"
    error = reason(validator, idp.issue_token("demo-client", claims={"nbf": None}))
    assert (error.reason, error.claim) == ("not_yet_valid", "iat")
    assert error.error_description == f"issued {offset} s in the future (iat; leeway 30 s)"


@pytest.mark.parametrize("offset", [-45, -100])
def test_server_behind_by_more_than_the_leeway(idp, skew, offset):
    """Short-lived tokens look expired to the API: refused, saying how long ago."""
    validator, set_offset = skew
    set_offset(offset)
    token = idp.issue_token("demo-client", expires_in=10)
    error = reason(validator, token)
    assert (error.reason, error.claim) == ("expired", "exp")
    assert error.error_description == f"expired {-offset - 10} s ago (leeway 30 s)"
    assert validator.validate(idp.issue_token("demo-client"))  # 300 s tokens survive


def test_leeway_is_a_parameter(idp, make_validator, skew):
    _, set_offset = skew
    set_offset(100)
    api_clock = FakeClock(idp.clock.now() - 100)
    strict = make_validator(clock=api_clock, leeway=0)
    lenient = make_validator(clock=api_clock, leeway=120)
    token = idp.issue_token("demo-client")
    assert lenient.validate(token)
    assert reason(strict, token).error_description == \
        "not valid for another 100 s (nbf; leeway 0 s)"


# -- the cache of verified tokens ---------------------------------------------------------------


def test_seen_token_is_rechecked_against_the_clock(idp, validator):
    idp.clock.freeze(at=float(int(idp.clock.now())))
    token = idp.issue_token("demo-client", expires_in=60)
    assert validator.validate(token)
    assert validator.cache_size[0] == 1
    idp.clock.advance(60 + 29)
    assert validator.validate(token)  # within the leeway
    idp.clock.advance(1)
    error = reason(validator, token)
    assert error.error_description == "expired 30 s ago (leeway 30 s)"
    assert validator.cache_size == (0, 0)  # expired entries leave
    idp.clock.advance(-200)  # the clock jumped back: a cached token is also not-yet-valid
    token = idp.issue_token("demo-client")
    validator.validate(token)
    idp.clock.advance(-100)
    assert reason(validator, token).reason == "not_yet_valid"


def test_cache_is_bounded_in_entries_and_bytes(idp, make_validator):
    validator = make_validator(cache_max_entries=5)
    tokens = [idp.issue_token("demo-client", claims={"n": i}) for i in range(8)]
    for token in tokens:
        validator.validate(token)
    assert validator.cache_size[0] == 5
    small = make_validator(cache_max_bytes=4000)
    for token in tokens:
        small.validate(token)
    entries, size = small.cache_size
    assert 1 <= entries < 8 and size <= 4000
    off = make_validator(cache_max_entries=0)
    off.validate(tokens[0])
    assert off.cache_size == (0, 0)
    assert off.validate(tokens[0])


def test_cache_drops_expired_entries_first_when_full(idp, make_validator):
    validator = make_validator(cache_max_entries=3)
    short = [idp.issue_token("demo-client", expires_in=10, claims={"n": i}) for i in range(3)]
    for token in short:
        validator.validate(token)
    idp.clock.advance(100)
    keep = idp.issue_token("demo-client")
    validator.validate(keep)
    assert validator.cache_size[0] == 1
    validator.clear_cache()
    assert validator.cache_size == (0, 0)


def test_cache_hit_skips_the_signature_check(idp, validator, monkeypatch):
    token = idp.issue_token("demo-client")
    validator.validate(token)
    calls = []
    monkeypatch.setattr(validator, "_verify", lambda *a: calls.append(a))
    assert validator.validate(token).subject == "demo-client"
    assert calls == []
    tampered = idp.tampered(token)  # a different string: never a hit
    monkeypatch.undo()
    assert reason(validator, tampered).reason == "bad_signature"


def test_thread_safety_under_concurrent_validation(idp, make_validator):
    validator = make_validator(cache_max_entries=16)
    tokens = [idp.issue_token("demo-client", claims={"n": i}) for i in range(24)]
    failures: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for i in range(120):
                token = tokens[(i + offset) % len(tokens)]
                assert validator.validate(token, "read").claims["n"] == (i + offset) % 24
        except BaseException as exc:  # collected for the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(k * 5,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert failures == []
    entries, size = validator.cache_size
    assert entries <= 16 and size > 0
    assert len(idp.jwks_requests) == 1


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize("options,match", [
    ({"algorithms": ["none"]}, "none"),
    ({"algorithms": ["HS256"]}, "HMAC needs"),
    ({"hmac_secret": "x" * 40}, "HMAC needs"),
    ({"algorithms": ["HS256"], "hmac_secret": "short"}, "shorter"),
    ({"algorithms": ["XX999"]}, "unsupported"),
    ({"leeway": -1}, "positive"),
])
def test_bad_configuration(idp, options, match):
    with pytest.raises(ValueError, match=match):
        TokenValidator(idp.issuer, AUD, **options)


def test_bad_issuer_or_audience():
    with pytest.raises(ValueError):
        TokenValidator("", AUD)
    with pytest.raises(ValueError):
        TokenValidator("https://issuer.test", [])


def test_shared_jwks_cache(idp):
    cache = JWKSCache(idp.jwks_uri, clock=idp.clock.now)
    a = TokenValidator(idp.issuer, AUD, jwks_cache=cache, clock=idp.clock.now)
    b = TokenValidator(idp.issuer, "https://api.test", jwks_cache=cache, clock=idp.clock.now)
    a.validate(idp.issue_token("demo-client"))
    b.validate(idp.issue_token("secret-client", audience="https://api.test"))
    assert len(idp.jwks_requests) == 1
    assert "TokenValidator" in repr(a) and "JWKSCache" in repr(cache)


def test_a_key_that_leaves_the_jwks_and_comes_back_still_verifies_its_tokens(idp, validator):
    # Parsed anew when it came back, the key was a new object, and the validated-token cache
    # compared objects: the token was refused once, as signed by a key no longer published.
    old = idp.issue_token("demo-client", expires_in=3600)  # outlives the clock moves below
    old_kid = validator.validate(old).header["kid"]
    idp.rotate_key()
    idp.retire_key(old_kid)
    idp.clock.advance(validator.jwks.current.expires_at - idp.clock.now())
    assert validator.validate(idp.issue_token("demo-client"))  # the set without the old key
    idp.reset()  # the original key published again
    idp.clock.advance(validator.jwks.current.expires_at - idp.clock.now() + 1)
    assert validator.validate(idp.issue_token("demo-client"))  # refreshed: the key is back
    assert validator.validate(old).header["kid"] == old_kid
