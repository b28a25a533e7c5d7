"""``IdentityProvider``: a running m2mauth server plus the test controls, in one object – what
the pytest plugin's ``idp`` fixture hands to a test."""

from __future__ import annotations

from .clock import Clock
from .control import Controls
from .serving import ServerThread
from .settings import ServerSettings
from .state import METADATA_PATHS

__all__ = ["IdentityProvider"]


class IdentityProvider(Controls):
    """An authorization server on a loopback port, driven from the test that owns it.

    ``with IdentityProvider.start() as idp: ...`` or the ``idp`` pytest fixture.
    """

    def __init__(self, server: ServerThread) -> None:
        super().__init__(server.state)
        self.server = server
        # One controls object per server: the admin API then acts on this very handle.
        server.app.extensions["m2mauth_controls"] = self

    @classmethod
    def start(cls, settings: ServerSettings | None = None, *, host: str = "127.0.0.1",
              port: int = 0, clock: Clock | None = None) -> IdentityProvider:
        """Start a server in a background thread (port 0: any free port)."""
        settings = settings or ServerSettings()
        if settings.host != host:
            from dataclasses import replace

            settings = replace(settings, host=host)
        return cls(ServerThread(settings, clock=clock, port=port))

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> IdentityProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def issuer(self) -> str:
        """The issuer URL: ``iss`` of every token, and where metadata is discovered."""
        return self.state.issuer

    @property
    def url(self) -> str:
        """Where the server listens (the issuer, unless one was configured)."""
        return self.server.url

    @property
    def token_endpoint(self) -> str:
        return self.state.token_endpoint

    @property
    def jwks_uri(self) -> str:
        return self.state.jwks_uri

    @property
    def metadata_url(self) -> str:
        return self.state.issuer + METADATA_PATHS[0]

    @property
    def admin_url(self) -> str:
        return self.state.issuer + "/admin"

    def __repr__(self) -> str:
        return f"<IdentityProvider {self.issuer}>"
