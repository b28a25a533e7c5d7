"""Settings of one authorization server: plain dataclasses, loaded from built-in defaults,
a TOML file, ``M2MAUTH_*`` environment variables and command-line flags, in that order of
precedence (later wins). Every problem raises :class:`ConfigError` naming the source and key.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "ALGORITHMS",
    "AUTH_METHODS",
    "ClientSettings",
    "ServerSettings",
    "load_settings",
]

#: Signing algorithms the server can issue tokens with.
ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")
#: Client authentication methods at the token endpoint (RFC 6749 §2.3, RFC 7523).
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "client_secret_jwt", "private_key_jwt")
_SECRET_METHODS = ("client_secret_basic", "client_secret_post", "client_secret_jwt")

DEFAULT_AUDIENCE = "api://default"
DEMO_CLIENT_ID = "demo-client"
DEMO_CLIENT_SECRET = "demo-secret"  # a published demo credential, printed by `m2mauth serve`

# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
# RFC 6749 Appendix A.1: client_id = *VSCHAR; we also refuse empty ids and very long ones.
_CLIENT_ID = re.compile(r"[\x20-\x7e]{1,255}")


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


def _demo_client() -> ClientSettings:
    return ClientSettings(
        client_id=DEMO_CLIENT_ID,
        client_secret=DEMO_CLIENT_SECRET,
        scopes=("read", "write"),
        audiences=(DEFAULT_AUDIENCE,),
    )


@dataclass
class ServerSettings:
    """Everything one authorization server instance needs; the defaults are `m2mauth serve`'s."""

    #: Issuer URL; None means http://HOST:PORT of the address actually bound.
    issuer: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    #: Default signing algorithm (clients may override).
    algorithm: str = "RS256"
    #: Default access-token lifetime in seconds.
    token_lifetime: int = 300
    #: Audience of tokens for clients that configure none.
    default_audience: str = DEFAULT_AUDIENCE
    #: Directory of PEM signing keys; None means the public test keys shipped with m2mauth.
    keys_dir: Path | None = None
    #: Generate fresh in-memory keys instead of loading any from disk.
    ephemeral_keys: bool = False
    #: ``Cache-Control: max-age`` of the JWKS response, in seconds.
    jwks_max_age: int = 300
    #: Largest accepted request body, in bytes; larger requests get 413.
    max_body_bytes: int = 64 * 1024
    #: Clock-skew allowance for client assertions (private_key_jwt, client_secret_jwt).
    assertion_leeway: int = 60
    #: Longest accepted client-assertion lifetime (exp - now), in seconds.
    assertion_max_lifetime: int = 3600
    #: Serve the test-control admin API under /admin (see admin_enabled).
    admin_api: bool = True
    #: Bearer token the admin API requires; needed to use it off loopback. Masked in repr().
    admin_token: str | None = field(default=None, repr=False)
    clients: list[ClientSettings] = field(default_factory=lambda: [_demo_client()])
    #: The TOML file these settings came from, if any (for messages).
    config_file: Path | None = None

    @property
    def issuer_url(self) -> str:
        """The configured issuer, or the one derived from host and port."""
        return self.issuer if self.issuer is not None else default_issuer(self.host, self.port)

    @property
    def binds_loopback(self) -> bool:
        """Whether ``host`` is a loopback address (only this machine can connect). The name
        "localhost" counts only while every address it resolves to is loopback: the server
        binds what the resolver says, and /etc/hosts may say anything."""
        if self.host == "localhost":
            try:
                found = socket.getaddrinfo(self.host, None, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError):
                return False
            return bool(found) and all(
                ipaddress.ip_address(str(address[4][0]).split("%", 1)[0]).is_loopback
                for address in found
            )
        try:
            return ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:
            return False

    @property
    def admin_enabled(self) -> bool:
        """The admin API answers with an admin token, or without one on loopback only."""
        return self.admin_api and (self.admin_token is not None or self.binds_loopback)

    @property
    def uses_shipped_keys(self) -> bool:
        return self.keys_dir is None and not self.ephemeral_keys

    def algorithms_in_use(self) -> tuple[str, ...]:
        algs = {self.algorithm} | {c.algorithm for c in self.clients if c.algorithm}
        return tuple(a for a in ALGORITHMS if a in algs)

    def validate(self, source: str = "settings") -> ServerSettings:
        """Check every value; raise :class:`ConfigError` on the first problem."""
        if self.issuer is not None:
            _check_issuer(source, "issuer", self.issuer)
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(source, "algorithm", _one_of(self.algorithm, ALGORITHMS))
        for key in ("token_lifetime", "jwks_max_age", "max_body_bytes", "assertion_max_lifetime"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) <= 0:
                raise ConfigError(source, key, "must be a positive integer")
        if not isinstance(self.assertion_leeway, int) or self.assertion_leeway < 0:
            raise ConfigError(source, "assertion_leeway", "must be a non-negative integer")
        if not (0 <= self.port <= 65535):
            raise ConfigError(source, "port", "must be between 0 and 65535")
        if self.admin_token is not None and len(self.admin_token) < 16:
            raise ConfigError(source, "admin_token", "must be at least 16 characters")
        if not self.default_audience:
            raise ConfigError(source, "default_audience", "must not be empty")
        seen: set[str] = set()
        for i, client in enumerate(self.clients):
            where = f"clients[{i}]"
            validate_client(source, where, client)
            if client.client_id in seen:
                raise ConfigError(
                    source, f"{where}.client_id", f"duplicate id {client.client_id!r}"
                )
            seen.add(client.client_id)
        return self


def _one_of(value: object, choices: tuple[str, ...]) -> str:
    return f"{value!r} is not one of {', '.join(choices)}"


def _check_issuer(source: str, key: str, issuer: str) -> None:
    parts = urlsplit(issuer) if isinstance(issuer, str) else None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.netloc
        or parts.query
        or parts.fragment
    ):
        raise ConfigError(
            source, key, f"{issuer!r} is not an http(s) URL without query or fragment"
        )
    if issuer.endswith("/"):
        raise ConfigError(source, key, "must not end with '/' (it is compared exactly)")


def validate_client(source: str, where: str, client: ClientSettings) -> None:
    if not isinstance(client.client_id, str) or not _CLIENT_ID.fullmatch(client.client_id):
        raise ConfigError(source, f"{where}.client_id", "must be 1-255 printable ASCII characters")
    if client.client_secret is not None and (
        not isinstance(client.client_secret, str) or not client.client_secret
    ):
        raise ConfigError(source, f"{where}.client_secret", "must be a non-empty string")
    if client.jwks is not None:
        if not isinstance(client.jwks, dict) or not isinstance(client.jwks.get("keys"), list):
            raise ConfigError(source, f"{where}.jwks", 'must be a JWKS: {"keys": [...]}')
        if any(isinstance(k, dict) and "d" in k for k in client.jwks["keys"]):
            raise ConfigError(
                source, f"{where}.jwks", "contains a private key; register public keys only"
            )
    methods = client.allowed_auth_methods()
    for method in methods:
        if method not in AUTH_METHODS:
            raise ConfigError(source, f"{where}.auth_methods", _one_of(method, AUTH_METHODS))
        if method in _SECRET_METHODS and not client.client_secret:
            raise ConfigError(source, f"{where}.auth_methods", f"{method} needs a client_secret")
        if method == "private_key_jwt" and not client.jwks:
            raise ConfigError(source, f"{where}.auth_methods", "private_key_jwt needs jwks")
    if not methods:
        raise ConfigError(source, where, "has no credentials: set client_secret or jwks")
    for scope in client.scopes:
        if not isinstance(scope, str) or not _SCOPE_TOKEN.fullmatch(scope):
            raise ConfigError(
                source, f"{where}.scopes", f"{scope!r} is not a valid scope token (RFC 6749 §3.3)"
            )
    if client.default_scopes is not None:
        extra = set(client.default_scopes) - set(client.scopes)
        if extra:
            raise ConfigError(
                source, f"{where}.default_scopes", f"{sorted(extra)} not in the client's scopes"
            )
    for aud in client.audiences:
        if not isinstance(aud, str) or not aud:
            raise ConfigError(source, f"{where}.audiences", "entries must be non-empty strings")
    if client.default_audience is not None:
        extra = set(client.default_audience) - set(client.audiences)
        if extra:
            raise ConfigError(
                source, f"{where}.default_audience",
                f"{sorted(extra)} not in the client's audiences",
            )
    if client.token_lifetime is not None and (
        not isinstance(client.token_lifetime, int) or client.token_lifetime <= 0
    ):
        raise ConfigError(source, f"{where}.token_lifetime", "must be a positive integer")
    if client.algorithm is not None and client.algorithm not in ALGORITHMS:
        raise ConfigError(source, f"{where}.algorithm", _one_of(client.algorithm, ALGORITHMS))
    if not isinstance(client.claims, dict):
        raise ConfigError(source, f"{where}.claims", "must be a table of claim names to values")


# ---------------------------------------------------------------------------
# Loading


_SERVER_KEYS: dict[str, type | tuple[type, ...]] = {
    "issuer": str,
    "host": str,
    "port": int,
    "algorithm": str,
    "token_lifetime": int,
    "default_audience": str,
    "keys_dir": str,
    "ephemeral_keys": bool,
    "jwks_max_age": int,
    "max_body_bytes": int,
    "assertion_leeway": int,
    "assertion_max_lifetime": int,
    "admin_api": bool,
    "admin_token": str,
    "clients": list,
}
_CLIENT_KEYS: dict[str, type | tuple[type, ...]] = {
    "client_id": str,
    "client_secret": str,
    "jwks": dict,
    "jwks_file": str,
    "auth_methods": list,
    "scopes": list,
    "default_scopes": list,
    "audiences": list,
    "default_audience": (str, list),
    "claims": dict,
    "token_lifetime": int,
    "algorithm": str,
}

#: Environment variables and the setting each one sets.
ENV_VARS = {
    "M2MAUTH_ISSUER": "issuer",
    "M2MAUTH_HOST": "host",
    "M2MAUTH_PORT": "port",
    "M2MAUTH_ALGORITHM": "algorithm",
    "M2MAUTH_TOKEN_LIFETIME": "token_lifetime",
    "M2MAUTH_DEFAULT_AUDIENCE": "default_audience",
    "M2MAUTH_KEYS_DIR": "keys_dir",
    "M2MAUTH_EPHEMERAL_KEYS": "ephemeral_keys",
    "M2MAUTH_ADMIN_API": "admin_api",
    "M2MAUTH_ADMIN_TOKEN": "admin_token",
}


def _typename(t: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", bool: "true or false", list: "a list",
             dict: "a table"}
    if isinstance(t, tuple):
        return " or ".join(names[x] for x in t)
    return names[t]


def _check_type(source: str, key: str, value: object, expected: type | tuple[type, ...]) -> None:
    # bool is an int subclass; a TOML `true` must not pass as a port number.
    ok = isinstance(value, expected) and not (
        isinstance(value, bool) and expected in (int, (str, list))
    )
    if not ok:
        # A mistyped secret is still a secret: name its type, never its value.
        secret = key.endswith(("client_secret", "admin_token"))
        got = type(value).__name__ if secret else repr(value)
        raise ConfigError(source, key, f"must be {_typename(expected)}, got {got}")


def _str_list(source: str, key: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(source, key, "must be a list of strings")
    return tuple(value)


def _client_from_table(source: str, where: str, table: object, base: Path) -> ClientSettings:
    if not isinstance(table, dict):
        raise ConfigError(source, where, "must be a table ([[clients]])")
    unknown = sorted(set(table) - set(_CLIENT_KEYS))
    if unknown:
        raise ConfigError(
            source, f"{where}.{unknown[0]}", f"unknown key (known: {', '.join(_CLIENT_KEYS)})"
        )
    if "client_id" not in table:
        raise ConfigError(source, f"{where}.client_id", "is required")
    for key, value in table.items():
        _check_type(source, f"{where}.{key}", value, _CLIENT_KEYS[key])
    values = dict(table)
    if "jwks_file" in values:
        if "jwks" in values:
            raise ConfigError(source, f"{where}.jwks_file", "give either jwks or jwks_file")
        values["jwks"] = _read_jwks(source, f"{where}.jwks_file", base / values.pop("jwks_file"))
    for key in ("auth_methods", "scopes", "default_scopes", "audiences", "default_audience"):
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
        from joserfc.jwk import import_key

        try:
            jwk = import_key(data, _pem_key_type(data)).as_dict(private=False)
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


def _pem_key_type(data: bytes) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    pub = load_pem_public_key(data)
    if isinstance(pub, rsa.RSAPublicKey):
        return "RSA"
    if isinstance(pub, ec.EllipticCurvePublicKey):
        return "EC"
    if isinstance(pub, ed25519.Ed25519PublicKey):
        return "OKP"
    raise ValueError(f"unsupported key type {type(pub).__name__}")


def _apply(values: dict[str, Any], settings: ServerSettings, source: str) -> None:
    for key, value in values.items():
        if key == "keys_dir" and value is not None:
            value = Path(value)
        setattr(settings, key, value)
    settings.validate(source)


def _file_values(path: Path) -> dict[str, Any]:
    """The settings a TOML config file sets, type-checked, with paths made absolute."""
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(source, "(file)", f"cannot read: {exc.strerror}") from None
    try:
        table = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(source, "(file)", "is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "(syntax)", str(exc)) from None
    unknown = sorted(set(table) - set(_SERVER_KEYS))
    if unknown:
        raise ConfigError(source, unknown[0], f"unknown key (known: {', '.join(_SERVER_KEYS)})")
    for key, value in table.items():
        _check_type(source, key, value, _SERVER_KEYS[key])
    values = dict(table)
    base = path.parent
    if "clients" in values:
        values["clients"] = [
            _client_from_table(source, f"clients[{i}]", t, base)
            for i, t in enumerate(values["clients"])
        ]
    if "keys_dir" in values:
        values["keys_dir"] = base / values["keys_dir"]
    return values


def load_file(path: Path | str) -> ServerSettings:
    """Settings from a TOML config file on top of the defaults."""
    return load_settings(path, env={})


def _parse_env(name: str, key: str, raw: str) -> Any:
    expected = _SERVER_KEYS[key]
    if expected is int:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError("environment", name, f"must be an integer, got {raw!r}") from None
    if expected is bool:
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError("environment", name, f"must be true or false, got {raw!r}")
    return raw


def load_settings(
    config_file: Path | str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ServerSettings:
    """Defaults, then the TOML file, then ``M2MAUTH_*`` variables, then ``overrides`` (flags).

    ``M2MAUTH_CONFIG`` names the file when ``config_file`` is not given. Without an issuer
    anywhere, the issuer follows the bound host and port (see ``ServerSettings.issuer_url``).
    """
    env = os.environ if env is None else env
    settings = ServerSettings()
    path = config_file or env.get("M2MAUTH_CONFIG") or None
    file_values: dict[str, Any] = {}
    if path:
        path = Path(path)
        file_values = _file_values(path)
        settings.config_file = path
        _apply(file_values, settings, str(path))
    env_values = {
        key: _parse_env(name, key, env[name]) for name, key in ENV_VARS.items() if name in env
    }
    _apply(env_values, settings, "environment")
    flag_values = {k: v for k, v in (overrides or {}).items() if v is not None}
    _apply(flag_values, settings, "command line")
    return settings


def default_issuer(host: str, port: int) -> str:
    """The issuer a server on host:port has when none is configured."""
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - naming it, not binding it  # all interfaces: name the loopback address
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"

