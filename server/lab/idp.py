"""``IdentityProvider``: a running m2mauth server plus the test controls, in one object – what
the pytest plugin's ``idp`` fixture hands to a test. A server with further issuers hands out
one for each (``idp.issuers["a"]``, ``idp.add_issuer("b")``), all on the same port."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from flask import Flask

from ..app import create_core_app
from ..issuer import METADATA_PATHS
from ..serving import BackgroundServer, ServingLimits, bind_app
from ..settings import ServerSettings
from ..store import StateStore
from .admin import ADMIN_PREFIX, EXTENSION
from .controls import ControlError, Controls
from .extension import Lab

__all__ = ["IdentityProvider"]


class IdentityProvider(Controls):
    """An authorization server with its lab on a loopback port, driven from the test that
    owns it.

    ``with IdentityProvider.start() as idp: ...`` or the ``idp`` pytest fixture.
    """

    def __init__(self, server: BackgroundServer, app: Flask) -> None:
        lab = self._lab = app.extensions[EXTENSION]
        super().__init__(lab.controls.core)
        self._take_over(lab.controls)  # reset() then restores what the server started with
        self.server = server
        self.app = app
        #: The issuer URL: ``iss`` of every token, and where metadata is discovered.
        self.issuer: str = self.core.issuer
        self.token_endpoint: str = self.core.token_endpoint
        self.jwks_uri: str = self.core.jwks_uri
        self.metadata_url: str = self.issuer + METADATA_PATHS[0]
        self.admin_url: str = self.issuer + ADMIN_PREFIX
        # One controls object per server: the admin API then acts on this very handle.
        lab.controls = self

    @classmethod
    def start(cls, settings: ServerSettings | None = None, *, host: str = "127.0.0.1",
              port: int = 0, store: StateStore | None = None) -> IdentityProvider:
        """Start a server in a background thread (port 0: any free port). ``store`` holds
        its state (default: in memory)."""
        settings = replace(settings or ServerSettings(), host=host)

        def make_app(bound: int) -> Flask:
            app = create_core_app(replace(settings, port=bound), store=store)
            Lab(app)
            return app

        server, app = bind_app(host, port, make_app, ServingLimits.of(settings))
        return cls(BackgroundServer(server), app)

    def stop(self) -> None:
        """Stop the server, with every issuer on it."""
        self.server.stop()

    def reset(self) -> None:
        """Undo every change since start; on the root issuer also remove the issuers added
        with :meth:`add_issuer` and reset the declared ones."""
        self._lab.reset()

    # -- further issuers on the same server ---------------------------------------------

    @property
    def issuers(self) -> Mapping[str, IdentityProvider]:
        """The further issuers on this server by name (``[issuers.NAME]`` and added ones),
        each a handle like this one; empty on a further issuer's own handle."""
        found = self._lab.issuers
        if found is None:
            return {}
        return {name: self._handle(found.app(name)) for name in found.names()}

    def add_issuer(self, name: str, **fields: Any) -> IdentityProvider:
        """A new issuer at ``<origin>/<name>`` on this server, taking an ``[issuers.NAME]``
        table's settings (``clients`` as :class:`ClientSettings`); :meth:`reset` removes it.
        Default: fresh in-memory keys, the root issuer's algorithm, the demo client."""
        issuers = self._lab.issuers
        if issuers is None:
            raise ControlError("name", "add issuers through the root issuer's handle")
        return self._handle(issuers.add(name, **fields))

    def remove_issuer(self, name: str) -> None:
        issuers = self._lab.issuers
        if issuers is None:
            raise ControlError("name", "remove issuers through the root issuer's handle")
        issuers.remove(name)

    def _handle(self, app: Flask) -> IdentityProvider:
        controls = app.extensions[EXTENSION].controls
        if isinstance(controls, IdentityProvider):
            return controls
        return IdentityProvider(self.server, app)

    def __enter__(self) -> IdentityProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Where the server listens (the issuer, unless one was configured)."""
        return self.server.url

    def __repr__(self) -> str:
        return f"<IdentityProvider {self.issuer}>"
