"""AsyncTokenProvider and afetch_token (asyncio, httpx) end to end against the real server
through the ``idp`` fixture. Coroutines run with ``asyncio.run`` inside plain tests; nothing
sleeps (the retry policy's async sleep is a recorder) and time moves only through
``idp.clock``."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from m2mauth.client import (
    AsyncTokenProvider,
    InvalidClientError,
    InvalidScopeError,
    OAuthError,
    RetryPolicy,
    TemporarilyUnavailableError,
    Token,
    TokenCache,
    TransportError,
    afetch_token,
)

T0 = 1_800_000_000.0
BOUND = 20.0  # only a bound for a broken implementation; passing tests never wait on it


class Sleeps:
    """A retry sleep that records the waits and, given a clock, moves it instead of waiting."""

    def __init__(self, clock=None) -> None:
        self.calls: list[float] = []
        self._clock = clock

    def __call__(self, seconds: float) -> None:
        raise AssertionError("the async provider must use async_sleep")

    async def asleep(self, seconds: float) -> None:
        self.calls.append(seconds)
        if self._clock is not None:
            self._clock.advance(seconds)


def policy(sleeps: Sleeps, *, random=lambda: 1.0, **options) -> RetryPolicy:
    return RetryPolicy(sleep=sleeps, async_sleep=sleeps.asleep, random=random, **options)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def frozen(idp):
    idp.clock.freeze(at=T0)
    return idp


def provider_for(idp, registered, sleeps, *, scope="read", **options) -> AsyncTokenProvider:
    options.setdefault("retry", policy(sleeps))
    return AsyncTokenProvider(idp.token_endpoint, registered.client_id,
                              registered.client_secret, scope,
                              clock=idp.clock.now, **options)


def run(coro):
    async def bounded():
        return await asyncio.wait_for(coro, BOUND)

    return asyncio.run(bounded())


async def gather(n: int, provider: AsyncTokenProvider) -> list[str]:
    return await asyncio.gather(*(provider.get_token() for _ in range(n)))


# -- caching --------------------------------------------------------------------------------


def test_thousand_awaits_one_token_request(idp, sleeps):
    client = idp.add_client(scopes=["read"])
    provider = AsyncTokenProvider(idp.token_endpoint, client.client_id, client.client_secret,
                                  "read", clock=idp.clock.now, retry=policy(sleeps))

    async def main() -> set[str]:
        return {await provider.get_token() for _ in range(1_000)}

    assert len(run(main())) == 1
    assert len(idp.token_requests) == 1
    assert idp.token_requests[0].scope == "read"
    assert sleeps.calls == []


def test_issuer_discovery(idp, sleeps):
    client = idp.add_client(scopes=["read"])
    provider = AsyncTokenProvider(issuer=idp.issuer, client_id=client.client_id,
                                  client_secret=client.client_secret, scope="read",
                                  clock=idp.clock.now, retry=policy(sleeps))
    assert len(set(run(gather(20, provider)))) == 1
    assert len(idp.token_requests) == 1


def test_shared_httpx_client(idp, sleeps):
    client = idp.add_client(scopes=["read"])

    async def main() -> str:
        async with httpx.AsyncClient() as http:
            provider = provider_for(idp, client, sleeps, client=http)
            return await provider.get_token()

    assert run(main())
    assert len(idp.token_requests) == 1


def test_expiry_and_margin(frozen, sleeps):
    idp = frozen
    client = idp.add_client(scopes=["read"], token_lifetime=60)
    provider = provider_for(idp, client, sleeps, refresh_margin=60)  # capped at 30
    first = run(provider.get_token())
    idp.clock.advance(29.9)
    assert run(provider.get_token()) == first
    idp.clock.advance(0.1)
    assert run(provider.get_token()) != first
    assert len(idp.token_requests) == 2


def test_token_expiring_inside_the_margin_causes_no_storm(frozen, sleeps):
    idp = frozen
    client = idp.add_client(scopes=["read"], token_lifetime=10)
    provider = provider_for(idp, client, sleeps)
    run(gather(100, provider))
    assert len(idp.token_requests) == 1


# -- single flight ------------------------------------------------------------------------


def test_fifty_tasks_at_once_one_request(idp, sleeps):
    client = idp.add_client(scopes=["read"])
    provider = provider_for(idp, client, sleeps)
    idp.fail_next(kind="delay", delay=0.1)
    assert len(set(run(gather(50, provider)))) == 1
    assert len(idp.token_requests) == 1
    assert idp.token_requests[0].fault == "delay"


def test_fifty_tasks_at_expiry_one_request(frozen, sleeps):
    idp = frozen
    client = idp.add_client(scopes=["read"], token_lifetime=300)
    provider = provider_for(idp, client, sleeps)
    first = run(provider.get_token())
    idp.clock.advance(300)
    idp.fail_next(kind="delay", delay=0.1)
    tokens = run(gather(50, provider))
    assert len(set(tokens)) == 1 and tokens[0] != first
    assert len(idp.token_requests) == 2


def test_provider_used_from_several_event_loops(frozen, sleeps):
    """A provider made once (module level) and used by several ``asyncio.run`` calls: its
    per-key lock must not stay bound to the first loop."""
    idp = frozen
    client = idp.add_client(scopes=["read"], token_lifetime=300)
    provider = provider_for(idp, client, sleeps)
    for round_ in range(3):
        idp.fail_next(kind="delay", delay=0.05)  # contention, so the lock really waits
        assert len(set(run(gather(10, provider)))) == 1
        assert len(idp.token_requests) == round_ + 1
        idp.clock.advance(300)


def test_different_keys_never_wait_for_each_other(idp, sleeps):
    client = idp.add_client(scopes=["read", "write"])
    cache: TokenCache = TokenCache()
    reader = provider_for(idp, client, sleeps, scope="read", cache=cache)
    writer = provider_for(idp, client, sleeps, scope="write", cache=cache)

    async def main() -> None:
        async with cache.lock(reader.cache_key):  # as if the reader's fetch were in flight
            waiting = asyncio.ensure_future(reader.get_token())
            await asyncio.sleep(0)  # let it start and block on its key's lock
            assert await writer.get_token()  # never blocked by the reader's key
            assert [r.scope for r in idp.token_requests] == ["write"]
            assert not waiting.done()
        assert await waiting
        assert [r.scope for r in idp.token_requests] == ["write", "read"]

    run(main())


def test_different_keys_fetch_concurrently(idp, sleeps):
    """Both keys' fetches are in flight at once: each fetch (made while holding its key's
    lock) waits until the other key's fetch has started too, which one lock for all keys
    would never allow."""
    client = idp.add_client(scopes=["read", "write"])
    cache: TokenCache = TokenCache()
    reader = provider_for(idp, client, sleeps, scope="read", cache=cache)
    writer = provider_for(idp, client, sleeps, scope="write", cache=cache)
    inside: list[str] = []

    async def main() -> list[str]:
        both = asyncio.Event()

        async def fetch(provider: AsyncTokenProvider, name: str) -> str:
            original = provider._fetch

            async def noting_fetch() -> Token:
                inside.append(name)
                if len(inside) == 2:
                    both.set()
                await asyncio.wait_for(both.wait(), BOUND)
                return await original()

            provider._fetch = noting_fetch  # type: ignore[method-assign]
            return await provider.get_token()

        return await asyncio.gather(fetch(reader, "read"), fetch(writer, "write"))

    tokens = run(main())
    assert sorted(inside) == ["read", "write"] and len(set(tokens)) == 2
    assert sorted(r.scope for r in idp.token_requests) == ["read", "write"]


def test_shared_cache_same_key_shares_the_token(idp, sleeps):
    client = idp.add_client(scopes=["read"])
    cache: TokenCache = TokenCache()
    one = provider_for(idp, client, sleeps, cache=cache)
    two = provider_for(idp, client, sleeps, cache=cache)

    async def main() -> list[str]:
        return await asyncio.gather(*(p.get_token() for p in [one, two] * 10))

    assert len(set(run(main()))) == 1
    assert len(idp.token_requests) == 1


def test_cache_shared_with_a_threaded_provider(idp, sleeps):
    """The README's ``cache=TokenCache()`` works for both kinds of provider, and they share
    the token of one key."""
    from m2mauth.client import TokenProvider

    client = idp.add_client(scopes=["read"])
    cache: TokenCache = TokenCache()
    threaded = TokenProvider(idp.token_endpoint, client.client_id, client.client_secret,
                             "read", clock=idp.clock.now, retry=policy(sleeps), cache=cache)
    async_ = provider_for(idp, client, sleeps, cache=cache)
    assert async_.cache_key == threaded.cache_key
    assert run(async_.get_token()) == threaded.get_token()
    assert len(idp.token_requests) == 1


def test_explicit_asyncio_lock_cache_still_works(idp, sleeps):
    client = idp.add_client(scopes=["read"])
    provider = provider_for(idp, client, sleeps, cache=TokenCache(asyncio.Lock))
    assert len(set(run(gather(10, provider)))) == 1
    assert len(idp.token_requests) == 1


def test_different_scopes_separate_tokens(idp, sleeps):
    client = idp.add_client(scopes=["read", "write"])
    cache: TokenCache = TokenCache()
    reader = provider_for(idp, client, sleeps, scope="read", cache=cache)
    writer = provider_for(idp, client, sleeps, scope="write", cache=cache)

    async def main() -> list[str]:
        return await asyncio.gather(reader.get_token(), writer.get_token())

    assert len(set(run(main()))) == 2
    assert sorted(r.scope for r in idp.token_requests) == ["read", "write"]


# -- retries --------------------------------------------------------------------------------


def test_429_with_retry_after_twice_then_success(idp, sleeps):
    client = idp.add_client(scopes=["read"])
    provider = provider_for(idp, client, sleeps)
    idp.fail_next(2, status=429, error="temporarily_unavailable", retry_after=1)
    assert run(provider.get_token())
    assert sleeps.calls == [1, 1]
    assert [r.status for r in idp.token_requests] == [429, 429, 200]


@pytest.mark.parametrize(("fault", "outcome"), [
    (dict(status=503), "temporarily_unavailable"),
    (dict(status=500, error="server_error"), "server_error"),
    (dict(kind="drop"), "drop"),
])
def test_retried_failures(idp, sleeps, fault, outcome):
    client = idp.add_client(scopes=["read"])
    provider = provider_for(idp, client, sleeps)
    idp.fail_next(**fault)
    assert run(provider.get_token())
    assert [r.outcome for r in idp.token_requests] == [outcome, "issued"]
    assert sleeps.calls == [0.5]


def test_gives_up_after_max_attempts(idp, sleeps):
    client = idp.add_client(scopes=["read"])
    provider = provider_for(idp, client, sleeps, retry=policy(sleeps, max_attempts=3))
    idp.fail_next(5, status=503)
    with pytest.raises(TemporarilyUnavailableError) as info:
        run(provider.get_token())
    assert info.value.attempts == 3 and "gave up after 3 attempts" in str(info.value)
    assert len(idp.token_requests) == 3
    assert sleeps.calls == [0.5, 1.0]


def test_total_timeout_bounds_the_retries(frozen):
    idp = frozen
    moving = Sleeps(idp.clock)
    client = idp.add_client(scopes=["read"])
    provider = provider_for(idp, client, moving,
                            retry=policy(moving, max_attempts=10, total_timeout=25))
    idp.fail_next(10, status=503, retry_after=10)
    with pytest.raises(TemporarilyUnavailableError) as info:
        run(provider.get_token())
    assert moving.calls == [10, 10] and info.value.attempts == 3


def test_never_retries_invalid_client_or_invalid_scope(idp, sleeps):
    client = idp.add_client(scopes=["read"])
    wrong = AsyncTokenProvider(idp.token_endpoint, client.client_id, "wrong", "read",
                               clock=idp.clock.now, retry=policy(sleeps))
    with pytest.raises(InvalidClientError):
        run(wrong.get_token())
    with pytest.raises(InvalidScopeError):
        run(provider_for(idp, client, sleeps, scope="admin").get_token())
    assert [r.outcome for r in idp.token_requests] == ["invalid_client", "invalid_scope"]
    assert sleeps.calls == []


# -- failed refresh, no expires_in ------------------------------------------------------------


def test_failed_refresh_serves_the_valid_token_then_raises(frozen, sleeps, caplog):
    idp = frozen
    client = idp.add_client(scopes=["read"], token_lifetime=300)
    provider = provider_for(idp, client, sleeps, retry=policy(sleeps, max_attempts=1))
    first = run(provider.get_token())
    idp.clock.advance(250)
    idp.fail_next(20, status=503)
    with caplog.at_level(logging.WARNING, logger="m2mauth.client"):
        assert run(gather(20, provider)) == [first] * 20
    assert len(idp.token_requests) == 2
    assert any("refresh failed" in r.getMessage() for r in caplog.records)
    idp.clock.advance(50)
    with pytest.raises(TemporarilyUnavailableError):
        run(provider.get_token())


def test_token_that_expires_while_retrying_is_not_served(frozen):
    idp = frozen
    moving = Sleeps(idp.clock)
    client = idp.add_client(scopes=["read"], token_lifetime=300)
    provider = provider_for(idp, client, moving,
                            retry=policy(moving, max_attempts=3, total_timeout=100))
    run(provider.get_token())
    idp.clock.advance(250)
    idp.fail_next(3, status=503, retry_after=30)
    with pytest.raises(TemporarilyUnavailableError):
        run(provider.get_token())


def test_no_expires_in_uses_the_jwt_exp(frozen, sleeps, caplog):
    idp = frozen
    client = idp.add_client(scopes=["read"], token_lifetime=300)
    provider = provider_for(idp, client, sleeps, refresh_margin=60)
    idp.fail_next(2, kind="no_expires_in")
    with caplog.at_level(logging.WARNING, logger="m2mauth.client"):
        token = run(provider.get())
        assert token.expires_in is None
        idp.clock.advance(239)
        assert run(provider.get_token()) == token.access_token
        idp.clock.advance(1)
        assert run(provider.get_token()) != token.access_token
    assert len(idp.token_requests) == 2
    warned = [r for r in caplog.records if "no expires_in" in r.getMessage()]
    assert len(warned) == 1


# -- auth methods ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post",
                                    "client_secret_jwt"])
def test_secret_auth_methods(idp, sleeps, method):
    client = idp.add_client(scopes=["read"], auth_methods=[method])
    provider = provider_for(idp, client, sleeps, auth_method=method)
    token = run(provider.get())
    assert isinstance(token, Token) and token.scope == ["read"]
    assert [(r.auth_method, r.outcome) for r in idp.token_requests] == [(method, "issued")]


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_private_key_jwt(idp, sleeps, client_keys, alg):
    key = client_keys[alg]
    client = idp.add_client(jwks=key.public_jwks(), scopes=["read"])
    provider = AsyncTokenProvider(idp.token_endpoint, client.client_id, scope="read",
                                  private_key=key.pem(), kid=key.jwk.kid,
                                  clock=idp.clock.now, retry=policy(sleeps))
    assert len(set(run(gather(5, provider)))) == 1
    assert [(r.auth_method, r.outcome) for r in idp.token_requests] == [
        ("private_key_jwt", "issued")]


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post",
                                    "client_secret_jwt", "private_key_jwt"])
def test_afetch_token_every_method(idp, client_keys, method):
    key = client_keys["ES256"]
    if method == "private_key_jwt":
        client = idp.add_client(jwks=key.public_jwks(), scopes=["read"])
        credentials = dict(private_key=key.pem(), kid=key.jwk.kid)
    else:
        client = idp.add_client(scopes=["read"])
        credentials = dict(client_secret=client.client_secret)
    token = run(afetch_token(idp.token_endpoint, client_id=client.client_id, scope="read",
                             auth_method=method, **credentials))
    assert token.expires_in == 300
    assert idp.token_requests[-1].auth_method == method


def test_afetch_token_dropped_connection_is_a_transport_error(idp):
    client = idp.add_client(scopes=["read"])
    idp.fail_next(kind="drop")
    with pytest.raises(TransportError) as info:
        run(afetch_token(idp.token_endpoint, client_id=client.client_id,
                         client_secret=client.client_secret))
    assert info.value.status is None


# -- secrets --------------------------------------------------------------------------------


def test_secrets_absent_from_logs_reprs_and_errors(frozen, sleeps, client_keys, caplog):
    idp = frozen
    key = client_keys["ES256"]
    pem = key.pem().decode()
    pem_lines = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    secret_client = idp.add_client(scopes=["read"], token_lifetime=300)
    key_client = idp.add_client(jwks=key.public_jwks(), scopes=["read"], token_lifetime=300)
    once = policy(sleeps, max_attempts=1)
    seen: list[str] = []
    tokens: list[str] = []
    with caplog.at_level(logging.DEBUG):
        providers = [provider_for(idp, secret_client, sleeps, auth_method=m, retry=once)
                     for m in ("client_secret_basic", "client_secret_post",
                               "client_secret_jwt")]
        providers.append(AsyncTokenProvider(idp.token_endpoint, key_client.client_id,
                                            scope="read", private_key=pem, kid=key.jwk.kid,
                                            clock=idp.clock.now, retry=once))
        for provider in providers:
            token = run(provider.get())
            tokens.append(token.access_token)
            seen += [repr(provider), str(provider), repr(token), str(token)]
        idp.clock.advance(250)
        idp.fail_next(len(providers), status=503)
        for provider in providers:
            run(provider.get_token())  # failed refresh, warning, token served
        wrong = AsyncTokenProvider(idp.token_endpoint, secret_client.client_id,
                                   secret_client.client_secret + "x", "read",
                                   clock=idp.clock.now, retry=once)
        with pytest.raises(OAuthError) as info:
            run(wrong.get_token())
        seen += [repr(info.value), str(info.value), repr(info.value.args)]
    seen += [r.getMessage() for r in caplog.records] + [caplog.text]
    assert any("refresh failed" in r.getMessage() for r in caplog.records)
    text = "\n".join(seen)
    assert secret_client.client_secret not in text
    for line in pem_lines:
        assert line not in text
    for token in tokens:
        assert token not in text and token[:40] not in text
