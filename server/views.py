"""HTTP endpoints of the authorization server: token, JWKS and metadata, each a thin call
into its issuer (``bp``, registered under the issuer's path), and the probes of the whole
server (``probes``, at the root).

Every response an OAuth client can see is JSON; bad input gets an RFC 6749 §5.2 error,
never an HTML page or a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Blueprint, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from .errors import StoreUnavailableError
from .issuer import (
    EXTENSION,
    HEALTH_PATH,
    INTROSPECTION_PATH,
    JWKS_PATH,
    METADATA_PATHS,
    READY_PATH,
    REVOCATION_PATH,
    TOKEN_PATH,
    current_issuer,
)
from .issuers import router_of
from .responses import json_error
from .settings import issuer_name_problem
from .syntax import printable, safe_description
from .token_request import handle_endpoint_request, handle_token_request

__all__ = ["STORE_FAILED", "after_request_hook", "bp", "metadata", "probes",
           "store_unavailable"]

log = logging.getLogger("m2mauth.server")

bp = Blueprint("m2mauth", __name__)
probes = Blueprint("m2mauth_probes", __name__)


@bp.post(TOKEN_PATH)
def token() -> Response:
    issuer = current_issuer()
    # The request object itself, not Flask's proxy: it is read a few dozen times.
    return handle_token_request(issuer.authorization, request._get_current_object(),  # type: ignore[attr-defined]
                                issuer.token_endpoint, issuer.clock.now())


@bp.post(INTROSPECTION_PATH)
def introspect() -> Response:
    """RFC 7662: what a token is, for the clients allowed to ask."""
    issuer = current_issuer()
    return handle_endpoint_request(issuer.authorization, "introspection",
                                   request._get_current_object(),  # type: ignore[attr-defined]
                                   issuer.introspection_endpoint, issuer.clock.now())


@bp.post(REVOCATION_PATH)
def revoke() -> Response:
    """RFC 7009: a client revokes one of its tokens."""
    issuer = current_issuer()
    return handle_endpoint_request(issuer.authorization, "revocation",
                                   request._get_current_object(),  # type: ignore[attr-defined]
                                   issuer.revocation_endpoint, issuer.clock.now())


#: Public documents that browser-based resource servers and test pages fetch from other
#: origins: readable by any page. Never on /token or /admin, whose answers are credentials
#: or test controls.
_PUBLIC_TO_BROWSERS = {"Access-Control-Allow-Origin": "*"}


@bp.get(JWKS_PATH)
def jwks() -> Response:
    issuer = current_issuer()
    response = jsonify(issuer.keys.jwks())
    response.headers["Cache-Control"] = f"public, max-age={issuer.settings.jwks_max_age}"
    response.headers.update(_PUBLIC_TO_BROWSERS)
    return response


def metadata() -> Response:
    response = jsonify(current_issuer().metadata())
    response.headers["Cache-Control"] = "public, max-age=300"
    response.headers.update(_PUBLIC_TO_BROWSERS)
    return response


#: The endpoints whose answers any page may read, so whose CORS preflight succeeds.
_PUBLIC_ENDPOINTS = frozenset({"m2mauth.jwks", "m2mauth.oauth-authorization-server",
                               "m2mauth.openid-configuration", "m2mauth_metadata"})


def after_request_hook(trust_proxy: bool) -> Callable[[Response], Response]:
    """The after-request hook of an issuer's app (app.py registers it): OPTIONS answers, and
    with ``trust_proxy`` the Vary of every answer. One hook, made per app, as Flask's cost
    per hook (and a context lookup for the setting) is paid on every request.

    Why Vary: with ``trust_proxy`` an answer names the issuer the forwarding headers make
    (metadata, the playground's paths, a 401's realm), and the metadata is ``public,
    max-age=300``: a cache in front that keyed on the URL alone would serve one caller's
    forged ``X-Forwarded-Host`` (its token endpoint) to every other client (RFC 9110
    section 12.5.5)."""
    if trust_proxy:
        def after_request(response: Response) -> Response:
            response.vary.update(_FORWARDING_HEADERS)
            return _options(response) if request.method == "OPTIONS" else response
    else:
        def after_request(response: Response) -> Response:
            return _options(response) if request.method == "OPTIONS" else response
    return after_request


def _options(response: Response) -> Response:
    """Flask answers OPTIONS itself with an empty text/html 200; make it a 204 with the
    Allow header, and a CORS preflight answer on the public documents only (a page from
    another origin may read the JWKS and metadata, never call /token or /admin)."""
    if response.status_code != 200 or response.get_data():
        return response
    response.status_code = 204
    response.headers.pop("Content-Type", None)
    response.headers.pop("Content-Length", None)
    allow = sorted(m.strip() for m in response.headers.get("Allow", "").split(",") if m.strip())
    response.headers["Allow"] = ", ".join(allow)
    if request.endpoint in _PUBLIC_ENDPOINTS:
        response.headers.update(_PUBLIC_TO_BROWSERS)
        response.headers["Access-Control-Allow-Methods"] = "GET, HEAD"
        response.headers["Access-Control-Allow-Headers"] = "*"
        response.headers["Access-Control-Max-Age"] = "86400"
    return response


#: What a request's issuer is read from under ``trust_proxy`` (forwarded.py).
_FORWARDING_HEADERS = ("Host", "Forwarded", "X-Forwarded-Proto", "X-Forwarded-Host",
                       "X-Forwarded-Port", "X-Forwarded-Prefix")




@probes.get(HEALTH_PATH)
def healthz() -> Response:
    """Alive: the process answers HTTP (for a container's liveness probe)."""
    return _health(200, "alive")


@probes.get(READY_PATH)
def readyz() -> Response:
    """Ready: every issuer on the server has its signing keys and its state store answers
    (a readiness probe); the answer names the kind of store, never where it is."""
    router = router_of(current_app)
    root = current_app.extensions[EXTENSION]
    issuers = [root, *(app.extensions[EXTENSION] for app in
                       (router.apps() if router is not None else ()))]
    for issuer in issuers:
        try:
            issuer.store.ping()  # a round trip, whatever this request read before
            ready = bool(issuer.keys.jwks()["keys"])
        except StoreUnavailableError as exc:
            log.warning("not ready: %s", exc)
            ready = False
        except Exception:  # a store that cannot be reached, whatever its kind, is "not ready"
            log.exception("readiness check failed for %s", issuer.issuer)
            ready = False
        if not ready:
            return _health(503, "not ready", store=root.store.kind)
    return _health(200, "ready", store=root.store.kind)


def _health(status: int, state: str, **extra: str) -> Response:
    response = jsonify(status=state, **extra)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


for _path in METADATA_PATHS:
    bp.add_url_rule(_path, endpoint=_path.rsplit("/", 1)[-1], view_func=metadata, methods=["GET"])


@bp.app_errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    """Werkzeug's HTML error pages become JSON; on the token endpoint, RFC 6749 errors."""
    status = exc.code or 500
    if status == 413:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        return _error(413, "invalid_request", f"Request body larger than {limit} bytes.")
    if status == 405:
        methods = sorted(exc.valid_methods or [])
        use = ", ".join(m for m in methods if m not in ("HEAD", "OPTIONS"))
        description = f"Method {request.method} not allowed; use {use}."
        # The same Allow as an OPTIONS request gets (RFC 9110 section 10.2.1).
        return _error(405, "invalid_request", description, {"Allow": ", ".join(methods)})
    if status == 404 and router_of(current_app) is not None:
        description = _no_issuer_here()
        if description is not None:
            return _error(404, "invalid_request", description)
    return _error(status, "invalid_request" if status < 500 else "server_error",
                  safe_description(exc.description or exc.name))


def _no_issuer_here() -> str | None:
    """For a path that would be a further issuer's (``/NAME/...``) but no issuer has that
    name: which ones there are. Names are never created on first use (see lab/issuers.py)."""
    name = request.path[1:].partition("/")[0]
    if ("/" not in request.path[1:] or issuer_name_problem(name) is not None
            or current_app.extensions[EXTENSION].mount.split("/")[1:2] == [name]):
        return None
    router = router_of(current_app)
    known = ", ".join(f"/{n}" for n in (router.names() if router is not None else [])) or "none"
    return (f"No issuer {printable(name, 64)} on this server (further issuers: {known}). "
            "Declare it in the config ([issuers.NAME]) or add it with POST /admin/issuers.")


#: Seconds a client is asked to wait when the state store is unreachable.
STORE_RETRY_AFTER = 1
#: Set on flask.g once this request found the store unreachable: nothing else (the lab's
#: request log) tries it again, and waits its timeout again, for this request.
STORE_FAILED = "m2mauth_store_failed"


@bp.app_errorhandler(StoreUnavailableError)
def store_unavailable(exc: StoreUnavailableError) -> Response:
    """The state store cannot be reached: RFC 6749 ``temporarily_unavailable`` as a 503 with
    ``Retry-After``, on every endpoint (token, JWKS, introspection, revocation, admin), and
    answered again as usual once the store is back. The one place this answer is made (the
    lab's after-request hook answers with it too)."""
    if not g.get(STORE_FAILED):
        log.warning("state store unavailable on %s %s: %s", request.method, request.path, exc)
    setattr(g, STORE_FAILED, True)
    return _error(503, "temporarily_unavailable",
                  "The server's state store is unreachable; try again shortly.",
                  {"Retry-After": str(STORE_RETRY_AFTER)})


@bp.app_errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.path)
    return _error(500, "server_error", "Internal error; see the server log.")


def _error(status: int, error: str, description: str,
           headers: dict[str, str] | None = None) -> Response:
    # Pragma as Authlib's own error responses have it, for HTTP/1.0 caches (RFC 6749 §5.1).
    return json_error(status, error, description, {"Pragma": "no-cache", **(headers or {})})
