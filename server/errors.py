"""Typed errors of the server package; the CLI and the views turn them into messages."""

from __future__ import annotations

from authlib.oauth2.rfc6749 import OAuth2Error


class ConfigError(Exception):
    """A setting is wrong: names where it came from (file, environment, flag), the key and why."""

    def __init__(self, source: str, key: str, why: str) -> None:
        self.source = source
        self.key = key
        self.why = why
        super().__init__(f"{source}: {key}: {why}")


class KeyStoreError(Exception):
    """A signing key cannot be loaded, generated, rotated or retired."""


def safe_description(text: str, limit: int = 200) -> str:
    """``text`` cut to what an RFC 6749 error_description may carry (%x20-21 / %x23-5B /
    %x5D-7E); request input echoed in an error goes through here first."""
    cleaned = "".join(
        c if (c == " " or ("\x21" <= c <= "\x7e" and c not in '"\\')) else "?"
        for c in text[:limit]
    )
    return cleaned + ("..." if len(text) > limit else "")



class InvalidTargetError(OAuth2Error):
    """RFC 8707 §2: the requested resource is invalid, unknown, malformed or not allowed."""

    error = "invalid_target"
