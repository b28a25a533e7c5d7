"""The Flask app factory."""

from __future__ import annotations

from pathlib import Path

from flask import Flask

from .admin import bp as admin_bp
from .clock import Clock
from .control import Controls
from .keys import KeyStore
from .settings import ServerSettings
from .state import ServerState
from .views import bp

__all__ = ["create_app"]


def create_app(
    settings: ServerSettings | None = None, *, clock: Clock | None = None,
    keys: KeyStore | None = None,
) -> Flask:
    """A new, independent authorization server app; ``settings`` default to `m2mauth serve`'s.

    The assembled :class:`ServerState` is at ``app.extensions["m2mauth"]``, and the test
    controls the admin API uses at ``app.extensions["m2mauth_controls"]``.
    """
    settings = (settings or ServerSettings()).validate()
    # instance_path given: Flask cannot locate it for a package inside a namespace (m2mauth).
    app = Flask(__name__, instance_path=str(Path(__file__).parent / "instance"))
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    state = app.extensions["m2mauth"] = ServerState(settings, clock=clock, keys=keys)
    app.extensions["m2mauth_controls"] = Controls(state)
    app.register_blueprint(bp)
    if settings.admin_api:
        app.register_blueprint(admin_bp)
    return app
