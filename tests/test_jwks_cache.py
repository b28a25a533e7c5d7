"""m2mauth.client.JWKSCache: TTL from Cache-Control within bounds, which keys are usable,
keys parsed once, unknown-kid cooldown with one fetch in flight and a negative cache, stale
keys after failed refreshes, and the HTTP download against the real server. Clocks are fake;
nothing sleeps (a blocked fetch is released by an Event, with bounded waits)."""

from __future__ import annotations

import json
import socket
import threading

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from m2mauth.client import InvalidTokenError, JWKSCache, JWKSError
from m2mauth.client.jwks import _ttl_from, parse_jwk

ALL = ("RS256", "PS256", "ES256", "ES384", "EdDSA")


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rsa_jwk(kid: str, bits: int = 2048, **extra) -> dict:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key()
    return {**json.loads(RSAAlgorithm.to_jwk(key)), "kid": kid, **extra}


def ec_jwk(kid: str, curve=ec.SECP256R1, **extra) -> dict:
    key = ec.generate_private_key(curve()).public_key()
    return {**json.loads(ECAlgorithm.to_jwk(key)), "kid": kid, **extra}


def ed_jwk(kid: str, **extra) -> dict:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return {**json.loads(OKPAlgorithm.to_jwk(key)), "kid": kid, **extra}


@pytest.fixture(scope="module")
def keys() -> dict[str, dict]:
    return {"rsa": rsa_jwk("rsa-1", alg="RS256", use="sig"), "ec": ec_jwk("ec-1"),
            "ed": ed_jwk("ed-1"), "rsa2": rsa_jwk("rsa-2")}


class Source:
    """A scripted JWKS endpoint: the document, the Cache-Control header, failures, calls."""

    def __init__(self, *jwks: dict, cache_control: str | None = "max-age=300") -> None:
        self.document = {"keys": list(jwks)}
        self.cache_control = cache_control
        self.fail = 0
        self.calls = 0
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def __call__(self):
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.fail:
            self.fail -= 1
            raise ConnectionError("JWKS endpoint down")
        return json.loads(json.dumps(self.document)), self.cache_control


def cache_for(source: Source, clock: FakeClock | None = None, **options) -> JWKSCache:
    return JWKSCache(None, fetch=source, clock=clock or FakeClock(), algorithms=ALL, **options)


# -- TTL -------------------------------------------------------------------------------------


@pytest.mark.parametrize("header,ttl", [
    (None, 300), ("max-age=600", 600), ("public, max-age=3600", 3600), ("max-age=5", 60),
    ("max-age=999999999", 86400), ("no-store", 60), ("no-cache, max-age=600", 60),
    ('max-age="120"', 120), ("MAX-AGE=120", 120), ("s-maxage=10", 300), ("max-age=abc", 300),
])
def test_ttl_from_cache_control_within_bounds(header, ttl):
    assert _ttl_from(header, 300, 60, 86400) == ttl


def test_expired_set_is_refetched(keys):
    clock, source = FakeClock(), Source(keys["rsa"], cache_control="max-age=120")
    cache = cache_for(source, clock)
    assert cache.get("rsa-1", "RS256").kid == "rsa-1"
    clock.now += 119
    cache.get("rsa-1", "RS256")
    assert source.calls == 1
    clock.now += 1
    cache.get("rsa-1", "RS256")
    assert source.calls == 2


# -- which keys are used -----------------------------------------------------------------------


def test_usable_keys_and_their_algorithms(keys):
    cache = cache_for(Source(*keys.values()))
    assert cache.get("rsa-1", "RS256").algorithms == {"RS256"}
    assert cache.get("rsa-2", "PS256").algorithms == {"RS256", "PS256"}  # no alg: RSA family
    assert cache.get("ec-1", "ES256").crv == "P-256"
    assert cache.get("ed-1", "EdDSA").kty == "OKP"
    with pytest.raises(InvalidTokenError) as info:
        cache.get("rsa-1", "PS256")  # the JWK says RS256 only
    assert info.value.reason == "key_mismatch"
    assert "RS256" in info.value.error_description


@pytest.mark.parametrize("jwk,why", [
    ({"kty": "oct", "k": "c2VjcmV0", "kid": "x"}, "symmetric"),
    ({**ec_jwk("x"), "d": "AAAA"}, "private"),
    (ec_jwk("x", use="enc"), "use"),
    (ec_jwk("x", key_ops=["encrypt"]), "key_ops"),
    (rsa_jwk("x", bits=1024), "1024 bits"),
    (ec_jwk("x", alg="ES384"), "does not fit"),
    (ec_jwk("x", alg="RS256"), "does not fit"),
    (rsa_jwk("x", alg="ES256"), "does not fit"),
    ({**ec_jwk("x"), "crv": "P-192"}, "curve"),
    ({**ec_jwk("x"), "crv": ["P-256"]}, "curve"),  # not a string: no TypeError either
    ({**ec_jwk("x", curve=ec.SECP384R1), "crv": "P-256"}, "unreadable"),
    ({**ec_jwk("x"), "y": ec_jwk("y")["y"]}, "unreadable"),  # a point not on the curve
    ({"kty": "XYZ", "kid": "x"}, "key type"),
    ({"kty": "RSA", "kid": "x"}, "unreadable"),
    ({**ed_jwk("x"), "crv": "X25519"}, "curve"),
    ({**ec_jwk("x"), "kid": 5}, "kid"),
])
def test_unusable_keys_are_ignored(jwk, why):
    with pytest.raises(ValueError, match=why):
        parse_jwk(jwk, ALL)
    cache = cache_for(Source(jwk, ec_jwk("good")))
    assert len(cache.keyset()) == 1
    assert cache.current.ignored and why.split()[0] in cache.current.ignored[0]


def test_algorithm_not_allowed_keys_are_ignored(keys):
    cache = JWKSCache(None, fetch=Source(*keys.values()), clock=FakeClock(),
                      algorithms=["ES256"])
    assert set(cache.keyset().by_kid) == {"ec-1"}


def test_keys_parsed_once_and_kept_across_refreshes(keys):
    clock, source = FakeClock(), Source(keys["rsa"], keys["ec"])
    cache = cache_for(source, clock)
    first = cache.get("ec-1", "ES256")
    source.document["keys"].append(keys["ed"])
    clock.now += 301
    assert cache.get("ed-1", "EdDSA")
    assert cache.get("ec-1", "ES256") is first  # unchanged JWK: the same key object
    assert cache.current.generation == 2


def test_key_without_kid(keys):
    no_kid = {k: v for k, v in ec_jwk("x").items() if k != "kid"}
    cache = cache_for(Source(no_kid, keys["rsa"]))
    assert cache.get(None, "ES256").kid is None  # the only ES256 key
    with pytest.raises(InvalidTokenError, match="has no kid"):
        cache.get(None, "EdDSA")
    two = cache_for(Source(no_kid, {k: v for k, v in ec_jwk("y").items() if k != "kid"}))
    with pytest.raises(InvalidTokenError, match="2 keys"):
        two.get(None, "ES256")


def test_malformed_documents(keys):
    for document in ({}, {"keys": {}}, [], "keys", {"keys": "x"}):
        source = Source()
        source.document = document
        with pytest.raises(JWKSError, match="'keys' list"):
            cache_for(source).keyset()
    many = cache_for(Source(*[ec_jwk(f"k{i}") for i in range(5)]), max_keys=3)
    assert len(many.keyset()) == 3


# -- unknown kids ---------------------------------------------------------------------------------


def test_unknown_kid_refetches_once_per_cooldown(keys):
    clock, source = FakeClock(), Source(keys["rsa"])
    cache = cache_for(source, clock, cooldown=30, negative_ttl=60)
    cache.keyset()
    source.document["keys"].append(keys["ec"])  # published after our first fetch
    assert cache.get("ec-1", "ES256")            # found by the refetch
    assert source.calls == 2
    for i in range(100):
        with pytest.raises(InvalidTokenError):
            cache.get(f"junk-{i}", "ES256")
    assert source.calls == 2  # cooling down since the ec-1 refetch
    clock.now += 30
    with pytest.raises(InvalidTokenError):
        cache.get("junk-again", "ES256")
    assert source.calls == 3
    clock.now += 29
    for i in range(100):  # refused by the negative cache (60 s after the refetch at 0 s)
        with pytest.raises(InvalidTokenError):
            cache.get(f"junk-{i}", "ES256")
    with pytest.raises(InvalidTokenError):
        cache.get("junk-again", "ES256")
    assert source.calls == 3


def test_negative_cache_is_cleared_by_a_fetch_that_brings_the_kid(keys):
    clock, source = FakeClock(), Source(keys["rsa"], cache_control="max-age=60")
    cache = cache_for(source, clock, cooldown=30, negative_ttl=600)
    with pytest.raises(InvalidTokenError):
        cache.get("ec-1", "ES256")
    source.document["keys"].append(keys["ec"])
    clock.now += 59
    with pytest.raises(InvalidTokenError):
        cache.get("ec-1", "ES256")  # negative-cached, no fetch
    assert source.calls == 2
    clock.now += 1  # the TTL refresh brings it
    assert cache.get("ec-1", "ES256")


def test_negative_cache_is_bounded(keys):
    clock, source = FakeClock(), Source(keys["rsa"])
    cache = cache_for(source, clock, max_negative=50)
    for i in range(500):
        with pytest.raises(InvalidTokenError):
            cache.get(f"junk-{i}", "RS256")
    assert len(cache._unknown) <= 50
    assert source.calls == 2


def test_one_fetch_in_flight_and_waiters_use_its_result(keys):
    clock, source = FakeClock(), Source(keys["rsa"])
    cache = cache_for(source, clock)
    cache.keyset()
    source.document["keys"].append(keys["ec"])
    source.gate = threading.Event()
    source.entered.clear()
    results: list[str] = []

    def lookup(kid: str) -> None:
        try:
            results.append(cache.get(kid, "ES256").kid)
        except InvalidTokenError as exc:
            results.append(exc.reason)

    first = threading.Thread(target=lookup, args=("ec-1",))
    first.start()
    assert source.entered.wait(10)  # the refetch is in flight now
    others = [threading.Thread(target=lookup, args=("ec-1",)) for _ in range(20)]
    others += [threading.Thread(target=lookup, args=(f"junk-{i}",)) for i in range(20)]
    for t in others:
        t.start()
    source.gate.set()
    for t in [first, *others]:
        t.join(timeout=10)
    assert source.calls == 2  # the first fetch and one refetch for everybody
    assert results.count("ec-1") == 21 and results.count("unknown_key") == 20


def test_concurrent_first_use_fetches_once(keys):
    source = Source(keys["rsa"])
    source.gate = threading.Event()
    cache = cache_for(source)
    got: list[int] = []
    threads = [threading.Thread(target=lambda: got.append(len(cache.keyset())))
               for _ in range(16)]
    for t in threads:
        t.start()
    assert source.entered.wait(10)
    source.gate.set()
    for t in threads:
        t.join(timeout=10)
    assert got == [1] * 16 and source.calls == 1


# -- failures and stale keys ----------------------------------------------------------------------


def test_failed_refresh_serves_stale_keys_then_fails_closed(keys):
    clock, source = FakeClock(), Source(keys["rsa"], cache_control="max-age=100")
    cache = cache_for(source, clock, max_stale=200, failure_backoff=10)
    key = cache.get("rsa-1", "RS256")
    source.fail = 1000
    clock.now += 100  # expired: a refresh is attempted and fails
    assert cache.get("rsa-1", "RS256") is key
    assert (source.calls, cache.failures) == (2, 1)
    clock.now += 9
    cache.get("rsa-1", "RS256")
    assert source.calls == 2  # backing off
    clock.now += 1
    cache.get("rsa-1", "RS256")
    assert source.calls == 3
    clock.now += 190  # 200 s past expiry: no more stale keys
    with pytest.raises(JWKSError, match="stale keys are used for at most 200 s"):
        cache.get("rsa-1", "RS256")
    source.fail = 0
    with pytest.raises(JWKSError):
        cache.get("rsa-1", "RS256")  # within the backoff of the last failure
    clock.now += 10
    assert cache.get("rsa-1", "RS256")
    assert cache.fetches == 2


def test_unknown_kid_while_the_endpoint_is_down(keys):
    clock, source = FakeClock(), Source(keys["rsa"])
    cache = cache_for(source, clock)
    cache.keyset()
    source.fail = 1
    with pytest.raises(JWKSError, match="fetch failed"):
        cache.get("new-kid", "RS256")  # could not be checked: not the token's fault
    with pytest.raises(InvalidTokenError):
        cache.get("other-kid", "RS256")  # cooling down: refused without a fetch
    assert cache.get("rsa-1", "RS256")  # known keys keep working
    assert source.calls == 2


def test_refresh_forces_a_fetch(keys):
    source = Source(keys["rsa"])
    cache = cache_for(source)
    cache.keyset()
    cache.refresh()
    assert source.calls == 2
    source.fail = 1
    with pytest.raises(JWKSError):
        cache.refresh()


def test_bad_configuration():
    with pytest.raises(ValueError):
        JWKSCache(None)
    with pytest.raises(ValueError):
        JWKSCache("https://x.test/jwks", min_ttl=100, max_ttl=10)
    with pytest.raises(ValueError):
        JWKSCache("https://x.test/jwks", cooldown=-1)


# -- over HTTP, against the real server -----------------------------------------------------------


def test_http_fetch_honours_the_servers_cache_control(idp):
    clock = FakeClock(idp.clock.now())
    cache = JWKSCache(idp.jwks_uri, clock=clock)
    keyset = cache.keyset()
    assert keyset.expires_at - keyset.fetched_at == 300
    assert {k["kid"] for k in idp.jwks["keys"]} == set(keyset.by_kid)
    assert len(idp.jwks_requests) == 1


@pytest.mark.parametrize("fault,match", [
    ({"status": 503}, "HTTP 503"), ({"kind": "malformed"}, "not JSON"),
    ({"kind": "drop"}, "cannot fetch"),
])
def test_http_failures(idp, fault, match):
    idp.fail_next(endpoint="jwks", **fault)
    cache = JWKSCache(idp.jwks_uri, clock=FakeClock())
    with pytest.raises(JWKSError, match=match):
        cache.keyset()


def test_http_not_found_and_timeout(idp):
    with pytest.raises(JWKSError, match="HTTP 404"):
        JWKSCache(idp.url + "/no-such-jwks").keyset()
    # A listening socket that never answers (not a delayed server response, which would
    # finish after this test and show up in the next test's request log).
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/jwks.json"
        with pytest.raises(JWKSError, match="timed out"):
            JWKSCache(url, timeout=0.05).keyset()


def test_http_response_size_is_capped(idp):
    cache = JWKSCache(idp.jwks_uri, max_bytes=200)
    with pytest.raises(JWKSError, match="larger than 200 bytes"):
        cache.keyset()
