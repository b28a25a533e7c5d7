"""The HTTP admin API: every test control as JSON under ``/admin``, for users who run
`m2mauth serve` from Docker, CI or another language. It calls the same :class:`Controls`
methods as the Python handle, so both validate alike and a bad request changes nothing.

On by default only when the server listens on loopback; otherwise only with an admin token
(``Authorization: Bearer <admin_token>``), which is also required on loopback once set.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import asdict
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, json, request

from .control import ControlError, Controls

__all__ = ["ADMIN_PREFIX", "bp"]

ADMIN_PREFIX = "/admin"

bp = Blueprint("m2mauth_admin", __name__, url_prefix=ADMIN_PREFIX)

#: The index served at GET /admin: method, path, what it does, and the JSON fields it takes.
OPERATIONS: list[dict[str, Any]] = [
    {"method": "GET", "path": "/admin", "does": "this index"},
    {"method": "GET", "path": "/admin/clients", "does": "list clients (no secrets)"},
    {"method": "POST", "path": "/admin/clients", "does": "add a client; answers its secret",
     "fields": ["client_id", "client_secret", "jwks", "scopes", "audiences", "default_scopes",
                "default_audience", "auth_methods", "claims", "token_lifetime", "algorithm"]},
    {"method": "DELETE", "path": "/admin/clients/<client_id>", "does": "remove a client"},
    {"method": "POST", "path": "/admin/tokens", "does": "mint a token without the token endpoint",
     "fields": ["client_id", "scope", "audience", "expires_in", "claims", "headers", "alg",
                "signing_key"]},
    {"method": "GET", "path": "/admin/clock", "does": "the server's time"},
    {"method": "POST", "path": "/admin/clock", "does": "move the server's time",
     "fields": ["freeze", "at", "advance", "offset", "reset"]},
    {"method": "GET", "path": "/admin/faults", "does": "faults still queued"},
    {"method": "POST", "path": "/admin/faults", "does": "spoil the next n responses",
     "fields": ["n", "endpoint", "kind", "status", "error", "error_description",
                "retry_after", "delay"]},
    {"method": "DELETE", "path": "/admin/faults", "does": "drop queued faults"},
    {"method": "GET", "path": "/admin/requests/token", "does": "token requests received"},
    {"method": "GET", "path": "/admin/requests/jwks", "does": "JWKS fetches received"},
    {"method": "DELETE", "path": "/admin/requests", "does": "clear both request logs"},
    {"method": "GET", "path": "/admin/keys", "does": "signing keys and their status"},
    {"method": "POST", "path": "/admin/keys/rotate", "does": "new active key; old stays published",
     "fields": ["alg"]},
    {"method": "POST", "path": "/admin/keys/<kid>/retire", "does": "remove a key from the JWKS"},
    {"method": "POST", "path": "/admin/reset", "does": "undo every change since start"},
]
_FIELDS = {(op["method"], op["path"]): op.get("fields", []) for op in OPERATIONS}


def _controls() -> Controls:
    return current_app.extensions["m2mauth_controls"]


def _json(body: Any, status: int = 200) -> Response:
    response = Response(json.dumps(body), status=status, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response


def _fail(status: int, error: str, description: str, **extra: Any) -> Response:
    return _json({"error": error, "error_description": description, **extra}, status)


def _body(method: str, path: str) -> dict[str, Any]:
    """The request's JSON object, with every field known to this operation."""
    if not request.get_data(cache=True):
        return {}
    if not request.is_json:
        # Kept strict: a JSON content type makes browsers preflight a cross-site request, so
        # a web page cannot drive a loopback admin API that needs no token.
        raise ControlError("Content-Type", "must be application/json (curl: -H 'Content-Type:"
                           " application/json')")
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # nested too deeply for json.loads; silent= catches ValueError only
        body = None
    if not isinstance(body, dict):
        raise ControlError("(body)", "must be a JSON object")
    allowed = _FIELDS[(method, path)]
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise ControlError(unknown[0], f"unknown field (known: {', '.join(allowed) or 'none'})")
    return body


@bp.before_request
def _guard() -> Response | None:
    state = current_app.extensions["m2mauth"]
    settings = state.settings
    if not state.admin_enabled:
        return _fail(403, "access_denied", "The admin API is off: the server listens on a "
                     "non-loopback address and no admin token is configured.")
    if settings.admin_token is not None:
        scheme, _, given = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), settings.admin_token.encode()
        ):
            response = _fail(401, "invalid_token", "The admin API needs the admin token.")
            response.headers["WWW-Authenticate"] = 'Bearer realm="m2mauth admin"'
            return response
    elif _from_a_browser_elsewhere():
        return _fail(403, "access_denied", "The admin API without an admin token refuses "
                     "cross-site browser requests (an Origin header, Sec-Fetch-Site, or a "
                     "Host that is neither loopback nor the issuer's).")
    return None


def _from_a_browser_elsewhere() -> bool:
    """Whether a tokenless request may come from a web page rather than a local tool: a
    cross-site form POST needs no preflight and carries an empty or form body, and a
    DNS-rebound page talks to us under its own host name. Browsers send Origin on every
    non-GET request; curl, requests and test code send none."""
    if "Origin" in request.headers:
        return True
    if request.headers.get("Sec-Fetch-Site", "none") not in ("none", "same-origin"):
        return True
    try:
        host = urlsplit("//" + request.host).hostname or ""
    except ValueError:  # "[::1" and the like
        return True
    if host in ("localhost", urlsplit(current_app.extensions["m2mauth"].issuer).hostname):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


@bp.errorhandler(ControlError)
def _control_error(exc: ControlError) -> Response:
    return _fail(400, "invalid_request", str(exc), field=exc.field)


@bp.get("")
def index() -> Response:
    return _json({"operations": OPERATIONS})


@bp.get("/clients")
def list_clients() -> Response:
    return _json({"clients": [
        {k: v for k, v in c.as_dict().items() if k != "client_secret"}
        for c in _controls().clients()
    ]})


@bp.post("/clients")
def add_client() -> Response:
    client = _controls().add_client(**_body("POST", "/admin/clients"))
    return _json(client.as_dict(), 201)


@bp.delete("/clients/<path:client_id>")
def remove_client(client_id: str) -> Response:
    _controls().remove_client(client_id)
    return _json({"removed": client_id})


@bp.post("/tokens")
def issue_token() -> Response:
    body = _body("POST", "/admin/tokens")
    if "client_id" not in body:
        raise ControlError("client_id", "is required")
    return _json({"access_token": _controls().issue_token(**body)})


@bp.get("/clock")
def get_clock() -> Response:
    return _json(_controls().clock_status())


@bp.post("/clock")
def set_clock() -> Response:
    return _json(_controls().set_clock(**_body("POST", "/admin/clock")))


@bp.get("/faults")
def list_faults() -> Response:
    return _json({"faults": [f.as_dict() for f in _controls().faults()]})


@bp.post("/faults")
def add_fault() -> Response:
    fault = _controls().fail_next(**_body("POST", "/admin/faults"))
    return _json(fault.as_dict(), 201)


@bp.delete("/faults")
def clear_faults() -> Response:
    _controls().clear_faults()
    return _json({"faults": []})


@bp.get("/requests/token")
def token_requests() -> Response:
    return _json({"requests": [asdict(r) for r in _controls().token_requests]})


@bp.get("/requests/jwks")
def jwks_requests() -> Response:
    return _json({"requests": [asdict(r) for r in _controls().jwks_requests]})


@bp.delete("/requests")
def clear_requests() -> Response:
    _controls().clear_requests()
    return _json({"requests": []})


@bp.get("/keys")
def list_keys() -> Response:
    return _json({"keys": _controls().keys()})


@bp.post("/keys/rotate")
def rotate_key() -> Response:
    kid = _controls().rotate_key(**_body("POST", "/admin/keys/rotate"))
    return _json({"kid": kid, "keys": _controls().keys()}, 201)


@bp.post("/keys/<kid>/retire")
def retire_key(kid: str) -> Response:
    _body("POST", "/admin/keys/<kid>/retire")
    _controls().retire_key(kid)
    return _json({"retired": kid, "keys": _controls().keys()})


@bp.post("/reset")
def reset() -> Response:
    _body("POST", "/admin/reset")
    _controls().reset()
    return _json({"reset": True})
