"""The ``requests`` and ``httpx`` adapters with a DPoP provider, end to end: tokens of the real
server (the ``idp`` fixture) bound to the provider's key, sent to the real demo API
(:func:`m2mauth.client.demo_api.create_demo_api`, trusting that issuer, served over HTTP on
loopback) as ``Authorization: DPoP`` with a proof per request; the API's nonces (one retry,
then remembered per origin) and a rejected token (dropped, refetched, one retry)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import jwt
import pytest
import requests
from _dpop_support import serving
from flask import Flask, Response

from m2mauth.client import (
    DPoPPolicy,
    HttpxBearerAuth,
    RequestsBearerAuth,
    Token,
    TokenCache,
    TokenProvider,
    dpop_nonce_requested,
    parse_challenges,
    should_refetch,
)
from m2mauth.client.aio import AsyncTokenProvider
from m2mauth.client.demo_api import create_demo_api
from m2mauth.client.provider import CachedToken

NOW = 1_900_000_000
AUDIENCE = "api://default"  # the server's default audience


@pytest.fixture
def clock(idp):
    idp.clock.freeze(at=NOW)
    return idp.clock


@pytest.fixture
def api(idp, clock) -> Iterator[str]:
    """The demo API for this server's issuer, on its clock: ``.../hello`` needs scope read."""
    with serving(create_demo_api(idp.issuer, AUDIENCE, clock=clock.now)) as url:
        yield url


@pytest.fixture
def nonce_api(idp, clock) -> Iterator[str]:
    """The demo API with DPoP nonces required."""
    app = create_demo_api(idp.issuer, AUDIENCE, clock=clock.now,
                          dpop=DPoPPolicy(require_nonce=True))
    with serving(app) as url:
        yield url


@pytest.fixture
def provider(idp, clock) -> TokenProvider:
    client = idp.add_client("dpop-adapter-client", scopes=["read"])
    return TokenProvider(idp.issuer + "/token", client.client_id, client.client_secret,
                         "read", dpop=True, clock=clock.now)


def _b64_sha256(text: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()


def check_dpop_request(headers, provider: TokenProvider, method: str, htu: str) -> None:
    """The request carried the bound token as DPoP (never as Bearer) and a proof for it."""
    scheme, token = headers["Authorization"].split(" ", 1)
    assert scheme == "DPoP"
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["cnf"]["jkt"] == provider.dpop_key.thumbprint
    proof = jwt.decode(headers["DPoP"], options={"verify_signature": False})
    assert (proof["htm"], proof["htu"], proof["ath"]) == (method, htu, _b64_sha256(token))


def check_hello(response, provider: TokenProvider) -> None:
    assert response.status_code == 200, response.text
    assert response.json()["jkt"] == provider.dpop_key.thumbprint


# -- the three adapters -------------------------------------------------------------------------


def test_requests_calls_the_api_with_dpop(api, provider, idp):
    session = requests.Session()
    session.auth = RequestsBearerAuth(provider)
    first = session.get(api + "/hello?q=1", timeout=5)
    check_hello(first, provider)
    assert not first.history
    check_dpop_request(first.request.headers, provider, "GET", api + "/hello")
    second = session.get(api + "/hello", timeout=5)  # a new proof: no replay
    check_hello(second, provider)
    assert first.request.headers["DPoP"] != second.request.headers["DPoP"]
    assert len(idp.token_requests) == 1


def test_httpx_calls_the_api_with_dpop(api, provider, idp):
    with httpx.Client(auth=HttpxBearerAuth(provider)) as client:
        responses = [client.get(api + "/hello") for _ in range(2)]
    for r in responses:
        check_hello(r, provider)
        assert not r.history
        check_dpop_request(r.request.headers, provider, "GET", api + "/hello")
    assert len(idp.token_requests) == 1


def test_httpx_async_calls_the_api_with_dpop(api, idp, clock):
    client_info = idp.add_client("dpop-async-client", scopes=["read"])

    async def main():
        provider = AsyncTokenProvider(idp.issuer + "/token", client_info.client_id,
                                      client_info.client_secret, "read", dpop=True,
                                      clock=clock.now)
        async with httpx.AsyncClient(auth=HttpxBearerAuth(provider)) as client:
            return provider, await asyncio.gather(*(client.get(api + "/hello")
                                                    for _ in range(4)))

    provider, responses = asyncio.run(main())
    for r in responses:
        check_hello(r, provider)
        check_dpop_request(r.request.headers, provider, "GET", api + "/hello")
    assert len(idp.token_requests) == 1  # single flight across the tasks


def test_httpx_async_with_a_threaded_provider(api, provider):
    async def main():
        async with httpx.AsyncClient(auth=HttpxBearerAuth(provider)) as client:
            return await client.get(api + "/hello")

    check_hello(asyncio.run(main()), provider)


def test_the_bearer_path_is_unchanged(api, idp, clock):
    client = idp.add_client("bearer-client", scopes=["read"])
    bearer = TokenProvider(idp.issuer + "/token", client.client_id, client.client_secret,
                           "read", clock=clock.now)
    session = requests.Session()
    session.auth = RequestsBearerAuth(bearer)
    r = session.get(api + "/hello", timeout=5)
    assert r.status_code == 200 and "jkt" not in r.json()
    assert r.request.headers["Authorization"].startswith("Bearer ")
    assert "DPoP" not in r.request.headers


# -- nonces at the API --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["requests", "httpx", "httpx-async"])
def test_the_apis_nonce_is_retried_once_then_remembered(nonce_api, provider, kind):
    url = nonce_api + "/hello"
    if kind == "requests":
        session = requests.Session()
        session.auth = auth = RequestsBearerAuth(provider)
        first, second = session.get(url, timeout=5), session.get(url, timeout=5)
    elif kind == "httpx":
        auth = HttpxBearerAuth(provider)
        with httpx.Client(auth=auth) as client:
            first, second = client.get(url), client.get(url)
    else:
        auth = HttpxBearerAuth(provider)

        async def main():
            async with httpx.AsyncClient(auth=auth) as client:
                return await client.get(url), await client.get(url)

        first, second = asyncio.run(main())
    check_hello(first, provider)
    (refused,) = first.history  # one 401, one retry
    assert refused.status_code == 401
    (challenge,) = parse_challenges(refused.headers["WWW-Authenticate"])
    assert challenge.scheme == "dpop" and challenge.params["error"] == "use_dpop_nonce"
    nonce = refused.headers["DPoP-Nonce"]
    proof = jwt.decode(first.request.headers["DPoP"], options={"verify_signature": False})
    assert proof["nonce"] == nonce
    check_hello(second, provider)
    assert not second.history  # the nonce was kept for the origin
    assert auth.dpop_nonces.get(nonce_api) == nonce


def test_a_nonce_of_another_origin_is_not_sent(nonce_api, api, provider):
    session = requests.Session()
    session.auth = auth = RequestsBearerAuth(provider)
    check_hello(session.get(nonce_api + "/hello", timeout=5), provider)
    plain = session.get(api + "/hello", timeout=5)
    check_hello(plain, provider)
    assert "nonce" not in jwt.decode(plain.request.headers["DPoP"],
                                     options={"verify_signature": False})
    assert auth.dpop_nonces.get(api) is None


# -- a rejected token ---------------------------------------------------------------------------


def _poisoned(idp, clock) -> tuple[TokenProvider, TokenCache]:
    """A DPoP provider whose cache holds a token the API rejects (it is not a JWT)."""
    client = idp.add_client("dpop-poisoned", scopes=["read"])
    cache: TokenCache = TokenCache()
    provider = TokenProvider(idp.issuer + "/token", client.client_id, client.client_secret,
                             "read", dpop=True, clock=clock.now, cache=cache)
    bogus = Token("not-a-jwt", "DPoP", None, None)
    cache.put(provider.cache_key, CachedToken(bogus, math.inf, math.inf))
    return provider, cache


@pytest.mark.parametrize("kind", ["requests", "httpx", "httpx-async"])
def test_a_rejected_dpop_token_is_dropped_and_refetched_once(api, idp, clock, kind):
    provider, cache = _poisoned(idp, clock)
    url = api + "/hello"
    if kind == "requests":
        session = requests.Session()
        session.auth = RequestsBearerAuth(provider)
        r = session.get(url, timeout=5)
    elif kind == "httpx":
        with httpx.Client(auth=HttpxBearerAuth(provider)) as client:
            r = client.get(url)
    else:
        async def main():
            async with httpx.AsyncClient(auth=HttpxBearerAuth(provider)) as client:
                return await client.get(url)

        r = asyncio.run(main())
    check_hello(r, provider)
    (refused,) = r.history
    (challenge,) = parse_challenges(refused.headers["WWW-Authenticate"])
    assert challenge.scheme == "dpop" and challenge.params["error"] == "invalid_token"
    assert len(idp.token_requests) == 1
    assert cache.get(provider.cache_key).token.access_token != "not-a-jwt"


def test_a_403_is_not_retried(api, idp, clock, provider):
    session = requests.Session()
    session.auth = RequestsBearerAuth(provider)
    r = session.get(api + "/admin", timeout=5)  # needs scope admin
    assert r.status_code == 403 and not r.history
    (challenge,) = parse_challenges(r.headers["WWW-Authenticate"])
    assert challenge.scheme == "dpop" and challenge.params["error"] == "insufficient_scope"
    assert len(idp.token_requests) == 1


def test_a_post_body_is_resent_with_the_nonce(idp, clock, provider):
    """A request with a body: the retry resends it (requests rewinds, httpx reads it first)."""
    app = create_demo_api(idp.issuer, AUDIENCE, clock=clock.now,
                          dpop=DPoPPolicy(require_nonce=True))
    from flask import g, jsonify, request

    from m2mauth.client.flask import require_token

    validator = app.extensions["m2mauth_demo_api"]

    @app.post("/echo")
    @require_token(validator, scopes=["read"])
    def echo():
        return jsonify(body=request.get_data(as_text=True), jkt=g.token.jkt)

    with serving(app) as url:
        session = requests.Session()
        session.auth = RequestsBearerAuth(provider)
        r = session.post(url + "/echo", data=b"payload", timeout=5)
        assert r.status_code == 200 and r.json()["body"] == "payload" and len(r.history) == 1
        check_dpop_request(r.request.headers, provider, "POST", url + "/echo")
        with httpx.Client(auth=HttpxBearerAuth(provider)) as client:
            r = client.post(url + "/echo", content=b"again")
        assert r.status_code == 200 and r.json()["body"] == "again" and len(r.history) == 1


# -- resource servers that misbehave ------------------------------------------------------------


def _nonce_demanding_api(nonce_of: Callable[[int], str]) -> tuple[Flask, list]:
    """An API that answers every DPoP request 401 ``use_dpop_nonce`` with ``nonce_of(n)`` for
    the n-th request; it records each proof's nonce claim."""
    app = Flask(__name__)
    seen: list = []

    @app.get("/r")
    def resource():
        from flask import request

        claims = jwt.decode(request.headers["DPoP"], options={"verify_signature": False})
        seen.append(claims.get("nonce"))
        response = Response('{"error": "use_dpop_nonce"}', 401,
                            mimetype="application/json")
        response.headers["WWW-Authenticate"] = 'DPoP error="use_dpop_nonce"'
        response.headers["DPoP-Nonce"] = nonce_of(len(seen))
        return response

    return app, seen


@pytest.mark.parametrize("kind", ["requests", "httpx"])
def test_an_api_that_always_wants_a_new_nonce_gets_one_retry(provider, kind):
    app, seen = _nonce_demanding_api(lambda n: f"nonce-{n}")
    with serving(app) as url:
        if kind == "requests":
            session = requests.Session()
            session.auth = RequestsBearerAuth(provider)
            r = session.get(url + "/r", timeout=5)
        else:
            with httpx.Client(auth=HttpxBearerAuth(provider)) as client:
                r = client.get(url + "/r")
    assert r.status_code == 401 and len(r.history) == 1
    assert seen == [None, "nonce-1"]


def test_a_nonce_that_is_not_one_is_not_used(provider):
    app, seen = _nonce_demanding_api(lambda n: "x" * 600)  # longer than any nonce we keep
    with serving(app) as url:
        session = requests.Session()
        session.auth = auth = RequestsBearerAuth(provider)
        r = session.get(url + "/r", timeout=5)
    assert r.status_code == 401 and not r.history and seen == [None]
    assert len(auth.dpop_nonces) == 0


def test_threads_share_one_token_and_the_origins_nonce(nonce_api, provider, idp):
    session = requests.Session()
    session.auth = auth = RequestsBearerAuth(provider)
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: session.get(nonce_api + "/hello", timeout=5),
                                  range(16)))
    for r in responses:
        check_hello(r, provider)
        assert len(r.history) <= 1
    assert len(idp.token_requests) == 1
    assert auth.dpop_nonces.get(nonce_api) is not None


# -- the challenge decisions the DPoP path takes ------------------------------------------------


@pytest.mark.parametrize(("status", "header", "nonce", "refetch"), [
    (401, 'DPoP error="use_dpop_nonce"', True, False),
    (401, 'Bearer realm="r", DPoP realm="r", error="use_dpop_nonce"', True, False),
    (400, 'DPoP error="use_dpop_nonce"', False, False),
    (401, 'DPoP error="invalid_token"', False, True),
    (401, 'DPoP realm="r"', False, True),
    (401, 'DPoP error="invalid_dpop_proof"', False, False),
    (401, 'Bearer error="use_dpop_nonce"', False, False),
    (401, 'Bearer error="invalid_token"', False, False),  # a Bearer-only API: no DPoP retry
    (403, 'DPoP error="insufficient_scope"', False, False),
    (401, None, False, True),
])
def test_dpop_challenges(status, header, nonce, refetch):
    assert dpop_nonce_requested(status, header) is nonce
    assert should_refetch(status, header, scheme="dpop") is refetch


def test_requests_does_not_carry_the_proof_across_a_redirect(api, provider):
    """requests strips Authorization on a cross-host redirect but copies every other header:
    the proof, made for the first URL, must not reach the other origin."""
    seen: list = []
    target = Flask(__name__)

    @target.get("/landing")
    def landing():
        from flask import request

        seen.append({k.lower() for k, _ in request.headers.items()})
        return {"ok": True}

    with serving(target) as other:
        origin = Flask(__name__)

        @origin.get("/moved")
        def moved():
            return Response(status=302, headers={"Location": other + "/landing"})

        with serving(origin) as url:
            session = requests.Session()
            session.auth = RequestsBearerAuth(provider)
            r = session.get(url + "/moved", timeout=5)
    assert r.status_code == 200 and len(r.history) == 1
    assert len(seen) == 1 and "dpop" not in seen[0] and "authorization" not in seen[0]
