"""Fixtures for the orders API's tests. The ``idp`` fixture (a real authorization server,
reset after every test) comes from the m2mauth pytest plugin: installing m2mauth is enough."""

from __future__ import annotations

import pytest
from orders_api import create_app

from m2mauth.server import ClientSettings

ORDERS_API = "https://orders.test"


@pytest.fixture(scope="session")
def m2mauth_clients() -> list[ClientSettings]:
    """Configure the plugin's server: the clients registered for the whole session (tests can
    still add their own with ``idp.add_client``)."""
    return [
        ClientSettings("orders-web", "orders-web-secret", scopes=("orders:read", "orders:write"),
                       audiences=(ORDERS_API,)),
    ]


@pytest.fixture
def make_api(idp):
    """Build the orders API trusting the test's authorization server (a new app, and so an
    empty JWKS cache, each time)."""

    def make(**options):
        options.setdefault("clock", idp.clock.now)  # one clock: tests move server and API time
        app = create_app(issuer=idp.issuer, audience=ORDERS_API, jwks_uri=idp.jwks_uri,
                         **options)
        return app.test_client()

    return make


@pytest.fixture
def api(make_api):
    """The orders API as configured in production."""
    return make_api()
