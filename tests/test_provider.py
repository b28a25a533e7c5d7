"""TokenProvider (threads, requests) end to end against the real server through the ``idp``
fixture: caching, expiry and refresh margin on the shared clock, single flight per cache key,
retries, failed refreshes, responses without ``expires_in``, every auth method, and secrets
kept out of logs and reprs. The tests taking ``kind`` run for the AsyncTokenProvider too (what
only asyncio has is in test_async_provider.py). Nothing sleeps: the retry policy's sleep is a
recorder, and time moves only through ``idp.clock``."""

from __future__ import annotations

import json
import logging
import threading
from email.utils import formatdate

import pytest
import requests
from _provider_support import BOUND, KINDS, T0, Sleeps, policy, run, run_threads
from requests.adapters import HTTPAdapter

from m2mauth.client import (
    InvalidClientError,
    InvalidRequestError,
    InvalidScopeError,
    OAuthError,
    RetryPolicy,
    ServerError,
    TemporarilyUnavailableError,
    Token,
    TokenCache,
    TokenProvider,
    TransportError,
)
from m2mauth.client.provider import cache_key, jwt_expiry
from m2mauth.client.tokens import _retry_after, parse_response


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def provider_for(idp, client, sleeps, *, scope="read", **options) -> TokenProvider:
    return KINDS[0].provider_for(idp, client, sleeps, scope=scope, **options)


def issued(idp) -> list:
    return [r for r in idp.token_requests if r.outcome == "issued"]


class CannedFirst(HTTPAdapter):
    """A transport that answers the first requests with canned responses, then forwards to the
    real server (for what the server cannot send: an HTTP-date Retry-After, an opaque token)."""

    def __init__(self, *responses: tuple[int, dict, dict]) -> None:
        super().__init__()
        self.canned = list(responses)
        self.sent = 0

    def send(self, request, **kwargs):
        self.sent += 1
        if not self.canned:
            return super().send(request, **kwargs)
        status, headers, body = self.canned.pop(0)
        response = requests.Response()
        response.status_code = status
        response.headers.update({"Content-Type": "application/json", **headers})
        response._content = json.dumps(body).encode()
        response.url = request.url
        response.request = request
        return response


# -- caching ----------------------------------------------------------------------------------


def test_thousand_calls_one_token_request(idp, kind):
    sleeps = kind.sleeps()
    client = idp.add_client(scopes=["read"])
    provider = kind.provider(idp.token_endpoint, client.client_id, client.client_secret, "read",
                             clock=idp.clock.now, retry=policy(sleeps))  # the tutorial's order
    tokens = {provider.get_token() for _ in range(1_000)}
    assert len(tokens) == 1
    assert len(idp.token_requests) == 1
    request = idp.token_requests[0]
    assert (request.client_id, request.scope, request.outcome) == (
        client.client_id, "read", "issued")
    assert request.auth_method == "client_secret_basic"
    assert provider.get().scope == ["read"]
    assert sleeps.calls == []


def test_tutorial_keyword_names(idp):
    client = idp.add_client(scopes=["read"])
    provider = TokenProvider(token_url=idp.token_endpoint, client_id=client.client_id,
                             client_secret=client.client_secret, scope="read")
    assert provider.get_token() == provider.get_token()
    assert len(idp.token_requests) == 1


def test_issuer_discovery(idp, kind):
    client = idp.add_client(scopes=["read"])
    provider = kind.provider(issuer=idp.issuer, client_id=client.client_id,
                             client_secret=client.client_secret, scope="read",
                             clock=idp.clock.now, retry=policy(kind.sleeps()))
    assert len(set(kind.at_once(20, provider))) == 1
    for _ in range(100):
        provider.get_token()
    assert len(idp.token_requests) == 1
    assert issued(idp)[0].client_id == client.client_id


# -- expiry and the refresh margin --------------------------------------------------------


def test_refetch_after_expires_at_minus_margin_not_before(frozen, sleeps):
    idp = frozen
    client = idp.add_client(scopes=["read"], token_lifetime=300)
    provider = provider_for(idp, client, sleeps, refresh_margin=60)
    first = provider.get_token()
    assert provider.get().expires_at == T0 + 300
    idp.clock.advance(239.5)
    assert provider.get_token() == first
    assert len(idp.token_requests) == 1
    idp.clock.advance(0.5)  # exactly expires_at - margin
    second = provider.get_token()
    assert second != first
    assert len(idp.token_requests) == 2
    assert provider.get_token() == second
    idp.clock.advance(3600)  # long expired: a new one
    assert provider.get_token() not in (first, second)
    assert len(idp.token_requests) == 3


@pytest.mark.parametrize(("lifetime", "margin", "due"), [
    (60, 60, 30),  # the margin is capped at half the lifetime
    (100, 0, 100),  # no margin: served until expiry
])
def test_served_until_due_then_refetched(frozen, kind, lifetime, margin, due):
    idp = frozen
    client = idp.add_client(scopes=["read"], token_lifetime=lifetime)
    provider = kind.provider_for(idp, client, kind.sleeps(), refresh_margin=margin)
    first = provider.get_token()
    assert provider.get_token() == first  # not refetched at once
    idp.clock.advance(due - 0.1)
    assert provider.get_token() == first
    assert len(idp.token_requests) == 1
    idp.clock.advance(0.1)
    assert provider.get_token() != first
    assert len(idp.token_requests) == 2


def test_token_expiring_inside_the_margin_causes_no_storm(frozen, kind):
    idp = frozen
    client = idp.add_client(scopes=["read"], token_lifetime=10)  # margin 60 > lifetime 10
    provider = kind.provider_for(idp, client, kind.sleeps())
    kind.at_once(100, provider)
    assert len(idp.token_requests) == 1
    idp.clock.advance(5)
    for _ in range(100):
        provider.get_token()
    assert len(idp.token_requests) == 2


def test_margin_must_not_be_negative():
    with pytest.raises(ValueError, match="refresh_margin"):
        TokenProvider("http://127.0.0.1:9/token", "c", "s", refresh_margin=-1)


# -- single flight per cache key -------------------------------------------------------------


def test_fifty_at_once_one_request(idp, kind):
    client = idp.add_client(scopes=["read"])
    provider = kind.provider_for(idp, client, kind.sleeps())
    idp.fail_next(kind="delay", delay=0.1)  # a slow fetch: the others pile up behind it
    results = kind.at_once(50, provider)
    assert len(set(results)) == 1
    assert len(idp.token_requests) == 1
    assert idp.token_requests[0].fault == "delay"


def test_fifty_at_expiry_one_request(frozen, kind):
    idp = frozen
    client = idp.add_client(scopes=["read"], token_lifetime=300)
    provider = kind.provider_for(idp, client, kind.sleeps())
    first = provider.get_token()
    idp.clock.advance(300)
    idp.fail_next(kind="delay", delay=0.1)
    results = kind.at_once(50, provider)
    assert len(set(results)) == 1
    assert results[0] != first
    assert len(idp.token_requests) == 2


def test_different_keys_never_wait_for_each_other(idp, sleeps):
    """While key A's lock is held (as by a fetch in flight), key B still gets its token; A's
    caller waits, then fetches once the lock is free."""
    client = idp.add_client(scopes=["read", "write"])
    cache: TokenCache = TokenCache()
    reader = provider_for(idp, client, sleeps, scope="read", cache=cache)
    writer = provider_for(idp, client, sleeps, scope="write", cache=cache)
    assert reader.cache_key != writer.cache_key
    done = threading.Event()
    got: list[str] = []

    def read() -> None:
        got.append(reader.get_token())
        done.set()

    with cache.lock(reader.cache_key):
        waiting = threading.Thread(target=read)
        waiting.start()
        assert writer.get_token()  # would deadlock with one global lock
        assert [r.scope for r in idp.token_requests] == ["write"]
        assert not done.is_set()  # the reader is still held by its key's lock
    waiting.join(BOUND)
    assert done.is_set()
    assert [r.scope for r in idp.token_requests] == ["write", "read"]


def test_different_keys_hold_their_locks_at_the_same_time(idp, sleeps):
    """Two keys' fetches overlap: each key's lock is released only once the other key's lock
    was held too, which cannot happen with one lock for all keys."""
    held = 0
    both_held = threading.Event()
    guard = threading.Lock()

    class OverlapLock:
        """A per-key lock that notes how many keys hold theirs at once."""

        def __init__(self) -> None:
            self._lock = threading.Lock()

        def __enter__(self) -> OverlapLock:
            nonlocal held
            self._lock.acquire()
            with guard:
                held += 1
                if held == 2:
                    both_held.set()
            return self

        def __exit__(self, *exc: object) -> None:
            nonlocal held
            both_held.wait(BOUND)  # a single global lock would never get here in time
            with guard:
                held -= 1
            self._lock.release()

    client = idp.add_client(scopes=["read", "write"])
    cache: TokenCache = TokenCache(OverlapLock)
    providers = iter([provider_for(idp, client, sleeps, scope=s, cache=cache)
                      for s in ("read", "write")])
    chosen = [next(providers), next(providers)]
    order = iter(range(2))
    pick = threading.Lock()

    def fetch() -> str:
        with pick:
            index = next(order)
        return chosen[index].get_token()

    results = run_threads(2, fetch)
    assert both_held.is_set()
    assert len(set(results)) == 2
    assert sorted(r.scope for r in idp.token_requests) == ["read", "write"]


def test_providers_sharing_a_cache_share_the_token(idp, kind):
    sleeps = kind.sleeps()
    client = idp.add_client(scopes=["read"])
    cache: TokenCache = TokenCache()
    one = kind.provider_for(idp, client, sleeps, cache=cache)
    two = kind.provider_for(idp, client, sleeps, cache=cache)
    assert one.cache_key == two.cache_key
    assert len(set(kind.at_once(20, one, two))) == 1
    assert one.get_token() == two.get_token()
    assert len(idp.token_requests) == 1
    alone = kind.provider_for(idp, client, sleeps)  # its own cache
    assert alone.get_token() != one.get_token()
    assert len(idp.token_requests) == 2


def test_different_scopes_separate_tokens(idp, kind):
    sleeps = kind.sleeps()
    client = idp.add_client(scopes=["read", "write"])
    cache: TokenCache = TokenCache()
    reader = kind.provider_for(idp, client, sleeps, scope="read", cache=cache)
    writer = kind.provider_for(idp, client, sleeps, scope="write", cache=cache)
    both = kind.provider_for(idp, client, sleeps, scope="write read", cache=cache)
    same = kind.provider_for(idp, client, sleeps, scope=["read", "write"], cache=cache)
    tokens = {reader.get_token(), writer.get_token(), both.get_token(), same.get_token()}
    assert len(tokens) == 3
    assert [r.scope for r in idp.token_requests] == ["read", "write", "write read"]
    assert reader.get().scope == ["read"] and writer.get().scope == ["write"]
    assert len(cache) == 3


def test_different_resources_separate_tokens(idp, sleeps):
    client = idp.add_client(scopes=["read"], audiences=["https://a.test", "https://b.test"])
    cache: TokenCache = TokenCache()
    a = provider_for(idp, client, sleeps, resource="https://a.test", cache=cache)
    b = provider_for(idp, client, sleeps, resource=["https://b.test"], cache=cache)
    assert a.get_token() != b.get_token()
    assert [r.resource for r in idp.token_requests] == [("https://a.test",),
                                                        ("https://b.test",)]


def test_different_auth_methods_separate_tokens(idp, sleeps):
    client = idp.add_client(scopes=["read"])
    cache: TokenCache = TokenCache()
    tokens = {provider_for(idp, client, sleeps, cache=cache, auth_method=m).get_token()
              for m in ("client_secret_basic", "client_secret_post", "client_secret_jwt")}
    assert len(tokens) == 3
    assert [r.auth_method for r in idp.token_requests] == [
        "client_secret_basic", "client_secret_post", "client_secret_jwt"]


def test_wrong_secret_never_gets_the_cached_token(idp, sleeps):
    """httpx-auth #97: a cache key without the credential hands a good token to a bad secret."""
    client = idp.add_client(scopes=["read"])
    cache: TokenCache = TokenCache()
    good = provider_for(idp, client, sleeps, cache=cache)
    good.get_token()
    bad = TokenProvider(idp.token_endpoint, client.client_id, "not-the-secret", "read",
                        clock=idp.clock.now, retry=policy(sleeps), cache=cache)
    assert bad.cache_key != good.cache_key
    with pytest.raises(InvalidClientError):
        bad.get_token()
    assert [r.outcome for r in idp.token_requests] == ["issued", "invalid_client"]


def test_extra_params_separate_tokens(idp, sleeps):
    client = idp.add_client(scopes=["read"])
    cache: TokenCache = TokenCache()
    plain = provider_for(idp, client, sleeps, cache=cache)
    tagged = provider_for(idp, client, sleeps, cache=cache, extra_params={"tag": "x"})
    assert plain.cache_key != tagged.cache_key
    assert plain.get_token() != tagged.get_token()
    assert len(idp.token_requests) == 2


BASE = dict(endpoint="https://idp.test/token", client_id="svc", credential="secret-1",
            auth_method="client_secret_basic", scopes=["read", "write"],
            resources=["https://a.test"], extra_params={"audience": ["x", "y"]})


@pytest.mark.parametrize("change", [
    {"endpoint": "https://other.test/token"},
    {"endpoint": "issuer:https://idp.test"},
    {"client_id": "svc2"},
    {"credential": "secret-2"},
    {"credential": None},
    {"auth_method": "client_secret_post"},
    {"scopes": ["read"]},
    {"scopes": ["read", "write", "admin"]},
    {"resources": []},
    {"resources": ["https://b.test"]},
    {"resources": ["https://a.test", "https://b.test"]},
    {"extra_params": None},
    {"extra_params": {"audience": "x"}},
    {"extra_params": {"audience": ["x", "y"], "tenant": "t"}},
    {"extra_params": {"tenant": ["x", "y"]}},
])
def test_cache_key_covers(change):
    assert cache_key(**{**BASE, **change}) != cache_key(**BASE)


@pytest.mark.parametrize("same", [
    {"scopes": ["write", "read"]},
    {"scopes": ["read", "write", "read"]},
    {"extra_params": {"audience": ["y", "x"]}},
])
def test_cache_key_ignores_order(same):
    assert cache_key(**{**BASE, **same}) == cache_key(**BASE)


def test_cache_key_hides_the_credential_and_tells_keys_apart(client_keys):
    key = cache_key(**BASE)
    assert "secret-1" not in key and len(key) == 64
    pem_keys = {alg: k.jwk.private_key for alg, k in client_keys.items()}
    keyed = {cache_key(**{**BASE, "credential": k, "auth_method": "private_key_jwt"})
             for k in pem_keys.values()}
    assert len(keyed) == len(pem_keys)


def test_cache_key_fields_do_not_run_together():
    # "a b" + "c" must not equal "a" + "b c": structure, not concatenation
    one = cache_key(**{**BASE, "client_id": "a:b", "endpoint": "c"})
    two = cache_key(**{**BASE, "client_id": "b", "endpoint": "c:a"})
    assert one != two


def test_provider_cache_key_from_arguments(idp):
    def key(**options):
        args = dict(token_url=idp.token_endpoint, client_id="svc", client_secret="s1",
                    scope="read")
        args.update(options)
        return TokenProvider(**args).cache_key

    base = key()
    assert key(scope="read") == base
    for other in (dict(client_secret="s2"), dict(scope="write"), dict(resource="https://r"),
                  dict(auth_method="client_secret_post"), dict(extra_params={"a": "b"}),
                  dict(client_id="svc2"), dict(token_url=idp.token_endpoint + "/x")):
        assert key(**other) != base, other


# -- retries --------------------------------------------------------------------------------


def test_429_with_retry_after_twice_then_success(idp, kind):
    sleeps = kind.sleeps()
    client = idp.add_client(scopes=["read"])
    provider = kind.provider_for(idp, client, sleeps)
    idp.fail_next(2, status=429, error="temporarily_unavailable", retry_after=1)
    assert provider.get_token()
    assert sleeps.calls == [1, 1]
    assert [r.status for r in idp.token_requests] == [429, 429, 200]


def test_retry_after_http_date_through_the_provider(idp, sleeps):
    idp.clock.freeze(at=T0)
    client = idp.add_client(scopes=["read"])
    session = requests.Session()
    date = formatdate(T0 + 7, usegmt=True)
    adapter = CannedFirst((503, {"Retry-After": date}, {"error": "temporarily_unavailable"}))
    session.mount(idp.token_endpoint, adapter)
    provider = provider_for(idp, client, sleeps, session=session)
    assert provider.get_token()
    assert sleeps.calls == [7]
    assert adapter.sent == 2
    assert len(idp.token_requests) == 1


class Stub:
    def __init__(self, status: int, headers: dict, body: object) -> None:
        self.status_code = status
        self.headers = requests.structures.CaseInsensitiveDict(headers)
        self._body = body

    def json(self):
        if self._body is None:
            raise ValueError("no JSON")
        return self._body


@pytest.mark.parametrize(("value", "expected"), [
    ("0", 0.0),
    ("5", 5.0),
    (" 120 ", 120.0),
    (formatdate(T0 + 90, usegmt=True), 90.0),
    (formatdate(T0 - 30, usegmt=True), 0.0),  # a date in the past: no wait
    ("soon", None),
    ("-5", None),
    ("1.5", None),
    ("", None),
])
def test_retry_after_parsing(value, expected):
    assert _retry_after(Stub(429, {"Retry-After": value}, None), T0) == expected


def test_retry_after_absent():
    assert _retry_after(Stub(429, {}, None), T0) is None


def test_parse_response_carries_retry_after_date():
    stub = Stub(429, {"Retry-After": formatdate(T0 + 12, usegmt=True)},
                {"error": "temporarily_unavailable"})
    with pytest.raises(TemporarilyUnavailableError) as info:
        parse_response(stub, "https://idp.test/token", requested_scope=[], started=T0, now=T0)
    assert info.value.retry_after == 12.0
    assert info.value.status == 429
    assert RetryPolicy(random=lambda: 1.0).delay(1, info.value) == 12.0


@pytest.mark.parametrize(("fault", "outcome"), [
    (dict(status=503), "temporarily_unavailable"),
    (dict(status=500, error="server_error"), "server_error"),
    (dict(status=502), "server_error"),
    (dict(status=400, error="temporarily_unavailable"), "temporarily_unavailable"),
    (dict(kind="drop"), "drop"),
])
def test_retried_failures(idp, kind, fault, outcome):
    sleeps = kind.sleeps()
    client = idp.add_client(scopes=["read"])
    provider = kind.provider_for(idp, client, sleeps)
    idp.fail_next(**fault)
    assert provider.get_token()
    assert [r.outcome for r in idp.token_requests] == [outcome, "issued"]
    assert sleeps.calls == [0.5]  # base_delay × 2^0 × random() (1.0)


def test_gives_up_after_max_attempts(idp, kind):
    sleeps = kind.sleeps()
    client = idp.add_client(scopes=["read"])
    provider = kind.provider_for(idp, client, sleeps, retry=policy(sleeps, max_attempts=3))
    idp.fail_next(5, status=503)
    with pytest.raises(TemporarilyUnavailableError) as info:
        provider.get_token()
    error = info.value
    assert error.attempts == 3
    assert "gave up after 3 attempts" in str(error)
    assert error.error == "temporarily_unavailable" and error.status == 503
    assert len(idp.token_requests) == 3
    assert sleeps.calls == [0.5, 1.0]


def test_gives_up_on_dropped_connections_with_transport_error(idp, sleeps):
    client = idp.add_client(scopes=["read"])
    provider = provider_for(idp, client, sleeps, retry=policy(sleeps, max_attempts=2))
    idp.fail_next(2, kind="drop")
    with pytest.raises(TransportError) as info:
        provider.get_token()
    assert info.value.attempts == 2 and info.value.status is None
    assert "gave up after 2 attempts" in str(info.value)
    assert len(idp.token_requests) == 2


def test_total_timeout_bounds_the_retries(frozen, kind):
    idp = frozen
    moving = kind.sleeps(idp.clock)  # each wait moves the shared clock
    client = idp.add_client(scopes=["read"])
    provider = kind.provider_for(idp, client, moving,
                            retry=policy(moving, max_attempts=10, total_timeout=25))
    idp.fail_next(10, status=503, retry_after=10)
    with pytest.raises(TemporarilyUnavailableError) as info:
        provider.get_token()
    # t=0 fail, wait 10; t=10 fail, wait 10; t=20 fail: another 10 s would pass 25 s
    assert moving.calls == [10, 10]
    assert info.value.attempts == 3
    assert len(idp.token_requests) == 3
    assert idp.clock.now() == T0 + 20


def test_retry_after_capped_at_max_delay(idp, sleeps):
    client = idp.add_client(scopes=["read"])
    provider = provider_for(idp, client, sleeps, retry=policy(sleeps, max_delay=2))
    idp.fail_next(status=429, retry_after=3600)
    assert provider.get_token()
    assert sleeps.calls == [2]


def test_never_retries_invalid_client(idp, kind):
    sleeps = kind.sleeps()
    client = idp.add_client(scopes=["read"])
    provider = kind.provider(idp.token_endpoint, client.client_id, "wrong-secret", "read",
                             clock=idp.clock.now, retry=policy(sleeps))
    with pytest.raises(InvalidClientError) as info:
        provider.get_token()
    assert info.value.error == "invalid_client" and info.value.status == 401
    assert info.value.attempts == 1 and "attempts" not in str(info.value)
    assert len(idp.token_requests) == 1
    assert sleeps.calls == []


def test_never_retries_invalid_scope(idp, kind):
    sleeps = kind.sleeps()
    client = idp.add_client(scopes=["read"])
    provider = kind.provider_for(idp, client, sleeps, scope="admin")
    with pytest.raises(InvalidScopeError) as info:
        provider.get_token()
    assert info.value.error == "invalid_scope"
    assert len(idp.token_requests) == 1
    assert sleeps.calls == []


@pytest.mark.parametrize("status", [400, 401, 403])
def test_never_retries_other_4xx(idp, sleeps, status):
    client = idp.add_client(scopes=["read"])
    provider = provider_for(idp, client, sleeps)
    idp.fail_next(3, status=status)
    with pytest.raises(OAuthError) as info:
        provider.get_token()
    assert info.value.status == status
    assert len(idp.token_requests) == 1
    assert sleeps.calls == []


def test_malformed_200_is_a_transport_error_not_retried(idp, sleeps):
    client = idp.add_client(scopes=["read"])
    provider = provider_for(idp, client, sleeps)
    idp.fail_next(kind="malformed")
    with pytest.raises(TransportError):
        provider.get_token()
    assert len(idp.token_requests) == 1


def test_full_jitter_against_the_server(idp, sleeps):
    client = idp.add_client(scopes=["read"])
    draws = iter([0.25, 0.75, 0.0])
    provider = provider_for(idp, client, sleeps,
                            retry=policy(sleeps, random=lambda: next(draws)))
    idp.fail_next(3, status=503)
    assert provider.get_token()
    assert sleeps.calls == [0.125, 0.75, 0.0]  # ceilings 0.5, 1, 2


def test_full_jitter_within_zero_and_the_ceiling():
    import random

    rng = random.Random(4)
    retry = RetryPolicy(base_delay=0.5, max_delay=8, random=rng.random)
    error = ServerError(status=500)
    for attempt in range(1, 12):
        ceiling = min(8, 0.5 * 2 ** (attempt - 1))
        waits = [retry.delay(attempt, error) for _ in range(200)]
        assert all(0 <= w <= ceiling for w in waits)
        assert max(waits) > ceiling / 2  # spread over the range, not a fixed delay
    assert RetryPolicy(random=lambda: 0.0).delay(3, error) == 0.0
    assert RetryPolicy(random=lambda: 1.0, base_delay=1, max_delay=5).delay(10, error) == 5


def test_retry_policy_rejects_nonsense():
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(base_delay=-1)


def test_is_retryable():
    assert RetryPolicy.is_retryable(TemporarilyUnavailableError(status=400))
    assert RetryPolicy.is_retryable(ServerError(status=500))
    assert RetryPolicy.is_retryable(OAuthError("slow_down", status=429))
    assert RetryPolicy.is_retryable(TransportError())
    assert not RetryPolicy.is_retryable(InvalidClientError(status=401))
    assert not RetryPolicy.is_retryable(InvalidScopeError(status=400))
    assert not RetryPolicy.is_retryable(InvalidRequestError(status=400))
    assert not RetryPolicy.is_retryable(TransportError(status=302))


def test_retry_policy_call_and_acall_retry_a_function(kind):
    """``RetryPolicy.call`` (and ``acall`` with a coroutine function): a caller's function
    retried by the same rules, waiting on the policy's sleep of its kind."""
    sleeps = kind.sleeps()
    retry = policy(sleeps, max_attempts=3)
    outcomes: list = [ServerError(status=503), OAuthError("slow_down", status=429,
                                                         retry_after=2), "done"]

    def attempt() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def async_attempt() -> str:
        return attempt()

    def called() -> str:
        if kind.name == "threads":
            return retry.call(attempt, clock=lambda: T0)
        return run(retry.acall(async_attempt, clock=lambda: T0))

    assert called() == "done"
    assert sleeps.calls == [0.5, 2]
    outcomes[:] = [InvalidScopeError(status=400)]
    with pytest.raises(InvalidScopeError) as info:
        called()
    assert info.value.attempts == 1 and sleeps.calls == [0.5, 2]


# -- a failed refresh -----------------------------------------------------------------------


def test_failed_refresh_serves_the_valid_token(frozen, kind, caplog):
    idp = frozen
    sleeps = kind.sleeps()
    client = idp.add_client(scopes=["read"], token_lifetime=300)
    provider = kind.provider_for(idp, client, sleeps, refresh_margin=60,
                                 retry=policy(sleeps, max_attempts=1))
    first = provider.get_token()
    idp.clock.advance(250)  # past refresh_at (240), before expiry (300)
    idp.fail_next(20, status=503)
    with caplog.at_level(logging.WARNING, logger="m2mauth.client"):
        assert kind.at_once(20, provider) == [first] * 20  # one failed attempt for all
    assert len(idp.token_requests) == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "refresh failed" in warnings[0].getMessage()
    assert "temporarily_unavailable" in warnings[0].getMessage()
    for _ in range(50):  # the next attempt is not on every call
        assert provider.get_token() == first
    assert len(idp.token_requests) == 2
    idp.clock.advance(25)  # halfway to expiry: one more try, still failing, still served
    assert provider.get_token() == first
    assert provider.get_token() == first
    assert len(idp.token_requests) == 3
    idp.clock.advance(26)  # past expiry (300): the failure surfaces
    with pytest.raises(TemporarilyUnavailableError):
        provider.get_token()
    idp.clear_faults()
    assert provider.get_token() != first


def test_failed_refresh_after_expiry_raises(frozen, sleeps):
    idp = frozen
    client = idp.add_client(scopes=["read"], token_lifetime=300)
    provider = provider_for(idp, client, sleeps, retry=policy(sleeps, max_attempts=1))
    provider.get_token()
    idp.clock.advance(300)
    idp.fail_next(status=503)
    with pytest.raises(TemporarilyUnavailableError):
        provider.get_token()


def test_token_that_expires_while_retrying_is_not_served(frozen, kind):
    """The retries themselves take time: a token that expired meanwhile must not be served."""
    idp = frozen
    moving = kind.sleeps(idp.clock)
    client = idp.add_client(scopes=["read"], token_lifetime=300)
    provider = kind.provider_for(idp, client, moving, refresh_margin=60,
                                 retry=policy(moving, max_attempts=3, total_timeout=100))
    provider.get_token()
    idp.clock.advance(250)
    idp.fail_next(3, status=503, retry_after=30)  # fails at 250, 280 and 310
    with pytest.raises(TemporarilyUnavailableError):
        provider.get_token()
    assert moving.calls == [30, 30]


def test_slow_retries_before_a_short_lived_token_cause_no_storm(frozen):
    """The lifetime is counted from when the token arrived, not from before the retries: else
    a short-lived token after slow retries looks long-lived and is due at once, every call."""
    idp = frozen
    moving = Sleeps(idp.clock)
    client = idp.add_client(scopes=["read"], token_lifetime=10)
    provider = provider_for(idp, client, moving,
                            retry=policy(moving, max_attempts=3, total_timeout=100))
    idp.fail_next(2, status=503, retry_after=30)  # fails at 0 and 30, issued at 60
    provider.get_token()
    for _ in range(100):
        provider.get_token()
    assert [r.outcome for r in idp.token_requests] == [
        "temporarily_unavailable", "temporarily_unavailable", "issued"]
    idp.clock.advance(5)  # half of the 10 s lifetime
    provider.get_token()
    assert len(idp.token_requests) == 4


def test_failed_refresh_waits_from_when_it_failed(frozen, caplog):
    """The next attempt after a failed refresh is timed from the failure, not from before the
    retries: else slow retries leave it in the past and every call refetches."""
    idp = frozen
    moving = Sleeps(idp.clock)
    client = idp.add_client(scopes=["read"], token_lifetime=600)
    provider = provider_for(idp, client, moving, refresh_margin=120,
                            retry=policy(moving, max_attempts=2))
    first = provider.get_token()
    idp.clock.advance(500)  # refresh_at 480, expires 600
    idp.fail_next(10, status=503, retry_after=40)  # fails at 500 and 540
    assert provider.get_token() == first
    assert len(idp.token_requests) == 3
    for _ in range(20):
        assert provider.get_token() == first
    assert len(idp.token_requests) == 3
    idp.clear_faults()


# -- responses without expires_in -----------------------------------------------------------


def test_no_expires_in_uses_the_jwt_exp_and_warns_once(frozen, kind, caplog):
    idp = frozen
    client = idp.add_client(scopes=["read"], token_lifetime=300)
    provider = kind.provider_for(idp, client, kind.sleeps(), refresh_margin=60)
    idp.fail_next(3, kind="no_expires_in")
    with caplog.at_level(logging.WARNING, logger="m2mauth.client"):
        first = provider.get()
        assert first.expires_in is None and first.expires_at is None
        assert jwt_expiry(first.access_token) == T0 + 300
        idp.clock.advance(239)
        assert provider.get_token() == first.access_token
        assert len(idp.token_requests) == 1
        idp.clock.advance(1)  # exp - margin
        second = provider.get_token()
        assert second != first.access_token
        idp.clock.advance(240)
        provider.get_token()
    assert len(idp.token_requests) == 3
    assert [r.fault for r in idp.token_requests] == ["no_expires_in"] * 3
    messages = [r.getMessage() for r in caplog.records if "expires_in" in r.getMessage()]
    assert len(messages) == 1
    assert "exp - iat" in messages[0]


def test_no_expires_in_with_the_server_clock_far_behind_does_not_storm(frozen, sleeps):
    # The token's exp is in the past on the service's clock (server 1000 s behind, lifetime
    # 300 s): the lifetime exp - iat still times the refresh, so it is fetched once.
    idp = frozen
    client = idp.add_client(scopes=["read"], token_lifetime=300)
    service_clock = [T0 + 1000]
    provider = TokenProvider(idp.token_endpoint, client.client_id, client.client_secret, "read",
                             clock=lambda: service_clock[0], retry=policy(sleeps))
    idp.fail_next(3, kind="no_expires_in")
    first = provider.get_token()
    for _ in range(100):
        assert provider.get_token() == first
    assert len(idp.token_requests) == 1
    service_clock[0] += 240  # 300 s lifetime, 60 s margin
    assert provider.get_token() != first
    assert len(idp.token_requests) == 2


def test_opaque_token_without_expires_in_uses_the_default(caplog):
    now = [T0]
    session = requests.Session()
    body = {"access_token": "opaque-token-value-0123456789", "token_type": "Bearer"}
    adapter = CannedFirst(*[(200, {}, body)] * 3)
    session.mount("http://idp.invalid/", adapter)
    provider = TokenProvider("http://idp.invalid/token", "svc", "secret", "read",
                             default_expires_in=120, refresh_margin=60, session=session,
                             clock=lambda: now[0], retry=RetryPolicy(max_attempts=1))
    with caplog.at_level(logging.WARNING, logger="m2mauth.client"):
        assert provider.get_token() == body["access_token"]
        now[0] = T0 + 59.9
        provider.get_token()
        assert adapter.sent == 1
        now[0] = T0 + 60  # 120 s default, margin capped at 60
        provider.get_token()
        assert adapter.sent == 2
    messages = [r.getMessage() for r in caplog.records if "expires_in" in r.getMessage()]
    assert len(messages) == 1 and "default of 120 s" in messages[0]


def test_jwt_expiry_reads_only_a_numeric_exp():
    import base64

    def token(payload: object) -> str:
        body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
        return f"eyJhbGciOiJub25lIn0.{body}.sig"

    assert jwt_expiry(token({"exp": 1234})) == 1234.0
    assert jwt_expiry(token({"exp": "1234"})) is None
    assert jwt_expiry(token({"exp": True})) is None
    assert jwt_expiry(token([1, 2])) is None
    assert jwt_expiry("opaque") is None
    assert jwt_expiry("a.!!!.c") is None


# -- every auth method against the server --------------------------------------------------


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post",
                                    "client_secret_jwt"])
def test_secret_auth_methods(idp, kind, method):
    client = idp.add_client(scopes=["read"], auth_methods=[method])
    provider = kind.provider_for(idp, client, kind.sleeps(), auth_method=method)
    token = provider.get()
    assert isinstance(token, Token) and token.token_type.lower() == "bearer"
    assert token.scope == ["read"]
    assert provider.get_token() == token.access_token
    assert [(r.auth_method, r.outcome) for r in idp.token_requests] == [(method, "issued")]


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
@pytest.mark.parametrize("as_pem", [True, False])
def test_private_key_jwt(idp, kind, client_keys, alg, as_pem):
    key = client_keys[alg]
    client = idp.add_client(jwks=key.public_jwks(), scopes=["read"])
    provider = kind.provider(idp.token_endpoint, client.client_id, scope="read",
                             private_key=key.pem() if as_pem else key.jwk.private_key,
                             kid=key.jwk.kid, clock=idp.clock.now, retry=policy(kind.sleeps()))
    assert provider.auth_method == "private_key_jwt"
    assert len(set(kind.at_once(5, provider))) == 1
    assert provider.get_token() == provider.get_token()
    assert [(r.auth_method, r.outcome) for r in idp.token_requests] == [
        ("private_key_jwt", "issued")]


def test_private_key_jwt_refetch_uses_a_new_assertion(frozen, sleeps, client_keys):
    idp = frozen
    key = client_keys["ES256"]
    client = idp.add_client(jwks=key.public_jwks(), scopes=["read"], token_lifetime=60)
    provider = TokenProvider(idp.token_endpoint, client.client_id, scope="read",
                             private_key=key.pem(), kid=key.jwk.kid, clock=idp.clock.now,
                             retry=policy(sleeps))
    provider.get_token()
    idp.clock.advance(60)
    provider.get_token()
    assert [r.outcome for r in idp.token_requests] == ["issued", "issued"]  # no jti replay


# -- secrets stay out of logs, reprs and messages ------------------------------------------


def test_secrets_absent_from_logs_reprs_and_errors(frozen, kind, client_keys, caplog):
    idp = frozen
    sleeps = kind.sleeps()
    key = client_keys["RS256"]
    pem = key.pem().decode()
    pem_lines = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    secret_client = idp.add_client(scopes=["read"], token_lifetime=300)
    key_client = idp.add_client(jwks=key.public_jwks(), scopes=["read"], token_lifetime=300)
    cache: TokenCache = TokenCache()
    seen: list[str] = []
    tokens: list[str] = []
    with caplog.at_level(logging.DEBUG):
        once = policy(sleeps, max_attempts=1)
        providers = [kind.provider_for(idp, secret_client, sleeps, auth_method=m,
                                       cache=cache, retry=once)
                     for m in ("client_secret_basic", "client_secret_post",
                               "client_secret_jwt")]
        providers.append(kind.provider(idp.token_endpoint, key_client.client_id, scope="read",
                                       private_key=pem, kid=key.jwk.kid, cache=cache,
                                       clock=idp.clock.now, retry=policy(sleeps)))
        for provider in providers:
            tokens.append(provider.get_token())
            seen += [repr(provider), str(provider), repr(provider.get()), str(provider.get())]
        # a failed refresh (warning) with a valid token, then errors of every kind
        idp.clock.advance(250)
        idp.fail_next(2, status=503, error_description="try later")
        for provider in providers[:2]:
            provider.get_token()
        idp.fail_next(kind="no_expires_in")
        tokens.append(providers[2].get_token())
        wrong = kind.provider(idp.token_endpoint, secret_client.client_id,
                              secret_client.client_secret + "x", "read", clock=idp.clock.now,
                              retry=policy(sleeps))
        dropped = kind.provider(idp.token_endpoint, secret_client.client_id,
                                secret_client.client_secret, "read",
                                retry=policy(sleeps, max_attempts=1))
        for failing, fault in ((wrong, None), (dropped, "drop")):
            if fault:
                idp.fail_next(kind=fault)
            with pytest.raises(OAuthError) as info:
                failing.get_token()
            seen += [repr(info.value), str(info.value), repr(info.value.args)]
        seen += [repr(cache), repr(cache.get(providers[0].cache_key)), repr(providers[0]._retry)]
    seen += [r.getMessage() for r in caplog.records] + [caplog.text]
    assert caplog.records  # the debug and warning lines were captured
    assert any("refresh failed" in r.getMessage() for r in caplog.records)
    text = "\n".join(seen)
    assert secret_client.client_secret not in text
    assert secret_client.client_secret + "x" not in text
    for line in pem_lines:
        assert line not in text
    for token in tokens:
        assert token not in text
        assert token[:40] not in text  # not even a usable part (header + claims start)


def test_a_token_invalidated_during_a_failed_refresh_is_not_served_again(frozen, sleeps):
    # A resource server rejects token A (invalidate) while A's refresh is failing: A must not
    # come back from the cache; the caller gets the refresh error instead.
    idp = frozen
    client = idp.add_client(scopes=["read"], token_lifetime=300)
    provider = provider_for(idp, client, sleeps, retry=policy(sleeps, max_attempts=1))
    first = provider.get_token()
    idp.clock.advance(250)  # inside the refresh margin, still valid
    fetch = provider._fetch

    def failing_fetch():
        provider.invalidate(first)
        raise ServerError("server_error", "down", status=503)

    provider._fetch = failing_fetch
    with pytest.raises(ServerError):
        provider.get_token()
    provider._fetch = fetch
    assert provider.get_token() != first
