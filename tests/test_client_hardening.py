"""Issue 9, items 11–17: the validator and the client against hostile tokens, JWKS documents and
peers (a local socket server in a thread that trickles, hangs or sends too much). Loopback
only; every wait is bounded, and expiry is reached by moving injected clocks, never by sleeping.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from m2mauth.client import (
    DiscoveryError,
    InvalidTokenError,
    JWKSError,
    OAuthError,
    TokenProvider,
    TokenValidator,
    TransportError,
    fetch_token,
)
from m2mauth.client.aio import afetch_token
from m2mauth.client.discovery import MetadataCache, discover
from m2mauth.client.jwks import JWKSCache

ISSUER = "https://issuer.test"
AUDIENCE = "https://api.test"
NOW = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _ec_key(kid: str) -> tuple[ec.EllipticCurvePrivateKey, dict]:
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(ECAlgorithm.to_jwk(private.public_key()))
    jwk.update(kid=kid, use="sig", alg="ES256")
    return private, jwk


@pytest.fixture(scope="module")
def signer() -> tuple[ec.EllipticCurvePrivateKey, dict]:
    return _ec_key("k1")


def _claims(**changes: object) -> dict:
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "svc", "client_id": "svc", "jti": "j1",
              "iat": int(NOW), "exp": int(NOW) + 300, "scope": "read"}
    claims.update(changes)
    return claims


def _token(private: ec.EllipticCurvePrivateKey, claims: dict, kid: str = "k1") -> str:
    # PyJWS, not jwt.encode: PyJWT refuses to encode some of the wrong types tested here.
    return jwt.api_jws.encode(json.dumps(claims).encode(), private, algorithm="ES256",
                              headers={"typ": "at+jwt", "kid": kid})


def _validator(jwks: list[dict], clock: Callable[[], float] | None = None) -> TokenValidator:
    clock = clock or Clock()
    cache = JWKSCache(None, fetch=lambda: ({"keys": jwks}, None), clock=clock)
    return TokenValidator(ISSUER, AUDIENCE, jwks_cache=cache, clock=clock)


# -- item 11: registered claims of the wrong type, null included --------------------------------

#: (claim, a value of the wrong type): time claims must be numbers, the others strings (aud:
#: a string or strings).
WRONG_TYPES = [
    *[(claim, value) for claim in ("exp", "iat", "nbf")
      for value in (None, "1700000300", [1], {"a": 1}, True)],
    *[(claim, value) for claim in ("iss", "aud", "sub", "client_id", "jti", "scope")
      for value in (None, 1, [1], {"a": 1}, True)],
]


@pytest.mark.parametrize(("claim", "value"), WRONG_TYPES, ids=repr)
def test_a_registered_claim_of_the_wrong_type_is_invalid_claim(signer, claim, value):
    private, jwk = signer
    token = _token(private, _claims(**{claim: value}))
    with pytest.raises(InvalidTokenError) as caught:
        _validator([jwk]).validate(token)
    assert caught.value.reason == "invalid_claim"
    assert claim in str(caught.value)


def test_the_well_typed_token_is_valid(signer):
    private, jwk = signer
    assert _validator([jwk]).validate(_token(private, _claims(nbf=int(NOW)))).subject == "svc"


# -- item 12: a JWKS key with a field of the wrong type is skipped, the rest kept -------------

#: (member, a value of the wrong type); a null optional member (kid, use, alg) is left out:
#: many libraries read it as absent, and so may this one.
BAD_MEMBERS = [(field, value) for field in ("kty", "crv", "alg", "kid", "use")
               for value in (["ES256"], {"x": "y"}, 5, None)
               if not (value is None and field in ("kid", "use", "alg"))]


@pytest.mark.parametrize(("field", "value"), BAD_MEMBERS, ids=repr)
def test_a_key_with_a_field_of_the_wrong_type_is_skipped(signer, field, value):
    private, jwk = signer
    _, other = _ec_key("bad")
    other[field] = value
    validator = _validator([other, jwk])
    assert validator.validate(_token(private, _claims())).subject == "svc"
    ignored = validator.jwks.current.ignored
    assert len(ignored) == 1, ignored


# -- a misbehaving HTTP peer --------------------------------------------------------------------

class Peer:
    """A loopback socket server in a thread: ``handler(conn, stop)`` answers each connection.
    ``connections`` counts them; ``stop`` is set at the end so handlers return at once."""

    def __init__(self, handler: Callable[[socket.socket, threading.Event], None]) -> None:
        self.handler = handler
        self.stop = threading.Event()
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    piece = conn.recv(65536)
                    if not piece:
                        return
                    data += piece
                self.handler(conn, self.stop)
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self._thread.join(2)
        self._listener.close()


@pytest.fixture
def peer() -> Iterator[Callable[..., Peer]]:
    made: list[Peer] = []

    def make(handler: Callable[[socket.socket, threading.Event], None]) -> Peer:
        made.append(Peer(handler))
        return made[-1]

    yield make
    for p in made:
        p.close()


def trickle(body: bytes, interval: float) -> Callable[[socket.socket, threading.Event], None]:
    """Headers at once, then the body one byte per ``interval``."""
    def handler(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        for byte in body:
            if stop.wait(interval):
                return
            conn.sendall(bytes([byte]))
    return handler


def hang(conn: socket.socket, stop: threading.Event) -> None:
    """Read the request, answer nothing until the test ends."""
    stop.wait(10)


def big(size: int, chunked: bool = False) -> Callable[[socket.socket, threading.Event], None]:
    """A JSON-ish body of ``size`` bytes (with Content-Length, or chunked without)."""
    def handler(conn: socket.socket, stop: threading.Event) -> None:
        framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % size
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + framing
                     + b"\r\n\r\n")
        sent, piece = 0, b"{" + b" " * 65534 + b"}"
        while sent < size and not stop.is_set():
            part = piece[: size - sent]
            conn.sendall(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
            sent += len(part)
        if chunked:
            conn.sendall(b"0\r\n\r\n")
    return handler


def _timed(fn: Callable[[], object]) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        fn()
    except BaseException as exc:  # the test looks at what it was
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


# -- item 13: one total deadline per JWKS fetch; waiting callers wait no longer --------------

def test_a_trickling_jwks_endpoint_is_cut_off_at_the_deadline(peer):
    server = peer(trickle(b'{"keys": []}' + b" " * 60, 0.1))  # about 7 s if read to the end
    cache = JWKSCache(server.url + "/jwks", timeout=0.5, clock=Clock())
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: _timed(lambda: cache.get("k1", "ES256")), range(2)))
    for elapsed, error in results:
        assert isinstance(error, JWKSError), error
        assert elapsed < 1.5, results
    assert "0.5" in str(results[0][1]) or "0.5" in str(results[1][1])


# -- item 14: discovery shares one in-flight fetch and backs off failures -------------------------

def _concurrently(fn: Callable[[], object], n: int = 6,
                  bound: float = 10) -> list[tuple[float, BaseException | None]]:
    """``_timed(fn)`` in ``n`` threads started together; each joined within ``bound`` s."""
    results: list[tuple[float, BaseException | None]] = []
    barrier = threading.Barrier(n, timeout=bound)

    def run() -> None:
        barrier.wait()
        results.append(_timed(fn))

    threads = [threading.Thread(target=run, daemon=True) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(bound)
    assert len(results) == n and not any(t.is_alive() for t in threads), results
    return results


def test_concurrent_discoveries_share_one_fetch_and_its_failure(peer):
    server = peer(hang)
    clock = Clock()
    cache = MetadataCache(clock=clock)  # backoff 5 s by default
    results = _concurrently(lambda: cache.get(server.url, timeout=0.5))
    assert all(isinstance(error, OAuthError) for _, error in results), results
    assert max(elapsed for elapsed, _ in results) < 2, results  # one timeout, not six in a row
    assert server.connections == 1
    # Backed off: a call within the backoff gets the failure without a request.
    clock.now += 4
    elapsed, error = _timed(lambda: cache.get(server.url, timeout=0.5))
    assert isinstance(error, OAuthError) and elapsed < 0.4 and server.connections == 1
    clock.now += 1.5  # past the backoff: tried again
    _, error = _timed(lambda: cache.get(server.url, timeout=0.2))
    assert isinstance(error, OAuthError) and server.connections == 2


def test_concurrent_validators_discoveries_share_one_fetch(peer, signer):
    server = peer(hang)
    private, _ = signer
    clock = Clock()
    validator = TokenValidator(server.url, AUDIENCE, timeout=0.5, clock=clock)
    token = _token(private, _claims(iss=server.url))
    results = _concurrently(lambda: validator.validate(token))
    assert all(isinstance(error, (DiscoveryError, TransportError)) for _, error in results), (
        results)
    assert max(elapsed for elapsed, _ in results) < 2, results
    assert server.connections == 1
    clock.now += 60  # past the backoff: the next validate() discovers again
    _, error = _timed(lambda: validator.validate(token))
    assert isinstance(error, (DiscoveryError, TransportError)) and server.connections == 2


def test_a_remembered_discovery_failure_is_dropped_by_invalidate_and_a_success(monkeypatch):
    import m2mauth.client.discovery as discovery_module

    outcomes: list[object] = [TransportError(error_description="down"), {"issuer": ISSUER}]
    calls: list[str] = []

    def fetch(issuer: str, **_: object) -> dict:
        calls.append(issuer)
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome  # type: ignore[return-value]

    monkeypatch.setattr(discovery_module, "_fetch", fetch)
    cache = MetadataCache(clock=Clock(), backoff=5)
    with pytest.raises(TransportError, match="down") as first:
        cache.get(ISSUER)
    with pytest.raises(TransportError, match="remembered failure") as again:
        cache.get(ISSUER)
    assert again.value is not first.value and len(calls) == 1
    cache.invalidate(ISSUER)  # forgets the failure too
    assert cache.get(ISSUER) == {"issuer": ISSUER} and len(calls) == 2
    assert cache.get(ISSUER) == {"issuer": ISSUER} and len(calls) == 2  # cached (ttl)


# -- item 15: a kid first seen during the cooldown is looked up at the next refetch -----------

def test_a_key_published_during_the_cooldown_is_found_at_the_next_refetch(signer):
    private, jwk = signer
    new_private, new_jwk = _ec_key("k2")
    published = [jwk]
    clock = Clock()
    cache = JWKSCache(None, fetch=lambda: ({"keys": list(published)}, None), clock=clock,
                      cooldown=30, negative_ttl=60)
    validator = TokenValidator(ISSUER, AUDIENCE, jwks_cache=cache, clock=clock)
    validator.validate(_token(private, _claims()))
    clock.now += 1
    with pytest.raises(InvalidTokenError):  # junk kid: a refetch, then the cooldown
        validator.validate(_token(private, _claims(), kid="junk"))
    clock.now += 4
    published.append(new_jwk)  # rotation after the last fetch
    token = _token(new_private, _claims(iat=int(clock.now), exp=int(clock.now) + 300), "k2")
    with pytest.raises(InvalidTokenError):  # within the cooldown: not fetched yet
        validator.validate(token)
    fetches = cache.fetches
    clock.now = NOW + 1 + 30  # the next permitted refetch
    assert validator.validate(token).subject == "svc"
    assert cache.fetches == fetches + 1


# -- item 16: metadata and token responses are capped ------------------------------------------

@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_metadata_is_refused_at_the_cap(peer, chunked):
    server = peer(big(50 * 1024 * 1024, chunked))
    elapsed, error = _timed(lambda: discover(server.url, timeout=2, max_bytes=4096))
    assert isinstance(error, DiscoveryError), error
    assert "4096" in str(error)
    assert elapsed < 2


@pytest.mark.parametrize("chunked", [False, True])
def test_an_oversized_token_response_is_refused_at_the_cap(peer, chunked):
    server = peer(big(50 * 1024 * 1024, chunked))
    args = dict(token_url=server.url + "/token", client_id="c", client_secret="s", timeout=2,
                max_response_bytes=4096)
    for call in (lambda: fetch_token(**args), lambda: asyncio.run(afetch_token(**args))):
        elapsed, error = _timed(call)
        assert isinstance(error, TransportError), error
        assert "4096" in str(error)
        assert elapsed < 2


def test_a_trickling_token_endpoint_is_cut_off_at_the_deadline(peer):
    server = peer(trickle(b'{"access_token": "x", "token_type": "Bearer"}' + b" " * 40, 0.1))
    args = dict(token_url=server.url + "/token", client_id="c", client_secret="s",
                timeout=0.5)
    for call in (lambda: fetch_token(**args), lambda: asyncio.run(afetch_token(**args))):
        elapsed, error = _timed(call)
        assert isinstance(error, TransportError), error
        assert elapsed < 1.5


def test_the_provider_takes_the_cap(peer):
    server = peer(big(1024 * 1024))
    provider = TokenProvider(server.url + "/token", "c", "s", max_response_bytes=4096,
                             timeout=2)
    with pytest.raises(TransportError, match="4096"):
        provider.get_token()


# -- item 17: the cache key is keyed per process --------------------------------------------------

def _unkeyed(secret: str) -> str:
    """The cache key as it was: SHA-256 of the parameters and SHA-256(secret)."""
    material = json.dumps(["https://idp.test/token", "demo-client", "client_secret_basic",
                           ["read"], [], []])
    digest = hashlib.sha256(material.encode())
    digest.update(b"\0" + hashlib.sha256(secret.encode()).digest())
    return digest.hexdigest()


def _provider_key(secret: str) -> str:
    return TokenProvider("https://idp.test/token", "demo-client", secret, "read").cache_key


def test_the_cache_key_resists_a_dictionary():
    key = _provider_key("demo-secret")
    words = ["secret", "password", "demo", "demo-secret", "changeme", "admin", "test"]
    assert [w for w in words if _unkeyed(w) == key] == []
    assert _provider_key("demo-secret") == key  # equal inputs, equal keys, in one process
    assert _provider_key("other-secret") != key


def test_the_cache_key_differs_between_processes():
    code = ("from m2mauth.client import TokenProvider; print(TokenProvider("
            "'https://idp.test/token', 'demo-client', 'demo-secret', 'read').cache_key)")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=60, check=True).stdout.strip()
    assert other and other != _provider_key("demo-secret")


def test_a_providers_own_metadata_cache_lets_each_retry_discover_again(monkeypatch):
    """A provider's retries are paced by its RetryPolicy: its own metadata cache remembers no
    failure, so the attempt after a failed discovery discovers again."""
    import m2mauth.client.discovery as discovery_module
    from m2mauth.client import RetryPolicy, TokenProvider

    calls: list[str] = []

    def fetch(issuer: str, **_: object) -> dict:
        calls.append(issuer)
        raise TransportError(error_description="down")

    monkeypatch.setattr(discovery_module, "_fetch", fetch)
    waits: list[float] = []
    provider = TokenProvider(issuer=ISSUER, client_id="c", client_secret="s",
                             retry=RetryPolicy(max_attempts=3, sleep=waits.append))
    with pytest.raises(TransportError) as caught:
        provider.get_token()
    assert len(calls) == 3 and caught.value.attempts == 3
