"""Text from outside – a server's error description, a token's ``kid`` – made safe to put in
an error message or a log line: cut to a length and with every character that could break or
forge a line replaced by ``?``. One rule, two alphabets: anything printable for prose, a
short identifier alphabet for a key id (which is then quoted)."""

from __future__ import annotations

import string
from collections.abc import Callable

#: What a key id may show of itself; anything else (quotes, spaces, escapes) becomes ``?``.
_KID_CHARACTERS = frozenset(string.ascii_letters + string.digits + "._:/+=@-")


def restricted(value: object, limit: int, allowed: Callable[[str], bool]) -> str:
    """``str(value)`` cut to ``limit`` characters (``...`` marks a cut), each character that
    ``allowed`` refuses replaced by ``?``."""
    text = str(value)
    kept = "".join(c if allowed(c) else "?" for c in text[:limit])
    return kept + ("..." if len(text) > limit else "")


def printable(value: object, limit: int) -> str | None:
    """Untrusted prose (a server's ``error_description``), printable and short; None stays
    None. No control characters, so a hostile server cannot forge log lines."""
    if value is None:
        return None
    return restricted(value, limit, str.isprintable)


def shown(value: object, limit: int = 40) -> str:
    """An attacker-supplied identifier (a ``kid``), quoted, for an error description and a
    log line: only the characters key ids are made of, ``(none)`` for None."""
    if value is None:
        return "(none)"
    return "'" + restricted(value, limit, _KID_CHARACTERS.__contains__) + "'"
