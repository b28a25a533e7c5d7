"""Settings of one authorization server, each declared once.

Every field of :class:`ServerSettings` carries its own declaration (``dataclasses.field``
metadata, see :func:`_setting`): its help text, its kind, its check, and whether it has a
command-line flag. The config-file key (the field name, in TOML or JSON), the
``M2MAUTH_<NAME>`` environment variable, the ``m2mauth serve`` option and the validation all
derive from it. Layers, later wins: built-in defaults, a config file, ``M2MAUTH_*`` variables,
flags. Every problem raises :class:`ConfigError` naming the source and the key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import socket
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .algorithms import ALGORITHMS, ASSERTION_ALGORITHMS, KEY_TYPES, fits, key_type, one_of
from .errors import ConfigError
from .store import parse_store_url
from .syntax import is_client_id, is_scope_token, printable, strings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "ALGORITHMS",
    "AUTH_METHODS",
    "DPOP_MODES",
    "ISSUER_KEYS",
    "RESERVED_ISSUER_NAMES",
    "TOKEN_FORMATS",
    "ClientSettings",
    "ServerSettings",
    "Setting",
    "env_name",
    "issuer_name_problem",
    "issuer_values",
    "load_settings",
    "server_settings",
]

#: Client authentication methods at the token endpoint (RFC 6749 §2.3, RFC 7523).
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "client_secret_jwt", "private_key_jwt")
_SECRET_METHODS = ("client_secret_basic", "client_secret_post", "client_secret_jwt")

#: What an access token is: a signed RFC 9068 JWT, or a random string only the introspection
#: endpoint can read (RFC 7662).
TOKEN_FORMATS = ("jwt", "opaque")
#: A client's DPoP modes (RFC 9449): proofs honoured when sent, or required.
DPOP_MODES = ("optional", "required")

DEFAULT_AUDIENCE = "api://default"
DEMO_CLIENT_ID = "demo-client"
DEMO_CLIENT_SECRET = "demo-secret"  # a published demo credential, printed by `m2mauth serve`

#: Kinds of value a setting holds: how a file's value is type-checked and a variable parsed
#: (a table is a JSON object, a list a JSON array).
_KIND_NAMES = {str: "a string", int: "an integer", bool: "true or false", list: "a list",
               dict: "a table", Path: "a string"}


@dataclass(frozen=True)
class Setting:
    """The declaration of one setting (the metadata of its dataclass field)."""

    name: str
    help: str
    kind: type
    #: Raises ConfigError-style problems as a string, or returns None when the value is fine.
    check: Callable[[Any], str | None] | None = None
    #: Whether ``m2mauth serve`` has an option for it (``--name``; ``--name/--no-name`` for
    #: a bool that defaults to True).
    flag: bool = False
    #: Whether an ``M2MAUTH_<NAME>`` variable sets it (every setting does today; one that
    #: does not must say why in its help, and tests/test_settings.py lists it).
    env: bool = True
    #: Never echo the value (messages name its type instead).
    secret: bool = False
    #: The values it may take, when they are a fixed few.
    choices: tuple[str, ...] | None = None
    default: Any = None


def _setting(default: Any = dataclasses.MISSING, *, help: str, kind: type,
             check: Callable[[Any], str | None] | None = None, flag: bool = False,
             env: bool = True, secret: bool = False, choices: tuple[str, ...] | None = None,
             repr: bool = True, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field that declares its setting (see :class:`Setting`)."""
    if choices is not None:
        check = _one_of(choices)
    meta = {"setting": dict(help=help, kind=kind, check=check, flag=flag, env=env,
                            secret=secret, choices=choices)}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta, repr=repr)
    return field(default=default, metadata=meta, repr=repr)


# -- checks: each returns the problem, or None ----------------------------------------------


def _positive(value: int) -> str | None:
    return None if value > 0 else "must be a positive integer"


def _non_negative(value: int) -> str | None:
    return None if value >= 0 else "must be a non-negative integer"


#: Most worker processes ``serve --workers`` starts (each holds a thread pool and
#: connections to the store).
MAX_WORKERS = 64


def _workers(value: int) -> str | None:
    return None if 1 <= value <= MAX_WORKERS else f"must be between 1 and {MAX_WORKERS}"


def _port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be between 0 and 65535"


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value in choices else one_of(value, choices)
    return check


def _non_empty(value: str) -> str | None:
    return None if value else "must not be empty"


def _admin_token(value: str) -> str | None:
    return None if len(value) >= 16 else "must be at least 16 characters"


def _store(url: str) -> str | None:
    try:
        parse_store_url(url)
    except ValueError as exc:
        return str(exc)
    return None


def _issuer(issuer: str) -> str | None:
    parts = urlsplit(issuer)
    if (parts.scheme not in ("http", "https") or not parts.netloc or parts.query
            or parts.fragment):
        return f"{issuer!r} is not an http(s) URL without query or fragment"
    try:
        parts.port  # noqa: B018 - urlsplit checks the port when it is read
    except ValueError:
        return f"{issuer!r} has a port that is not a number from 0 to 65535"
    if not parts.hostname:
        return f"{issuer!r} names no host"
    if issuer.endswith("/"):
        return "must not end with '/' (it is compared exactly)"
    return None


# -- clients ---------------------------------------------------------------------------------


@dataclass
class ClientSettings:
    """One registered client: credentials, what it may ask for and what its tokens carry."""

    client_id: str
    #: Shared secret for client_secret_basic/post/jwt; masked in repr().
    client_secret: str | None = field(default=None, repr=False)
    #: Public keys (a JWKS dict) for private_key_jwt.
    jwks: dict[str, Any] | None = None
    #: Allowed token-endpoint auth methods; None means every method its credentials allow.
    auth_methods: tuple[str, ...] | None = None
    #: Scopes the client may request.
    scopes: tuple[str, ...] = ()
    #: Scopes granted when the request names none; None means all of ``scopes``.
    default_scopes: tuple[str, ...] | None = None
    #: Audiences (RFC 8707 resources) the client may request; empty means the server default.
    audiences: tuple[str, ...] = ()
    #: Audiences used when the request names none; None means the first of ``audiences``.
    default_audience: tuple[str, ...] | None = None
    #: Extra static claims added to every token of this client.
    claims: dict[str, Any] = field(default_factory=dict)
    #: Token lifetime in seconds; None means the server's.
    token_lifetime: int | None = None
    #: Signing algorithm; None means the server's.
    algorithm: str | None = None
    #: "jwt" or "opaque" (RFC 7662 introspection only); None means the server's.
    token_format: str | None = None
    #: May call the introspection endpoint (a resource server's client).
    introspect: bool = False
    #: DPoP (RFC 9449) at the token endpoint: "optional" (a proof is honoured when sent,
    #: a Bearer token otherwise) or "required" (a request without a proof is refused).
    dpop: str = "optional"
    #: Require a server nonce in this client's DPoP proofs, whatever the issuer's
    #: ``dpop_nonce`` says (RFC 9449 section 8).
    dpop_nonce: bool = False

    def allowed_auth_methods(self) -> tuple[str, ...]:
        """The auth methods this client may use, derived from its credentials when not set."""
        if self.auth_methods is not None:
            return self.auth_methods
        methods: list[str] = []
        if self.client_secret:
            methods += _SECRET_METHODS
        if self.jwks:
            methods.append("private_key_jwt")
        return tuple(methods)

    def validate(self, source: str, where: str) -> ClientSettings:
        """Check every value; raise :class:`ConfigError` (key ``<where>.<field>``)."""
        def fail(key: str, why: str) -> ConfigError:
            return ConfigError(source, f"{where}.{key}" if key else where, why)

        if not is_client_id(self.client_id):
            raise fail("client_id", "must be 1-255 printable ASCII characters")
        if self.client_secret is not None and (
                not isinstance(self.client_secret, str) or not self.client_secret):
            raise fail("client_secret", "must be a non-empty string")
        if self.jwks is not None:
            if not isinstance(self.jwks, dict) or not isinstance(self.jwks.get("keys"), list):
                raise fail("jwks", 'must be a JWKS: {"keys": [...]}')
            if any(isinstance(k, dict) and "d" in k for k in self.jwks["keys"]):
                raise fail("jwks", "contains a private key; register public keys only")
            problem = _jwks_problem(self.jwks)
            if problem is not None:  # found now, not as a 500 at the first assertion
                raise fail("jwks", problem)
        methods = self.allowed_auth_methods()
        for method in methods:
            if method not in AUTH_METHODS:
                raise fail("auth_methods", one_of(method, AUTH_METHODS))
            if method in _SECRET_METHODS and not self.client_secret:
                raise fail("auth_methods", f"{method} needs a client_secret")
            if method == "private_key_jwt" and not self.jwks:
                raise fail("auth_methods", "private_key_jwt needs jwks")
        if not methods:
            raise fail("", "has no credentials: set client_secret or jwks")
        for scope in self.scopes:
            if not is_scope_token(scope):
                raise fail("scopes", f"{scope!r} is not a valid scope token (RFC 6749 §3.3)")
        _check_subset(fail, "default_scopes", self.default_scopes, self.scopes, "scopes")
        for aud in self.audiences:
            if not isinstance(aud, str) or not aud:
                raise fail("audiences", "entries must be non-empty strings")
        _check_subset(fail, "default_audience", self.default_audience, self.audiences,
                      "audiences")
        if self.token_lifetime is not None and (
                not _is_int(self.token_lifetime) or self.token_lifetime <= 0):
            raise fail("token_lifetime", "must be a positive integer")
        if self.algorithm is not None and self.algorithm not in ALGORITHMS:
            raise fail("algorithm", one_of(self.algorithm))
        if self.token_format is not None and self.token_format not in TOKEN_FORMATS:
            raise fail("token_format", one_of(self.token_format, TOKEN_FORMATS))
        if not isinstance(self.introspect, bool):
            raise fail("introspect", "must be true or false")
        if self.dpop not in DPOP_MODES:
            raise fail("dpop", one_of(self.dpop, DPOP_MODES))
        if not isinstance(self.dpop_nonce, bool):
            raise fail("dpop_nonce", "must be true or false")
        if not isinstance(self.claims, dict):
            raise fail("claims", "must be a table of claim names to values")
        problem = _claims_problem(self.claims)
        if problem is not None:  # found now, not as a 500 at every token request
            raise fail("claims", problem)
        return self


#: Bounds of a client's static claims: nesting (the token is serialised, and later parsed by
#: every validator, recursively) and size (they go into every token and every log record).
MAX_CLAIMS_DEPTH = 32
MAX_CLAIMS_BYTES = 16 * 1024


def _claims_problem(claims: dict[str, Any]) -> str | None:
    """Why ``claims`` cannot go into tokens as JSON, or None. Walked with an explicit stack,
    not recursively: the value may be nested deeper than Python's recursion limit."""
    stack: list[tuple[Any, int]] = [(claims, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list, tuple)):
            if depth > MAX_CLAIMS_DEPTH:
                return f"nest more than {MAX_CLAIMS_DEPTH} levels deep"
            if isinstance(value, dict):
                if not all(isinstance(name, str) for name in value):
                    return "claim and member names must be strings"
                stack.extend((v, depth + 1) for v in value.values())
            else:
                stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                return "must not hold NaN or infinity (not JSON)"
        elif value is not None and not isinstance(value, (str, int, bool)):
            return f"must hold JSON values only, not {type(value).__name__}"
    size = len(json.dumps(claims, separators=(",", ":")).encode("utf-8"))
    if size > MAX_CLAIMS_BYTES:
        return f"are {size} bytes as JSON; at most {MAX_CLAIMS_BYTES} are allowed"
    return None


#: The key a private_key_jwt key type must be to verify one of ALGORITHMS (see fits()).
_CLIENT_KEY_ALGORITHM = {"RSA": "RS256", "EC": "ES256", "OKP": "EdDSA"}
_CLIENT_KEY_CURVES = {"EC": "P-256", "OKP": "Ed25519"}


def _jwks_problem(jwks: dict[str, Any]) -> str | None:
    """Why ``jwks`` cannot be the client's private_key_jwt keys, or None: every key must be
    a public RSA (2048 bits or more), EC P-256 or Ed25519 key for signatures – one that can
    verify an algorithm the server accepts. A symmetric (``oct``) key never passes: it would
    be a shared secret kept in a public-key field."""
    import warnings

    from joserfc.errors import JoseError
    from joserfc.jwk import KeySet, import_key

    if not jwks["keys"]:
        return "has no keys"
    for i, jwk in enumerate(jwks["keys"]):
        where = f"keys[{i}]"
        if not isinstance(jwk, dict):
            return f"{where} is not a JWK (a table of key parameters)"
        kty = jwk.get("kty")
        if kty == "oct":
            return (f"{where} is a symmetric (oct) key; private_key_jwt needs public RSA, EC"
                    " or OKP keys (use client_secret for a shared secret)")
        if not isinstance(kty, str) or kty not in _CLIENT_KEY_ALGORITHM:
            return f"{where}: kty {kty!r} is not one of RSA, EC, OKP"
        curve = _CLIENT_KEY_CURVES.get(kty)
        if curve is not None and jwk.get("crv") != curve:
            return f"{where}: crv {jwk.get('crv')!r} is not {curve}, the {kty} curve accepted"
        if jwk.get("use", "sig") != "sig":
            return f"{where}: use is {jwk['use']!r}; private_key_jwt keys are for 'sig'"
        alg = jwk.get("alg", _CLIENT_KEY_ALGORITHM[kty])
        if not isinstance(alg, str) or alg not in ASSERTION_ALGORITHMS or KEY_TYPES[alg] != kty:
            return f"{where}: alg {alg!r} is not one of the {kty} algorithms the server accepts"
        try:
            with warnings.catch_warnings():  # joserfc warns about weak keys: refused below
                warnings.simplefilter("ignore")
                key = import_key(jwk)  # type: ignore[arg-type]
        except (JoseError, ValueError, TypeError, KeyError, AttributeError) as exc:
            reason = str(exc).strip() or "malformed key parameters"
            return f"{where} is not a usable {kty} public key: {reason}"
        if key.is_private:
            return f"{where} is a private key; register public keys only"
        if not fits(alg, key.public_key):
            return f"{where} cannot verify {alg}: RSA needs 2048 bits or more, EC P-256," \
                " OKP Ed25519"
    try:
        KeySet.import_key_set(jwks)  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError, KeyError, AttributeError) as exc:
        return f"is not a usable JWKS: {str(exc).strip() or type(exc).__name__}"
    return None


def _check_subset(fail: Callable[[str, str], ConfigError], key: str,
                  chosen: tuple[str, ...] | None, allowed: tuple[str, ...], what: str) -> None:
    extra = set(chosen or ()) - set(allowed)
    if extra:
        raise fail(key, f"{sorted(extra)} not in the client's {what}")


def _demo_clients() -> list[ClientSettings]:
    return [ClientSettings(
        client_id=DEMO_CLIENT_ID,
        client_secret=DEMO_CLIENT_SECRET,
        scopes=("read", "write"),
        audiences=(DEFAULT_AUDIENCE,),
    )]


#: The TOML keys of a ``[[clients]]`` table and the kind of value each takes.
_CLIENT_KEYS: dict[str, tuple[type, ...]] = {
    "client_id": (str,), "client_secret": (str,), "jwks": (dict,), "jwks_file": (str,),
    "auth_methods": (list,), "scopes": (list,), "default_scopes": (list,),
    "audiences": (list,), "default_audience": (str, list), "claims": (dict,),
    "token_lifetime": (int,), "algorithm": (str,), "token_format": (str,), "introspect": (bool,),
    "dpop": (str,), "dpop_nonce": (bool,),
}
_LIST_KEYS = ("auth_methods", "scopes", "default_scopes", "audiences", "default_audience")


# -- the server ------------------------------------------------------------------------------


@dataclass
class ServerSettings:
    """Everything one authorization server instance needs; the defaults are `m2mauth serve`'s."""

    issuer: str | None = _setting(
        None, kind=str, check=_issuer, flag=True,
        help="Issuer URL put in tokens and metadata.  [default: http://HOST:PORT]")
    host: str = _setting("127.0.0.1", kind=str, flag=True, help="Address to listen on.")
    port: int = _setting(8000, kind=int, check=_port, flag=True,
                         help="Port to listen on; 0 picks a free one.")
    algorithm: str = _setting("RS256", kind=str, choices=ALGORITHMS, flag=True,
                              help="Default signing algorithm (clients may override).")
    token_lifetime: int = _setting(300, kind=int, check=_positive, flag=True,
                                   help="Access-token lifetime in seconds.")
    token_format: str = _setting(
        "jwt", kind=str, choices=TOKEN_FORMATS, flag=True,
        help="Access tokens as signed JWTs (RFC 9068), or opaque random strings that only "
             "the introspection endpoint reads (clients may override).")
    default_audience: str = _setting(DEFAULT_AUDIENCE, kind=str, check=_non_empty,
                                     help="Audience of tokens for clients that configure none.")
    keys_dir: Path | None = _setting(
        None, kind=Path, flag=True,
        help="Directory of <alg>.pem signing keys.  [default: the shipped test keys]")
    unsafe_key_permissions: bool = _setting(
        False, kind=bool, flag=True,
        help="Load keys_dir keys whatever their owner and mode (other users may read or "
             "replace them): for throwaway setups only.")
    ephemeral_keys: bool = _setting(
        False, kind=bool, flag=True,
        help="Generate fresh in-memory signing keys instead of loading any.")
    store: str = _setting(
        "memory", kind=str, check=_store, flag=True, secret=True, repr=False,
        help="Where the issuer's state lives (clients, keys, clock, faults, request log, "
             "replay cache, revocations, opaque tokens): memory (this process), "
             "sqlite:PATH (a file every process on this host shares; sqlite:///ABS/PATH; "
             "relative to a config file's directory) or redis://[:PASSWORD@]HOST:PORT/DB "
             "(several hosts). A new SQLite or Redis store is seeded from these settings' "
             "clients and keys once; later starts keep what it holds.")
    jwks_max_age: int = _setting(300, kind=int, check=_positive,
                                 help="Cache-Control max-age of the JWKS, in seconds.")
    max_body_bytes: int = _setting(64 * 1024, kind=int, check=_positive,
                                   help="Largest accepted request body; larger ones get 413.")
    workers: int = _setting(
        1, kind=int, check=_workers, flag=True,
        help="Processes that answer requests, sharing one issuer through the store (gunicorn's "
             "arbiter restarts one that dies). With the memory store, 2 or more use a "
             "temporary SQLite file instead, removed at exit.")
    threads: int = _setting(8, kind=int, check=_positive, flag=True,
                            help="Threads that answer requests (requests are read in full "
                                 "first, so slow clients hold no thread).")
    connection_limit: int | None = _setting(
        None, kind=int, check=_positive,
        help="Most open connections; beyond it new ones wait in the listen queue.  "
             "[default: the open-file limit less 64]")
    request_timeout: int = _setting(
        10, kind=int, check=_positive,
        help="Seconds a request may take to arrive, headers and body; then it is closed.")
    idle_timeout: int = _setting(
        30, kind=int, check=_positive,
        help="Seconds a connection may stay open with nothing arriving or to answer.")
    tls: bool = _setting(
        False, kind=bool, flag=True,
        help="Serve HTTPS with a certificate from a local CA (made once in tls_dir, then "
             "reused, so it is trusted once); the issuer becomes https://HOST:PORT.")
    tls_cert: Path | None = _setting(
        None, kind=Path, flag=True,
        help="PEM certificate (chain) to serve instead of a generated one; needs tls_key and "
             "implies tls.")
    tls_key: Path | None = _setting(None, kind=Path, flag=True,
                                    help="Unencrypted PEM private key of tls_cert.")
    tls_dir: Path | None = _setting(
        None, kind=Path, flag=True,
        help="Directory of the local CA: ca.pem to trust, ca-key.pem (mode 0600).  "
             "[default: $XDG_DATA_HOME/m2mauth/tls, else ~/.local/share/m2mauth/tls]")
    assertion_leeway: int = _setting(
        60, kind=int, check=_non_negative,
        help="Clock-skew allowance for client assertions, in seconds.")
    assertion_max_lifetime: int = _setting(
        3600, kind=int, check=_positive,
        help="Longest accepted client-assertion lifetime (exp - now), in seconds.")
    max_revocations: int = _setting(
        100_000, kind=int, check=_positive,
        help="Most revoked, unexpired tokens remembered; beyond it revocations are refused "
             "(503) rather than an earlier one forgotten.")
    max_opaque_tokens: int = _setting(
        100_000, kind=int, check=_positive,
        help="Most unexpired opaque tokens held; beyond it new ones are refused (503).")
    assertion_jtis_per_client: int = _setting(
        10_000, kind=int, check=_positive,
        help="Most unexpired client-assertion jtis remembered per client (the replay cache); "
             "beyond it, that client's new assertions are refused until some expire.")
    dpop_nonce: bool = _setting(
        False, kind=bool, flag=True,
        help="Require a server-provided nonce in every DPoP proof at the token endpoint "
             "(RFC 9449 section 8): a proof without a current one is answered use_dpop_nonce "
             "with a DPoP-Nonce header; nonces rotate every minute.")
    trust_proxy: bool = _setting(
        False, kind=bool, flag=True,
        help="Behind a reverse proxy: take the scheme, host and port of each request's issuer "
             "(and a path prefix) from Forwarded or X-Forwarded-Proto/-Host/-Port/-Prefix; "
             "the issuer's own path stays. Off, the issuer never comes from the request.")
    lab: bool = _setting(
        True, kind=bool, flag=True,
        help="Attach the lab: test controls, the /admin API, faults, request log, clock "
             "control. --no-lab serves the authorization server alone.")
    admin_api: bool = _setting(
        True, kind=bool,
        help="Serve the lab's admin API under /admin (tokenless on loopback only).")
    admin_token: str | None = _setting(
        None, kind=str, check=_admin_token, flag=True, secret=True, repr=False,
        help="Bearer token the /admin test-control API requires (needed off loopback).")
    clients: list[ClientSettings] = _setting(
        kind=list, secret=True, default_factory=_demo_clients,
        help="Registered clients ([[clients]] tables; M2MAUTH_CLIENTS: a JSON array of "
             "client objects).")
    issuers: dict[str, dict[str, Any]] = _setting(
        kind=dict, secret=True, default_factory=dict, repr=False,
        help="Further issuers served on the same port, each at /NAME with its own keys, "
             "clients, clock, faults, request log and admin API ([issuers.NAME] tables; "
             "M2MAUTH_ISSUERS: a JSON object of name to issuer object).")
    #: The config file these settings came from, if any (for messages); not itself a setting.
    config_file: Path | None = None
    #: Where each setting was set ("command line", "environment", a file), for messages
    #: about a setting checked later (the TLS files); not itself a setting.
    sources: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def issuer_url(self) -> str:
        """The configured issuer, or the one derived from host and port."""
        if self.issuer is not None:
            return self.issuer
        return default_issuer(self.host, self.port, "https" if self.tls_enabled else "http")

    @property
    def tls_enabled(self) -> bool:
        """Whether the server speaks HTTPS: ``tls``, or certificate files given."""
        return bool(self.tls) or self.tls_cert is not None or self.tls_key is not None

    @property
    def mount(self) -> str:
        """The path this issuer's endpoints live under: its URL's path ("" at the root)."""
        return urlsplit(self.issuer_url).path

    def issuer_settings(self, name: str, table: Mapping[str, Any] | None = None
                        ) -> ServerSettings:
        """The settings of the further issuer ``name`` (``[issuers.NAME]``, or ``table``):
        this server's, with the table's values, at ``<origin>/<name>``. Unless the table says
        otherwise it has fresh in-memory keys (no two issuers share a key) and the demo
        client, as a server without ``[[clients]]`` has; ``ephemeral_keys = false`` without a
        ``keys_dir`` means the shipped public test keys, as for the server."""
        values = dict(self.issuers[name] if table is None else table)
        values.setdefault("clients", _demo_clients())
        if "keys_dir" not in values:
            values.setdefault("ephemeral_keys", True)
        # Its keys are its own: never the server's keys_dir, which holds the root issuer's
        # private keys (with "ephemeral_keys = false" alone, or from the admin API, they were
        # shared), nor the server's waiver of the permission checks on that directory.
        values.setdefault("keys_dir", None)
        values.setdefault("unsafe_key_permissions", False)
        parts = urlsplit(self.issuer_url)
        return dataclasses.replace(self, issuer=f"{parts.scheme}://{parts.netloc}/{name}",
                                   issuers={}, **values)

    @property
    def binds_loopback(self) -> bool:
        """Whether ``host`` is a loopback address (only this machine can connect). The name
        "localhost" counts only while every address it resolves to is loopback: the server
        binds what the resolver says, and /etc/hosts may say anything."""
        return is_loopback(self.host, resolve=True)

    @property
    def admin_enabled(self) -> bool:
        """The admin API answers with an admin token, or without one on loopback only."""
        return self.lab and self.admin_api and (
            self.admin_token is not None or self.binds_loopback)

    @property
    def uses_shipped_keys(self) -> bool:
        return self.keys_dir is None and not self.ephemeral_keys

    def algorithms_in_use(self) -> tuple[str, ...]:
        algs = {self.algorithm} | {c.algorithm for c in self.clients if c.algorithm}
        return tuple(a for a in ALGORITHMS if a in algs)

    def validate(self, source: str = "settings", *, whole: bool = True) -> ServerSettings:
        """Check every value; raise :class:`ConfigError` on the first problem. ``whole``
        False: these are one layer of several (see :func:`load_settings`), so settings that
        must agree with each other are checked once all layers are in."""
        for setting in server_settings():
            value = getattr(self, setting.name)
            if value is None:
                continue
            if not _of_kind(value, setting.kind):
                raise ConfigError(source, setting.name, f"must be {_KIND_NAMES[setting.kind]}, "
                                  f"got {_shown(value, setting.secret)}")
            problem = setting.check(value) if setting.check is not None else None
            if problem is not None:
                raise ConfigError(source, setting.name, problem)
        if self.lab and self.mount.split("/")[1:2] == [DEMO_API_SEGMENT]:
            # The lab mounts the demo API in front of the issuer's app (server/__init__.py):
            # it would answer /demo/token and every other endpoint in the issuer's place.
            raise ConfigError(source, "issuer", f"its path starts with /{DEMO_API_SEGMENT}, "
                              "where the lab serves the demo API; choose another path (or "
                              "lab = false)")
        seen: set[str] = set()
        for i, client in enumerate(self.clients):
            where = f"clients[{i}]"
            client.validate(source, where)
            if client.client_id in seen:
                raise ConfigError(
                    source, f"{where}.client_id", f"duplicate id {client.client_id!r}"
                )
            seen.add(client.client_id)
        for name in self.issuers:
            self._validate_issuer(source, name)
        if whole:
            self.check_together(source)
        return self

    def _validate_issuer(self, source: str, name: str) -> None:
        where = f"issuers.{name}"
        problem = issuer_name_problem(name)
        if problem is None and self.mount.split("/")[1:2] == [name]:
            problem = f"is the first segment of this server's issuer path {self.mount!r}"
        if problem is not None:
            raise ConfigError(source, where, problem)
        table = self.issuers[name]
        if not isinstance(table, dict):
            raise ConfigError(source, where, "must be a table ([issuers.NAME])")
        unknown = sorted(set(table) - set(ISSUER_KEYS))
        if unknown:
            raise ConfigError(source, f"{where}.{unknown[0]}",
                              f"unknown key (an issuer table takes: {', '.join(ISSUER_KEYS)})")
        try:
            # A layer, not the whole: TLS is the server's, checked with its own settings.
            self.issuer_settings(name).validate(source, whole=False)
        except ConfigError as exc:
            raise ConfigError(source, f"{where}.{exc.key}", exc.why) from None

    def where(self, key: str, default: str = "settings") -> tuple[str, str]:
        """(source, key as that source names it) of setting ``key``, for a message about it
        found after loading: ``("environment", "M2MAUTH_TLS_CERT")``, ``("app.toml",
        "tls_cert")``."""
        source = self.sources.get(key, default)
        return source, env_name(key) if source == "environment" else key

    def check_together(self, source: str = "settings") -> None:
        """The settings that must agree: a TLS certificate needs its key, and an http://
        issuer cannot name a server that answers HTTPS only. (An https:// issuer without TLS
        is allowed: behind a TLS-terminating proxy it is right; ``serve`` warns when it names
        the server's own port, see bind_check.py.)"""
        if (self.tls_cert is None) != (self.tls_key is None):
            given, missing = ("tls_cert", "tls_key") if self.tls_key is None \
                else ("tls_key", "tls_cert")
            origin, shown = self.where(given, source)
            raise ConfigError(origin, missing, f"is needed with {shown} (a certificate and its "
                              "private key go together)")
        if self.tls_enabled and self.issuer is not None \
                and urlsplit(self.issuer).scheme == "http":
            raise ConfigError(*self.where("issuer", source), f"{self.issuer!r} is http:// but "
                              "TLS is on and the server answers HTTPS only: use https:// or "
                              "leave the issuer unset")


#: The settings an ``[issuers.NAME]`` table may set; the others (where and how the server
#: listens, the lab) are the server's, shared by every issuer on it.
ISSUER_KEYS = ("algorithm", "token_lifetime", "token_format", "default_audience", "keys_dir",
               "unsafe_key_permissions", "ephemeral_keys", "jwks_max_age", "assertion_leeway",
               "assertion_max_lifetime", "assertion_jtis_per_client", "admin_token", "clients",
               "dpop_nonce")

#: First path segments of the root issuer's own endpoints (token, JWKS, metadata, probes,
#: the lab's admin API, playground and demo API): no further issuer may take one as its
#: name. tests/test_issuers.py checks this against the routes of a full app.
RESERVED_ISSUER_NAMES = frozenset({
    "token", "jwks.json", ".well-known", "healthz", "readyz", "admin", "playground", "demo",
    "introspect", "revoke",
})
#: The first path segment of the lab's demo API (``DEMO_API_PREFIX``), which no issuer's
#: path may start with either.
DEMO_API_SEGMENT = "demo"
_ISSUER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def issuer_name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a further issuer (its path segment), or None."""
    if not isinstance(name, str) or not _ISSUER_NAME.fullmatch(name):
        return ("must be 1-64 letters, digits, '-' or '_', starting with a letter or digit "
                "(it becomes the issuer's path)")
    if name in RESERVED_ISSUER_NAMES:
        return f"is taken by the root issuer's /{name}"
    return None


def server_settings() -> Iterator[Setting]:
    """The declaration of every setting of :class:`ServerSettings`, in field order."""
    for f in dataclasses.fields(ServerSettings):
        if "setting" in f.metadata:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING \
                else f.default
            yield Setting(f.name, default=default, **f.metadata["setting"])


def env_name(name: str) -> str:
    """The environment variable of setting ``name``."""
    return "M2MAUTH_" + name.upper()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _of_kind(value: object, kind: type) -> bool:
    """Whether ``value`` is of a setting's kind (a path may be given as a string; bool is an
    int subclass, but a TOML ``true`` must not pass as a port number)."""
    if kind is Path:
        return isinstance(value, (str, Path))
    if isinstance(value, bool):
        return kind is bool
    return isinstance(value, kind)


def is_loopback(host: str, *, resolve: bool = False) -> bool:
    """Whether ``host`` is a loopback address; with ``resolve``, also the name "localhost"
    while every address it resolves to is loopback."""
    if host == "localhost" and resolve:
        try:
            found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return False
        return bool(found) and all(
            is_loopback(str(address[4][0]).split("%", 1)[0]) for address in found)
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_issuer(host: str, port: int, scheme: str = "http") -> str:
    """The issuer a server on host:port has when none is configured (``scheme`` https when
    it speaks TLS)."""
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - naming it, not binding it: all interfaces
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


# ---------------------------------------------------------------------------
# Loading. A config file is parsed into a mapping by its format (TOML or JSON, chosen by its
# extension), and every mapping – whatever its format, and a JSON-valued variable's too –
# then goes through one checker, :func:`_checked`.


def _shown(value: object, secret: bool = False) -> str:
    """A value as an error message may show it. A secret (``clients`` is declared one)
    shows its type only, and so does any list or table, whose contents may hold a secret or
    a private key; JSON's null is called null (it sets nothing: a key left out does)."""
    if value is None or secret or isinstance(value, (dict, list, tuple)):
        return _type_word(value)
    return repr(value)


def _type_word(value: object) -> str:
    """The type of a parsed value in words (TOML's and JSON's alike)."""
    if value is None:
        return "null"
    for kind, what in ((bool, "a boolean"), (dict, "a table"), ((list, tuple), "a list"),
                       (str, "a string"), (int, "an integer"), (float, "a number")):
        if isinstance(value, kind):
            return what
    return type(value).__name__


def _check_type(source: str, key: str, value: object, kinds: tuple[type, ...],
                secret: bool = False) -> None:
    if not any(_of_kind(value, kind) for kind in kinds):
        # A mistyped secret is still a secret: name its type, never its value.
        expected = " or ".join(_KIND_NAMES[k] for k in kinds)
        raise ConfigError(source, key, f"must be {expected}, got {_shown(value, secret)}")


def _str_list(source: str, key: str, value: object) -> tuple[str, ...]:
    found = strings(value)
    if found is None:
        raise ConfigError(source, key, "must be a list of strings")
    return tuple(found)


def _client_from_table(source: str, where: str, table: object, base: Path) -> ClientSettings:
    if not isinstance(table, dict):
        raise ConfigError(source, where, "must be a client table ([[clients]] in TOML, an "
                                         f"object in JSON), got {_type_word(table)}")
    unknown = sorted(set(table) - set(_CLIENT_KEYS))
    if unknown:
        raise ConfigError(
            source, f"{where}.{unknown[0]}", f"unknown key (known: {', '.join(_CLIENT_KEYS)})"
        )
    if "client_id" not in table:
        raise ConfigError(source, f"{where}.client_id", "is required")
    for key, value in table.items():
        kinds = _CLIENT_KEYS[key]  # a mistyped jwks may hold a private key: never shown
        _check_type(source, f"{where}.{key}", value, kinds,
                    secret=key == "client_secret" or dict in kinds)
    values = dict(table)
    if "jwks_file" in values:
        if "jwks" in values:
            raise ConfigError(source, f"{where}.jwks_file", "give either jwks or jwks_file")
        values["jwks"] = _read_jwks(source, f"{where}.jwks_file", base / values.pop("jwks_file"))
    for key in _LIST_KEYS:
        if key in values:
            values[key] = _str_list(source, f"{where}.{key}", values[key])
    return ClientSettings(**values)


def _read_jwks(source: str, key: str, path: Path) -> dict[str, Any]:
    """A client's public keys: a JWKS JSON file, a single JWK, or a PEM public key."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(source, key, f"cannot read {path}: {exc.strerror}") from None
    if data.lstrip().startswith(b"-----BEGIN"):
        from cryptography.hazmat.primitives.serialization import load_pem_public_key
        from joserfc.jwk import import_key

        try:
            kty = key_type(load_pem_public_key(data))
            jwk = import_key(data, kty).as_dict(private=False)  # type: ignore[arg-type]
        except Exception as exc:  # joserfc/cryptography raise several types for bad PEM
            raise ConfigError(source, key, f"{path} is not a usable public key: {exc}") from None
        return {"keys": [jwk]}
    try:
        parsed = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(source, key, f"{path} is neither PEM nor JSON: {exc}") from None
    if isinstance(parsed, dict) and "kty" in parsed:
        parsed = {"keys": [parsed]}
    return parsed


def _parse_json(text: str) -> Any:
    """JSON as configuration takes it: a key at most once per object (TOML refuses
    duplicates too; JSON parsers would keep the last silently) and no NaN or Infinity
    (Python's extension, not JSON). ValueError says what is wrong and where."""
    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        table: dict[str, Any] = {}
        for key, value in pairs:
            if key in table:
                raise ValueError(f"duplicate key {printable(key, 60)} in an object")
            table[key] = value
        return table

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON value")

    try:
        return json.loads(text, object_pairs_hook=unique, parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{exc.msg} (at line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise ValueError("nests too deeply") from None


def _parse_toml(text: str) -> Any:
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise ValueError("nests too deeply") from None


def _looks_like(text: str) -> str | None:
    """The format ``text`` seems to be written in, judged by its first line that holds
    something: JSON opens an object with ``{``; TOML starts with a comment, a table header
    or ``key =``."""
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            return "JSON"
        if line.startswith("#") or re.match(r"\[\[?\s*[\w\"'-]|[\w\"'-]+\s*=", line):
            return "TOML"
        return None
    return None


#: Config-file formats by extension: the name, how the text becomes a mapping, the
#: extension a file of that format should have.
_FORMATS: dict[str, tuple[str, Callable[[str], Any]]] = {
    ".toml": ("TOML", _parse_toml),
    ".json": ("JSON", _parse_json),
}
_EXTENSIONS = {name: suffix for suffix, (name, _) in _FORMATS.items()}


def _read_config(path: Path) -> dict[str, Any]:
    """A config file's top-level mapping, parsed as its extension says."""
    source = str(path)
    if path.suffix.lower() not in _FORMATS:
        shown = f"'{path.suffix}'" if path.suffix else "(the name has no extension)"
        raise ConfigError(source, "(file)",
                          f"unknown config format {shown}; use a .toml or .json file")
    fmt, parse = _FORMATS[path.suffix.lower()]
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(source, "(file)", f"cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(source, "(file)", "is not UTF-8 text") from None
    try:
        table = parse(text)
    except ValueError as exc:  # tomllib.TOMLDecodeError is one
        why = f"not valid {fmt}: {exc}"
        seems = _looks_like(text)
        if seems is not None and seems != fmt:
            why += f"; this looks like {seems}: name the file {_EXTENSIONS[seems]}"
        raise ConfigError(source, "(syntax)", why) from None
    if not isinstance(table, dict):  # JSON only: TOML's top level is always a table
        raise ConfigError(source, "(file)", f"must be a {fmt} object of settings "
                                            f"({{\"issuer\": ...}}), got {_type_word(table)}")
    return table


def _checked(source: str, table: Mapping[str, Any], base: Path,
             name: Callable[[str], str] = str) -> dict[str, Any]:
    """The settings ``table`` sets, type-checked, clients built and relative paths made
    absolute against ``base``. Every mapping of settings goes through here, whatever its
    format; ``name`` says how the source calls a key (a variable for the environment)."""
    declared = {s.name: s for s in server_settings()}
    unknown = sorted(set(table) - set(declared))
    if unknown:
        raise ConfigError(source, name(unknown[0]),
                          f"unknown key (known: {', '.join(declared)})")
    for key, value in table.items():
        setting = declared[key]
        _check_type(source, name(key), value, (setting.kind,), secret=setting.secret)
    values = dict(table)
    if "clients" in values:
        values["clients"] = [
            _client_from_table(source, f"{name('clients')}[{i}]", t, base)
            for i, t in enumerate(values["clients"])
        ]
    for setting in declared.values():  # keys_dir, tls_cert, ...: relative to the file
        if setting.kind is Path and setting.name in values:
            values[setting.name] = base / values[setting.name]
    if isinstance(values.get("store"), str):
        values["store"] = _store_relative_to(values["store"], base)
    if "issuers" in values:
        values["issuers"] = {
            issuer: issuer_values(source, issuer, t, base, where=f"{name('issuers')}.{issuer}")
            for issuer, t in values["issuers"].items()
        }
    return values


def _store_relative_to(url: str, base: Path) -> str:
    """An ``sqlite:`` store with a relative path, made absolute against ``base`` (a config
    file's directory, as keys_dir is); any other value as it is (checked later)."""
    try:
        kind, target = parse_store_url(url)
    except ValueError:
        return url
    if kind != "sqlite" or Path(target).is_absolute():
        return url
    return f"sqlite:{base / target}"


def issuer_values(source: str, name: str, table: object, base: Path, *,
                  where: str | None = None) -> dict[str, Any]:
    """The values of one ``[issuers.NAME]`` table (or the admin API's JSON object),
    type-checked, its client tables parsed and its paths made relative to ``base`` (the rest
    is checked with the settings, by ``validate``). ``where`` names the table in messages
    (default ``issuers.NAME``)."""
    where = f"issuers.{name}" if where is None else where
    if not isinstance(table, dict):
        raise ConfigError(source, where, "must be a table ([issuers.NAME])")
    declared = {s.name: s for s in server_settings()}
    values = dict(table)
    for key, value in table.items():
        if key in ISSUER_KEYS:
            setting = declared[key]
            _check_type(source, f"{where}.{key}", value, (setting.kind,), secret=setting.secret)
    if isinstance(values.get("clients"), list):
        values["clients"] = [
            _client_from_table(source, f"{where}.clients[{i}]", t, base)
            for i, t in enumerate(values["clients"])
        ]
    if isinstance(values.get("keys_dir"), str):
        values["keys_dir"] = base / values["keys_dir"]
    return values


def _file_values(path: Path) -> dict[str, Any]:
    """The settings a config file sets, checked, with paths relative to the file."""
    return _checked(str(path), _read_config(path), path.parent)


def _env_key(key: str) -> str:
    """A setting's key (``port``, ``clients[0].scopes``) as the environment names it
    (``M2MAUTH_PORT``, ``M2MAUTH_CLIENTS[0].scopes``)."""
    head = re.match(r"[^.\[]*", key).group()  # type: ignore[union-attr]
    return env_name(head) + key[len(head):]


def _parse_env(setting: Setting, raw: str) -> Any:
    name = env_name(setting.name)
    if setting.kind is int:
        try:
            return int(raw)
        except ValueError:
            got = "a non-integer" if setting.secret else repr(raw)
            raise ConfigError("environment", name, f"must be an integer, got {got}") from None
    if setting.kind is bool:
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError("environment", name, f"must be true or false, got {raw!r}")
    if setting.kind is Path:
        return Path(raw)
    if setting.kind in (list, dict):
        # Exactly what the file takes under this key, written as JSON (M2MAUTH_CLIENTS: an
        # array of client objects); relative paths in it are relative to the current
        # directory. Never echoed: it may hold secrets.
        try:
            value = _parse_json(raw)
        except ValueError as exc:
            raise ConfigError("environment", name, f"is not valid JSON: {exc}") from None
        if not _of_kind(value, setting.kind):
            want = "array" if setting.kind is list else "object"
            got = {dict: "an object", list: "an array"}.get(type(value), _type_word(value))
            raise ConfigError("environment", name, f"must be a JSON {want}, got {got}")
        return _checked("environment", {setting.name: value}, Path.cwd(),
                        _env_key)[setting.name]
    return raw


def _apply(values: Mapping[str, Any], settings: ServerSettings, source: str,
           name: Callable[[str], str] = str) -> None:
    """Set ``values`` on ``settings`` and check them. The layers below were checked already,
    so a problem now is one of these values: it is reported under ``name(key)``, the key as
    this source calls it."""
    for key, value in values.items():
        setattr(settings, key, value)
        settings.sources[key] = source
    try:
        settings.validate(source, whole=False)
    except ConfigError as exc:
        raise ConfigError(exc.source, name(exc.key), exc.why) from None


def load_settings(
    config_file: Path | str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ServerSettings:
    """Defaults, then the config file, then ``M2MAUTH_*`` variables, then ``overrides``
    (flags).

    ``M2MAUTH_CONFIG`` names the file when ``config_file`` is not given: TOML (``.toml``) or
    JSON (``.json``), by its extension. ``M2MAUTH_CLIENTS`` (a JSON array of client objects)
    replaces the file's clients, as every variable replaces the file's value. Without an
    issuer anywhere, the issuer follows the bound host and port (see
    ``ServerSettings.issuer_url``).
    """
    env = os.environ if env is None else env
    settings = ServerSettings()
    path = config_file or env.get("M2MAUTH_CONFIG") or None
    if path:
        path = Path(path)
        file_values = _file_values(path)
        settings.config_file = path
        _apply(file_values, settings, str(path))
    env_values = {
        s.name: _parse_env(s, env[env_name(s.name)])
        for s in server_settings() if s.env and env_name(s.name) in env
    }
    _apply(env_values, settings, "environment", _env_key)
    paths = {s.name for s in server_settings() if s.kind is Path}
    flag_values = {k: Path(v) if k in paths else v
                   for k, v in (overrides or {}).items() if v is not None}
    _apply(flag_values, settings, "command line")
    settings.check_together("command line")
    return settings
