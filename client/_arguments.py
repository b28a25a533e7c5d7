"""How the client takes "one string or several": :func:`as_list` makes the ``scope``,
``resource``, ``audience``, ``scopes`` and extra form parameters it accepts one list."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def as_list(value: str | Iterable[Any] | None, *, split: bool = False) -> list[Any]:
    """None, one string, or an iterable of them as a list. With ``split`` every string is a
    space-separated list (a scope, RFC 6749 §3.3) and adds its items; without, each string is
    one item. Items that are not strings are left for the caller to refuse."""
    if isinstance(value, str):  # the common case first: the validator calls this per token
        return value.split() if split else [value]
    if value is None:
        return []
    if split:
        return [part for item in value for part in item.split()]
    return list(value)
