"""The orders service against a real (local) authorization server: token caching, retries,
expiry and bad credentials, all driven through the ``idp`` fixture."""

from __future__ import annotations

import jwt
import pytest
from orders_service import TokenConfigurationError, TokenSource, TokenUnavailableError


def bearer(request) -> str:
    scheme, _, token = request.headers["Authorization"].partition(" ")
    assert scheme == "Bearer"
    return token


def test_calls_the_api_with_a_bearer_token(service, orders_api):
    assert service.list_orders() == [{"id": 1, "item": "coffee"}]

    token = bearer(orders_api.requests[0])
    assert jwt.get_unverified_header(token)["alg"] == "ES256"  # conftest.py's m2mauth_algorithm
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["client_id"] == "orders-service"
    assert claims["aud"] == orders_api.url
    assert claims["scope"] == "orders:read"


def test_caches_its_token(service, orders_api, idp):
    for _ in range(3):
        service.list_orders()

    assert len(idp.token_requests) == 1
    assert len({bearer(r) for r in orders_api.requests}) == 1


def test_retries_on_429_honouring_retry_after(service, idp, sleeps):
    idp.fail_next(2, status=429, error="temporarily_unavailable", retry_after=1)

    service.list_orders()

    assert [r.status for r in idp.token_requests] == [429, 429, 200]
    assert sleeps == [1, 1]  # Retry-After, without really waiting


def test_gives_up_after_max_attempts(service, idp, sleeps):
    idp.fail_next(4, status=503, error="temporarily_unavailable")  # no Retry-After

    with pytest.raises(TokenUnavailableError, match="after 4 attempts"):
        service.list_orders()

    assert len(idp.token_requests) == 4
    assert sleeps == [2, 4, 8]  # exponential backoff


def test_refetches_after_expiry(service, idp):
    idp.clock.freeze()
    service.list_orders()
    idp.clock.advance(200)  # the server's tokens live 300 s; 100 s left: keep it
    service.list_orders()
    assert len(idp.token_requests) == 1

    idp.clock.advance(100)  # expired now (on the clock both sides share)
    service.list_orders()

    assert len(idp.token_requests) == 2
    first, second = idp.token_requests
    assert first.jti != second.jti


def test_refetches_once_when_the_api_answers_401(service, orders_api, idp):
    orders_api.reject_next = 1

    assert service.list_orders()

    assert len(idp.token_requests) == 2
    assert bearer(orders_api.requests[0]) != bearer(orders_api.requests[1])


def test_reports_invalid_client_clearly(idp, sleeps):
    idp.add_client("billing-service", scopes=["orders:read"], audiences=["https://orders.test"])
    tokens = TokenSource(idp.token_endpoint, "billing-service", "not-the-secret",
                         scope="orders:read", clock=idp.clock.now, sleep=sleeps.append)

    with pytest.raises(TokenConfigurationError) as caught:
        tokens.get()

    message = str(caught.value)
    assert "rejected client 'billing-service' (invalid_client" in message
    assert "not-the-secret" not in message
    assert [r.outcome for r in idp.token_requests] == ["invalid_client"]  # no retries
    assert sleeps == []
