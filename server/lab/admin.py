"""The HTTP admin API: every test control as JSON under ``/admin``, for users who run
`m2mauth serve` from Docker, CI or another language. It calls the same :class:`Controls`
methods as the Python handle, so both validate alike and a bad request changes nothing.

With an admin token configured, every request needs ``Authorization: Bearer <admin_token>``.
Without one, it answers only requests whose peer (``REMOTE_ADDR``) is a loopback address,
on a server configured to listen on loopback, that do not look like another site's web page –
decided per request, so it holds under any WSGI server. The playground (``/playground``), a
page of this same origin, passes.
"""

from __future__ import annotations

import hmac
from dataclasses import asdict
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, request

from ..responses import json_error, json_response
from ..settings import is_loopback
from .controls import ControlError, Controls
from .issuers import ADDABLE_KEYS, IssuerControls

__all__ = ["ADMIN_PREFIX", "EXTENSION", "OPERATIONS", "bp"]

ADMIN_PREFIX = "/admin"

bp = Blueprint("m2mauth_admin", __name__, url_prefix=ADMIN_PREFIX)

#: The index served at GET /admin: method, path, what it does, and the JSON fields it takes.
OPERATIONS: list[dict[str, Any]] = [
    {"method": "GET", "path": "/admin", "does": "this index"},
    {"method": "GET", "path": "/admin/clients", "does": "list clients (no secrets)"},
    {"method": "POST", "path": "/admin/clients", "does": "add a client; answers its secret",
     "fields": ["client_id", "client_secret", "jwks", "scopes", "audiences", "default_scopes",
                "default_audience", "auth_methods", "claims", "token_lifetime", "algorithm",
                "token_format", "introspect", "dpop", "dpop_nonce"]},
    {"method": "DELETE", "path": "/admin/clients/<client_id>", "does": "remove a client"},
    {"method": "POST", "path": "/admin/tokens", "does": "mint a token without the token endpoint",
     "fields": ["client_id", "scope", "audience", "expires_in", "claims", "headers", "alg",
                "signing_key", "token_format"]},
    {"method": "POST", "path": "/admin/introspect", "does": "what /introspect answers for a "
     "token", "fields": ["token"]},
    {"method": "POST", "path": "/admin/revoke", "does": "revoke a token (RFC 7009)",
     "fields": ["token"]},
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
    {"method": "GET", "path": "/admin/requests/introspection",
     "does": "introspection requests received"},
    {"method": "GET", "path": "/admin/requests/revocation",
     "does": "revocation requests received"},
    {"method": "DELETE", "path": "/admin/requests", "does": "clear both request logs"},
    {"method": "GET", "path": "/admin/keys", "does": "signing keys and their status"},
    {"method": "POST", "path": "/admin/keys/rotate", "does": "new active key; old stays published",
     "fields": ["alg"]},
    {"method": "POST", "path": "/admin/keys/<kid>/retire", "does": "remove a key from the JWKS"},
    {"method": "POST", "path": "/admin/dpop/proofs", "does": "mint a DPoP proof, valid or "
     "with a defect; a key (private JWK) is made when none is given",
     "fields": ["key", "alg", "method", "url", "token", "nonce", "defect", "claims"]},
    {"method": "POST", "path": "/admin/dpop/tokens", "does": "mint a DPoP-bound token for a "
     "client and key", "fields": ["client_id", "key", "alg", "scope", "audience", "expires_in",
                                  "claims", "token_format"]},
    {"method": "GET", "path": "/admin/dpop/nonce", "does": "whether DPoP nonces are required, "
     "and the current one"},
    {"method": "POST", "path": "/admin/dpop/nonce", "does": "require DPoP nonces (true), not "
     "(false), or as the dpop_nonce setting says (null)", "fields": ["required"]},
    {"method": "POST", "path": "/admin/reset", "does": "undo every change since start"},
    {"method": "GET", "path": "/admin/issuers", "does": "further issuers on this server "
     "(root issuer only)"},
    {"method": "POST", "path": "/admin/issuers", "does": "add an issuer at /<name> "
     "(root issuer only)", "fields": ["name", *ADDABLE_KEYS]},
    {"method": "DELETE", "path": "/admin/issuers/<name>", "does": "remove an added issuer "
     "(root issuer only)"},
]
_FIELDS = {(op["method"], op["path"]): op.get("fields", []) for op in OPERATIONS}


#: Where a Flask app keeps the lab's controls.
EXTENSION = "m2mauth_lab"


def _controls() -> Controls:
    return current_app.extensions[EXTENSION].controls




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


#: Headers a reverse proxy adds to name the client it forwards for, or the origin that client
#: used: a proxy may send only X-Forwarded-Host and -Proto, which --trust-proxy itself takes
#: as the mark of a forwarded request (forwarded.py).
_FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP", "X-Forwarded-Host",
                       "X-Forwarded-Proto", "X-Forwarded-Port", "X-Forwarded-Prefix")


@bp.before_request
def _guard() -> Response | None:
    lab = current_app.extensions[EXTENSION]
    token = lab.controls.settings.admin_token
    if not lab.admin_enabled:
        return json_error(403, "access_denied", "The admin API is off: the server listens on a "
                          "non-loopback address and no admin token is configured.")
    if token is not None:
        scheme, _, given = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            return json_error(401, "invalid_token", "The admin API needs the admin token.",
                              {"WWW-Authenticate": 'Bearer realm="m2mauth admin"'})
    elif not is_loopback(request.remote_addr or ""):
        # Where the server listens says nothing under another WSGI server (gunicorn binds
        # what its command line says), nor behind a proxy: the peer itself must be local.
        return json_error(403, "access_denied", "The admin API without an admin token answers "
                          "only requests from a loopback address; configure an admin token to "
                          "use it from elsewhere.")
    elif any(name in request.headers for name in _FORWARDING_HEADERS):
        # A reverse proxy on this host makes every peer loopback; whom it forwards for is
        # anyone.
        return json_error(403, "access_denied", "The admin API without an admin token refuses "
                          "requests forwarded by a proxy (Forwarded, X-Forwarded-*, X-Real-IP); "
                          "configure an admin token to use it through one.")
    elif _from_a_browser_elsewhere():
        return json_error(403, "access_denied", "The admin API without an admin token refuses "
                          "browser requests from other sites (an Origin other than this "
                          "server's, Sec-Fetch-Site other than same-origin, or a Host that is "
                          "neither loopback nor the issuer's); the playground's own requests "
                          "pass.")
    return None


def _from_a_browser_elsewhere() -> bool:
    """Whether a tokenless request may come from a web page rather than a local tool or the
    playground: a cross-site form POST needs no preflight and carries an empty or form body,
    and a DNS-rebound page talks to us under its own host name. Browsers send Origin on every
    non-GET request; curl, requests and test code send none."""
    try:
        host = urlsplit("//" + request.host).hostname or ""
    except ValueError:  # "[::1" and the like
        return True
    if host not in ("localhost", urlsplit(_controls().core.issuer).hostname) and not (
        is_loopback(host)
    ):
        # A rebound name: the page's origin and our Host agree, but neither is ours.
        return True
    origin = request.headers.get("Origin")
    if origin is not None and not _own_page(origin):
        return True
    return request.headers.get("Sec-Fetch-Site", "none") not in ("none", "same-origin")


def _own_page(origin: str) -> bool:
    """Whether Origin names this server as the request reached it (scheme and Host, which
    the caller checked is loopback or the issuer's), sent by a browser that itself calls the
    request same-origin: the playground's fetch() calls, and nothing from another site."""
    own = f"{request.scheme}://{request.host}"
    return (hmac.compare_digest(origin.lower().encode(), own.lower().encode())
            and request.headers.get("Sec-Fetch-Site") == "same-origin")


@bp.errorhandler(ControlError)
def _control_error(exc: ControlError) -> Response:
    return json_error(400, "invalid_request", str(exc), field=exc.field)


@bp.get("")
def index() -> Response:
    return json_response({"operations": OPERATIONS})


@bp.get("/clients")
def list_clients() -> Response:
    return json_response({"clients": [
        {k: v for k, v in c.as_dict().items() if k != "client_secret"}
        for c in _controls().clients()
    ]})


@bp.post("/clients")
def add_client() -> Response:
    client = _controls().add_client(**_body("POST", "/admin/clients"))
    return json_response(client.as_dict(), 201)


@bp.delete("/clients/<path:client_id>")
def remove_client(client_id: str) -> Response:
    _controls().remove_client(client_id)
    return json_response({"removed": client_id})


@bp.post("/tokens")
def issue_token() -> Response:
    body = _body("POST", "/admin/tokens")
    if "client_id" not in body:
        raise ControlError("client_id", "is required")
    return json_response({"access_token": _controls().issue_token(**body)})


@bp.post("/dpop/proofs")
def dpop_proof() -> Response:
    return json_response(_controls().dpop_proof(**_body("POST", "/admin/dpop/proofs")).as_dict())


@bp.post("/dpop/tokens")
def issue_dpop_token() -> Response:
    body = _body("POST", "/admin/dpop/tokens")
    if "client_id" not in body:
        raise ControlError("client_id", "is required")
    return json_response(_controls().issue_dpop_token(**body).as_dict())


@bp.get("/dpop/nonce")
def dpop_nonce() -> Response:
    return json_response(_controls().dpop_nonce_status())


@bp.post("/dpop/nonce")
def set_dpop_nonce() -> Response:
    body = _body("POST", "/admin/dpop/nonce")
    if "required" not in body:
        raise ControlError("required", "is required (true, false or null)")
    _controls().require_dpop_nonce(body["required"])
    return json_response(_controls().dpop_nonce_status())


@bp.get("/clock")
def get_clock() -> Response:
    return json_response(_controls().clock_status())


@bp.post("/clock")
def set_clock() -> Response:
    return json_response(_controls().set_clock(**_body("POST", "/admin/clock")))


@bp.get("/faults")
def list_faults() -> Response:
    return json_response({"faults": [f.as_dict() for f in _controls().faults()]})


@bp.post("/faults")
def add_fault() -> Response:
    fault = _controls().fail_next(**_body("POST", "/admin/faults"))
    return json_response(fault.as_dict(), 201)


@bp.delete("/faults")
def clear_faults() -> Response:
    _controls().clear_faults()
    return json_response({"faults": []})


@bp.get("/requests/token")
def token_requests() -> Response:
    return json_response({"requests": [asdict(r) for r in _controls().token_requests]})


@bp.get("/requests/jwks")
def jwks_requests() -> Response:
    return json_response({"requests": [asdict(r) for r in _controls().jwks_requests]})


@bp.get("/requests/introspection")
def introspection_requests() -> Response:
    return json_response({"requests": [asdict(r) for r in _controls().introspection_requests]})


@bp.get("/requests/revocation")
def revocation_requests() -> Response:
    return json_response({"requests": [asdict(r) for r in _controls().revocation_requests]})


@bp.post("/introspect")
def introspect() -> Response:
    body = _body("POST", "/admin/introspect")
    if "token" not in body:
        raise ControlError("token", "is required")
    return json_response(_controls().introspect(body["token"]))


@bp.post("/revoke")
def revoke() -> Response:
    body = _body("POST", "/admin/revoke")
    if "token" not in body:
        raise ControlError("token", "is required")
    return json_response({"revoked": _controls().revoke(body["token"])})


@bp.delete("/requests")
def clear_requests() -> Response:
    _controls().clear_requests()
    return json_response({"requests": []})


@bp.get("/keys")
def list_keys() -> Response:
    return json_response({"keys": _controls().keys()})


@bp.post("/keys/rotate")
def rotate_key() -> Response:
    kid = _controls().rotate_key(**_body("POST", "/admin/keys/rotate"))
    return json_response({"kid": kid, "keys": _controls().keys()}, 201)


@bp.post("/keys/<kid>/retire")
def retire_key(kid: str) -> Response:
    _body("POST", "/admin/keys/<kid>/retire")
    _controls().retire_key(kid)
    return json_response({"retired": kid, "keys": _controls().keys()})


@bp.post("/reset")
def reset() -> Response:
    _body("POST", "/admin/reset")
    current_app.extensions[EXTENSION].reset()
    return json_response({"reset": True})


def _issuers() -> IssuerControls:
    issuers = current_app.extensions[EXTENSION].issuers
    if issuers is None:
        raise _NotHere()
    return issuers


class _NotHere(Exception):
    """An issuer operation asked of a further issuer's admin API."""


@bp.errorhandler(_NotHere)
def _not_here(exc: _NotHere) -> Response:
    return json_error(404, "invalid_request", "Issuers are listed, added and removed through "
                      "the root issuer's admin API; this one manages only its own issuer.")


@bp.get("/issuers")
def list_issuers() -> Response:
    return json_response({"issuers": _issuers().describe()})


@bp.post("/issuers")
def add_issuer() -> Response:
    body = _body("POST", "/admin/issuers")
    if "name" not in body:
        raise ControlError("name", "is required")
    app = _issuers().add(**body)
    issuer = app.extensions["m2mauth"]
    return json_response({"name": body["name"], "issuer": issuer.issuer,
                          "token_endpoint": issuer.token_endpoint,
                          "jwks_uri": issuer.jwks_uri,
                          "admin": issuer.issuer + ADMIN_PREFIX,
                          "clients": [c.client_id for c in issuer.clients]}, 201)


@bp.delete("/issuers/<name>")
def remove_issuer(name: str) -> Response:
    _issuers().remove(name)
    return json_response({"removed": name})
