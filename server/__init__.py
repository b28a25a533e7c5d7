"""m2mauth's authorization server: a strict OAuth 2.0 client-credentials token endpoint that
issues RFC 9068 JWT access tokens, with JWKS, RFC 8414 metadata and test controls.

Names are imported on first use, so that loading the pytest plugin (a submodule) does not
import Flask and Authlib into test runs that never use it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app
    from .clock import Clock
    from .control import ControlError, Controls, RegisteredClient
    from .errors import ConfigError, KeyStoreError
    from .idp import IdentityProvider
    from .settings import ClientSettings, ServerSettings, load_settings
    from .tokens import tampered

_EXPORTS = {
    "create_app": "app",
    "Clock": "clock",
    "ControlError": "control",
    "Controls": "control",
    "RegisteredClient": "control",
    "ConfigError": "errors",
    "KeyStoreError": "errors",
    "IdentityProvider": "idp",
    "ClientSettings": "settings",
    "ServerSettings": "settings",
    "load_settings": "settings",
    "tampered": "tokens",
}

__all__ = [
    "ClientSettings",
    "Clock",
    "ConfigError",
    "ControlError",
    "Controls",
    "IdentityProvider",
    "KeyStoreError",
    "RegisteredClient",
    "ServerSettings",
    "create_app",
    "load_settings",
    "tampered",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
