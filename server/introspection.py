"""RFC 7662 introspection and RFC 7009 revocation: Authlib's endpoint classes, registered with
``register_endpoint``, answering from the server's own keys, clock and state store.

Introspection never says ``active`` for a token the server would not honour: expired or not
yet valid by the server's clock, revoked, unknown, malformed, from another issuer, signed by a
retired or unknown key, or not an access token at all – each is ``{"active": false}`` and
nothing more. Authlib's RFC 9068 endpoint classes are not used: they judge expiry by the
process's wall clock (the lab moves the server's), and answer a token they cannot read with
an error instead of ``active: false``.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, ClassVar

from authlib.oauth2.rfc6749 import InvalidRequestError, UnauthorizedClientError
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint, IntrospectionToken
from joserfc import jws
from joserfc import jwt as jose_jwt
from joserfc.errors import JoseError

from .clock import Clock
from .errors import TemporarilyUnavailableError
from .grants import check_request_parameters
from .keys import RETIRED, KeyStore
from .settings import AUTH_METHODS
from .store import StateStore
from .verification import QuietJWSRegistry

__all__ = ["MAX_TOKEN_BYTES", "Introspection", "Revocation", "TokenLookup", "opaque_key",
           "revocation_key"]

#: The longest token looked at; a longer one is refused before any work (our JWTs are about
#: 1 KiB with every claim, opaque tokens 43 characters).
MAX_TOKEN_BYTES = 16 * 1024
#: What an active answer carries (RFC 7662 section 2.2), from the token's claims.
_ANSWERED = ("scope", "client_id", "sub", "aud", "iss", "exp", "iat", "nbf", "jti", "cnf")


def opaque_key(token: str) -> str:
    """Where an opaque token is held: its SHA-256, so the store never holds a usable token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def revocation_key(claims: dict[str, Any]) -> str:
    """Where a revocation is kept: the token's client and ``jti``, so that revoking one's own
    token never touches another client's with the same jti (the lab mints any jti; RFC 7009
    section 2.1). Not the token string's hash: an ES256 token has a twin string, (r, n - s),
    that verifies as well and would not be revoked."""
    return json.dumps([claims["client_id"], claims["jti"]])


class TokenLookup:
    """What the server knows of a presented access token: its claims when it is one this
    issuer issued and would honour now, else None."""

    def __init__(self, issuer: str, keys: KeyStore, clock: Clock, store: StateStore) -> None:
        self.issuer = issuer
        self.keys = keys
        self.clock = clock
        self.store = store

    def find(self, token: str, *, revoked: bool = False) -> dict[str, Any] | None:
        """``revoked``: a revoked token's claims too (for revocation: another token with its
        client and jti may have been revoked with an earlier exp)."""
        now = self.clock()
        if token.count(".") == 2:
            claims = self._verified_jwt(token)
        else:
            claims = self.store.opaque_token(opaque_key(token), now)
        if claims is None or not self._live(claims, now, revoked):
            return None
        return claims

    def _live(self, claims: dict[str, Any], now: float, revoked: bool = False) -> bool:
        if claims.get("iss") != self.issuer:
            return False
        exp, nbf, iat = claims.get("exp"), claims.get("nbf"), claims.get("iat")
        if not _number(exp) or exp <= now:  # RFC 9068 section 2.2: exp is REQUIRED
            return False
        if nbf is not None and (not _number(nbf) or nbf > now):
            return False
        # RFC 9068 section 2.2: iat, sub, aud, jti and client_id are REQUIRED too, as
        # TokenValidator requires them; a lab-minted token without one is not an access token.
        if not _number(iat) or iat > now:
            return False
        for name in ("jti", "client_id", "sub"):
            if not isinstance(claims.get(name), str):
                return False
        aud = claims.get("aud")
        if not (isinstance(aud, str) or (isinstance(aud, list) and aud
                                         and all(isinstance(a, str) for a in aud))):
            return False
        return revoked or not self.store.is_revoked(revocation_key(claims), now)

    def _verified_jwt(self, token: str) -> dict[str, Any] | None:
        """The claims of a JWT signed by one of this issuer's published keys, as an access
        token (typ at+jwt), else None."""
        try:
            header = jws.extract_compact(token.encode("ascii")).protected
        except (JoseError, ValueError, UnicodeError, TypeError):
            return None
        kid, alg = header.get("kid"), header.get("alg")
        typ = header.get("typ")
        # RFC 9068 section 4, and RFC 7515 section 4.1.9's "application/" prefix, any case.
        if not isinstance(kid, str) or not isinstance(typ, str) or \
                typ.lower() not in ("at+jwt", "application/at+jwt"):
            return None
        key = next((k for k in self.keys.all_keys() if k.kid == kid), None)
        if key is None or key.status == RETIRED or key.alg != alg:
            return None
        try:
            decoded = jose_jwt.decode(token, key.key,
                                      registry=QuietJWSRegistry(algorithms=[key.alg]))
        except (JoseError, ValueError, TypeError):
            return None
        return dict(decoded.claims)


def _number(value: object) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int no float holds (JSON numbers have no bound): no time
        return False


def _presented_token(request: Any) -> str:
    """The ``token`` parameter, checked before any work: present once, not huge."""
    tokens = request.payload.datalist.get("token") or []
    if not tokens or not tokens[0]:
        raise InvalidRequestError("The token parameter is missing (RFC 7662 section 2.1).")
    if len(tokens) > 1:
        raise InvalidRequestError("The token parameter is repeated.")
    if len(tokens[0]) > MAX_TOKEN_BYTES:
        raise InvalidRequestError(f"The token is longer than {MAX_TOKEN_BYTES} bytes.")
    return tokens[0]


class Introspection(IntrospectionEndpoint):
    """``POST /introspect``: any client auth method the caller may use; only clients with
    ``introspect = true`` may ask (checked before the token is looked at, so a refused
    caller learns nothing of it)."""

    CLIENT_AUTH_METHODS: ClassVar[list[str]] = list(AUTH_METHODS)

    def __init__(self, lookup: TokenLookup) -> None:
        super().__init__()
        self.lookup = lookup

    def authenticate_endpoint_client(self, request):
        check_request_parameters(request)  # as at the token endpoint: one method, no repeats
        client = super().authenticate_endpoint_client(request)
        if not client.may_introspect:
            raise UnauthorizedClientError("This client may not introspect tokens (its "
                                          "settings need introspect = true).")
        return client

    def check_params(self, request, client) -> None:
        # RFC 7662 section 2.1: an unknown token_type_hint is no error; the search extends to
        # every token type (Authlib answers unsupported_token_type).
        _presented_token(request)

    def query_token(self, token_string, token_type_hint):
        claims = self.lookup.find(token_string)
        return IntrospectionToken(claims) if claims is not None else None

    def check_permission(self, token, client, request) -> bool:
        request.found_token = token  # for the request's record (its jti)
        return True  # decided for the caller, before the token was looked up

    def create_introspection_payload(self, token):
        # Authlib's version calls TokenMixin.is_expired/is_revoked, which judge by the wall
        # clock; the lookup has already judged by the server's.
        return self.answer(token)

    def introspect_token(self, token) -> dict[str, Any]:
        return self.answer(token)

    @staticmethod
    def answer(claims: dict[str, Any] | None) -> dict[str, Any]:
        """The RFC 7662 answer for a token's claims (None: not active)."""
        if not claims:
            return {"active": False}
        answer: dict[str, Any] = {"active": True}
        answer.update((name, claims[name]) for name in _ANSWERED if name in claims)
        # RFC 9449 section 6.2: a DPoP-bound token is introspected with its cnf, type DPoP.
        cnf = claims.get("cnf")
        answer["token_type"] = "DPoP" if isinstance(cnf, dict) and "jkt" in cnf else "Bearer"
        return answer


class Revocation(RevocationEndpoint):
    """``POST /revoke``: a client revokes its own tokens. Revoking an unknown token, or
    another client's, answers 200 and changes nothing: RFC 7009 section 2.2 answers invalid
    tokens with 200, and an error for another client's token would tell the caller that the
    token is live and whose it is."""

    CLIENT_AUTH_METHODS: ClassVar[list[str]] = list(AUTH_METHODS)

    def __init__(self, lookup: TokenLookup) -> None:
        super().__init__()
        self.lookup = lookup

    def authenticate_endpoint_client(self, request):
        check_request_parameters(request)  # as at the token endpoint: one method, no repeats
        return super().authenticate_endpoint_client(request)

    def check_params(self, request, client) -> None:
        _presented_token(request)  # RFC 7009 section 2.1: an unknown hint is ignored

    def authenticate_token(self, request, client):
        self.check_params(request, client)
        claims = self.lookup.find(_presented_token(request), revoked=True)
        if claims is None or claims.get("client_id") != client.get_client_id():
            return None
        return IntrospectionToken(claims)

    def query_token(self, token_string, token_type_hint):  # pragma: no cover - see above
        claims = self.lookup.find(token_string)
        return IntrospectionToken(claims) if claims is not None else None

    def revoke_token(self, token, request) -> None:
        store, key, now = self.lookup.store, revocation_key(token), self.lookup.clock()
        if not store.is_revoked(key, now):
            request.found_token = token  # for the request's record: "revoked", its jti
        # Until it would have expired anyway (revoked again: the later exp), then the entry
        # leaves the list.
        if not store.revoke(key, float(token["exp"]), now):
            raise TemporarilyUnavailableError(
                "The revocation list is full; try again when some revoked tokens expire.")
