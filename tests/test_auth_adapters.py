"""The bearer adapters (m2mauth.client.auth) against the real authorization server (``idp``) and
a small resource server of this module's own on 127.0.0.1: the header is sent, the token is
cached, a 401 ``invalid_token`` (or without error) causes exactly one refetch and one resend
with the same body, and nothing else does (second 401, other error codes, 403)."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
import requests
from werkzeug.wrappers import Request, Response

from m2mauth.client import TokenProvider
from m2mauth.client.aio import AsyncTokenProvider
from m2mauth.client.auth import HttpxBearerAuth, RequestsBearerAuth
from m2mauth.server.serving import BackgroundServer, bind_app

AUDIENCE = "https://api.test"
SCOPE = "api:read"

#: What the resource server can be told to answer, for a token or for all of them.
CHALLENGES: dict[str, tuple[int, str | None]] = {
    "invalid_token": (401, 'Bearer realm="api", error="invalid_token", '
                           'error_description="rejected by the test"'),
    "no_error": (401, 'Bearer realm="api"'),
    "no_header": (401, None),
    "invalid_request": (401, 'Bearer realm="api", error="invalid_request"'),
    "forbidden_no_error": (403, 'Bearer realm="api"'),
    "insufficient_scope": (403, 'Bearer realm="api", error="insufficient_scope", '
                                'scope="api:write"'),
}


# --- the resource server ------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    authorization: str | None
    body: bytes

    @property
    def token(self) -> str | None:
        if self.authorization and self.authorization.startswith("Bearer "):
            return self.authorization[len("Bearer "):]
        return None


@dataclass
class ResourceServer:
    """A WSGI resource server in a background thread: validates bearer tokens with PyJWT
    against the issuer's JWKS, or answers what a test told it to for particular tokens."""

    issuer: str
    jwks_uri: str
    seen: list[Seen] = field(default_factory=list)
    #: token -> a key of CHALLENGES
    answers: dict[str, str] = field(default_factory=dict)
    #: a key of CHALLENGES for every request (overrides ``answers``)
    answer_all: str | None = None
    #: token -> called in the server thread before answering a request carrying it
    before_answer: dict[str, Callable[[], None]] = field(default_factory=dict)
    #: called in the server thread with every request, before anything else
    on_request: Callable[[Seen], None] | None = None
    #: path -> URL to redirect to (302)
    redirects: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._jwks = jwt.PyJWKClient(self.jwks_uri, timeout=5)
        self._running = BackgroundServer(bind_app("127.0.0.1", 0, lambda _port: self._wsgi)[0])
        self.url = self._running.url

    def stop(self) -> None:
        self._running.stop()

    def tokens(self) -> list[str | None]:
        with self._lock:
            return [s.token for s in self.seen]

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        return self._handle(Request(environ))(environ, start_response)

    def _handle(self, request: Request) -> Response:
        seen = Seen(request.method, request.path, request.headers.get("Authorization"),
                    request.get_data())
        with self._lock:
            self.seen.append(seen)
        if self.on_request is not None:
            self.on_request(seen)
        token = seen.token
        hook = self.before_answer.get(token or "")
        if hook is not None:
            hook()
        kind = self.answer_all or self.answers.get(token or "")
        if kind is None and request.path in self.redirects:
            return Response(status=302, headers={"Location": self.redirects[request.path]})
        if kind is None and token is None:
            kind = "no_error"  # RFC 6750 §3.1: no credentials, no error code
        if kind is None:
            try:
                key = self._jwks.get_signing_key_from_jwt(token)
                claims = jwt.decode(token, key, algorithms=["RS256", "ES256", "PS256", "EdDSA"],
                                    audience=AUDIENCE, issuer=self.issuer)
            except jwt.PyJWTError:
                kind = "invalid_token"
            else:
                body = {"client_id": claims["client_id"], "jti": claims["jti"],
                        "body": seen.body.decode("latin-1")}
                return Response(json.dumps(body), 200, content_type="application/json")
        status, challenge = CHALLENGES[kind]
        headers = {"WWW-Authenticate": challenge} if challenge else {}
        return Response(json.dumps({"error": kind}), status, headers,
                        content_type="application/json")


@pytest.fixture
def resource_servers(idp) -> Iterator[Callable[[], ResourceServer]]:
    started: list[ResourceServer] = []

    def start() -> ResourceServer:
        server = ResourceServer(idp.issuer, idp.jwks_uri)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def rs(resource_servers) -> ResourceServer:
    return resource_servers()


@pytest.fixture
def api_client(idp):
    return idp.add_client(scopes=[SCOPE], audiences=[AUDIENCE])


def issued(idp) -> int:
    return sum(1 for r in idp.token_requests if r.outcome == "issued")


# --- one interface over requests, httpx and httpx async -----------------------------------


@dataclass
class Result:
    status: int
    json: Any
    history: list[int]


class Caller:
    """A provider and an HTTP client with the bearer adapter, driven synchronously."""

    name: str

    def __init__(self, provider: Any) -> None:
        self.provider = provider

    def request(self, method: str, url: str, **kwargs: Any) -> Result:
        raise NotImplementedError

    def concurrently(self, n: int, method: str, url: str) -> list[Result]:
        """``n`` requests at once (threads; tasks for the asyncio callers)."""
        results: list[Result | None] = [None] * n

        def one(i: int) -> None:
            results[i] = self.request(method, url)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=20)
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def token(self) -> str:
        return self.provider.get_token()

    def replace_token(self) -> None:
        """What another caller does after its own 401: drop the cached token, fetch a new one
        (run in the resource server's thread)."""
        self.provider.invalidate(self.token())
        self.token()

    def close(self) -> None:
        pass


def _result(response: requests.Response | httpx.Response) -> Result:
    try:
        body = response.json()
    except ValueError:
        body = None
    return Result(response.status_code, body, [h.status_code for h in response.history])


class RequestsCaller(Caller):
    name = "requests"

    def __init__(self, provider: TokenProvider) -> None:
        super().__init__(provider)
        self.auth = RequestsBearerAuth(provider)
        self.session = requests.Session()
        self.session.auth = self.auth

    def request(self, method: str, url: str, **kwargs: Any) -> Result:
        if "content" in kwargs:
            kwargs["data"] = kwargs.pop("content")
        return _result(self.session.request(method, url, timeout=10, **kwargs))

    def close(self) -> None:
        self.session.close()


class HttpxCaller(Caller):
    name = "httpx"

    def __init__(self, provider: TokenProvider) -> None:
        super().__init__(provider)
        self.auth = HttpxBearerAuth(provider)
        self.client = httpx.Client(auth=self.auth, timeout=10)

    def request(self, method: str, url: str, **kwargs: Any) -> Result:
        return _result(self.client.request(method, url, **kwargs))

    def close(self) -> None:
        self.client.close()


class AsyncCaller(Caller):
    """httpx.AsyncClient; every step runs on one event loop of this test (the client and the
    provider's locks belong to it), from synchronous test code."""

    name = "httpx-async"

    def __init__(self, provider: Any) -> None:
        super().__init__(provider)
        self.loop = asyncio.new_event_loop()
        self.auth = HttpxBearerAuth(provider)
        self.client = httpx.AsyncClient(auth=self.auth, timeout=10)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def request(self, method: str, url: str, **kwargs: Any) -> Result:
        return self.run(self._request(method, url, **kwargs))

    async def _request(self, method: str, url: str, **kwargs: Any) -> Result:
        return _result(await self.client.request(method, url, **kwargs))

    def concurrently(self, n: int, method: str, url: str) -> list[Result]:
        async def all_at_once() -> list[Result]:
            return list(await asyncio.gather(*(self._request(method, url) for _ in range(n))))

        return self.run(all_at_once())

    def token(self) -> str:
        get = self.provider.get_token
        return self.run(get()) if asyncio.iscoroutinefunction(get) else get()

    def replace_token(self) -> None:
        get = self.provider.get_token
        if not asyncio.iscoroutinefunction(get):
            super().replace_token()
            return

        async def replace() -> None:
            self.provider.invalidate(await get())
            await get()

        # In the server's thread, while the test's loop waits for the response: a loop of its
        # own (the provider's lock is free, so it never binds to either loop).
        asyncio.run(replace())

    def close(self) -> None:
        self.run(self.client.aclose())
        self.loop.close()


class AsyncWithSyncProviderCaller(AsyncCaller):
    name = "httpx-async-sync-provider"


CALLERS = ["requests", "httpx", "httpx-async", "httpx-async-sync-provider"]


@pytest.fixture(params=CALLERS)
def caller(request, idp, api_client) -> Iterator[Caller]:
    args = (idp.token_endpoint, api_client.client_id, api_client.client_secret, SCOPE)
    kind = request.param
    if kind == "requests":
        made: Caller = RequestsCaller(TokenProvider(*args, resource=AUDIENCE))
    elif kind == "httpx":
        made = HttpxCaller(TokenProvider(*args, resource=AUDIENCE))
    elif kind == "httpx-async":
        made = AsyncCaller(AsyncTokenProvider(*args, resource=AUDIENCE))
    else:
        made = AsyncWithSyncProviderCaller(TokenProvider(*args, resource=AUDIENCE))
    yield made
    made.close()


@pytest.fixture
def provider(idp, api_client) -> TokenProvider:
    return TokenProvider(idp.token_endpoint, api_client.client_id, api_client.client_secret,
                         SCOPE, resource=AUDIENCE)


# --- every client -------------------------------------------------------------------------


def test_bearer_header_is_sent_and_the_token_cached(idp, rs, caller):
    results = [caller.request("GET", rs.url + f"/items/{i}") for i in range(5)]
    assert [r.status for r in results] == [200] * 5
    assert results[0].json["client_id"] == caller.provider.client_id
    token = caller.token()
    assert rs.tokens() == [token] * 5
    assert issued(idp) == 1  # one token request for all of them


@pytest.mark.parametrize("rejection", ["invalid_token", "no_error", "no_header"])
def test_401_refetches_once_and_resends_the_same_body(idp, rs, caller, rejection):
    first = caller.token()
    rs.answers[first] = rejection
    payload = {"order": 7, "note": "same body, twice: \u00e9"}
    result = caller.request("POST", rs.url + "/orders", json=payload)
    assert result.status == 200
    assert result.history == [401]
    second = caller.token()
    assert second != first
    assert rs.tokens() == [first, second]
    assert [s.method for s in rs.seen] == ["POST", "POST"]
    assert json.loads(rs.seen[0].body) == payload
    assert rs.seen[1].body == rs.seen[0].body
    assert issued(idp) == 2  # exactly one refetch
    # the new token is the cached one: no more token requests
    assert caller.request("GET", rs.url + "/again").status == 200
    assert issued(idp) == 2


def test_raw_bytes_body_is_resent(idp, rs, caller):
    first = caller.token()
    rs.answers[first] = "invalid_token"
    result = caller.request("PUT", rs.url + "/blob", content=b"\x00\x01binary\xff")
    assert result.status == 200
    assert [s.body for s in rs.seen] == [b"\x00\x01binary\xff"] * 2


def test_a_second_401_is_returned_as_is(idp, rs, caller):
    caller.token()
    rs.answer_all = "invalid_token"
    result = caller.request("POST", rs.url + "/orders", json={"a": 1})
    assert result.status == 401
    assert result.json == {"error": "invalid_token"}
    assert result.history == [401]
    assert len(rs.seen) == 2  # one retry, no loop
    assert len(set(rs.tokens())) == 2
    assert issued(idp) == 2


@pytest.mark.parametrize(("rejection", "status"), [("invalid_request", 401),
                                                    ("insufficient_scope", 403)])
def test_no_retry_and_no_refetch_for_other_errors(idp, rs, caller, rejection, status):
    token = caller.token()
    rs.answers[token] = rejection
    result = caller.request("POST", rs.url + "/orders", json={"a": 1})
    assert result.status == status
    assert result.history == []
    assert rs.tokens() == [token]
    assert issued(idp) == 1
    assert caller.token() == token  # still cached: the token was not the problem


def test_403_without_error_is_not_retried_either(idp, rs, caller):
    token = caller.token()
    rs.answers[token] = "forbidden_no_error"
    result = caller.request("GET", rs.url + "/x")
    assert result.status == 403
    assert rs.tokens() == [token]
    assert issued(idp) == 1


def test_a_token_another_caller_already_replaced_is_kept(idp, rs, caller):
    """While our request with token A is in flight, another caller gets a 401 for A and
    replaces it with B. Our 401 must not throw B away: we retry with B, no third token."""
    first = caller.token()
    rs.answers[first] = "invalid_token"
    rs.before_answer[first] = caller.replace_token
    result = caller.request("GET", rs.url + "/x")
    assert result.status == 200
    replacement = caller.token()
    assert rs.tokens() == [first, replacement]
    assert issued(idp) == 2


def test_concurrent_401s_for_one_token_cause_one_refetch(idp, rs, caller):
    """Two requests carry token A and both get a 401. The second 401 is answered only after
    the first caller has refetched and resent with B: its invalidate(A) must keep B."""
    first = caller.token()
    rs.answers[first] = "invalid_token"
    both_arrived = threading.Barrier(2, timeout=10)
    first_retry_seen = threading.Event()
    arrivals = itertools.count()

    def hold_401s() -> None:
        n = next(arrivals)
        both_arrived.wait()
        if n == 1:
            assert first_retry_seen.wait(timeout=10)

    rs.before_answer[first] = hold_401s
    rs.on_request = lambda seen: first_retry_seen.set() if seen.token != first else None
    results = caller.concurrently(2, "GET", rs.url + "/x")
    assert [r.status for r in results] == [200, 200]
    second = caller.token()
    assert sorted(rs.tokens(), key=lambda t: t != first) == [first, first, second, second]
    assert issued(idp) == 2


def test_cross_origin_redirect_gets_no_token_and_no_retry(idp, resource_servers, caller):
    ours, other = resource_servers(), resource_servers()
    ours.redirects["/moved"] = other.url + "/here"
    other.answer_all = "invalid_token"
    token = caller.token()
    kwargs = {} if caller.name == "requests" else {"follow_redirects": True}
    result = caller.request("GET", ours.url + "/moved", **kwargs)
    assert result.status == 401
    assert result.history == [302]
    assert ours.tokens() == [token]
    assert [s.authorization for s in other.seen] == [None]  # stripped, and never added back
    assert issued(idp) == 1


def test_a_redirect_after_the_resend_carries_the_fresh_token(idp, rs, caller):
    first = caller.token()
    rs.answers[first] = "invalid_token"
    rs.redirects["/moved"] = rs.url + "/here"
    kwargs = {} if caller.name == "requests" else {"follow_redirects": True}
    result = caller.request("GET", rs.url + "/moved", **kwargs)
    assert result.status == 200
    second = caller.token()
    assert [(s.path, s.token) for s in rs.seen] == [
        ("/moved", first), ("/moved", second), ("/here", second)]
    assert issued(idp) == 2


def test_a_401_after_a_same_origin_redirect_is_retried_once(idp, rs, caller):
    """/moved redirects whatever the token; /here rejects the first token. requests resends
    the last hop, httpx the whole request (its auth flow wraps the redirects): either way one
    refetch and the fresh token reaches /here."""
    first = caller.token()
    rs.redirects["/moved"] = rs.url + "/here"
    rs.on_request = lambda seen: (rs.answers.__setitem__(first, "invalid_token")
                                  if seen.path == "/here" else None)
    kwargs = {} if caller.name == "requests" else {"follow_redirects": True}
    result = caller.request("GET", rs.url + "/moved", **kwargs)
    assert result.status == 200
    second = caller.token()
    assert [s.token for s in rs.seen if s.path == "/here"] == [first, second]
    assert issued(idp) == 2


def test_no_token_in_reprs_or_logs(idp, rs, caller, caplog):
    caplog.set_level(logging.DEBUG)
    first = caller.token()
    rs.answers[first] = "invalid_token"
    assert caller.request("GET", rs.url + "/x").status == 200
    second = caller.token()
    for text in (repr(caller.auth), str(caller.auth), caplog.text):
        assert first not in text
        assert second not in text
        assert caller.provider.client_id not in repr(caller.auth)


# --- requests only: bodies that are files or generators -----------------------------------


@pytest.fixture
def requests_session(provider) -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.auth = RequestsBearerAuth(provider)
        yield session


def test_requests_file_like_body_is_rewound(idp, rs, provider, requests_session):
    first = provider.get_token()
    rs.answers[first] = "invalid_token"
    body = io.BytesIO(b"skip:the rest is the body")
    body.seek(5)  # requests records this position and must rewind to it, not to 0
    response = requests_session.post(rs.url + "/upload", data=body, timeout=10)
    assert response.status_code == 200
    assert [s.body for s in rs.seen] == [b"the rest is the body"] * 2
    assert rs.tokens() == [first, provider.get_token()]
    assert response.request.headers["Authorization"] == f"Bearer {provider.get_token()}"
    assert response.history[0].status_code == 401
    assert issued(idp) == 2


def test_requests_real_file_body_is_rewound(idp, rs, provider, requests_session, tmp_path):
    path = tmp_path / "payload.bin"
    path.write_bytes(b"0123456789" * 1000)
    rs.answers[provider.get_token()] = "no_error"
    with path.open("rb") as f:
        response = requests_session.put(rs.url + "/upload", data=f, timeout=10)
    assert response.status_code == 200
    assert [s.body for s in rs.seen] == [path.read_bytes()] * 2


def test_requests_generator_body_is_not_resent_but_the_token_is_dropped(
        idp, rs, provider, requests_session):
    first = provider.get_token()
    rs.answers[first] = "invalid_token"
    response = requests_session.post(rs.url + "/stream", data=(c for c in [b"a", b"b"]),
                                     timeout=10)
    assert response.status_code == 401  # a consumed generator cannot be sent again
    assert rs.tokens() == [first]
    assert issued(idp) == 1
    # ...but the rejected token is gone: the next request gets a fresh one
    assert requests_session.get(rs.url + "/next", timeout=10).status_code == 200
    assert rs.tokens()[-1] != first
    assert issued(idp) == 2


def test_requests_retry_keeps_user_hooks_and_cookies(idp, rs, provider, requests_session):
    rs.answers[provider.get_token()] = "invalid_token"
    statuses: list[int] = []
    response = requests_session.get(
        rs.url + "/x", timeout=10,
        hooks={"response": lambda r, **_: statuses.append(r.status_code)})
    assert response.status_code == 200
    # our hook runs first and hands the retried response on to the user's
    assert statuses == [200]


def test_requests_auth_directly_on_one_call(idp, rs, provider):
    rs.answers[provider.get_token()] = "invalid_token"
    response = requests.get(rs.url + "/x", auth=RequestsBearerAuth(provider), timeout=10)
    assert response.status_code == 200
    assert len(rs.seen) == 2


# --- httpx only ---------------------------------------------------------------------------


def test_httpx_streamed_body_is_read_up_front_and_resent(idp, rs, provider):
    first = provider.get_token()
    rs.answers[first] = "invalid_token"

    def chunks() -> Iterator[bytes]:
        yield b"part one, "
        yield b"part two"

    with httpx.Client(auth=HttpxBearerAuth(provider), timeout=10) as client:
        response = client.post(rs.url + "/stream", content=chunks())
    assert response.status_code == 200
    assert [s.body for s in rs.seen] == [b"part one, part two"] * 2
    assert [h.status_code for h in response.history] == [401]


def test_httpx_async_streamed_body_is_read_up_front_and_resent(idp, rs, api_client):
    async def scenario() -> httpx.Response:
        provider = AsyncTokenProvider(idp.token_endpoint, api_client.client_id,
                                      api_client.client_secret, SCOPE, resource=AUDIENCE)
        rs.answers[await provider.get_token()] = "invalid_token"

        async def chunks():
            yield b"async "
            yield b"parts"

        async with httpx.AsyncClient(auth=HttpxBearerAuth(provider), timeout=10) as client:
            return await client.post(rs.url + "/stream", content=chunks())

    response = asyncio.run(scenario())
    assert response.status_code == 200
    assert [s.body for s in rs.seen] == [b"async parts"] * 2
    assert issued(idp) == 2


def test_httpx_sync_client_with_an_async_provider_is_a_clear_error(idp, rs, api_client):
    provider = AsyncTokenProvider(idp.token_endpoint, api_client.client_id,
                                  api_client.client_secret, SCOPE, resource=AUDIENCE)
    with httpx.Client(auth=HttpxBearerAuth(provider)) as client, \
            pytest.raises(TypeError, match="AsyncClient"):
        client.get(rs.url + "/x")
    assert rs.seen == []
    assert issued(idp) == 0


def test_httpx_async_with_sync_provider_fetches_off_the_event_loop(idp, rs, provider):
    """The sync provider's token request runs in a worker thread, not on the loop's."""
    threads: list[str] = []
    original = provider.get_token

    def recording_get_token() -> str:
        threads.append(threading.current_thread().name)
        return original()

    provider.get_token = recording_get_token  # type: ignore[method-assign]

    async def scenario() -> tuple[int, str]:
        async with httpx.AsyncClient(auth=HttpxBearerAuth(provider), timeout=10) as client:
            response = await client.get(rs.url + "/x")
        return response.status_code, threading.current_thread().name

    status, loop_thread = asyncio.run(scenario())
    assert status == 200
    assert threads and loop_thread not in threads


def test_a_provider_returning_no_string_is_a_type_error_without_details(rs):
    class Broken:
        def get_token(self) -> Any:
            return None

        def invalidate(self, access_token: str | None = None) -> None:
            pass

    with httpx.Client(auth=HttpxBearerAuth(Broken())) as client, \
            pytest.raises(TypeError, match="NoneType"):
        client.get(rs.url + "/x")
    with pytest.raises(TypeError, match="NoneType"):
        requests.get(rs.url + "/x", auth=RequestsBearerAuth(Broken()), timeout=10)
