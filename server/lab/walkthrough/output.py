"""How the walkthrough prints: sections, the texts it teaches, exchanges and check results,
coloured with ``click.style`` on a terminal and plain otherwise (and with ``NO_COLOR`` set,
https://no-color.org)."""

from __future__ import annotations

import os
import sys
import textwrap
from typing import Any, TextIO

import click

__all__ = ["Output", "wants_colour"]

_WIDTH = 92


def wants_colour(stream: TextIO) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set to anything non-empty."""
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Output:
    """Where the walkthrough writes (stdout); ``colour`` None decides from the stream."""

    def __init__(self, stream: TextIO | None = None, colour: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.colour = wants_colour(self.stream) if colour is None else colour

    def line(self, text: str = "", **style: Any) -> None:
        # click.echo strips ANSI codes from a non-terminal stream unless told otherwise;
        # telling it keeps the decision (NO_COLOR, tests) in one place.
        click.echo(click.style(text, **style) if style and self.colour else text,
                   file=self.stream, color=self.colour)

    def heading(self, kind: str, number: int, total: int, name: str, title: str) -> None:
        self.line()
        self.line(f"=== {kind} {number}/{total}: {name} - {title}", bold=True, fg="blue")

    def prose(self, text: str, label: str = "", indent: str = "") -> None:
        """A paragraph of teaching text, wrapped; ``label`` (does, shows ...) in front."""
        first = f"{indent}{label}: " if label else indent
        wrapped = textwrap.fill(text, _WIDTH, initial_indent=first,
                                subsequent_indent=indent + " " * (len(label) + 2 if label else 0))
        if label and self.colour:
            wrapped = click.style(first, bold=True) + wrapped[len(first):]
        click.echo(wrapped, file=self.stream, color=self.colour)

    def explain(self, name: str, value: str, why: str, width: int = 14) -> None:
        """One field, header member or claim: its value and what it means (a name longer
        than ``width`` puts the value on a line of its own)."""
        indent = "  " + " " * (width + 1)
        if len(name) > width:
            self.line(f"  {name}", bold=True)
            self.line(f"{indent}{value}", bold=True)
        else:
            self.line(f"  {name:<{width}} {value}", bold=True)
        self.line(textwrap.fill(why, _WIDTH, initial_indent=indent,
                                subsequent_indent=indent), dim=True)

    def request(self, text: str) -> None:
        self.line(text, fg="cyan")

    def response(self, text: str, status: int) -> None:
        self.line(text, fg="green" if status < 400 else "yellow" if status < 500 else "red")

    def detail(self, text: str) -> None:
        self.line(text, dim=True)

    def ok(self, text: str) -> None:
        self.line(f"  [ok] {text}", fg="green")

    def failed(self, text: str) -> None:
        self.line(f"  [FAILED] {text}", fg="red", bold=True)
