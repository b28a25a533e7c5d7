"""A tiny orders API (an OAuth 2.0 resource server): the code under test. It accepts RFC 9068
JWT access tokens, verified with PyJWT against the issuer's JWKS, and answers RFC 6750 errors.

The clock is injected (``clock``) so that tests can share the authorization server's.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

import jwt
from flask import Flask, Response, current_app, g, jsonify, request

#: Asymmetric algorithms only: never "none", never HS256 with a public key as the secret.
ALGORITHMS = ["RS256", "PS256", "ES256", "EdDSA"]
#: RFC 9068 §2.1: access tokens are typed "at+jwt" (the media-type form is equivalent).
ACCESS_TOKEN_TYPES = ("at+jwt", "application/at+jwt")
REQUIRED_CLAIMS = ["iss", "sub", "aud", "exp", "iat", "jti", "client_id"]
# RFC 6750 §3: error_description is %x20-21 / %x23-5B / %x5D-7E
_UNSAFE = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


class InvalidToken(Exception):
    """The bearer token is unusable: answer 401 ``invalid_token`` with this reason."""


class TokenValidator:
    """Validates access tokens of one issuer for one audience."""

    def __init__(self, issuer: str, audience: str, jwks_uri: str, *, leeway: float = 30,
                 jwks_refresh_cooldown: float = 30,
                 clock: Callable[[], float] = time.time) -> None:
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.clock = clock
        # Caches the JWKS (5 minutes) and refetches it for a kid it does not know – that is
        # how a key rotated in at the authorization server is picked up – but at most once per
        # cooldown, so that junk kids cannot make us hammer the JWKS endpoint.
        self.jwks = jwt.PyJWKClient(jwks_uri, lifespan=300, timeout=5,
                                    cooldown_duration=jwks_refresh_cooldown)

    def validate(self, token: str) -> dict[str, Any]:
        """The token's claims, or :class:`InvalidToken`."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise InvalidToken("malformed token") from None
        if header.get("alg") not in ALGORITHMS:
            raise InvalidToken("signing algorithm not allowed")
        if str(header.get("typ", "")).lower() not in ACCESS_TOKEN_TYPES:
            raise InvalidToken("not an access token (typ must be at+jwt)")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("unknown signing key")  # without a kid, there is no key to fetch
        try:
            key = self.jwks.get_signing_key(kid)
        except jwt.PyJWKClientConnectionError:
            raise  # our problem, not the caller's: let it be a 500
        except jwt.PyJWKClientError:
            raise InvalidToken("unknown signing key") from None
        try:
            claims = jwt.decode(
                token, key, algorithms=ALGORITHMS, issuer=self.issuer, audience=self.audience,
                # The time claims are checked below, against our (injectable) clock.
                options={"require": REQUIRED_CLAIMS, "verify_exp": False,
                         "verify_nbf": False, "verify_iat": False},
            )
        except jwt.InvalidSignatureError:
            raise InvalidToken("bad signature") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("wrong issuer") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("wrong audience") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"missing claim {exc.claim}") from None
        except jwt.InvalidTokenError:
            raise InvalidToken("invalid token") from None
        self._check_times(claims)
        return claims

    def _check_times(self, claims: dict[str, Any]) -> None:
        now = self.clock()
        for name in ("exp", "iat", "nbf"):
            value = claims.get(name)
            if name in claims and (isinstance(value, bool)
                                   or not isinstance(value, (int, float))):
                raise InvalidToken(f"{name} is not a number")
        if claims["exp"] <= now - self.leeway:
            raise InvalidToken("token expired")
        if claims.get("nbf", claims["iat"]) > now + self.leeway:
            raise InvalidToken("token not yet valid")


def _challenge(status: int, error: str | None = None, description: str | None = None,
               scope: str | None = None) -> Response:
    """An RFC 6750 §3 error: ``WWW-Authenticate: Bearer ...`` and a JSON body."""
    params = ['realm="orders"']
    body: dict[str, str] = {}
    if error:
        params.append(f'error="{error}"')
        body["error"] = error
    if description:
        description = _UNSAFE.sub("?", description)
        params.append(f'error_description="{description}"')
        body["error_description"] = description
    if scope:
        params.append(f'scope="{scope}"')
        body["scope"] = scope
    response = jsonify(body)
    response.status_code = status
    response.headers["WWW-Authenticate"] = "Bearer " + ", ".join(params)
    return response


def require_scope(scope: str) -> Callable:
    """Only for requests with a valid bearer token granting ``scope``; claims in ``g.token``."""

    def decorate(view: Callable) -> Callable:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return _challenge(401)  # RFC 6750 §3.1: no error code when no token was sent
            validator: TokenValidator = current_app.extensions["orders_validator"]
            try:
                claims = validator.validate(token.strip())
            except InvalidToken as exc:
                return _challenge(401, "invalid_token", str(exc))
            granted = str(claims.get("scope", "")).split()
            if scope not in granted:
                return _challenge(403, "insufficient_scope", f"needs scope {scope}", scope)
            g.token = claims
            return view(*args, **kwargs)

        return wrapper

    return decorate


ORDERS = [{"id": 1, "item": "coffee"}, {"id": 2, "item": "tea"}]


def create_app(*, issuer: str, audience: str, jwks_uri: str, **validator_options: Any) -> Flask:
    """The app; ``validator_options`` go to :class:`TokenValidator` (leeway, clock...)."""
    app = Flask(__name__)
    app.extensions["orders_validator"] = TokenValidator(issuer, audience, jwks_uri,
                                                        **validator_options)

    @app.get("/orders")
    @require_scope("orders:read")
    def list_orders() -> Any:
        return jsonify(orders=ORDERS, client=g.token["client_id"])

    @app.post("/orders")
    @require_scope("orders:write")
    def create_order() -> Any:
        return jsonify(id=3, **(request.get_json(silent=True) or {})), 201

    return app
