"""One authorization server instance: settings, clock, keys, clients, issuer and logs,
assembled once and shared by the views. Nothing here is module-level, so several issuers can
live in one process."""

from __future__ import annotations

from typing import Any

from .client_auth import ClientSecretJWT, JtiCache, PrivateKeyJWT, client_secret_basic
from .clients import ClientRegistry
from .clock import Clock
from .faults import FaultQueue
from .grants import ClientCredentialsGrant
from .keys import KeyStore
from .oauth import AuthorizationServer
from .requestlog import JwksRequest, RequestLog, TokenRequest
from .settings import AUTH_METHODS, ServerSettings
from .tokens import TokenIssuer

__all__ = ["ServerState"]

TOKEN_PATH = "/token"
JWKS_PATH = "/jwks.json"
METADATA_PATHS = ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration")


def load_keys(settings: ServerSettings) -> KeyStore:
    """The key store ``settings`` asks for: ephemeral, a directory, or the shipped test keys."""
    if settings.ephemeral_keys:
        return KeyStore.ephemeral(settings.algorithms_in_use())
    if settings.keys_dir is not None:
        return KeyStore.from_directory(settings.keys_dir)
    return KeyStore.shipped()


class ServerState:
    """Everything one issuer needs to answer requests."""

    def __init__(self, settings: ServerSettings, *, clock: Clock | None = None,
                 keys: KeyStore | None = None) -> None:
        self.settings = settings
        self.issuer = settings.issuer_url
        # Decided once, like the address the server binds ("localhost" resolves only here).
        self.admin_enabled = settings.admin_enabled
        self.clock = clock or Clock()
        self.keys = keys or load_keys(settings)
        for alg in settings.algorithms_in_use():
            self.keys.active(alg)  # fail at start, not at the first token, if a key is missing
        self.clients = ClientRegistry(settings.clients, default_audience=settings.default_audience)
        self.token_issuer = TokenIssuer(
            self.issuer, self.keys, self.clock,
            algorithm=settings.algorithm, token_lifetime=settings.token_lifetime,
        )
        self.jti_cache = JtiCache(self.clock)
        self.token_requests: RequestLog[TokenRequest] = RequestLog()
        self.jwks_requests: RequestLog[JwksRequest] = RequestLog()
        self.faults = FaultQueue()
        self.authorization = AuthorizationServer(self.clients, self.token_issuer, self.issuer)
        self.authorization.register_grant(ClientCredentialsGrant)
        assertion_options = dict(
            audiences=[self.token_endpoint, self.issuer], clock=self.clock,
            jti_cache=self.jti_cache, leeway=settings.assertion_leeway,
            max_lifetime=settings.assertion_max_lifetime,
        )
        self.authorization.register_client_auth_method("client_secret_basic", client_secret_basic)
        self.authorization.register_client_auth_method(
            "client_secret_jwt", ClientSecretJWT(**assertion_options)
        )
        self.authorization.register_client_auth_method(
            "private_key_jwt", PrivateKeyJWT(**assertion_options)
        )

    @property
    def token_endpoint(self) -> str:
        return self.issuer + TOKEN_PATH

    @property
    def jwks_uri(self) -> str:
        return self.issuer + JWKS_PATH

    def metadata(self) -> dict[str, Any]:
        """RFC 8414 metadata; every URL is absolute and built from the configured issuer."""
        scopes = sorted({s for c in self.clients for s in c.scopes})
        metadata = {
            "issuer": self.issuer,
            "token_endpoint": self.token_endpoint,
            "jwks_uri": self.jwks_uri,
            "grant_types_supported": ["client_credentials"],
            # No response_types_supported: no grant here uses the authorization endpoint, and
            # RFC 8414 section 3.2 says claims with zero elements MUST be omitted (erratum 7793).
            "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
            "token_endpoint_auth_signing_alg_values_supported": [
                *PrivateKeyJWT.ALGORITHMS, *ClientSecretJWT.ALGORITHMS
            ],
        }
        if scopes:
            metadata["scopes_supported"] = scopes
        return metadata
