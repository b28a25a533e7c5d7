"""Authlib's Flask ``AuthorizationServer``, adapted to m2mauth: clients from the registry,
form-body parameters only, and RFC 6749 §5.2 status codes for ``invalid_client``."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from authlib.integrations.flask_oauth2 import AuthorizationServer as _FlaskAuthorizationServer
from authlib.integrations.flask_oauth2.requests import FlaskOAuth2Request
from authlib.integrations.flask_oauth2.signals import client_authenticated, token_revoked
from authlib.oauth2.rfc6749 import (
    InvalidClientError,
    OAuth2Error,
    OAuth2Request,
    UnsupportedGrantTypeError,
)
from authlib.oauth2.rfc6749.requests import OAuth2Payload
from flask import Response
from flask import json as flask_json
from flask import request as flask_request

from .client_auth import basic_credentials, claimed_client_id
from .clients import ClientRegistry
from .responses import basic_challenge
from .syntax import printable, safe_description
from .tokens import TokenIssuer

if TYPE_CHECKING:
    from .token_request import Checked

__all__ = ["AUTHENTICATION_FAILED", "AuthorizationServer", "TokenEndpointRequest",
           "describe_error"]

log = logging.getLogger("m2mauth.server")

#: How Authlib's error starts when every method returned no client (no method raised).
_NO_METHOD_AUTHENTICATED = "The client cannot authenticate with methods"

#: The one error_description of every failed client authentication, whatever the method and
#: whatever went wrong: a different text for an unknown id than for a wrong secret, a missing
#: key or a bad signature would tell anyone which client ids exist (the detail is logged).
AUTHENTICATION_FAILED = (
    "Client authentication failed: unknown client, wrong credentials,"
    " or an auth method this client may not use."
)


class _FormPayload(OAuth2Payload):
    """The token request's parameters, from the body only: RFC 6749 §3.2 requires POST,
    and Flask's ``request.values`` would also take credentials from the query string.
    ``data`` is a plain dict of first values (the grant refuses repeats, from ``datalist``):
    a MultiDict raises and catches a KeyError for every parameter that is absent. Both are
    built in one pass over the form."""

    def __init__(self, form) -> None:
        self._datalist: dict[str, list[str]] = dict(form.lists())
        self._data = {key: values[0] for key, values in self._datalist.items()}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> dict[str, list[str]]:  # type: ignore[override]
        return self._datalist


class TokenEndpointRequest(FlaskOAuth2Request):
    """Authlib's request object for one token request. The grant records on it what it
    decided (``client``, ``auth_method``, and m2mauth's ``issued`` token), so whoever made it
    can read the outcome afterwards. ``uri`` is the configured token endpoint, not one
    rebuilt from the request's Host header. ``checked``: what the precheck read (the form,
    the Basic credentials), used instead of reading them again."""

    def __init__(self, request, uri: str | None = None, *,
                 checked: Checked | None = None) -> None:
        uri = uri or request.base_url
        # Authlib refuses plain-HTTP URLs off loopback; m2mauth is a lab server that is often
        # reached as http://idp:8000 on a container network, so the scheme is not checked.
        OAuth2Request.__init__(self, method=request.method, uri=_as_https(uri))
        # Set here, not passed: Authlib's ``headers or {}`` would count werkzeug's environ
        # headers (a walk over the whole WSGI environ) only to see that there are some.
        self.headers = request.headers
        self.uri = uri
        self._request = request
        #: The form body as werkzeug's MultiDict (``form`` is Authlib's dict of first values).
        self.body_form = checked.form if checked is not None else request.form
        self.payload = _FormPayload(self.body_form)
        #: The Basic credentials (client_id, secret), None without an Authorization header.
        self.basic = checked.basic if checked is not None else \
            _basic_of(request.headers.get("Authorization"))
        self.issued = None
        #: The verified DPoP proof (:class:`~m2mauth.server.dpop.DPoPProof`), if one came.
        self.dpop = None
        #: The token an introspection or revocation request found (its claims).
        self.found_token = None
        #: Why a client-secret method refused (for the log), when Authlib reports only
        #: that no method authenticated the client.
        self.auth_detail: str | None = None

    @property
    def form(self):
        return self.payload.data


def _basic_of(header: str | None) -> tuple[str, str] | None:
    return basic_credentials(header) if header is not None else None


def _as_https(url: str) -> str:
    return "https" + url[4:] if url.startswith("http:") else url


#: The signals Authlib's Flask server sends, by the name it sends them under.
_AUTHLIB_SIGNALS = {"after_authenticate_client": client_authenticated,
                    "after_revoke_token": token_revoked}


class AuthorizationServer(_FlaskAuthorizationServer):
    """One issuer's token endpoint logic; no Flask app is bound (several may share a process)."""

    def __init__(self, clients: ClientRegistry, token_issuer: TokenIssuer, *, realm: str,
                 ) -> None:
        super().__init__()
        self.clients = clients
        self.token_issuer = token_issuer
        self.realm = realm
        #: The issuer's DPoP verifier (:class:`~m2mauth.server.dpop.DPoPVerifier`), for the
        #: token endpoint's DPoP-Nonce headers; None: no DPoP.
        self.dpop = None

    def query_client(self, client_id):
        return self.clients.get(client_id)

    def save_token(self, token, request) -> None:
        return None

    def create_oauth2_request(self, request) -> TokenEndpointRequest:
        # The token view passes the request object it made itself, to read the outcome.
        if isinstance(request, TokenEndpointRequest):
            return request
        return TokenEndpointRequest(flask_request)

    def send_signal(self, name, *args, **kwargs):
        # Authlib's Flask signals (client_authenticated, token_revoked), sent only when
        # something listens: blinker's send walks its receivers even when there are none.
        signal = _AUTHLIB_SIGNALS.get(name)
        if signal is None or signal.receivers:
            super().send_signal(name, *args, **kwargs)

    def handle_response(self, status_code, payload, headers):
        # Authlib's Flask version serialises through flask.json, the app's provider found
        # through two context lookups per response; the bodies here (token responses, RFC
        # 6749 errors, introspection answers of decoded JSON) are plain JSON values, which
        # the standard encoder writes the same way (no sorting, ASCII: the app's settings).
        if isinstance(payload, dict):
            try:
                payload = json.dumps(payload)
            except TypeError:  # a value only Flask's provider can write
                payload = flask_json.dumps(payload)
        return Response(payload, status=status_code, headers=headers)

    def handle_error_response(self, request, error):
        if not error.description:
            error.description = describe_error(error)
        if error.description:
            # Authlib raises ValueError (a 500) on characters RFC 6749 forbids in
            # error_description; descriptions can quote input, so they are made safe here.
            error.description = safe_description(error.description)
        if isinstance(error, InvalidClientError):
            # RFC 6749 §5.2: 401 with a challenge when the client authenticated with the
            # Authorization header (any scheme: Basic is the one this endpoint supports, so
            # that is the challenge); otherwise 400, as a 401 must carry WWW-Authenticate.
            headers = request.headers if request is not None else flask_request.headers
            used_basic = bool(headers.get("Authorization"))
            error.status_code = 401 if used_basic else 400
            detail = error.description or ""
            if request is not None and request.auth_detail and \
                    detail.startswith(_NO_METHOD_AUTHENTICATED):
                detail = request.auth_detail
            _log_authentication_failure(headers, request, detail)
            error.description = AUTHENTICATION_FAILED
            response = super().handle_error_response(request, error)
            if used_basic:
                response.headers["WWW-Authenticate"] = basic_challenge(self.realm)
            return response
        return super().handle_error_response(request, error)


#: The error_description of an error raised without one, by its code: RFC 6749 section 5.2
#: makes the field OPTIONAL, but a bare code leaves the caller guessing what to change.
_GENERIC_DESCRIPTIONS = {
    "invalid_request": "The token request is malformed (RFC 6749 section 5.2).",
    "invalid_client": AUTHENTICATION_FAILED,
    "invalid_grant": "The grant is invalid (RFC 6749 section 5.2).",
    "unauthorized_client": "This client may not use the client_credentials grant.",
    "invalid_scope": "The requested scope is invalid, unknown, or malformed.",
    "invalid_target": "The requested resource is invalid or not allowed (RFC 8707).",
}


def describe_error(error: OAuth2Error) -> str:
    """An error_description for an Authlib error raised without one. Authlib's
    ``UnsupportedGrantTypeError`` has its text only in ``get_error_description()``, which its
    response body never reads; the grant type it quotes is caller input, so it is cut."""
    if isinstance(error, UnsupportedGrantTypeError):
        given = str(error.grant_type or "")
        return (f"Unsupported grant_type '{safe_description(given, 40)}'; this server "
                "supports client_credentials only (RFC 6749 section 4.4).")
    return _GENERIC_DESCRIPTIONS.get(
        error.error or "", f"The token request failed: {error.error or 'error'}.")


def _log_authentication_failure(headers, request: TokenEndpointRequest | None,
                                detail: str | None) -> None:
    """The detail the answer leaves out (unknown client, wrong secret, bad signature, replayed
    jti, ...), for the operator: the claimed client id escaped as on the token log line, and
    never a secret or an assertion (the details name claims, not their values' secrets)."""
    if not log.isEnabledFor(logging.INFO):
        return
    # Without a request the precheck refused a malformed Authorization header: no form read.
    form = request.form if request is not None else None
    log.info("client authentication failed client_id=%s detail=%s",
             printable(claimed_client_id(headers, form)), printable(detail, 200))
