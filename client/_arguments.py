"""How the client's public callables take their arguments.

* :func:`as_list`: the "one string or several" that ``scope``, ``resource``, ``audience``,
  ``scopes`` and extra form parameters accept, as one list.
* :func:`takes`: one list of parameters – a dataclass's fields, with their types, defaults and
  documentation – for several functions (``fetch_token`` and ``afetch_token`` take the same
  arguments but for their HTTP client). The function is called with the dataclass built from
  the call, so a wrong or missing keyword is Python's usual ``TypeError``; ``help()``,
  ``inspect.signature`` and type checkers (through the ``ParamSpec``) see the parameters.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any, ParamSpec, TypeVar

_P = ParamSpec("_P")
_A = TypeVar("_A")
_R = TypeVar("_R")


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


def takes(arguments: Callable[_P, _A]) -> Callable[[Callable[[_A], _R]], Callable[_P, _R]]:
    """Decorate ``fn(args)`` into a function with the parameters of ``arguments`` (a
    dataclass): it builds ``arguments(*args, **kwargs)`` and returns ``fn`` of that. An
    ``async def fn`` stays a coroutine function."""

    def decorate(fn: Callable[[_A], _R]) -> Callable[_P, _R]:
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                return await fn(arguments(*args, **kwargs))
        else:
            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                return fn(arguments(*args, **kwargs))
        returns = inspect.signature(fn).return_annotation
        wrapper.__signature__ = inspect.signature(arguments).replace(  # type: ignore[attr-defined]
            return_annotation=returns)
        return wrapper  # type: ignore[return-value]

    return decorate
