"""The client-credentials grant (RFC 6749 §4.4), Authlib's grant made strict:
repeated parameters, two credentials at once, malformed scopes and RFC 8707 resources are
rejected before any token is made."""

from __future__ import annotations

from typing import ClassVar
from urllib.parse import urlsplit

from authlib.oauth2.rfc6749 import (
    InvalidClientError,
    InvalidRequestError,
    InvalidScopeError,
    grants,
)
from authlib.oauth2.rfc6749.hooks import hooked

from .client_auth import basic_credentials, unverified_part
from .errors import InvalidTargetError
from .settings import AUTH_METHODS
from .syntax import is_scope, safe_description
from .tokens import IssuedToken

__all__ = ["ClientCredentialsGrant", "check_request_parameters"]

#: Parameters that may legitimately repeat (RFC 8707 §2: resource; the audience alias).
_REPEATABLE = frozenset({"resource", "audience"})
_ASSERTION_PARAMS = ("client_assertion", "client_assertion_type")


def check_request_parameters(request) -> None:
    """RFC 6749 §3.2: parameters MUST NOT be repeated; §2.3: one authentication method only;
    a client assertion that can be read. Before the client is authenticated, at every
    endpoint that authenticates one (token, introspection, revocation)."""
    datalist = request.payload.datalist
    for name, values in datalist.items():
        if len(values) > 1 and name not in _REPEATABLE:
            raise InvalidRequestError(
                f"Parameter '{safe_description(name, 40)}' is repeated.")
    form = request.payload.data
    has_header = request.headers.get("Authorization") is not None
    in_body = [p for p in ("client_secret", *_ASSERTION_PARAMS) if p in form]
    if has_header and in_body:
        raise InvalidRequestError(
            "Client credentials sent in both the Authorization header and the body."
        )
    if has_header and "client_id" in form:
        basic = request.basic if hasattr(request, "basic") else \
            basic_credentials(request.headers["Authorization"])
        basic_id, _ = basic or (None, None)
        if basic_id != form["client_id"]:
            raise InvalidRequestError(
                "The client_id in the body does not match the Authorization header."
            )
    if "client_secret" in form and "client_assertion" in form:
        raise InvalidRequestError("Use either client_secret or client_assertion, not both.")
    assertion = form.get("client_assertion")
    if assertion and (unverified_part(assertion, 0) is None
                      or unverified_part(assertion, 1) is None):
        # Authlib and joserfc parse these with json.loads too, but let a RecursionError (JSON
        # nested too deeply) escape as a 500; unreadable is unreadable, whatever the reason.
        raise InvalidClientError(description="Invalid JWT assertion.")


def _check_parameters(request) -> None:
    """The request checks of every endpoint, then a well-formed scope."""
    check_request_parameters(request)
    scope = request.payload.data.get("scope")
    if scope is not None and scope != "" and not is_scope(scope):
        raise InvalidScopeError(
            "Malformed scope: space-separated tokens of printable ASCII, without double"
            " quote or backslash (RFC 6749 section 3.3)."
        )


def _requested_audience(request) -> list[str]:
    """RFC 8707 ``resource`` values (absolute URIs, no fragment) plus the ``audience`` alias."""
    datalist = request.payload.datalist
    resources = [r for r in datalist.get("resource", [])]
    for resource in resources:
        try:
            parts = urlsplit(resource)
        except ValueError:
            parts = None
        if parts is None or not parts.scheme or parts.fragment or "#" in resource:
            raise InvalidTargetError(
                "The resource parameter must be an absolute URI without a fragment (RFC 8707)."
            )
    audiences = [a for a in datalist.get("audience", [])]
    if any(not a.strip() for a in resources + audiences):
        raise InvalidTargetError("Empty resource or audience parameter.")
    return resources + audiences


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    """Authlib's client-credentials grant with every auth method (narrowed per client by
    ``Client.check_endpoint_auth_method``), strict scopes and RFC 8707 audiences."""

    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = list(AUTH_METHODS)

    @hooked  # after_validate_token_request: the DPoP proof check (dpop.DPoPGrantExtension)
    def validate_token_request(self) -> None:
        _check_parameters(self.request)
        super().validate_token_request()  # authenticates the client, checks the grant type
        client = self.request.client
        self.request.scope = " ".join(client.resolve_scope(self.request.payload.scope))
        self.request.audience = client.resolve_audience(_requested_audience(self.request))

    def generate_token(self, user=None, scope=None, grant_type=None, expires_in=None,
                       include_refresh_token=True):
        # Authlib's generator hooks receive no request; the audience resolved above is
        # handed to m2mauth's issuer here instead.
        proof = getattr(self.request, "dpop", None)
        issued: IssuedToken = self.server.token_issuer.issue(
            self.client, scope=self.request.scope.split(), audience=self.request.audience,
            jkt=proof.jkt if proof is not None else None,
        )
        self.request.issued = issued
        return issued.response

    def save_token(self, token) -> None:
        # Self-contained JWTs: nothing to store.
        return None

    @hooked
    def create_token_response(self):
        # Authlib's version logs the whole token response at DEBUG; m2mauth never logs a
        # token (views.py writes the one line per request, with the jti).
        token = self.generate_token(scope=self.request.payload.scope, include_refresh_token=False)
        self.save_token(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER
