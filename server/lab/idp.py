"""``IdentityProvider``: a running m2mauth server plus the test controls, in one object – what
the pytest plugin's ``idp`` fixture hands to a test. A server with further issuers hands out
one for each (``idp.issuers["a"]``, ``idp.add_issuer("b")``), all on the same port."""

from __future__ import annotations

import shutil
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask

from ..app import create_core_app
from ..issuer import METADATA_PATHS
from ..serving import BackgroundServer, ServingLimits, bind_app
from ..settings import ServerSettings
from ..store import StateStore
from ..tls import ServerTLS, client_context, load_server_tls, verifying_session
from .admin import ADMIN_PREFIX, EXTENSION
from .controls import ControlError, Controls
from .extension import Lab

if TYPE_CHECKING:
    import requests

__all__ = ["IdentityProvider"]


class IdentityProvider(Controls):
    """An authorization server with its lab on a loopback port, driven from the test that
    owns it.

    ``with IdentityProvider.start() as idp: ...`` or the ``idp`` pytest fixture.
    """

    def __init__(self, server: BackgroundServer, app: Flask, *,
                 tls: ServerTLS | None = None) -> None:
        lab = self._lab = app.extensions[EXTENSION]
        super().__init__(lab.controls.core)
        self._take_over(lab.controls)  # reset() then restores what the server started with
        self.server = server
        self.app = app
        #: What the server speaks TLS with (None: plain HTTP).
        self.tls = tls
        #: The PEM file of the CA to trust for this server (``verify=`` of requests and
        #: httpx, ``REQUESTS_CA_BUNDLE``, ``SSL_CERT_FILE``, ``NODE_EXTRA_CA_CERTS``); None
        #: without TLS or with given certificate files.
        self.ca_bundle: Path | None = tls.ca_bundle if tls is not None else None
        self._owned_dir: Path | None = None
        #: The issuer URL: ``iss`` of every token, and where metadata is discovered.
        self.issuer: str = self.core.issuer
        self.token_endpoint: str = self.core.token_endpoint
        self.jwks_uri: str = self.core.jwks_uri
        # RFC 8414 section 3.1: the well-known segment goes before the issuer's path.
        self.metadata_url: str = (self.issuer.removesuffix(self.core.mount) + METADATA_PATHS[0]
                                  + self.core.mount)
        self.admin_url: str = self.issuer + ADMIN_PREFIX
        # One controls object per server: the admin API then acts on this very handle.
        lab.controls = self

    @classmethod
    def start(cls, settings: ServerSettings | None = None, *, host: str = "127.0.0.1",
              port: int = 0, store: StateStore | None = None,
              tls: bool = False) -> IdentityProvider:
        """Start a server in a background thread (port 0: any free port). ``store`` holds
        its state (default: in memory). ``tls`` (or TLS in ``settings``): HTTPS, with a
        throwaway CA made for this server and removed when it stops, unless the settings
        name a ``tls_dir`` or certificate files; see :attr:`ca_bundle`."""
        settings = replace(settings or ServerSettings(), host=host)
        if tls and not settings.tls_enabled:
            settings = replace(settings, tls=True)
        owned: Path | None = None
        if settings.tls_enabled and settings.tls_cert is None and settings.tls_dir is None:
            owned = Path(tempfile.mkdtemp(prefix="m2mauth-tls-"))
            settings = replace(settings, tls_dir=owned)
        try:
            server_tls = load_server_tls(settings) if settings.tls_enabled else None

            def make_app(bound: int) -> Flask:
                app = create_core_app(replace(settings, port=bound), store=store)
                Lab(app)
                return app

            server, app = bind_app(host, port, make_app, ServingLimits.of(settings),
                                   tls=server_tls.context if server_tls else None)
        except BaseException:
            if owned is not None:
                shutil.rmtree(owned, ignore_errors=True)
            raise
        idp = cls(BackgroundServer(server), app, tls=server_tls)
        idp._owned_dir = owned
        return idp

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that verifies this server against :attr:`ca_bundle` (the system's
        trust store without one): ``httpx.Client(verify=idp.ssl_context())``."""
        return client_context(self.ca_bundle)

    def requests_session(self) -> requests.Session:
        """A ``requests.Session`` that verifies this server against :attr:`ca_bundle`, for
        ``TokenValidator(session=...)``, ``fetch_token(session=...)``. (A session's own
        ``verify`` would lose to ``REQUESTS_CA_BUNDLE`` where that is set.)"""
        if self.ca_bundle is None:
            import requests

            return requests.Session()
        return verifying_session(self.ca_bundle)

    def stop(self) -> None:
        """Stop the server, with every issuer on it (and close the stores they opened; a
        store given to :meth:`start` stays open)."""
        from ..issuer import EXTENSION as CORE_EXTENSION
        from ..issuers import router_of

        self.server.stop()
        router = router_of(self.app)
        for app in (self.app, *(router.apps() if router is not None else ())):
            app.extensions[CORE_EXTENSION].close()
        if self._owned_dir is not None:
            shutil.rmtree(self._owned_dir, ignore_errors=True)

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
        return IdentityProvider(self.server, app, tls=self.tls)

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
