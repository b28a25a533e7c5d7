"""Registered clients as Authlib sees them (``ClientMixin``), and the registry that builds them
from the client settings in the state store."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Any

from authlib.oauth2.rfc6749 import ClientMixin, InvalidScopeError
from joserfc.jwk import KeySet

from .errors import InvalidTargetError
from .settings import ClientSettings
from .store import StateStore
from .syntax import safe_description

__all__ = ["Client", "ClientRegistry"]


class Client(ClientMixin):
    """A confidential client allowed the client-credentials grant, built from its settings."""

    def __init__(self, settings: ClientSettings, *, default_audience: str) -> None:
        self.settings = settings
        self.client_id = settings.client_id
        self.auth_methods = settings.allowed_auth_methods()
        #: May call the introspection endpoint (a resource server's client).
        self.may_introspect = settings.introspect
        self.scopes = tuple(settings.scopes)
        self.default_scopes = (
            self.scopes if settings.default_scopes is None else tuple(settings.default_scopes)
        )
        self.audiences = tuple(settings.audiences) or (default_audience,)
        self.default_audience = (
            self.audiences[:1] if settings.default_audience is None
            else tuple(settings.default_audience)
        )
        self._secret = settings.client_secret.encode() if settings.client_secret else None
        self._public_keys = KeySet.import_key_set(settings.jwks) if settings.jwks else None

    def __repr__(self) -> str:
        return f"<Client {self.client_id!r} methods={list(self.auth_methods)}>"

    # -- ClientMixin ------------------------------------------------------------------

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        return None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"

    def check_client_secret(self, client_secret: str) -> bool:
        if self._secret is None:
            return False
        # Constant time, and on bytes: compare_digest refuses non-ASCII str.
        return hmac.compare_digest(self._secret, client_secret.encode("utf-8", "surrogatepass"))

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        # The same methods at the token, introspection and revocation endpoints.
        return endpoint in ("token", "introspection", "revocation") and \
            method in self.auth_methods

    # -- m2mauth ----------------------------------------------------------------------

    @property
    def secret(self) -> bytes | None:
        """The shared secret (for client_secret_jwt's HMAC key); never logged."""
        return self._secret

    @property
    def public_keys(self) -> KeySet | None:
        """Registered public keys for private_key_jwt."""
        return self._public_keys

    def resolve_scope(self, requested: str | None) -> list[str]:
        """Requested scopes if all are allowed, else the client's default scopes."""
        if requested is None or not requested.strip():
            return list(self.default_scopes)
        asked = list(dict.fromkeys(requested.split()))  # keep order, drop repeats
        denied = [s for s in asked if s not in self.scopes]
        if denied:
            raise InvalidScopeError(
                f"Scope not allowed for this client: {safe_description(' '.join(denied))}"
            )
        return asked

    def resolve_audience(self, requested: list[str]) -> list[str]:
        """Requested audiences if all are allowed, else the client's default audience."""
        if not requested:
            return list(self.default_audience)
        asked = list(dict.fromkeys(requested))
        denied = [a for a in asked if a not in self.audiences]
        if denied:
            raise InvalidTargetError(
                f"Resource not allowed for this client: {safe_description(' '.join(denied))}"
            )
        return asked

    @property
    def extra_claims(self) -> dict[str, Any]:
        return self.settings.claims


class ClientRegistry:
    """The issuer's clients, read from the state store. Each :class:`Client` is built once
    per settings object (its JWKS parsed once) and rebuilt when the store holds new settings
    for its id."""

    def __init__(self, store: StateStore, *, default_audience: str) -> None:
        self.store = store
        self._default_audience = default_audience
        self._built: dict[str, Client] = {}

    def get(self, client_id: str) -> Client | None:
        settings = self.store.client(client_id)
        if settings is None:
            self._built.pop(client_id, None)
            return None
        client = self._built.get(client_id)
        if client is None or client.settings is not settings:
            client = self._built[client_id] = self.build(settings)
        return client

    def build(self, settings: ClientSettings) -> Client:
        """A :class:`Client` for ``settings``; raises ``ValueError``/``JoseError`` for a JWKS
        that cannot be read."""
        return Client(settings, default_audience=self._default_audience)

    def __iter__(self) -> Iterator[Client]:
        return iter([c for s in self.store.clients() if (c := self.get(s.client_id))])
