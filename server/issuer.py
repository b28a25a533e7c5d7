"""One issuer: its settings, its state store, and the pieces built on them once (clock, keys,
clients, token issuance, Authlib's authorization server with m2mauth's grant and client
authentication registered). Nothing here is module-level, so several issuers can live in one
process; everything mutable is in the store, so several processes can share one issuer."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import replace
from typing import Any

from flask import current_app, request
from werkzeug.exceptions import BadRequest

from .algorithms import ASSERTION_ALGORITHMS
from .client_auth import ClientSecretJWT, PrivateKeyJWT, client_secret_basic, client_secret_post
from .clients import ClientRegistry
from .clock import Clock
from .dpop import DPOP_ALGORITHMS, DPoPGrantExtension, DPoPVerifier
from .forwarded import ForwardedError, external_origin
from .grants import ClientCredentialsGrant
from .introspection import Introspection, Revocation, TokenLookup
from .keys import KeyStore, SigningKey, generate_signing_key, load_signing_keys, shipped_keys_dir
from .oauth import AuthorizationServer
from .settings import AUTH_METHODS, ServerSettings
from .store import MemoryStore, StateStore
from .tokens import TokenIssuer

__all__ = [
    "HEALTH_PATH",
    "INTROSPECTION_PATH",
    "JWKS_PATH",
    "METADATA_PATHS",
    "READY_PATH",
    "REVOCATION_PATH",
    "TOKEN_PATH",
    "Issuer",
    "current_issuer",
    "initial_keys",
    "open_store",
]

TOKEN_PATH = "/token"
JWKS_PATH = "/jwks.json"
INTROSPECTION_PATH = "/introspect"
REVOCATION_PATH = "/revoke"
#: Liveness and readiness probes, at the root: outside any issuer's path, for the
#: whole server.
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
METADATA_PATHS = ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration")
#: Where a Flask app keeps its issuer.
EXTENSION = "m2mauth"


def initial_keys(settings: ServerSettings) -> list[SigningKey]:
    """The signing keys ``settings`` start with: ephemeral, a directory, or the shipped
    public test keys."""
    if settings.ephemeral_keys:
        return [generate_signing_key(alg) for alg in settings.algorithms_in_use()]
    if settings.keys_dir is not None:
        return load_signing_keys(settings.keys_dir,
                                 check_permissions=not settings.unsafe_key_permissions)
    # The shipped test keys are not permission-checked: they are public anyway, and their
    # modes are whatever the installer gave them.
    return load_signing_keys(shipped_keys_dir(), trusted=True, check_permissions=False)


def open_store(settings: ServerSettings, *, namespace: str = "") -> StateStore:
    """The state store ``settings.store`` names, with the settings' bounds: a
    :class:`MemoryStore` holding the settings' clients and keys, or a shared store (SQLite,
    Redis) as it is – :class:`Issuer` seeds it if it is new. ``namespace`` keeps a further
    issuer's state apart from the root issuer's in a shared store (its name)."""
    from .store import parse_store_url

    kind, target = parse_store_url(settings.store)
    bounds: dict[str, Any] = dict(
        max_jtis_per_client=settings.assertion_jtis_per_client,
        max_revocations=settings.max_revocations, max_opaque_tokens=settings.max_opaque_tokens)
    if kind == "sqlite":
        from .sqlite_store import SQLiteStore

        return SQLiteStore(target, namespace=namespace,
                           unsafe_permissions=settings.unsafe_key_permissions, **bounds)
    if kind == "redis":
        from .redis_store import RedisStore

        return RedisStore(target, namespace=namespace, **bounds)
    return MemoryStore(settings.clients, initial_keys(settings), **bounds)


def current_issuer() -> Issuer:
    """The issuer of the Flask app handling the current request; with ``trust_proxy``, as
    the proxy in front names it (see :meth:`Issuer.seen_as`)."""
    issuer: Issuer = current_app.extensions[EXTENSION]
    if not issuer.settings.trust_proxy:
        return issuer
    try:
        origin, prefix = external_origin(request.environ)
    except ForwardedError as exc:
        raise BadRequest(str(exc)) from None
    return issuer.seen_as(origin + prefix + issuer.mount)


class Issuer:
    """Everything one issuer needs to answer requests. ``store`` holds its state; without
    one, the store the settings name (:func:`open_store`; ``namespace``, a further issuer's
    name, keeps its state apart in a shared one).

    A shared store that holds no issuer yet is seeded with the settings' clients and keys
    (generated now, for ephemeral keys) – once: a store that holds an issuer keeps it, so
    every process that opens it signs with the same keys and sees the same clients, and a
    restarted process loses nothing."""

    def __init__(self, settings: ServerSettings, *, store: StateStore | None = None,
                 namespace: str = "") -> None:
        self.settings = settings
        self.issuer = settings.issuer_url
        #: The path its endpoints live under: "" at the root, "/a" for an issuer ".../a".
        self.mount = settings.mount
        #: Whether this issuer opened its store (and closes it, see :meth:`close`).
        self.owns_store = store is None
        self.store = store if store is not None else open_store(settings, namespace=namespace)
        #: Whether this start seeded a new shared store (False: it kept what it held).
        self.seeded_store = False
        if not self.store.seeded():
            # Keys are generated (or loaded) only for a new store; of several processes
            # seeding at once, one wins and the others' keys are dropped unused.
            self.seeded_store = self.store.seed(settings.clients, initial_keys(settings))
        self.store.seed_when_empty(lambda: (settings.clients, initial_keys(settings)))
        self.clock = Clock(self.store)
        self.keys = KeyStore(self.store, generate_missing=settings.ephemeral_keys)
        for alg in settings.algorithms_in_use():
            self.keys.active(alg)  # fail at start, not at the first token, if a key is missing
        self.clients = ClientRegistry(self.store, default_audience=settings.default_audience)
        self.token_issuer = TokenIssuer(
            self.issuer, self.keys, self.clock,
            algorithm=settings.algorithm, token_lifetime=settings.token_lifetime,
            store=self.store, token_format=settings.token_format,
        )
        self.tokens = TokenLookup(self.issuer, self.keys, self.clock, self.store)
        #: DPoP proofs at the token endpoint (RFC 9449) and the issuer's nonces.
        self.dpop = DPoPVerifier(clock=self.clock, store=self.store,
                                 require_nonce=settings.dpop_nonce)
        self.authorization = self._authorization_server()
        self._seen_as: OrderedDict[str, Issuer] = OrderedDict()
        self._seen_as_lock = threading.Lock()

    #: Issuer URLs a proxied issuer keeps built (an attacker who reaches the server directly
    #: may send any Host: the oldest is dropped and rebuilt if asked for again).
    MAX_SEEN_AS = 32

    def seen_as(self, issuer_url: str) -> Issuer:
        """This issuer under another URL, for ``trust_proxy``: the same state store (clients,
        keys, clock, replay cache), its own URLs in tokens, metadata and assertion audiences."""
        if issuer_url == self.issuer:
            return self
        with self._seen_as_lock:
            found = self._seen_as.get(issuer_url)
            if found is not None:
                self._seen_as.move_to_end(issuer_url)
                return found
        found = Issuer(replace(self.settings, issuer=issuer_url, trust_proxy=False),
                       store=self.store)
        with self._seen_as_lock:
            self._seen_as[issuer_url] = found
            while len(self._seen_as) > self.MAX_SEEN_AS:
                self._seen_as.popitem(last=False)
        return found

    def _authorization_server(self) -> AuthorizationServer:
        server = AuthorizationServer(self.clients, self.token_issuer, realm=self.issuer)
        server.register_grant(ClientCredentialsGrant, [DPoPGrantExtension(self.dpop)])
        server.dpop = self.dpop
        assertion_options: dict[str, Any] = dict(
            # RFC 7523 section 3: a value that identifies this server; the endpoint called
            # does, and so do the others.
            audiences=[self.token_endpoint, self.issuer, self.introspection_endpoint,
                       self.revocation_endpoint], clock=self.clock, store=self.store,
            leeway=self.settings.assertion_leeway,
            max_lifetime=self.settings.assertion_max_lifetime,
        )
        server.register_client_auth_method("client_secret_basic", client_secret_basic)
        server.register_client_auth_method("client_secret_post", client_secret_post)
        server.register_client_auth_method(
            "client_secret_jwt", ClientSecretJWT(**assertion_options))
        server.register_client_auth_method(
            "private_key_jwt", PrivateKeyJWT(**assertion_options))
        server.register_endpoint(Introspection(self.tokens))
        server.register_endpoint(Revocation(self.tokens))
        return server

    @property
    def token_endpoint(self) -> str:
        return self.issuer + TOKEN_PATH

    @property
    def jwks_uri(self) -> str:
        return self.issuer + JWKS_PATH

    @property
    def introspection_endpoint(self) -> str:
        return self.issuer + INTROSPECTION_PATH

    @property
    def revocation_endpoint(self) -> str:
        return self.issuer + REVOCATION_PATH

    def metadata(self) -> dict[str, Any]:
        """RFC 8414 metadata, also served as the OpenID Connect Discovery document; every URL
        is absolute and built from the configured issuer. Only what holds for a
        client-credentials-only server is stated (see README, "Metadata")."""
        scopes = sorted({s for c in self.store.clients() for s in c.scopes})
        # EdDSA and RFC 9864's Ed25519 are one signature; both names are accepted.
        assertion_algs = [*ASSERTION_ALGORITHMS, *ClientSecretJWT.ALGORITHMS]
        metadata: dict[str, Any] = {
            "issuer": self.issuer,
            "token_endpoint": self.token_endpoint,
            "jwks_uri": self.jwks_uri,
            # No response_types_supported, though RFC 8414 section 2 (and OIDC Discovery
            # section 3) list it as REQUIRED: no grant here uses the authorization endpoint, so
            # the truthful value is an empty list, and section 3.2 says claims with zero
            # elements MUST be omitted. The OAuth WG's reading is to omit it when no grant uses
            # the authorization endpoint (OpenID4VCI's note for pre-authorized-code-only
            # servers, openid/OpenID4VCI#248). "code" or "token" would be false; [] breaks 3.2.
            # authorization_endpoint is omitted too (REQUIRED "unless no grant types are
            # supported that use the authorization endpoint").
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
            "token_endpoint_auth_signing_alg_values_supported": assertion_algs,
            # OIDC Discovery section 3, REQUIRED: every token's sub is the client id, the same
            # for every audience, which is the "public" subject type. Its other required
            # fields are left out rather than stated falsely: there is no authorization
            # endpoint, and no ID tokens are issued (id_token_signing_alg_values_supported
            # MUST include RS256, which would claim ID tokens). m2mauth is not an OpenID
            # Provider; the document is served for clients that discover token_endpoint and
            # jwks_uri there.
            "subject_types_supported": ["public"],
            "introspection_endpoint": self.introspection_endpoint,
            "introspection_endpoint_auth_methods_supported": list(AUTH_METHODS),
            "introspection_endpoint_auth_signing_alg_values_supported": assertion_algs,
            "revocation_endpoint": self.revocation_endpoint,
            "revocation_endpoint_auth_methods_supported": list(AUTH_METHODS),
            "revocation_endpoint_auth_signing_alg_values_supported": assertion_algs,
            # RFC 9449 section 5.1: the algorithms a DPoP proof may be signed with.
            "dpop_signing_alg_values_supported": list(DPOP_ALGORITHMS),
        }
        if scopes:
            metadata["scopes_supported"] = scopes
        return metadata

    def close(self) -> None:
        """Close the store if this issuer opened it."""
        if self.owns_store:
            self.store.close()

    def __repr__(self) -> str:
        return f"<Issuer {self.issuer} {self.store!r}>"
