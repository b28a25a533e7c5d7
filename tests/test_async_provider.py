"""What only the asyncio side has – AsyncTokenProvider's tasks, locks and event loops, and
afetch_token – end to end against the real server through the ``idp`` fixture. What both
providers must do alike (caching, timing, retries, failed refreshes, auth methods, secrets)
is in test_provider.py, run for each kind. Coroutines run with ``asyncio.run`` inside plain
tests; nothing sleeps (the retry policy's async sleep is a recorder) and time moves only
through ``idp.clock``."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from _provider_support import BOUND, Sleeps, policy, run

from m2mauth.client import (
    AsyncTokenProvider,
    Token,
    TokenCache,
    TransportError,
    afetch_token,
)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps(blocking=False)


def provider_for(idp, registered, sleeps, *, scope="read", **options) -> AsyncTokenProvider:
    options.setdefault("retry", policy(sleeps))
    return AsyncTokenProvider(idp.token_endpoint, registered.client_id,
                              registered.client_secret, scope,
                              clock=idp.clock.now, **options)


async def gather(n: int, provider: AsyncTokenProvider) -> list[str]:
    return await asyncio.gather(*(provider.get_token() for _ in range(n)))


# -- caching --------------------------------------------------------------------------------


def test_shared_httpx_client(idp, sleeps):
    client = idp.add_client(scopes=["read"])

    async def main() -> str:
        async with httpx.AsyncClient() as http:
            provider = provider_for(idp, client, sleeps, client=http)
            return await provider.get_token()

    assert run(main())
    assert len(idp.token_requests) == 1


# -- single flight ------------------------------------------------------------------------


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


# -- afetch_token ----------------------------------------------------------------------------


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
