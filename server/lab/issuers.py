"""Further issuers as test controls: list them, add one at run time (``POST /admin/issuers``,
``idp.add_issuer``), remove it, and put them all back as the server started.

An issuer added here is a full one, like an ``[issuers.NAME]`` table: its own app, keys,
clients, clock, faults, request log and admin API, at ``<origin>/<name>``. An unknown name is
never created on first use (navikt's mock-oauth2-server does that): a service configured with
a mistyped issuer would then get tokens and pass its tests against an issuer nobody declared.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..app import create_issuer_app
from ..errors import ConfigError
from ..issuer import EXTENSION as CORE_EXTENSION
from ..issuers import IssuerRouter
from ..settings import (
    ISSUER_KEYS,
    ClientSettings,
    ServerSettings,
    issuer_name_problem,
    issuer_values,
)
from .controls import ControlError

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["ADDABLE_KEYS", "MAX_ADDED_ISSUERS", "IssuerControls"]

#: What an issuer added at run time may set: an ``[issuers.NAME]`` table's keys but those
#: that read files on the server (the admin API must not open paths its caller names).
ADDABLE_KEYS = tuple(k for k in ISSUER_KEYS if k not in ("keys_dir", "unsafe_key_permissions"))
#: Issuers that may be added at run time: each holds keys and an app in memory.
MAX_ADDED_ISSUERS = 64


class IssuerControls:
    """The further issuers of one server (the root issuer's app and its router)."""

    def __init__(self, root: Flask, router: IssuerRouter) -> None:
        self._root = root
        self._router = router
        self._declared = frozenset(router.names())
        self._lock = threading.Lock()

    @property
    def settings(self) -> ServerSettings:
        return self._root.extensions[CORE_EXTENSION].settings

    def names(self) -> list[str]:
        return self._router.names()

    def app(self, name: str) -> Flask:
        app = self._router.get(name)
        if app is None:
            raise ControlError("name", f"no issuer {name!r} on this server")
        return app

    def describe(self) -> list[dict[str, Any]]:
        """Each further issuer: name, URL, and whether the configuration declared it."""
        found = []
        for name in self._router.names():
            app = self._router.get(name)
            if app is not None:
                issuer = app.extensions[CORE_EXTENSION]
                found.append({"name": name, "issuer": issuer.issuer,
                              "declared": name in self._declared})
        return found

    def add(self, name: str, **fields: Any) -> Flask:
        """A new issuer at ``<origin>/<name>``, with an ``[issuers.NAME]`` table's settings
        (clients as tables or :class:`ClientSettings`); its app, lab attached."""
        from .extension import Lab  # the extension imports this module

        if self.settings.workers > 1:
            # The list of issuers added at run time is a process's (its router's): under
            # --workers each worker would have its own, and a request would find the issuer
            # or not by the worker it reached.
            raise ControlError("name", f"issuers cannot be added at run time with --workers "
                               f"{self.settings.workers} (each worker process would have "
                               "its own); declare it in the configuration ([issuers.NAME])")
        problem = issuer_name_problem(name)
        if problem is None and self.settings.mount.split("/")[1:2] == [name]:
            problem = f"is the first segment of the root issuer's path {self.settings.mount!r}"
        if problem is not None:
            raise ControlError("name", problem)
        unknown = sorted(set(fields) - set(ADDABLE_KEYS))
        if unknown:
            raise ControlError(unknown[0], f"unknown field (known: name, "
                                           f"{', '.join(ADDABLE_KEYS)})")
        settings = self._settings_for(name, fields)
        with self._lock:
            if self._router.get(name) is not None:
                raise ControlError("name", f"an issuer {name!r} already exists")
            added = len(set(self._router.names()) - self._declared)
            if added >= MAX_ADDED_ISSUERS:
                raise ControlError("name", f"{MAX_ADDED_ISSUERS} issuers were added already; "
                                           "remove one first")
            app = create_issuer_app(settings)
            Lab(app)
            self._router.add(name, app)
        return app

    def _settings_for(self, name: str, fields: Mapping[str, Any]) -> ServerSettings:
        source = "admin API"
        values = dict(fields)
        clients = values.pop("clients", None)
        try:
            values = issuer_values(source, name, values, Path.cwd())
            if clients is not None:
                if not isinstance(clients, list):
                    raise ConfigError(source, f"issuers.{name}.clients", "must be a list")
                if all(isinstance(c, ClientSettings) for c in clients):
                    values["clients"] = list(clients)
                else:
                    if any(isinstance(c, dict) and "jwks_file" in c for c in clients):
                        raise ConfigError(source, f"issuers.{name}.clients",
                                          "jwks_file is not taken here (it reads a file on "
                                          "the server); give jwks")
                    values["clients"] = issuer_values(
                        source, name, {"clients": clients}, Path.cwd())["clients"]
            # In memory, whatever the server's store: the list of issuers added at run time
            # is this process's (the router's), so their state is too; a name added again
            # starts afresh.
            settings = replace(self.settings.issuer_settings(name, values), store="memory")
            settings.validate(source)
        except ConfigError as exc:
            raise ControlError(exc.key.removeprefix(f"issuers.{name}."), exc.why) from None
        return settings

    def remove(self, name: str) -> None:
        """Remove an issuer added at run time (declared ones stay: reset puts them back)."""
        with self._lock:
            self.app(name)
            if name in self._declared:
                raise ControlError("name", f"{name!r} is declared in the configuration; "
                                           "it stays (its own /admin/reset puts it back)")
            self._router.remove(name)

    def reset(self) -> None:
        """Remove the issuers added at run time; reset every declared one."""
        from .admin import EXTENSION

        with self._lock:
            for name in self._router.names():
                if name not in self._declared:
                    self._router.remove(name)
        for name in self._declared:
            app = self._router.get(name)
            if app is not None:
                app.extensions[EXTENSION].reset()
