"""The token endpoint's request handling around Authlib: the checks Authlib does not make
(or answers with a misleading error or a 500), the record of what was asked and answered,
and the one log line per request."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

from authlib.oauth2.rfc6749 import InvalidClientError, InvalidRequestError, OAuth2Error
from flask import Request, Response, current_app
from werkzeug.datastructures import ImmutableMultiDict
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from .client_auth import basic_credentials, claimed_client_id, is_hmac
from .logs import only_destination
from .oauth import AuthorizationServer, TokenEndpointRequest
from .signals import endpoint_request_handled, token_request_handled
from .syntax import printable as _printable

__all__ = ["Checked", "EndpointRequest", "TokenRequest", "describe", "describe_endpoint_request",
           "handle_endpoint_request", "handle_token_request", "log_endpoint_request",
           "log_token_request"]

log = logging.getLogger("m2mauth.server")

FORM = "application/x-www-form-urlencoded"
#: What a record keeps of one untrusted value (a claimed client id, a scope, a resource), and
#: how many resource values: records live in a log, and a request is up to max_body_bytes.
MAX_KEPT_CHARS = 256
MAX_KEPT_RESOURCES = 16


@dataclass(frozen=True)
class TokenRequest:
    """One token request and its outcome. ``client_id`` is what the caller claimed, verified
    only when ``outcome`` is ``"issued"``; secrets and assertions are never recorded."""

    time: float
    client_id: str | None
    auth_method: str | None
    grant_type: str | None
    scope: str | None
    resource: tuple[str, ...]
    status: int
    outcome: str  # "issued", the RFC 6749 error code, or what answered in the endpoint's place
    jti: str | None = None
    granted_scope: tuple[str, ...] = field(default=())
    audience: tuple[str, ...] = field(default=())
    #: Whether the request carried a DPoP header, and the verified proof's key thumbprint
    #: (the token's ``cnf.jkt``); never the proof itself.
    dpop: bool = False
    dpop_jkt: str | None = None


@dataclass(frozen=True)
class EndpointRequest:
    """One introspection or revocation request and its outcome: ``active``/``inactive``
    (introspection), ``revoked``/``unchanged`` (revocation, where ``unchanged`` is an unknown,
    inactive or another client's token), or the error code. ``client_id`` is verified unless
    the outcome is an authentication error; ``jti`` is the token's when the server knew it.
    Tokens and secrets are never recorded."""

    time: float
    endpoint: str  # "introspection" or "revocation"
    client_id: str | None
    auth_method: str | None
    token_type_hint: str | None
    status: int
    outcome: str
    jti: str | None = None


class Checked(NamedTuple):
    """What :func:`precheck` read, once per request: the form body (werkzeug's own
    ``request.form`` object), and the Basic credentials, None without an Authorization
    header."""

    form: ImmutableMultiDict[str, str]
    basic: tuple[str, str] | None


def precheck(request: Request, *, grant: bool = True) -> Checked:
    """What Authlib does not check, or answers with a misleading error or a 500 (``grant``:
    at the token endpoint, which needs one grant_type). Returns the form and the Basic
    credentials it read, for everything after it to use instead of reading them again."""
    environ = request.environ
    if environ.get("QUERY_STRING"):
        raise InvalidRequestError("Send token request parameters in the body, not the URL.")
    body, declared = _read_body(request, environ)
    if not declared and request.content_length is None:
        limit = request.max_content_length
        if limit is not None and len(body) >= limit:
            # Without Content-Length (chunked), werkzeug stops reading at the limit and
            # returns what it read, as if that were the whole body.
            raise RequestEntityTooLarge()
    # The usual Content-Type exactly, else werkzeug's parse of it (parameters, case).
    is_form = environ.get("CONTENT_TYPE") == FORM or request.mimetype == FORM
    if body and not is_form:
        raise InvalidRequestError(f"The request body must be {FORM} (RFC 6749 section 4.4.2).")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequestError("The request body is not valid UTF-8.") from None
    form = _parsed_form(request, text) if is_form else request.form
    if grant:
        grant_types = form.getlist("grant_type")
        if not grant_types:
            raise InvalidRequestError("Missing 'grant_type' parameter.")
        if len(grant_types) > 1:
            # Checked before Authlib picks a grant by the first value (RFC 6749 section 3.2).
            raise InvalidRequestError("Parameter 'grant_type' is repeated.")
    header = environ.get("HTTP_AUTHORIZATION")
    basic = basic_credentials(header) if header is not None else None
    if header is not None and basic is None:
        # A failed attempt to authenticate with the header (unsupported scheme, or Basic
        # credentials that do not decode): RFC 6749 section 5.2 invalid_client, 401.
        raise InvalidClientError(
            description="Malformed Authorization header: expected Basic credentials,"
            " base64 of UTF-8 client_id:client_secret (RFC 6749 section 2.3.1)."
        )
    return Checked(form, basic)


_NO_FILES: ImmutableMultiDict[str, Any] = ImmutableMultiDict()


def _read_body(request: Request, environ: dict[str, Any]) -> tuple[bytes, bool]:
    """The request body, as ``request.get_data()`` returns it, and whether it was read by
    its Content-Length here. The usual request – a
    Content-Length within ``max_content_length``, no Transfer-Encoding – is read straight
    from the WSGI input: werkzeug would wrap it in a stream guarding exactly those limits,
    which costs more than the read itself. The bytes become the request's ``stream``, so a
    later reader of the body gets them too. Anything else goes through werkzeug (413s,
    chunked bodies, a stream the server terminates without a length)."""
    length = environ.get("CONTENT_LENGTH")
    limit = request.max_content_length
    if not length or not length.isdigit() or not length.isascii() or \
            "HTTP_TRANSFER_ENCODING" in environ or (limit is not None and int(length) > limit):
        return request.get_data(cache=True), False  # werkzeug's limits: 413, chunked
    wanted = int(length)
    stream = environ["wsgi.input"]
    body = b""
    try:
        while len(body) < wanted:  # a server may hand over the body in pieces
            more = stream.read(wanted - len(body))
            if not more:
                if "wsgi.input_terminated" in environ:
                    break  # the server ended the input: what werkzeug's stream returns
                raise ClientDisconnected()  # what werkzeug's stream raises for a short body
            body += more
    except (OSError, ValueError):  # the connection failed under the read, as werkzeug says
        raise ClientDisconnected() from None
    request.stream = io.BytesIO(body)  # werkzeug's cached_property: sets the cached value
    return body, True


def _parsed_form(request: Request, text: str) -> ImmutableMultiDict[str, str]:
    """``request.form`` of a form body already read and decoded: what werkzeug's parser does
    for this content type (formparser's ``_parse_urlencoded``: ``parse_qsl`` keeping blank
    values, undecodable escapes kept as werkzeug keeps them), without building a parser
    and a stream for it per request. Set as the request's ``form``, so that every later
    reader sees this one object."""
    if "form" in request.__dict__:  # parsed already (someone read request.form)
        return request.form
    form: ImmutableMultiDict[str, str] = ImmutableMultiDict(
        parse_qsl(text, keep_blank_values=True, errors="werkzeug.url_quote"))
    request.form = form  # werkzeug's cached_property: setting it sets the cached value
    request.files = _NO_FILES  # as werkzeug's form parser leaves a urlencoded body
    return form


def handle_token_request(server: AuthorizationServer, request: Request, token_endpoint: str,
                         now: float) -> Response:
    """Answer one token request through Authlib, log it, and send
    :data:`~m2mauth.server.signals.token_request_handled` with its record."""
    oauth_request: TokenEndpointRequest | None = None
    try:
        checked = precheck(request)
    except OAuth2Error as error:
        response = server.handle_error_response(None, error)
    except RequestEntityTooLarge as error:  # answered, and recorded, like any other error
        response = current_app.handle_http_exception(error)
    else:
        oauth_request = TokenEndpointRequest(request, token_endpoint, checked=checked)
        response = server.create_token_response(oauth_request)
    if server.dpop is not None:
        _add_dpop_nonce(server.dpop, request, response, oauth_request)
    record = describe(request, response, oauth_request, now)
    log_token_request(record)
    if token_request_handled.receivers:  # the lab's request log listens; the core alone not
        token_request_handled.send(current_app._get_current_object(), record=record)
    return response


def _add_dpop_nonce(dpop: Any, request: Request, response: Response,
                    oauth_request: TokenEndpointRequest | None) -> None:
    """RFC 9449 section 8.2: with nonces on, every answer gives the current nonce. The
    lab's run-time switch is read from the store only for requests with a DPoP header (a
    Bearer request has no use for a nonce; the setting alone costs nothing to read), and a
    client's own ``dpop_nonce`` once it authenticated."""
    if dpop.require_nonce_setting:
        wanted = True
    elif "HTTP_DPOP" in request.environ:
        client = getattr(oauth_request, "client", None)
        wanted = (client is not None and client.settings.dpop_nonce) or dpop.nonce_required()
    else:
        return  # a Bearer request, nonces off: not even a look at the response's headers
    if wanted and "DPoP-Nonce" not in response.headers:
        response.headers["DPoP-Nonce"] = dpop.current_nonce()


def handle_endpoint_request(server: AuthorizationServer, name: str, request: Request,
                            url: str, now: float) -> Response:
    """Answer one introspection or revocation request (Authlib endpoint ``name``) with the
    token endpoint's checks of the request itself, log it in one line, and send
    :data:`~m2mauth.server.signals.endpoint_request_handled` with its record."""
    oauth_request: TokenEndpointRequest | None = None
    try:
        checked = precheck(request, grant=False)
    except OAuth2Error as error:
        response = server.handle_error_response(None, error)
    except RequestEntityTooLarge as error:
        response = current_app.handle_http_exception(error)
    else:
        oauth_request = TokenEndpointRequest(request, url, checked=checked)
        response = server.create_endpoint_response(name, oauth_request)
    record = describe_endpoint_request(name, request, response, oauth_request, now)
    log_endpoint_request(record)
    endpoint_request_handled.send(current_app._get_current_object(), record=record)
    return response


def describe_endpoint_request(name: str, request: Request, response: Response,
                              oauth_request: TokenEndpointRequest | None, now: float, *,
                              outcome: str | None = None) -> EndpointRequest:
    """The record of one introspection or revocation request; ``outcome`` when something
    other than the endpoint answered (a lab fault)."""
    data, _ = _parameters(request, oauth_request)
    found = getattr(oauth_request, "found_token", None)
    client = getattr(oauth_request, "client", None)
    if outcome is None:
        body = response.get_json(silent=True) or {}
        if response.status_code != 200:
            outcome = str(body.get("error", "error"))
        elif name == "introspection":
            outcome = "active" if body.get("active") is True else "inactive"
        else:
            outcome = "revoked" if found is not None else "unchanged"
    return EndpointRequest(
        time=now, endpoint=name,
        client_id=client.client_id if client is not None else _kept(_claimed_client_id(request)),
        auth_method=getattr(oauth_request, "auth_method", None) or _claimed_auth_method(request),
        token_type_hint=_kept(data.get("token_type_hint")),
        status=response.status_code, outcome=outcome,
        jti=found.get("jti") if found is not None else None,
    )


def log_endpoint_request(record: EndpointRequest) -> None:
    if log.isEnabledFor(logging.INFO):
        log.info("%s client_id=%s status=%s outcome=%s", record.endpoint,
                 _printable(record.client_id), record.status, record.outcome)


def describe(request: Request, response: Response, oauth_request: TokenEndpointRequest | None,
             now: float, *, outcome: str | None = None) -> TokenRequest:
    """The record of one token request: what the grant verified, else what the caller
    claimed; ``outcome`` when something other than the endpoint answered."""
    data, lists = _parameters(request, oauth_request)
    issued = oauth_request.issued if oauth_request is not None else None
    if outcome is None:
        outcome = "issued" if response.status_code == 200 and issued is not None else \
            str((response.get_json(silent=True) or {}).get("error", "error"))
    verified_id = oauth_request.client.client_id if oauth_request and issued else None
    return TokenRequest(
        time=now,
        client_id=verified_id or _kept(_claimed_client_id(request)),
        # Authlib sets auth_method once the client authenticated, whatever came next.
        auth_method=getattr(oauth_request, "auth_method", None) or _claimed_auth_method(request),
        grant_type=_kept(data.get("grant_type")),
        scope=_kept(data.get("scope")),
        resource=_kept_values([*lists.get("resource", ()), *lists.get("audience", ())])
        if "resource" in lists or "audience" in lists else (),
        status=response.status_code,
        outcome=outcome,
        jti=issued.jti if issued else None,
        granted_scope=tuple(issued.scope) if issued else (),
        audience=tuple(issued.audience) if issued else (),
        dpop="HTTP_DPOP" in request.environ,
        dpop_jkt=issued.jkt if issued else None,
    )


def _parameters(request: Request, oauth_request: TokenEndpointRequest | None,
                ) -> tuple[Mapping[str, str], Mapping[str, list[str]]]:
    """The form's first values and all values, as plain dicts (a werkzeug MultiDict raises
    and catches an exception for every absent name asked for); empty without a form."""
    if oauth_request is not None:
        return oauth_request.payload.data, oauth_request.payload.datalist
    form = _form(request)
    if not form:
        return {}, {}
    lists = dict(form.lists())
    return {key: values[0] for key, values in lists.items()}, lists


def _kept(value: str | None) -> str | None:
    """An untrusted value as a record keeps it: cut to MAX_KEPT_CHARS, marked when cut."""
    if value is None or len(value) <= MAX_KEPT_CHARS:
        return value
    return f"{value[:MAX_KEPT_CHARS]}...({len(value)} chars)"


def _kept_values(values: list[str]) -> tuple[str, ...]:
    kept = [v for v in (_kept(v) for v in values[:MAX_KEPT_RESOURCES]) if v is not None]
    if len(values) > MAX_KEPT_RESOURCES:
        kept.append(f"...(+{len(values) - MAX_KEPT_RESOURCES} more)")
    return tuple(kept)


def log_token_request(record: TokenRequest) -> None:
    """The one log line of a token request: ids, method, scopes, audience, outcome and the
    token's jti – never a secret or a whole token."""
    if not log.isEnabledFor(logging.INFO):
        return
    writer = only_destination(log, logging.INFO)
    if writer is not None:
        # `m2mauth serve`: the record (frozen, its values immutable) becomes a log record and
        # a line on the writer thread, all in one batch (logs.py).
        writer.defer(log, logging.INFO, *_token_line(record), record, "log_token_request")
        return
    line, args = _token_line(record)
    # log.info() without its search of the stack for the caller (about a tenth of what a
    # line costs the request): the caller is known, this line of this function.
    log.handle(log.makeRecord(log.name, logging.INFO, __file__, sys._getframe().f_lineno,
                              line, args(record), None, "log_token_request"))


def _token_line_args(record: TokenRequest) -> tuple[str | None, ...]:
    issued = record.outcome == "issued"
    return (
        _printable(record.client_id), record.auth_method,
        _printable(" ".join(record.granted_scope) if issued else record.scope),
        _printable(" ".join(record.audience) if issued else " ".join(record.resource)),
        record.outcome, record.jti,
    )


_TOKEN_LINE = "token request client_id=%s auth_method=%s scope=%s audience=%s outcome=%s jti=%s"
#: A request with a DPoP header: the line also names the bound key's thumbprint (or None).
_DPOP_TOKEN_LINE = _TOKEN_LINE + " dpop=yes dpop_jkt=%s"


def _token_line(record: TokenRequest) -> tuple[str, Any]:
    """The line's format and its arguments' function, for a Bearer or a DPoP request."""
    if record.dpop:
        return _DPOP_TOKEN_LINE, _dpop_token_line_args
    return _TOKEN_LINE, _token_line_args


def _dpop_token_line_args(record: TokenRequest) -> tuple[str | None, ...]:
    return (*_token_line_args(record), record.dpop_jkt)


def _form(request: Request) -> ImmutableMultiDict[str, str] | None:
    """The form body, or None: not a form, or too large to read (a 413)."""
    if request.mimetype != FORM:
        return None
    try:
        return request.form
    except RequestEntityTooLarge:
        return None


def _claimed_client_id(request: Request) -> str | None:
    """The client id the caller claims (unverified), for the log only."""
    return claimed_client_id(request.headers, _form(request))


def _claimed_auth_method(request: Request) -> str | None:
    """The auth method the request's shape names (unverified), for the log only."""
    if (request.headers.get("Authorization") or "").lower().startswith("basic "):
        return "client_secret_basic"
    form = _form(request)
    if form is None:
        return None
    if "client_assertion" in form:
        return "client_secret_jwt" if is_hmac(form["client_assertion"]) else "private_key_jwt"
    return "client_secret_post" if "client_secret" in form else None
