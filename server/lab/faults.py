"""Injected failures for negative tests: the next N responses of an endpoint are an error,
a delay, a dropped connection, a malformed body, or (token endpoint) a token response without
``expires_in``. Queued in the issuer's state store; applied by the lab's request hooks."""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import asdict, dataclass
from typing import Any

from flask import Request, Response, json

from ..responses import basic_challenge, json_error
from ..serving import SOCKET_KEY

__all__ = ["ENDPOINTS", "KINDS", "Fault", "drop_connection", "response_for", "strip_expires_in"]

#: Endpoints that take faults, by the name of their Flask view.
ENDPOINTS = {"token": "m2mauth.token", "jwks": "m2mauth.jwks",
             "introspection": "m2mauth.introspect", "revocation": "m2mauth.revoke"}
#: What a fault does to one response.
KINDS = ("error", "delay", "drop", "malformed", "no_expires_in")
#: Kinds that answer in place of the endpoint; the others let it answer.
ANSWERING_KINDS = frozenset({"error", "drop", "malformed"})

_MALFORMED = {"token": b'{"access_token": "eyJ', "jwks": b'{"keys": [{"kty": ',
              "introspection": b'{"active": tr', "revocation": b"{"}


@dataclass(frozen=True)
class Fault:
    """One queued failure; ``remaining`` responses still to spoil."""

    endpoint: str = "token"
    kind: str = "error"
    status: int = 503
    error: str | None = "temporarily_unavailable"
    error_description: str | None = None
    #: ``Retry-After`` header value in seconds (error kind only).
    retry_after: int | None = None
    #: Seconds to wait before answering (delay kind: then the normal response).
    delay: float = 0.0
    remaining: int = 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def response_for(fault: Fault, request: Request, realm: str) -> Response | None:
    """The response an injected fault makes in place of the endpoint's; None to go on with
    the real one (after a delay, or to strip ``expires_in`` from it afterwards)."""
    if fault.kind == "delay":
        time.sleep(fault.delay)  # the simulated slowness itself; bounded by the fault's value
        return None
    if fault.kind == "no_expires_in":
        return None
    if fault.kind == "malformed":
        return Response(_MALFORMED[fault.endpoint], status=200, mimetype="application/json")
    if fault.kind == "drop":
        if _socket(request) is not None:
            return Response(b"", status=500)  # never sent: drop_connection() closes first
        return json_error(502, "server_error", "Connection dropped (injected; no socket here).")
    headers = {}
    if fault.retry_after is not None:
        headers["Retry-After"] = str(fault.retry_after)
    if fault.status == 401:  # RFC 9110 §15.5.2: a 401 always carries a challenge
        headers["WWW-Authenticate"] = basic_challenge(realm)
    return json_error(fault.status, fault.error, fault.error_description, headers)


def strip_expires_in(response: Response) -> None:
    """The ``no_expires_in`` fault: a real token response without ``expires_in``."""
    if response.status_code == 200:
        body = response.get_json()
        body.pop("expires_in", None)
        response.set_data(json.dumps(body))


def drop_connection(request: Request) -> None:
    """The ``drop`` fault: close the connection under the response, so the client sees it
    drop with no answer."""
    sock = _socket(request)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _socket(request: Request) -> socket.socket | None:
    """The connection's socket, from m2mauth's own server or werkzeug's."""
    return request.environ.get(SOCKET_KEY) or request.environ.get("werkzeug.socket")
