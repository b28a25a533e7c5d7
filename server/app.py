"""The app factory of the core: the authorization server alone, without the lab."""

from __future__ import annotations

from pathlib import Path

from flask import Flask

from .issuer import EXTENSION, Issuer
from .settings import ServerSettings, load_settings
from .store import StateStore
from .views import bp

__all__ = ["create_core_app"]


def create_core_app(settings: ServerSettings | None = None, *,
                    store: StateStore | None = None) -> Flask:
    """A new, independent authorization server app: token, JWKS and metadata endpoints.

    Without ``settings`` they are loaded as `m2mauth serve` loads them (``M2MAUTH_CONFIG``,
    then ``M2MAUTH_*``). ``store`` holds the issuer's state (default: in memory). The issuer
    is at ``app.extensions["m2mauth"]``. :func:`m2mauth.server.create_app` is this plus the
    lab, when the settings ask for it.
    """
    settings = (settings if settings is not None else load_settings()).validate()
    # instance_path given: Flask cannot locate it for a package inside a namespace (m2mauth).
    app = Flask("m2mauth.server", instance_path=str(Path(__file__).parent / "instance"))
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION] = Issuer(settings, store=store)
    app.register_blueprint(bp)
    return app
