"""m2mauth's authorization server: a strict OAuth 2.0 client-credentials token endpoint that
issues RFC 9068 JWT access tokens, with JWKS and RFC 8414 metadata."""

from .app import create_app
from .clock import Clock
from .errors import ConfigError, KeyStoreError
from .settings import ClientSettings, ServerSettings, load_settings

__all__ = [
    "ClientSettings",
    "Clock",
    "ConfigError",
    "KeyStoreError",
    "ServerSettings",
    "create_app",
    "load_settings",
]
