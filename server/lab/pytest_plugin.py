"""The m2mauth pytest plugin, registered through the ``pytest11`` entry point: a real
authorization server per test session (per xdist worker), and an ``idp`` handle per test that
undoes whatever the test changed.

Override the ``m2mauth_*`` fixtures (session scope) in your conftest.py to configure it. This
module imports nothing heavy: a test run that never asks for these fixtures pays ~nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from m2mauth.server.lab.idp import IdentityProvider
    from m2mauth.server.settings import ClientSettings, ServerSettings


#: Warnings the server itself causes, which must not turn into failed token requests in a
#: project whose pytest configuration says ``filterwarnings = error``: the server signs in its
#: own thread, where an error-filtered warning becomes a 500 ``server_error``. joserfc prefers
#: RFC 9864's "Ed25519" and warns on every "EdDSA" signature; m2mauth asks for "EdDSA" by name
#: (what PyJWT and today's validators know).
SERVER_WARNINGS = ("ignore:EdDSA is deprecated via RFC 9864",)


def pytest_configure(config: pytest.Config) -> None:
    # After the project's own ini filters, so these win over a blanket "error" (a -W on the
    # command line still comes later and wins).
    for line in SERVER_WARNINGS:
        config.addinivalue_line("filterwarnings", line)


@pytest.fixture(scope="session")
def m2mauth_algorithm() -> str:
    """Default signing algorithm of the session's server."""
    return "RS256"


@pytest.fixture(scope="session")
def m2mauth_clients() -> list[ClientSettings]:
    """Clients registered for the whole session (tests add more with ``idp.add_client``).
    Default: ``demo-client`` / ``demo-secret`` with scopes read and write."""
    from m2mauth.server.settings import ServerSettings

    return ServerSettings().clients


@pytest.fixture(scope="session")
def m2mauth_settings(m2mauth_algorithm: str, m2mauth_clients: list[ClientSettings],
                     ) -> ServerSettings:
    """All settings of the session's server; override for full control (issuer, lifetimes,
    keys...). The default issuer is http://127.0.0.1:<free port> (https with m2mauth_tls);
    signing uses the shipped public test keys. Settings with an ``issuer`` listen on their
    ``port`` (make them match; with xdist, give each worker its own), since the issuer must
    name where the server is."""
    from m2mauth.server.settings import ServerSettings

    return ServerSettings(algorithm=m2mauth_algorithm, clients=list(m2mauth_clients))


@pytest.fixture(scope="session")
def m2mauth_tls() -> bool:
    """Whether the session's server speaks HTTPS (default False). True: a throwaway CA for the
    session, its PEM file at ``idp.ca_bundle`` (``verify=idp.ca_bundle``), and an
    ``https://127.0.0.1:<port>`` issuer."""
    return False


@pytest.fixture(scope="session")
def m2mauth_server(m2mauth_settings: ServerSettings, m2mauth_tls: bool,
                   ) -> Iterator[IdentityProvider]:
    """The session's authorization server on a free 127.0.0.1 port (one per xdist worker).
    Prefer ``idp``, which also resets the server after each test."""
    from m2mauth.server.lab.idp import IdentityProvider

    port = m2mauth_settings.port if m2mauth_settings.issuer is not None else 0
    server = IdentityProvider.start(m2mauth_settings, port=port, tls=m2mauth_tls)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def idp(m2mauth_server: IdentityProvider) -> Iterator[IdentityProvider]:
    """The session's server, as this test's to change: clients, clock, faults, keys and
    request logs go back to the session's start when the test ends."""
    m2mauth_server.reset()  # also clean if a test before this one used m2mauth_server alone
    try:
        yield m2mauth_server
    finally:
        m2mauth_server.reset()


@pytest.fixture
def idp_factory() -> Iterator[Callable[..., IdentityProvider]]:
    """Start more issuers in this test, each with its own keys and clients; all stop when the
    test ends. ``idp_factory(settings=None, *, tls=False, **fields)``: fields of
    ServerSettings; the default is fresh in-memory ES256 keys, so no two issuers share a key.
    ``tls=True``: HTTPS with its own throwaway CA (``ca_bundle`` on the handle)."""
    from dataclasses import replace

    from m2mauth.server.lab.idp import IdentityProvider
    from m2mauth.server.settings import ServerSettings

    started: list[IdentityProvider] = []

    def start(settings: ServerSettings | None = None, *, tls: bool = False,
              **fields: Any) -> IdentityProvider:
        base = settings or ServerSettings(ephemeral_keys=True, algorithm="ES256")
        server = IdentityProvider.start(replace(base, **fields) if fields else base, tls=tls)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()
