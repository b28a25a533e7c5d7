"""Fixtures for the orders service's tests. The ``idp`` fixture (a real authorization server,
reset after every test) comes from the m2mauth pytest plugin: installing m2mauth is enough."""

from __future__ import annotations

import pytest
import requests
from orders_service import OrdersService, TokenSource

ORDERS_API = "https://orders.test"


@pytest.fixture(scope="session")
def m2mauth_algorithm() -> str:
    """Configure the plugin's server: our production issuer signs with ES256, so does the
    test one. (Other session fixtures to override: m2mauth_clients, m2mauth_settings.)"""
    return "ES256"


class FakeOrdersAPI(requests.adapters.BaseAdapter):
    """Stands in for the orders API: records every request; can answer 401 a few times."""

    url = ORDERS_API

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[requests.PreparedRequest] = []
        self.reject_next = 0

    def send(self, request: requests.PreparedRequest, **kwargs: object) -> requests.Response:
        self.requests.append(request)
        response = requests.Response()
        response.request, response.url = request, request.url
        response.headers["Content-Type"] = "application/json"
        if self.reject_next:
            self.reject_next -= 1
            response.status_code = 401
            response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
            response._content = b'{"error": "invalid_token"}'
        else:
            response.status_code = 200
            response._content = b'[{"id": 1, "item": "coffee"}]'
        return response

    def close(self) -> None:
        pass


@pytest.fixture
def orders_client(idp):
    """This test's client registration (gone again after the test)."""
    return idp.add_client("orders-service", scopes=["orders:read"], audiences=[ORDERS_API])


@pytest.fixture
def sleeps() -> list[float]:
    """What the service asked to sleep, instead of sleeping."""
    return []


@pytest.fixture
def tokens(idp, orders_client, sleeps) -> TokenSource:
    return TokenSource(
        idp.token_endpoint, orders_client.client_id, orders_client.client_secret,
        scope="orders:read", audience=ORDERS_API,
        clock=idp.clock.now,  # one clock: the server's tokens and our cache agree on "now"
        sleep=sleeps.append,
    )


@pytest.fixture
def orders_api() -> FakeOrdersAPI:
    return FakeOrdersAPI()


@pytest.fixture
def service(tokens, orders_api) -> OrdersService:
    session = requests.Session()
    session.mount(ORDERS_API, orders_api)
    return OrdersService(ORDERS_API, tokens, session)
