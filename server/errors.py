"""Typed errors of the server package; the CLI and the views turn them into messages."""

from __future__ import annotations

from authlib.oauth2.rfc6749 import OAuth2Error

__all__ = ["ConfigError", "InvalidTargetError", "KeyStoreError", "StoreUnavailableError",
           "TemporarilyUnavailableError"]


class ConfigError(Exception):
    """A setting is wrong: names where it came from (file, environment, flag), the key and why."""

    def __init__(self, source: str, key: str, why: str) -> None:
        self.source = source
        self.key = key
        self.why = why
        super().__init__(f"{source}: {key}: {why}")


class KeyStoreError(Exception):
    """A signing key cannot be loaded, generated, rotated or retired."""


class InvalidTargetError(OAuth2Error):
    """RFC 8707 §2: the requested resource is invalid, unknown, malformed or not allowed."""

    error = "invalid_target"


class TemporarilyUnavailableError(OAuth2Error):
    """RFC 6749 §4.1.2.1's ``temporarily_unavailable``, as a 503: a bounded store is full of
    live entries (opaque tokens, revocations) and the server refuses rather than forget one."""

    error = "temporarily_unavailable"
    status_code = 503


class StoreUnavailableError(Exception):
    """The state store cannot be reached or cannot take a change now: Redis down or refusing
    writes, an SQLite file locked beyond its busy timeout or unreadable. The endpoints answer
    503 ``temporarily_unavailable`` with ``Retry-After`` (views.py, in one place) and recover
    by themselves when the store answers again. The message names the store, never its
    password."""
