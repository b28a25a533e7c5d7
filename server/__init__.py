"""m2mauth's authorization server: a strict OAuth 2.0 client-credentials token endpoint that
issues RFC 9068 JWT access tokens, with JWKS and RFC 8414 metadata (the core), and the lab
beside it (clock, faults, request log, admin API, ``IdentityProvider``, the pytest plugin).

:func:`create_app` composes the two the way Flask's own tutorial factory composes its
extensions: the core app, then the lab when the settings ask for it. Other names are imported
on first use, so that loading the pytest plugin does not import Flask and Authlib into test
runs that never use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._lazy import lazy_exports

if TYPE_CHECKING:
    from flask import Flask

    from .app import create_core_app
    from .clock import Clock
    from .errors import ConfigError, KeyStoreError
    from .issuer import Issuer
    from .lab import ControlError, Controls, IdentityProvider, Lab, LabClock, RegisteredClient
    from .settings import ClientSettings, ServerSettings, load_settings
    from .store import MemoryStore, StateStore
    from .tokens import tampered

_EXPORTS = {
    "create_core_app": "app",
    "Clock": "clock",
    "ConfigError": "errors",
    "KeyStoreError": "errors",
    "Issuer": "issuer",
    "ControlError": "lab",
    "Controls": "lab",
    "IdentityProvider": "lab",
    "Lab": "lab",
    "LabClock": "lab",
    "RegisteredClient": "lab",
    "ClientSettings": "settings",
    "ServerSettings": "settings",
    "load_settings": "settings",
    "MemoryStore": "store",
    "StateStore": "store",
    "tampered": "tokens",
}

__all__ = [
    "ClientSettings",
    "Clock",
    "ConfigError",
    "ControlError",
    "Controls",
    "IdentityProvider",
    "Issuer",
    "KeyStoreError",
    "Lab",
    "LabClock",
    "MemoryStore",
    "RegisteredClient",
    "ServerSettings",
    "StateStore",
    "create_app",
    "create_core_app",
    "load_settings",
    "tampered",
]


def create_app(settings: ServerSettings | None = None, *,
               store: StateStore | None = None) -> Flask:
    """A new, independent authorization server app, with the lab unless ``settings.lab`` is
    false. Without ``settings`` they are loaded as `m2mauth serve` loads them
    (``M2MAUTH_CONFIG`` naming a TOML or JSON file, then ``M2MAUTH_*`` variables), so
    ``gunicorn -w 1 'm2mauth.server:create_app()'`` serves what ``m2mauth serve`` would.

    The issuer is at ``app.extensions["m2mauth"]``, the lab at
    ``app.extensions["m2mauth_lab"]`` (its ``controls``).
    """
    from .app import create_core_app
    from .settings import load_settings

    settings = settings if settings is not None else load_settings()
    app = create_core_app(settings, store=store)
    if settings.lab:
        from .lab import Lab

        Lab(app)
        _mount_demo_api(app, settings)
    return app


#: Where :func:`create_app` mounts the demo API when the lab is on.
DEMO_API_PREFIX = "/demo"


def _mount_demo_api(app: Flask, settings: ServerSettings) -> None:
    """``m2mauth.client``'s demo API under ``/demo`` (``/demo/hello`` needs scope ``read``):
    the resource server of the learning pages, trusting this issuer for the default audience.
    It fetches the JWKS over HTTP from this very server, as a separate service would, and
    judges tokens by the server's clock, so the lab's clock moves reach it (a token expires
    at the API when the server's clock passes its ``exp``). The DPoP proofs it accepted are
    remembered in the issuer's store, so under ``--workers`` a proof is good at one worker
    once, not once per worker."""
    from m2mauth.client import DPoPPolicy, JWKSCache
    from m2mauth.client.demo_api import create_demo_api

    from .issuer import JWKS_PATH
    from .lab.lessons import DEMO_LEEWAY
    from .settings import default_issuer
    from .tls import ca_bundle_path, verifying_session

    issuer = app.extensions["m2mauth"]
    # Over TLS it trusts the local CA; with given certificate files, what requests trusts
    # (REQUESTS_CA_BUNDLE): m2mauth does not know the CA that signed them.
    ca_bundle = ca_bundle_path(settings)
    session = verifying_session(ca_bundle) if ca_bundle is not None else None
    scheme = "https" if settings.tls_enabled else "http"
    # Real time for the key cache, and a new kid looked up at once: the lessons rotate and
    # retire keys, move the server's clock back and forth, and run again within seconds. A
    # production validator keeps JWKSCache's defaults (30 s cooldown, 60 s negative cache).
    keys = JWKSCache(default_issuer(settings.host, settings.port, scheme) + issuer.mount
                     + JWKS_PATH, cooldown=0, negative_ttl=0, session=session)
    demo = create_demo_api(issuer.issuer, settings.default_audience, leeway=DEMO_LEEWAY,
                           jwks_cache=keys, clock=issuer.clock.now,
                           dpop=DPoPPolicy(replay_cache=_StoreReplayCache(issuer.store)))
    app.wsgi_app = _Mount(app.wsgi_app, DEMO_API_PREFIX, demo)  # type: ignore[method-assign]


class _StoreReplayCache:
    """The demo API's DPoP replay cache (``m2mauth.client.DPoPReplayCache``) in the issuer's
    state store: the store's bounded, expiring jti record, in a namespace per proof key that
    no client id can take (client ids are printable ASCII)."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def remember(self, jkt: str, jti: str, expires_at: float, now: float) -> bool:
        return bool(self._store.remember_jti(f"demo-api dpop\n{jkt}", jti, expires_at, now))


class _Mount:
    """``app`` with ``mounted`` under ``prefix``: werkzeug's ``DispatcherMiddleware`` for one
    prefix (the same ``SCRIPT_NAME`` and ``PATH_INFO``), without its walk over every
    ``/`` of every request's path – a token request is never the demo API's."""

    def __init__(self, app: Any, prefix: str, mounted: Any) -> None:
        self.app, self.prefix, self.mounted = app, prefix, mounted
        self._under = prefix + "/"

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path: str = environ.get("PATH_INFO", "")
        if path == self.prefix or path.startswith(self._under):
            environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + self.prefix
            environ["PATH_INFO"] = path[len(self.prefix):]
            return self.mounted(environ, start_response)
        return self.app(environ, start_response)


__getattr__, _ = lazy_exports(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return __all__
