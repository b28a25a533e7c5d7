"""What a step or lesson checks about the answers it got: each check prints one ``[ok]`` line,
or raises :class:`Misbehaved` saying what was expected and what came instead."""

from __future__ import annotations

from typing import Any

import requests

from m2mauth.client.challenge import Challenge, parse_challenges

from .output import Output

__all__ = ["Misbehaved", "bearer_challenge", "check", "expect", "json_object", "oauth_error"]


class Misbehaved(Exception):
    """A step or lesson did not behave as taught (the server differs from what it teaches)."""


def expect(out: Output, condition: bool, what: str, instead: str = "") -> None:
    """``what`` holds, or the step fails with it (and ``instead``: what was seen)."""
    if not condition:
        raise Misbehaved(f"expected {what}" + (f", got {instead}" if instead else ""))
    out.ok(what)


def check(out: Output, label: str, expected: Any, actual: Any) -> None:
    """``label`` is ``expected``."""
    expect(out, expected == actual, f"{label} {expected}", repr(actual))


def json_object(response: requests.Response) -> dict[str, Any]:
    """The response's JSON object, or the step fails."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise Misbehaved(f"expected a JSON object from {response.request.method} "
                         f"{response.url} (HTTP {response.status_code})")
    return body


def oauth_error(response: requests.Response) -> str | None:
    """The RFC 6749 section 5.2 ``error`` of a JSON error response, if any."""
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, str) else None


def bearer_challenge(response: requests.Response) -> Challenge | None:
    """The ``Bearer`` challenge of the response's ``WWW-Authenticate`` (RFC 6750 section 3)."""
    for challenge in parse_challenges(response.headers.get("WWW-Authenticate")):
        if challenge.scheme == "bearer":
            return challenge
    return None
