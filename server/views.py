"""HTTP endpoints of the authorization server: token, JWKS and metadata.

Every response an OAuth client can see is JSON; bad input gets an RFC 6749 §5.2 error,
never an HTML page or a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time

from authlib.oauth2.rfc6749 import InvalidClientError, InvalidRequestError, OAuth2Error
from flask import Blueprint, Response, current_app, g, json, jsonify, request
from werkzeug.exceptions import HTTPException

from .client_auth import basic_credentials, is_hmac, unverified_part
from .errors import safe_description
from .faults import Fault
from .requestlog import JwksRequest, TokenRequest
from .state import JWKS_PATH, METADATA_PATHS, TOKEN_PATH, ServerState

__all__ = ["bp"]

log = logging.getLogger("m2mauth.server")

bp = Blueprint("m2mauth", __name__)

_FORM = "application/x-www-form-urlencoded"


def _state() -> ServerState:
    return current_app.extensions["m2mauth"]


def _error(status: int, error: str, description: str, headers: dict | None = None) -> Response:
    body = {"error": error, "error_description": description}
    response = Response(json.dumps(body), status=status, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _precheck() -> None:
    """What Authlib does not check, or answers with a misleading error or a 500."""
    if request.query_string:
        raise InvalidRequestError("Send token request parameters in the body, not the URL.")
    body = request.get_data(cache=True)
    mimetype = request.mimetype
    if body and mimetype != _FORM:
        raise InvalidRequestError(f"The request body must be {_FORM} (RFC 6749 section 4.4.2).")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequestError("The request body is not valid UTF-8.") from None
    if "grant_type" not in request.form:
        raise InvalidRequestError("Missing 'grant_type' parameter.")
    if len(request.form.getlist("grant_type")) > 1:
        # Checked before Authlib picks a grant by the first value (RFC 6749 section 3.2).
        raise InvalidRequestError("Parameter 'grant_type' is repeated.")
    header = request.headers.get("Authorization")
    if header is not None and basic_credentials(header) is None:
        # A failed attempt to authenticate with the header (unsupported scheme, or Basic
        # credentials that do not decode): RFC 6749 section 5.2 invalid_client, 401.
        raise InvalidClientError(
            description="Malformed Authorization header: expected Basic credentials,"
            " base64 of UTF-8 client_id:client_secret (RFC 6749 section 2.3.1)."
        )


def _claimed_client_id() -> str | None:
    """The client id the caller claims (unverified), for the log only."""
    header = request.headers.get("Authorization")
    if header:
        creds = basic_credentials(header)
        return creds[0] if creds else None
    if request.mimetype != _FORM:
        return None
    if request.form.get("client_id"):
        return request.form["client_id"]
    subject = (unverified_part(request.form.get("client_assertion", ""), 1) or {}).get("sub")
    return subject if isinstance(subject, str) else None


def _claimed_auth_method() -> str | None:
    """The auth method the request's shape names (unverified), for the log only."""
    if (request.headers.get("Authorization") or "").lower().startswith("basic "):
        return "client_secret_basic"
    if request.mimetype != _FORM:
        return None
    if "client_assertion" in request.form:
        return "client_secret_jwt" if is_hmac(request.form["client_assertion"]) \
            else "private_key_jwt"
    return "client_secret_post" if "client_secret" in request.form else None


@bp.post(TOKEN_PATH)
def token() -> Response:
    state = _state()
    fault = state.faults.take("token")
    response = _fault_response(fault, _MALFORMED_TOKEN) if fault else None
    if response is None:
        try:
            _precheck()
        except OAuth2Error as error:
            response = state.authorization.handle_error_response(None, error)
        else:
            response = state.authorization.create_token_response()
        if fault is not None and fault.kind == "no_expires_in" and response.status_code == 200:
            body = response.get_json()
            body.pop("expires_in", None)
            response.set_data(json.dumps(body))
    _record(state, response, fault)
    _drop_connection(fault)
    return response


_MALFORMED_TOKEN = b'{"access_token": "eyJ'
_MALFORMED_JWKS = b'{"keys": [{"kty": '


def _fault_response(fault: Fault, malformed: bytes) -> Response | None:
    """The response an injected fault makes; None to go on with the real one (after a delay,
    or to strip ``expires_in`` from it)."""
    if fault.kind == "delay":
        time.sleep(fault.delay)  # the simulated slowness itself; bounded by the fault's value
        return None
    if fault.kind == "no_expires_in":
        return None
    if fault.kind == "malformed":
        return Response(malformed, status=200, mimetype="application/json")
    if fault.kind == "drop":
        if request.environ.get("werkzeug.socket") is not None:
            return Response(b"", status=500)  # never sent: _drop_connection() closes first
        return _error(502, "server_error", "Connection dropped (injected; no socket here).")
    body = {"error": fault.error} if fault.error else {}
    if fault.error_description:
        body["error_description"] = fault.error_description
    response = Response(json.dumps(body), status=fault.status, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    if fault.retry_after is not None:
        response.headers["Retry-After"] = str(fault.retry_after)
    if fault.status == 401:  # RFC 9110 §15.5.2: a 401 always carries a challenge
        realm = current_app.extensions["m2mauth"].issuer
        response.headers["WWW-Authenticate"] = f'Basic realm="{realm}", charset="UTF-8"'
    return response


def _drop_connection(fault: Fault | None) -> None:
    """Close the connection under a drop fault's response: the client sees it drop, no
    answer. Called after the request is logged, so a client that sees the drop also sees
    the log entry."""
    sock = request.environ.get("werkzeug.socket")
    if fault is not None and fault.kind == "drop" and sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _record(state: ServerState, response: Response, fault: Fault | None = None) -> None:
    """Append the request to the request log and write its one log line; never a secret or a
    whole token: ids, method, scopes, audience and the token's jti."""
    form = request.form if request.mimetype == _FORM else None
    oauth_request = g.get("m2mauth_oauth_request")
    issued = getattr(oauth_request, "issued", None)
    if fault is not None and fault.kind in ("drop", "malformed"):
        outcome = fault.kind
    elif response.status_code == 200 and issued is not None:
        outcome = "issued"
    else:
        outcome = str((response.get_json(silent=True) or {}).get("error", "error"))
    entry = TokenRequest(
        time=state.clock.now(),
        client_id=(issued and oauth_request.client.client_id) or _claimed_client_id(),
        auth_method=getattr(oauth_request, "auth_method", None) or _claimed_auth_method(),
        grant_type=form.get("grant_type") if form else None,
        scope=form.get("scope") if form else None,
        resource=tuple(form.getlist("resource") + form.getlist("audience")) if form else (),
        status=response.status_code,
        outcome=outcome,
        jti=issued.jti if issued else None,
        granted_scope=tuple(issued.scope) if issued else (),
        audience=tuple(issued.audience) if issued else (),
        fault=fault.kind if fault else None,
    )
    state.token_requests.append(entry)
    log.info(
        "token request client_id=%s auth_method=%s scope=%s audience=%s outcome=%s jti=%s",
        _printable(entry.client_id), entry.auth_method,
        _printable(" ".join(entry.granted_scope) if issued else entry.scope),
        _printable(" ".join(entry.audience) if issued else " ".join(entry.resource)),
        entry.outcome, entry.jti,
    )


def _printable(value: str | None, limit: int = 80) -> str:
    """A log-safe rendering of caller input: quoted, escaped, cut (no log injection)."""
    if value is None:
        return "-"
    text = value if len(value) <= limit else value[:limit] + "..."
    return ascii(text)


@bp.get(JWKS_PATH)
def jwks() -> Response:
    state = _state()
    fault = state.faults.take("jwks")
    response = _fault_response(fault, _MALFORMED_JWKS) if fault else None
    if response is None:
        response = jsonify(state.keys.jwks())
        response.headers["Cache-Control"] = f"public, max-age={state.settings.jwks_max_age}"
    state.jwks_requests.append(
        JwksRequest(state.clock.now(), response.status_code, fault.kind if fault else None)
    )
    _drop_connection(fault)
    return response


def metadata() -> Response:
    response = jsonify(_state().metadata())
    response.headers["Cache-Control"] = "public, max-age=300"
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
        allowed = ", ".join(sorted(m for m in (exc.valid_methods or []) if m != "OPTIONS"))
        description = f"Method {request.method} not allowed; use {allowed}."
        return _error(405, "invalid_request", description, {"Allow": allowed})
    return _error(status, "invalid_request" if status < 500 else "server_error",
                  safe_description(exc.description or exc.name))


@bp.app_errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.path)
    return _error(500, "server_error", "Internal error; see the server log.")
