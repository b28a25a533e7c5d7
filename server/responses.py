"""The JSON responses every endpoint, core and lab, answers with: never an HTML page."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Response, json

__all__ = ["basic_challenge", "json_error", "json_response"]


def json_response(body: Any, status: int = 200,
                  headers: Mapping[str, str] | None = None) -> Response:
    """A JSON response that no cache keeps (RFC 6749 §5.1: ``Cache-Control: no-store``)."""
    response = Response(json.dumps(body), status=status, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def json_error(status: int, error: str | None, description: str | None = None,
               headers: Mapping[str, str] | None = None, **extra: Any) -> Response:
    """An RFC 6749 §5.2-shaped error: ``{"error", "error_description", ...}``, never HTML."""
    body: dict[str, Any] = {"error": error} if error else {}
    if description:
        body["error_description"] = description
    body.update(extra)
    return json_response(body, status, headers)


def basic_challenge(realm: str) -> str:
    """The ``WWW-Authenticate`` value of the token endpoint's 401s (RFC 7617): Basic is the
    one header scheme it takes."""
    return f'Basic realm="{realm}", charset="UTF-8"'
