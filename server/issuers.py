"""Several issuers on one server: the root issuer's app routes requests under ``/NAME`` to
issuer NAME's own app.

Every issuer is a Flask app of its own (its keys, clients, clock and, with the lab, faults,
request log and admin API are its own by construction), whose routes already carry its path:
the router only picks the app by the first path segment, so no ``SCRIPT_NAME`` is rewritten
and each app answers alone exactly as it does behind the router. The RFC 8414 §3.1 metadata
of issuer NAME lives at the root, ``/.well-known/oauth-authorization-server/NAME``; it is
routed to NAME's app too. Anything else goes to the root issuer's app, which also answers the
probes and the 404s.

By hand rather than werkzeug's ``DispatcherMiddleware``: that one strips the prefix into
``SCRIPT_NAME`` and cannot route the path-inserted metadata location.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .issuer import METADATA_PATHS

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["ROUTER", "IssuerRouter", "router_of"]

#: Where the root issuer's app keeps its router.
ROUTER = "m2mauth_issuers"
_INSERTED = METADATA_PATHS[0] + "/"


class IssuerRouter:
    """The further issuers of one server, by name, and the WSGI middleware that routes to
    them (installed as the root app's ``wsgi_app``)."""

    def __init__(self, root: Flask) -> None:
        self.root = root
        self._root_wsgi = root.wsgi_app
        self._apps: dict[str, Flask] = {}
        self._lock = threading.Lock()

    def add(self, name: str, app: Flask) -> None:
        """Serve ``app`` (an issuer at ``<origin>/<name>``) from now on."""
        with self._lock:
            if name in self._apps:
                raise KeyError(name)
            # A new dict, swapped in whole: requests read it without the lock.
            self._apps = {**self._apps, name: app}

    def remove(self, name: str) -> Flask:
        with self._lock:
            apps = dict(self._apps)
            app = apps.pop(name)
            self._apps = apps
        return app

    def get(self, name: str) -> Flask | None:
        return self._apps.get(name)

    def names(self) -> list[str]:
        return list(self._apps)

    def apps(self) -> Iterable[Flask]:
        return list(self._apps.values())

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path: str = environ.get("PATH_INFO") or ""
        apps = self._apps
        if apps:
            if path.startswith(_INSERTED):
                name = path[len(_INSERTED):]
            else:
                name = path[1:].partition("/")[0]
            app = apps.get(name)
            if app is not None:
                return app(environ, start_response)
        return self._root_wsgi(environ, start_response)


def router_of(app: Flask) -> IssuerRouter | None:
    """The router of a root issuer's app; None for a further issuer's own app."""
    return app.extensions.get(ROUTER)
