"""RFC 6749 Appendix A character classes, checked in one place: scope tokens, scopes, client
ids, error codes and error descriptions."""

from __future__ import annotations

import re

__all__ = [
    "is_client_id", "is_error_text", "is_scope", "is_scope_token", "printable", "safe_description",
    "strings",
]

# A.4: scope-token = 1*NQCHAR; NQCHAR = %x21 / %x23-5B / %x5D-7E
_NQCHAR = r"\x21\x23-\x5b\x5d-\x7e"
_SCOPE_TOKEN = re.compile(f"[{_NQCHAR}]+")
# A.4: scope = scope-token *( SP scope-token )
_SCOPE = re.compile(f"[{_NQCHAR}]+( [{_NQCHAR}]+)*")
# A.1: client-id = *VSCHAR; m2mauth also refuses empty ids and very long ones.
_CLIENT_ID = re.compile(r"[\x20-\x7e]{1,255}")
# A.7 / A.8: error and error_description = 1*( %x20-21 / %x23-5B / %x5D-7E )
_ERROR_TEXT = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]+")


def is_scope_token(value: object) -> bool:
    return isinstance(value, str) and _SCOPE_TOKEN.fullmatch(value) is not None


def is_scope(value: object) -> bool:
    """A space-separated list of scope tokens (single spaces, none leading or trailing)."""
    return isinstance(value, str) and _SCOPE.fullmatch(value) is not None


def is_client_id(value: object) -> bool:
    return isinstance(value, str) and _CLIENT_ID.fullmatch(value) is not None


def is_error_text(value: object) -> bool:
    """Whether ``value`` may be an ``error`` or ``error_description`` as it is."""
    return isinstance(value, str) and _ERROR_TEXT.fullmatch(value) is not None


def strings(value: object) -> list[str] | None:
    """Scopes, audiences and auth methods given as one space-separated string or a list of
    strings, as a list; None when ``value`` is neither."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def safe_description(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters and made a valid error_description (characters
    outside the class become ``?``); request input echoed in an error goes through here."""
    cleaned = "".join(
        c if (c == " " or ("\x21" <= c <= "\x7e" and c not in '"\\')) else "?"
        for c in text[:limit]
    )
    return cleaned + ("..." if len(text) > limit else "")


def printable(value: str | None, limit: int = 80) -> str:
    """A log-safe rendering of caller input: quoted, escaped, cut (no log injection)."""
    if value is None:
        return "-"
    text = value if len(value) <= limit else value[:limit] + "..."
    return ascii(text)
