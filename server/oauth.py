"""Authlib's Flask ``AuthorizationServer``, adapted to m2mauth: clients from the registry,
form-body parameters only, and RFC 6749 §5.2 status codes for ``invalid_client``."""

from __future__ import annotations

from authlib.integrations.flask_oauth2 import AuthorizationServer as _FlaskAuthorizationServer
from authlib.integrations.flask_oauth2.requests import FlaskOAuth2Request
from authlib.oauth2.rfc6749 import InvalidClientError, OAuth2Request
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from flask import request as flask_request

from .clients import ClientRegistry
from .syntax import safe_description
from .tokens import TokenIssuer

__all__ = ["AuthorizationServer", "TokenEndpointRequest"]

#: Authlib's invalid_client descriptions that are replaced by one generic message.
_GENERIC_INVALID_CLIENT = (
    "The client cannot authenticate", "The client does not exist", "Missing 'client_id'",
)


class _FormPayload(BasicOAuth2Payload):
    """The token request's parameters, from the body only: RFC 6749 §3.2 requires POST,
    and Flask's ``request.values`` would also take credentials from the query string.
    ``data`` is a plain dict of first values (the grant refuses repeats, from ``datalist``):
    a MultiDict raises and catches a KeyError for every parameter that is absent."""

    def __init__(self, form) -> None:
        super().__init__(form.to_dict())
        self._datalist = {key: form.getlist(key) for key in form}


class TokenEndpointRequest(FlaskOAuth2Request):
    """Authlib's request object for one token request. The grant records on it what it
    decided (``client``, ``auth_method``, and m2mauth's ``issued`` token), so whoever made it
    can read the outcome afterwards. ``uri`` is the configured token endpoint, not one
    rebuilt from the request's Host header."""

    def __init__(self, request, uri: str | None = None) -> None:
        uri = uri or request.base_url
        # Authlib refuses plain-HTTP URLs off loopback; m2mauth is a lab server that is often
        # reached as http://idp:8000 on a container network, so the scheme is not checked.
        OAuth2Request.__init__(
            self, method=request.method, uri=_as_https(uri), headers=request.headers
        )
        self.uri = uri
        self._request = request
        self.payload = _FormPayload(request.form)
        self.issued = None

    @property
    def form(self):
        return self.payload.data


def _as_https(url: str) -> str:
    return "https" + url[4:] if url.startswith("http:") else url


class AuthorizationServer(_FlaskAuthorizationServer):
    """One issuer's token endpoint logic; no Flask app is bound (several may share a process)."""

    def __init__(self, clients: ClientRegistry, token_issuer: TokenIssuer, *, realm: str,
                 ) -> None:
        super().__init__()
        self.clients = clients
        self.token_issuer = token_issuer
        self.realm = realm

    def query_client(self, client_id):
        return self.clients.get(client_id)

    def save_token(self, token, request) -> None:
        return None

    def create_oauth2_request(self, request) -> TokenEndpointRequest:
        # The token view passes the request object it made itself, to read the outcome.
        if isinstance(request, TokenEndpointRequest):
            return request
        return TokenEndpointRequest(flask_request)

    def handle_error_response(self, request, error):
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
            if error.description.startswith(_GENERIC_INVALID_CLIENT):
                # Authlib lists every method the server knows, or says that the client id is
                # unknown (which lets anyone enumerate client ids); one answer for all.
                error.description = (
                    "Client authentication failed: unknown client, wrong credentials,"
                    " or an auth method this client may not use."
                )
            response = super().handle_error_response(request, error)
            if used_basic:
                response.headers["WWW-Authenticate"] = (
                    f'Basic realm="{self.realm}", charset="UTF-8"'
                )
            return response
        return super().handle_error_response(request, error)

