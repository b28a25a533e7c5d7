"""The app factories of the core: the authorization server alone, without the lab."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask

from .errors import KeyStoreError
from .issuer import EXTENSION, METADATA_PATHS, Issuer
from .issuers import ROUTER, IssuerRouter
from .settings import ServerSettings, load_settings
from .store import StateStore, begin_request_reads, end_request_reads
from .views import after_request_hook, bp, metadata, probes

__all__ = ["create_core_app", "create_issuer_app"]


def create_core_app(settings: ServerSettings | None = None, *,
                    store: StateStore | None = None) -> Flask:
    """A new, independent authorization server app: token, JWKS and metadata endpoints of
    the issuer ``settings`` describe, the probes, and each further issuer of
    ``settings.issuers`` under its own path.

    Without ``settings`` they are loaded as `m2mauth serve` loads them (``M2MAUTH_CONFIG``,
    then ``M2MAUTH_*``). ``store`` holds the root issuer's state (default: the one
    ``settings.store`` names); each further issuer has its own (in a shared store, under its
    name). The issuer is at ``app.extensions["m2mauth"]``, the further
    issuers' apps at ``app.extensions["m2mauth_issuers"]`` (an :class:`IssuerRouter`).
    :func:`m2mauth.server.create_app` is this plus the lab, when the settings ask for it.
    """
    settings = (settings if settings is not None else load_settings()).validate()
    app = create_issuer_app(settings, store=store)
    app.register_blueprint(probes)
    router = app.extensions[ROUTER] = IssuerRouter(app)
    app.wsgi_app = router  # type: ignore[method-assign]
    for name in settings.issuers:
        try:
            issuer_app = create_issuer_app(settings.issuer_settings(name), namespace=name)
        except KeyStoreError as exc:
            # "no active RS256 signing key" alone does not say which of several issuers.
            raise KeyStoreError(f"issuers.{name}: {exc}") from None
        router.add(name, issuer_app)
    return app


class _IssuerFlask(Flask):
    """Flask, with :meth:`ensure_sync`'s answer kept per function: Flask asks ``inspect`` on
    every request, for every hook and the view, whether it is a coroutine function (about
    seven times a token request), and the answer for a registered function never changes."""

    #: Functions remembered at most; beyond, asked each time (after_this_request closures
    #: are new per request).
    MAX_REMEMBERED = 256

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        found = self._sync.get(func)
        if found is None:
            found = super().ensure_sync(func)
            if len(self._sync) < self.MAX_REMEMBERED:
                self._sync[func] = found
        return found


def create_issuer_app(settings: ServerSettings, *, store: StateStore | None = None,
                      namespace: str = "") -> Flask:
    """The app of one issuer, its endpoints under its URL's path (``/token`` for
    ``http://host:port``, ``/a/token`` for ``http://host:port/a``), without probes or
    further issuers: what the root app routes ``/NAME/...`` to. Without ``store``, the one
    the settings name, under ``namespace`` (see :class:`Issuer`)."""
    settings = settings.validate()
    # instance_path given: Flask cannot locate it for a package inside a namespace (m2mauth).
    app = _IssuerFlask("m2mauth.server", instance_path=str(Path(__file__).parent / "instance"))
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    # werkzeug answers "//token" with a 308 redirect and an HTML body; a client that POSTs
    # to a URL with a doubled slash gets the JSON 404 instead.
    app.url_map.merge_slashes = False
    issuer = app.extensions[EXTENSION] = Issuer(settings, store=store, namespace=namespace)
    # One version check of a shared store per request, not one per read (store.py); first,
    # so that the lab's hooks read through it too.
    if issuer.store.kind != "memory":  # a MemoryStore has no versions to check
        app.before_request(begin_request_reads)
        app.teardown_request(end_request_reads)
    app.register_blueprint(bp, url_prefix=issuer.mount or None)
    app.after_request(after_request_hook(settings.trust_proxy))
    if issuer.mount:
        # RFC 8414 section 3.1: for an issuer with a path, the well-known segment goes
        # between the host and the path. The OIDC location (path appended) is in bp.
        app.add_url_rule(METADATA_PATHS[0] + issuer.mount, endpoint="m2mauth_metadata",
                         view_func=metadata, methods=["GET"])
    return app
