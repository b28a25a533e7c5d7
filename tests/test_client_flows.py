"""The client's token fetching since it became sans-I/O flows (client/_flow.py), attacked end
to end against the real server (``idp``) over loopback HTTP: single flight under threads and
asyncio tasks while a fetch is held open, asyncio cancellation in every place a refresh can
wait, retries on the injectable sleeps, keep-serving with compare-and-put, secrets in the new
dataclasses, discovery through a shared metadata cache, and the adapters on both providers.

Nothing sleeps to wait: a fetch is held open by a transport that waits on an event (bounded),
time moves only through ``idp.clock``, helper threads are joined with a timeout."""

from __future__ import annotations

import asyncio
import copy
import gc
import json
import logging
import pickle
import threading
import warnings
from email.utils import formatdate

import httpx
import pytest
import requests
from _provider_support import BOUND, T0, Sleeps, policy, run
from requests.adapters import HTTPAdapter

from m2mauth.client import (
    AsyncTokenProvider,
    DiscoveryError,
    HttpxBearerAuth,
    MetadataCache,
    RequestsBearerAuth,
    RetryPolicy,
    ServerError,
    TemporarilyUnavailableError,
    TokenCache,
    TokenProvider,
)
from m2mauth.client import discovery as discovery_module
from m2mauth.client._flow import Call, Request, Response
from m2mauth.client.tokens import TokenRequest


def issued(idp) -> list:
    return [r for r in idp.token_requests if r.outcome == "issued"]


# -- transports that hold a token request open ------------------------------------------------


class HeldRequests(HTTPAdapter):
    """A ``requests`` transport to the real server that holds the first ``hold`` token requests
    until :attr:`release` is set (bounded), so a fetch stays in flight as long as a test
    needs."""

    def __init__(self, hold: int = 1) -> None:
        super().__init__()
        self.hold = hold
        self.entered = threading.Event()
        self.release = threading.Event()
        self.sent = 0
        self._guard = threading.Lock()

    def send(self, request, **kwargs):
        with self._guard:
            self.sent += 1
            held = self.sent <= self.hold
        if held:
            self.entered.set()
            assert self.release.wait(BOUND), "the test never released the held request"
        return super().send(request, **kwargs)


class HeldAsync(httpx.AsyncBaseTransport):
    """The asyncio form of :class:`HeldRequests`, over httpx's real transport; optionally
    answers the first requests with canned responses instead of forwarding them."""

    def __init__(self, hold: int = 1, canned: list[httpx.Response] | None = None) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.hold = hold
        self.canned = list(canned or [])
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.sent = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        if self.sent <= self.hold:
            self.entered.set()
            await asyncio.wait_for(self.release.wait(), BOUND)
        if self.canned:
            return self.canned.pop(0)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class CountingLock:
    """A key lock (threads) that counts the callers that asked for it, so a test can wait –
    bounded, without sleeping – until every thread is queued behind the fetch in flight."""

    asked = 0
    changed = threading.Condition()

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> CountingLock:
        with CountingLock.changed:
            CountingLock.asked += 1
            CountingLock.changed.notify_all()
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    @classmethod
    def wait_for(cls, n: int) -> bool:
        with cls.changed:
            return cls.changed.wait_for(lambda: cls.asked >= n, BOUND)


def threads(targets) -> tuple[list, list[BaseException], list[threading.Thread]]:
    """Start each target in its own thread: (results, errors, threads); :func:`join` them."""
    results: list = [None] * len(targets)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = targets[i]()
        except BaseException as exc:
            errors.append(exc)

    started = [threading.Thread(target=work, args=(i,), daemon=True)
               for i in range(len(targets))]
    for thread in started:
        thread.start()
    return results, errors, started


def join(started: list[threading.Thread]) -> None:
    for thread in started:
        thread.join(BOUND)
    assert not any(t.is_alive() for t in started), "threads hung"


class Loop:
    """``asyncio.run`` of a coroutine (bounded) that records what asyncio would only print:
    exception-handler calls ("exception was never retrieved", ...) and warnings ("coroutine
    ... was never awaited"), collected after the loop is gone."""

    def __init__(self) -> None:
        self.reports: list[dict] = []
        self.warnings: list[str] = []

    def run(self, coro):
        async def main():
            asyncio.get_running_loop().set_exception_handler(
                lambda loop, context: self.reports.append(context))
            return await asyncio.wait_for(coro, BOUND)

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = asyncio.run(main())
            gc.collect()
        self.warnings = [str(w.message) for w in caught]
        return result

    def assert_quiet(self) -> None:
        assert self.reports == []
        assert [w for w in self.warnings if "never" in w or "Task" in w] == []


def async_provider(idp, registered, sleeps: Sleeps, **options) -> AsyncTokenProvider:
    options.setdefault("retry", policy(sleeps))
    return AsyncTokenProvider(idp.token_endpoint, registered.client_id, registered.client_secret,
                              options.pop("scope", "read"), clock=idp.clock.now, **options)


def thread_provider(idp, registered, sleeps: Sleeps, **options) -> TokenProvider:
    options.setdefault("retry", policy(sleeps))
    return TokenProvider(idp.token_endpoint, registered.client_id, registered.client_secret,
                         options.pop("scope", "read"), clock=idp.clock.now, **options)


# -- single flight while a fetch is slow ----------------------------------------------------


def test_threads_fifty_at_expiry_while_the_fetch_is_held_one_request_other_key_free(frozen):
    idp = frozen
    sleeps = Sleeps()
    client = idp.add_client(scopes=["read", "write"], token_lifetime=300)
    CountingLock.asked = 0
    cache: TokenCache = TokenCache(CountingLock)
    held = HeldRequests()
    session = requests.Session()
    session.mount(idp.url, held)
    reader = thread_provider(idp, client, sleeps, cache=cache, session=session)
    writer = thread_provider(idp, client, sleeps, scope="write", cache=cache)
    held.hold = 0
    first = reader.get_token()  # cached, then due at expiry
    idp.clock.advance(300)
    held.hold = held.sent + 1
    CountingLock.asked = 0
    results, errors, started = threads([reader.get_token] * 50)
    try:
        assert held.entered.wait(BOUND)
        assert CountingLock.wait_for(50)  # all fifty asked; one fetch is in flight
        assert writer.get_token()  # another key: never waits for the held fetch
        assert [r.scope for r in issued(idp)] == ["read", "write"]
    finally:
        held.release.set()
        join(started)
    assert errors == []
    assert len(set(results)) == 1 and results[0] != first
    assert [r.scope for r in issued(idp)] == ["read", "write", "read"]


def test_tasks_fifty_at_expiry_while_the_fetch_is_held_one_request_other_key_free(frozen):
    idp = frozen
    sleeps = Sleeps(blocking=False)
    client = idp.add_client(scopes=["read", "write"], token_lifetime=300)
    cache: TokenCache = TokenCache()
    loop = Loop()

    async def main():
        held = HeldAsync(hold=0)
        async with httpx.AsyncClient(transport=held) as http:
            reader = async_provider(idp, client, sleeps, cache=cache, client=http)
            writer = async_provider(idp, client, sleeps, scope="write", cache=cache)
            first = await reader.get_token()
            idp.clock.advance(300)
            held.hold = held.sent + 1
            tasks = [asyncio.ensure_future(reader.get_token()) for _ in range(50)]
            await asyncio.wait_for(held.entered.wait(), BOUND)
            assert await writer.get_token()  # another key, while the reader's fetch is held
            assert [r.scope for r in issued(idp)] == ["read", "write"]
            assert not any(t.done() for t in tasks)
            held.release.set()
            results = await asyncio.gather(*tasks)
            return first, results

    first, results = loop.run(main())
    assert len(set(results)) == 1 and results[0] != first
    assert [r.scope for r in issued(idp)] == ["read", "write", "read"]
    loop.assert_quiet()


# -- asyncio cancellation -------------------------------------------------------------------


def test_cancelled_while_the_response_is_awaited_frees_the_lock_and_the_waiters(frozen):
    idp = frozen
    sleeps = Sleeps(blocking=False)
    client = idp.add_client(scopes=["read"], token_lifetime=300)
    loop = Loop()

    async def main():
        held = HeldAsync()
        async with httpx.AsyncClient(transport=held) as http:
            provider = async_provider(idp, client, sleeps, client=http)
            holder = asyncio.ensure_future(provider.get_token())
            waiters = [asyncio.ensure_future(provider.get_token()) for _ in range(10)]
            await asyncio.wait_for(held.entered.wait(), BOUND)
            holder.cancel()
            with pytest.raises(asyncio.CancelledError):
                await holder
            tokens = await asyncio.gather(*waiters)  # one of them fetches, the rest share it
            assert provider._cache.get(provider.cache_key).token.access_token == tokens[0]
            return tokens

    tokens = loop.run(main())
    assert len(set(tokens)) == 1
    assert len(issued(idp)) == 1  # the cancelled request never reached the server
    loop.assert_quiet()


def test_cancelled_during_the_backoff_leaves_the_cached_token_as_it_was(frozen):
    idp = frozen
    client = idp.add_client(scopes=["read"], token_lifetime=300)
    in_backoff = asyncio.Event()  # asyncio.Event binds to a loop only when first waited on
    forever = asyncio.Event()
    waits: list[float] = []

    async def stuck_sleep(seconds: float) -> None:
        waits.append(seconds)
        in_backoff.set()
        await forever.wait()  # cancelled by the test

    def refuse(seconds: float) -> None:
        raise AssertionError("the async provider must use async_sleep")

    provider = async_provider(idp, client, Sleeps(blocking=False),
                              retry=RetryPolicy(sleep=refuse, async_sleep=stuck_sleep,
                                                random=lambda: 1.0))
    loop = Loop()

    async def main():
        first = await provider.get_token()
        before = provider._cache.get(provider.cache_key)
        idp.clock.advance(250)  # due (refresh_at 240), valid until 300
        idp.fail_next(status=503)
        task = asyncio.ensure_future(provider.get_token())
        await asyncio.wait_for(in_backoff.wait(), BOUND)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert provider._cache.get(provider.cache_key) is before  # untouched
        idp.clear_faults()
        again = await provider.get_token()  # the lock is free: a new fetch, no deadlock
        return first, again

    first, again = loop.run(main())
    assert waits == [0.5]
    assert again != first
    assert [r.outcome for r in idp.token_requests] == [
        "issued", "temporarily_unavailable", "issued"]
    loop.assert_quiet()


def test_cancelled_while_waiting_for_the_lock_does_not_disturb_the_holder(idp):
    client = idp.add_client(scopes=["read"])
    loop = Loop()

    async def main():
        held = HeldAsync()
        async with httpx.AsyncClient(transport=held) as http:
            provider = async_provider(idp, client, Sleeps(blocking=False), client=http)
            holder = asyncio.ensure_future(provider.get_token())
            await asyncio.wait_for(held.entered.wait(), BOUND)
            waiter = asyncio.ensure_future(provider.get_token())
            await asyncio.sleep(0)  # let it queue on the key's lock
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            held.release.set()
            token = await holder
            assert await provider.get_token() == token
            return token

    assert loop.run(main())
    assert len(idp.token_requests) == 1
    loop.assert_quiet()


# -- retries on the injectable sleeps -------------------------------------------------------


def canned_503(retry_after: str) -> httpx.Response:
    return httpx.Response(503, headers={"Retry-After": retry_after},
                          content=json.dumps({"error": "temporarily_unavailable"}).encode())


def test_async_retry_after_http_date_and_cap_on_async_sleep(frozen):
    idp = frozen
    client = idp.add_client(scopes=["read"])
    sleeps = Sleeps(blocking=False)  # the blocking sleep raises: only async_sleep may run
    canned = [canned_503(formatdate(T0 + 7, usegmt=True)), canned_503("86400")]
    loop = Loop()

    async def main():
        transport = HeldAsync(hold=0, canned=canned)
        async with httpx.AsyncClient(transport=transport) as http:
            provider = async_provider(idp, client, sleeps, client=http)
            return await provider.get_token(), transport.sent

    token, sent = loop.run(main())
    assert token
    assert sleeps.calls == [7, 30]  # the HTTP date honoured; a day capped at max_delay
    assert sent == 3 and len(idp.token_requests) == 1
    loop.assert_quiet()


def test_gives_up_with_attempts_and_the_typed_error(idp, kind):
    sleeps = kind.sleeps()
    client = idp.add_client(scopes=["read"])
    provider = kind.provider_for(idp, client, sleeps, retry=policy(sleeps, max_attempts=3))
    idp.fail_next(5, status=503, retry_after=2)
    with pytest.raises(TemporarilyUnavailableError) as info:
        provider.get_token()
    assert info.value.attempts == 3 and info.value.status == 503
    assert sleeps.calls == [2, 2]
    assert "gave up after 3 attempts" in str(info.value)


def test_total_timeout_stops_before_a_wait_that_would_pass_it(frozen, kind):
    idp = frozen
    sleeps = kind.sleeps(idp.clock)
    client = idp.add_client(scopes=["read"])
    provider = kind.provider_for(idp, client, sleeps,
                                 retry=policy(sleeps, max_attempts=10, total_timeout=25))
    idp.fail_next(10, status=429, retry_after=10)
    with pytest.raises(TemporarilyUnavailableError) as info:
        provider.get_token()
    assert sleeps.calls == [10, 10]  # a third wait would end at 30 > 25
    assert info.value.attempts == 3


# -- keep serving, compare-and-put ----------------------------------------------------------


def test_async_token_invalidated_during_a_failed_refresh_is_not_served_again(frozen):
    idp = frozen
    client = idp.add_client(scopes=["read"], token_lifetime=300)
    sleeps = Sleeps(blocking=False)
    provider = async_provider(idp, client, sleeps, retry=policy(sleeps, max_attempts=1))

    async def main():
        first = await provider.get_token()
        idp.clock.advance(250)
        fetch = provider._fetch

        async def failing_fetch():
            provider.invalidate(first)  # a resource server rejected it meanwhile
            raise ServerError("server_error", "down", status=503)

        provider._fetch = failing_fetch
        with pytest.raises(ServerError):
            await provider.get_token()
        provider._fetch = fetch
        return first, await provider.get_token()

    first, again = run(main())
    assert again != first


def test_failed_refresh_is_retried_halfway_at_most_30_s_later(frozen, kind, caplog):
    idp = frozen
    sleeps = kind.sleeps()
    client = idp.add_client(scopes=["read"], token_lifetime=3600)
    provider = kind.provider_for(idp, client, sleeps, refresh_margin=600,
                                 retry=policy(sleeps, max_attempts=1))
    first = provider.get_token()
    idp.clock.advance(3000)  # due (3000), valid 600 s more: half is 300, capped at 30
    idp.fail_next(3, status=503)
    with caplog.at_level(logging.WARNING, logger="m2mauth.client"):
        assert provider.get_token() == first
    idp.clock.advance(29)
    assert provider.get_token() == first
    assert len(idp.token_requests) == 2
    idp.clock.advance(1)
    assert provider.get_token() == first
    assert len(idp.token_requests) == 3


# -- secrets in the new dataclasses ---------------------------------------------------------


def test_no_secret_in_the_flow_objects_or_the_provider_dataclasses(client_keys):
    secret = "flows-secret-value-1234"
    pem = client_keys["ES256"].pem().decode()
    body = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    url = "http://127.0.0.1:9/token"
    providers = [TokenProvider(url, "cid", secret, "read"),
                 AsyncTokenProvider(url, "cid", secret, "read"),
                 TokenProvider(url, "cid", private_key=pem, kid="k"),
                 AsyncTokenProvider(url, "cid", private_key=pem, kid="k")]
    seen: list[str] = []
    for provider in providers:
        seen += [repr(provider), str(provider), repr(copy.copy(provider)), provider.cache_key]
        with pytest.raises(TypeError) as info:  # its locks are not picklable; says so only
            pickle.dumps(provider)
        seen.append(str(info.value))
        assert provider != copy.copy(provider)  # identity, never a field comparison
    request = TokenRequest(url, client_id="cid", client_secret=secret,
                           auth_method="client_secret_post")
    seen += [repr(request), str(request)]
    flow = request.flow()
    action = next(flow)
    assert isinstance(action, Request)
    assert any(secret in value for _, value in action.form)  # the secret is in there...
    seen += [repr(action), str(action)]  # ...but not in its repr
    flow.close()
    seen += [repr(Response(200, {"X": "y"}, b'{"access_token": "' + secret.encode() + b'"}')),
             repr(Call(providers[0]._fetch))]
    text = "\n".join(seen)
    assert secret not in text
    for line in body:
        assert line not in text


# -- discovery ------------------------------------------------------------------------------


def test_a_given_metadata_cache_is_used_and_shared(idp, kind, monkeypatch):
    """``metadata_cache=`` given to several providers: the metadata is fetched once for all.
    (An empty MetadataCache is falsy – it has ``__len__`` – and was replaced by a private one.)"""
    fetches: list[str] = []
    real_fetch = discovery_module._fetch

    def counting_fetch(issuer, **kwargs):
        fetches.append(issuer)
        return real_fetch(issuer, **kwargs)

    monkeypatch.setattr(discovery_module, "_fetch", counting_fetch)
    sleeps = kind.sleeps()
    client = idp.add_client(scopes=["read", "write"])
    shared = MetadataCache()
    providers = [kind.provider(issuer=idp.issuer, client_id=client.client_id,
                               client_secret=client.client_secret, scope=scope,
                               metadata_cache=shared, retry=policy(sleeps))
                 for scope in ("read", "write")]
    tokens = [p.get_token() for p in providers]
    assert len(set(tokens)) == 2
    assert len(shared) == 1
    assert fetches == [idp.issuer]


def test_discovery_issuer_is_compared_exactly_and_the_error_typed(idp, kind):
    sleeps = kind.sleeps()
    client = idp.add_client(scopes=["read"])
    provider = kind.provider(issuer=idp.issuer + "/", client_id=client.client_id,
                             client_secret=client.client_secret, scope="read",
                             retry=policy(sleeps))
    with pytest.raises(DiscoveryError) as info:
        provider.get_token()
    assert info.value.attempts == 1 and sleeps.calls == []  # not retried
    assert "exactly" in str(info.value)
    assert idp.token_requests == []


# -- the adapters on both providers ---------------------------------------------------------


def test_adapters_attach_the_providers_token(idp):
    """Both adapters, each provider: the Authorization header carries the provider's token
    (sent to the server's own token endpoint, which echoes nothing but records the call)."""
    client = idp.add_client(scopes=["read"])
    sync = TokenProvider(idp.token_endpoint, client.client_id, client.client_secret, "read")
    token = sync.get_token()
    seen: list[str] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        return httpx.Response(200)

    prepared = RequestsBearerAuth(sync)(requests.Request("GET", idp.url).prepare())
    seen.append(prepared.headers["Authorization"])
    with httpx.Client(auth=HttpxBearerAuth(sync), transport=httpx.MockTransport(record)) as c:
        c.get(idp.url)

    async def main() -> str:
        provider = AsyncTokenProvider(idp.token_endpoint, client.client_id,
                                      client.client_secret, "read")
        async with httpx.AsyncClient(auth=HttpxBearerAuth(provider),
                                     transport=httpx.MockTransport(record)) as c:
            await c.get(idp.url)
        return await provider.get_token()

    async_token = run(main())
    assert seen == [f"Bearer {token}"] * 2 + [f"Bearer {async_token}"]
    with pytest.raises(TypeError):
        RequestsBearerAuth(AsyncTokenProvider(idp.token_endpoint, client.client_id,
                                              client.client_secret))(
            requests.Request("GET", idp.url).prepare())
