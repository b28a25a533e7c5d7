"""Client authentication methods registered with Authlib: ``client_secret_basic`` (RFC 6749
§2.3.1 decoding), and ``private_key_jwt``/``client_secret_jwt`` (RFC 7523 §2.2) on Authlib's
``JWTBearerClientAssertion``, with the issuer's clock and the state store's replay cache."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from urllib.parse import unquote_plus

from authlib.oauth2.rfc6749 import InvalidClientError, InvalidRequestError
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, OctKey, import_key

from .algorithms import ASSERTION_ALGORITHMS, ED25519_NAMES
from .clock import Clock
from .store import StateStore
from .syntax import safe_description

__all__ = [
    "ClientSecretJWT", "PrivateKeyJWT", "basic_credentials", "claimed_client_id",
    "client_secret_basic", "client_secret_post", "either_ed25519_name", "is_hmac",
    "unverified_part",
]


def basic_credentials(header: str) -> tuple[str, str] | None:
    """(client_id, secret) from a well-formed Basic header, else None. RFC 6749 section
    2.3.1: both are form-urlencoded (so '+' is a space) before the Basic encoding."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        return None
    return unquote_plus(client_id), unquote_plus(secret)


def client_secret_basic(query_client, request):
    """Authlib's ``client_secret_basic`` method, registered in its place: Authlib decodes the
    credentials with ``unquote``, which keeps a form-encoded space as '+'."""
    # Decoded once per request, by the precheck (TokenEndpointRequest.basic).
    basic = request.basic if hasattr(request, "basic") else \
        basic_credentials(request.headers.get("Authorization") or "")
    client_id, secret = basic or ("", "")
    return _check_secret(query_client, request, "client_secret_basic", client_id, secret)


def client_secret_post(query_client, request):
    """Authlib's ``client_secret_post`` method, registered in its place: it answers an
    unknown id differently from a wrong secret; this one records which, for the log."""
    form = request.form
    return _check_secret(query_client, request, "client_secret_post",
                         form.get("client_id") or "", form.get("client_secret") or "")


def _check_secret(query_client, request, method: str, client_id: str, secret: str):
    """The client whose ``secret`` this is, else None with the reason kept on the request
    (``auth_detail``) for the server log – the answer says the same for every reason."""
    if not client_id or not secret:
        return None  # this method was not used; another may have been
    client = query_client(client_id)
    if client is None:
        request.auth_detail = f"{method}: unknown client"
    elif client.secret is None:
        request.auth_detail = f"{method}: the client has no secret"
    elif not client.check_client_secret(secret):
        request.auth_detail = f"{method}: wrong client secret"
    else:
        # Authlib checks the method next, and reports a refusal only generically.
        request.auth_detail = f"{method}: not an auth method this client may use"
        return client
    return None


def claimed_client_id(headers: Mapping[str, str], form: Mapping[str, str] | None) -> str | None:
    """The client id a token request claims, NOT verified (for logs only): the Basic user,
    else the form's client_id, else the assertion's sub; None when there is none."""
    header = headers.get("Authorization")
    if header:
        creds = basic_credentials(header)
        return creds[0] if creds else None
    if form is None:
        return None
    if form.get("client_id"):
        return form["client_id"]
    subject = (unverified_part(form.get("client_assertion", ""), 1) or {}).get("sub")
    return subject if isinstance(subject, str) else None


def unverified_part(assertion: str, index: int) -> dict | None:
    """The assertion's header (0) or claims (1), NOT verified; None when unreadable."""
    try:
        part = json.loads(base64.urlsafe_b64decode(_pad(assertion.split(".")[index])))
    except (ValueError, IndexError, UnicodeDecodeError, RecursionError):
        return None
    return part if isinstance(part, dict) else None


def is_hmac(assertion: str) -> bool:
    """Whether the assertion's header names an HMAC algorithm; False when unreadable (the
    private_key_jwt path then reports the malformed assertion)."""
    header = unverified_part(assertion, 0) or {}
    return str(header.get("alg", "")).startswith("HS")


def _pad(segment: str) -> bytes:
    return (segment + "=" * (-len(segment) % 4)).encode("ascii", "replace")


def _assertion_error(exc: JoseError) -> InvalidClientError:
    # joserfc quotes header and claim names from the assertion, which may hold characters
    # RFC 6749 forbids in error_description (Authlib raises ValueError on them: a 500).
    reason = exc.description or exc.error
    return InvalidClientError(description=safe_description(f"Client assertion: {reason}"))


class _ClientAssertion(JWTBearerClientAssertion):
    #: Signature algorithms accepted for this method's assertions.
    ALGORITHMS: tuple[str, ...] = ()

    def __init__(self, *, audiences: list[str], clock: Clock, store: StateStore,
                 leeway: int, max_lifetime: int) -> None:
        super().__init__(leeway=leeway)
        self._audiences = audiences
        self._clock = clock
        self._store = store
        self._max_lifetime = max_lifetime

    def __call__(self, query_client, request):
        # Both JWT methods read the same parameters; the assertion's alg says which one the
        # client used, so the other must pass instead of failing the whole authentication.
        assertion = request.form.get("client_assertion")
        if assertion and is_hmac(assertion) != (self.CLIENT_AUTH_METHOD == "client_secret_jwt"):
            return None
        client = super().__call__(query_client, request)
        claimed = request.form.get("client_id")
        if client is not None and claimed is not None and claimed != client.client_id:
            # RFC 7521 section 4.2: a client_id, if sent, names the assertion's subject.
            raise InvalidRequestError("The client_id does not match the client assertion.")
        return client

    def process_assertion_claims(self, assertion, resolve_key):
        # Authlib decodes with joserfc's default ("recommended") algorithms, which refuse
        # PS256 and EdDSA; this method's own allow-list is used instead (never "none").
        try:
            token = jwt.decode(assertion, resolve_key, algorithms=self.ALGORITHMS)
        except JoseError as exc:
            raise _assertion_error(exc) from exc
        self.verify_claims(token.claims)
        return token.claims

    def get_audiences(self) -> list[str]:
        # RFC 7523 §3: the token endpoint URL or the issuer identifier.
        return self._audiences

    def verify_claims(self, claims) -> None:
        # Authlib's version reads time.time(); this one reads the server's clock and caps
        # the assertion's lifetime so the replay cache stays bounded.
        registry = jwt.JWTClaimsRegistry(
            now=self._clock, leeway=self.leeway,
            iss={"essential": True}, sub={"essential": True},
            aud={"essential": True, "values": self.get_audiences()},
            exp={"essential": True}, jti={"essential": True},
        )
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise _assertion_error(exc) from exc
        if claims["sub"] != claims["iss"]:
            raise InvalidClientError(description="Client assertion: iss and sub must match.")
        exp = claims["exp"]
        if not isinstance(exp, int) or exp - self._clock() > self._max_lifetime:
            raise InvalidClientError(
                description=f"Client assertion: exp is more than {self._max_lifetime}s ahead."
            )
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti:
            raise InvalidClientError(description="Client assertion: jti must be a string.")
        if not self.validate_jti(claims, jti):
            raise InvalidClientError(description="Client assertion: jti was used before.")

    def validate_jti(self, claims, jti) -> bool:
        # Authlib's replay hook: kept in the state store until the assertion expires (RFC 7523
        # section 3 item 7), so every worker sharing the store refuses a replay.
        return self._store.remember_jti(claims["sub"], jti, claims["exp"] + self.leeway,
                                        self._clock())


class PrivateKeyJWT(_ClientAssertion):
    """``private_key_jwt``: an assertion signed with a key the client registered."""

    CLIENT_AUTH_METHOD = "private_key_jwt"
    ALGORITHMS = ASSERTION_ALGORITHMS

    def resolve_client_public_key(self, client):
        if client.public_keys is None:
            raise InvalidClientError(description="The client has no registered public keys.")
        return either_ed25519_name(client.public_keys)


def either_ed25519_name(keys: KeySet) -> KeySet:
    """``keys`` with each Ed25519 key registered as ``alg: EdDSA`` or ``alg: Ed25519`` usable
    for both names: one signature (RFC 9864 section 2), and joserfc refuses a key whose
    ``alg`` differs from the header's, so a client whose library moved to the new name would
    otherwise need its keys registered again. Every other key keeps its ``alg``."""
    if not any(key.alg in ED25519_NAMES for key in keys):
        return keys
    return KeySet([
        import_key({k: v for k, v in key.as_dict(private=False).items() if k != "alg"})
        if key.alg in ED25519_NAMES else key
        for key in keys
    ])


class ClientSecretJWT(_ClientAssertion):
    """``client_secret_jwt``: an assertion HMAC-signed with the client secret."""

    CLIENT_AUTH_METHOD = "client_secret_jwt"
    ALGORITHMS = ("HS256",)

    def resolve_client_public_key(self, client):
        if client.secret is None:
            raise InvalidClientError(description="The client has no secret.")
        return OctKey.import_key(client.secret)
