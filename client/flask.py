"""Flask integration: protect a view with a bearer access token, answering as RFC 6750 §3.

::

    from flask import Flask, g
    from m2mauth.client import TokenValidator
    from m2mauth.client.flask import require_token

    validator = TokenValidator("https://issuer.example", "https://orders.example")
    app = Flask(__name__)

    @app.get("/orders")
    @require_token(validator, scopes=["orders:read"])
    def orders():
        return {"client": g.token.client_id}   # g.token: the ValidatedToken

The view runs only for a request carrying a valid token that grants every scope in
``scopes``; the token's content is in ``flask.g.token`` (a
:class:`~m2mauth.client.ValidatedToken`: ``subject``, ``client_id``, ``scopes``, ``claims``…).
That is the one way the view gets it. Every other request is answered here:

============================================  ======  ==========================================
request                                       status  ``WWW-Authenticate``
============================================  ======  ==========================================
no bearer token (none, or another scheme)     401     ``Bearer realm="R"`` (no error, §3.1)
malformed: token sent two ways, several       400     ``Bearer realm="R", error="invalid_request",
Authorization headers, ``Bearer`` without a           error_description="…"``
token or with more than one token68, an
``access_token`` in the URL query
token rejected by the validator               401     ``Bearer realm="R", error="invalid_token",
                                                      error_description="…"``
valid token without a required scope          403     ``Bearer realm="R",
                                                      error="insufficient_scope",
                                                      error_description="…", scope="a b"``
the issuer's keys cannot be had, or its       503     none: not the token's fault
introspection endpoint cannot be asked
============================================  ======  ==========================================

Every such answer also has a JSON body with the same ``error`` and ``error_description``
(and ``scope``), or ``{"error": "temporarily_unavailable", ...}`` for the 503, and
``Cache-Control: no-store``. The validator may be a :class:`~m2mauth.client.TokenValidator`
or an :class:`~m2mauth.client.IntrospectionValidator` (anything with that ``validate``): the
answers are the same, bar the 503's description. The 401 without credentials has no
``error`` in the header (RFC 6750 §3.1) nor in the body, only an ``error_description`` saying
a token is needed.

Where the token may be (RFC 6750 §2): the ``Authorization: Bearer <token>`` header (scheme in
any case, one space, one token68), or an ``access_token`` parameter of an
``application/x-www-form-urlencoded`` body of a POST, PUT or PATCH request (§2.2; never a GET).
The URL query (§2.3) is refused – see :func:`_bearer_token`.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

from flask import Response, current_app, g, request

from ._arguments import as_list
from ._grammar import SCOPE_TOKEN, TOKEN68
from .errors import (
    DiscoveryError,
    InsufficientScopeError,
    IntrospectionError,
    InvalidTokenError,
    JWKSError,
    TransportError,
)
from .validator import ValidatedToken

__all__ = ["BearerError", "bearer_challenge", "require_token"]

log = logging.getLogger("m2mauth.client.flask")

F = TypeVar("F", bound=Callable[..., Any])

#: Not allowed in a quoted-string (RFC 9110 §5.6.4) nor in an RFC 6750 attribute value.
_NOT_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]")
#: Methods whose request body has defined semantics (RFC 6750 §2.2 rules out GET).
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_FORM = "application/x-www-form-urlencoded"

_NEEDS_TOKEN = "this resource needs a bearer access token (Authorization: Bearer <token>)"
_KEYS_UNAVAILABLE = ("the access token cannot be checked now: the issuer's signing keys are "
                     "unavailable; try again later")
_INTROSPECTION_UNAVAILABLE = ("the access token cannot be checked now: the issuer's "
                              "introspection endpoint is unavailable; try again later")


class Validator(Protocol):
    """What :func:`require_token` needs: a :class:`~m2mauth.client.TokenValidator` or an
    :class:`~m2mauth.client.IntrospectionValidator` – ``validate`` returning a
    :class:`~m2mauth.client.ValidatedToken` or raising their errors."""

    def validate(self, token: str, scopes: Iterable[str] = ...) -> ValidatedToken: ...


class BearerError(Exception):
    """A request the decorator answers itself (raised internally; ``error`` None is the
    bare 401 challenge)."""

    def __init__(self, status: int, error: str | None, description: str,
                 scope: str | None = None) -> None:
        super().__init__(status, error, description)
        self.status, self.error, self.description, self.scope = status, error, description, scope


def _quoted(value: str) -> str:
    """``value`` as an RFC 9110 quoted-string: backslash and double quote escaped; control and
    non-ASCII characters (never valid there, nor in RFC 6750 values) replaced by ``?``."""
    value = _NOT_PRINTABLE_ASCII.sub("?", value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def bearer_challenge(realm: str, error: str | None = None, description: str | None = None,
                     scope: str | None = None) -> str:
    """The ``WWW-Authenticate`` value: ``Bearer realm="…"[, error="…"][, error_description="…"]
    [, scope="…"]``, every value a correctly escaped quoted-string."""
    params = [f"realm={_quoted(realm)}"]
    if error is not None:
        params.append(f"error={_quoted(error)}")
    if description is not None:
        params.append(f"error_description={_quoted(description)}")
    if scope is not None:
        params.append(f"scope={_quoted(scope)}")
    return "Bearer " + ", ".join(params)


def _bearer_token() -> str | None:
    """The request's bearer token, None when it has none; :class:`BearerError` (400
    invalid_request) when it is malformed or sent in more than one way."""
    # RFC 6750 §2.3 (the URI query) is a SHOULD NOT for clients and a hazard for everyone: the
    # token ends up in access logs, proxies, browser history and Referer headers. It is not
    # accepted as a credential; a request that tries is malformed (400), even with the token
    # also in the header, so that the client learns to stop putting it in URLs.
    if "access_token" in request.args:
        raise BearerError(400, "invalid_request", "an access_token in the URL query is not "
                          "accepted (RFC 6750 section 2.3); send it in the Authorization "
                          "header")
    header = _from_header()
    body = _from_body()
    if header is not None and body is not None:
        raise BearerError(400, "invalid_request", "the token was sent in more than one way "
                          "(Authorization header and form body; RFC 6750 section 2)")
    return header if header is not None else body


def _from_header() -> str | None:
    values = request.headers.getlist("Authorization")
    if not values:
        return None
    if len(values) > 1:  # WSGI servers usually join them with commas; see below
        raise BearerError(400, "invalid_request", "more than one Authorization header")
    value = values[0].strip(" \t")
    if not value:
        raise BearerError(400, "invalid_request", "the Authorization header is empty")
    # Repeated headers arrive joined by commas ("Bearer a,Bearer b"); a token68 has none.
    pieces = [p.strip(" \t") for p in value.split(",")]
    bearer = [p for p in pieces if p.split(None, 1)[:1] and p.split(None, 1)[0].lower()
              == "bearer"]
    if not bearer:
        return None  # another scheme (Basic, ...): no bearer credentials at all
    if len(pieces) > 1:
        raise BearerError(400, "invalid_request", "more than one Authorization header, or "
                          "more than one set of credentials in it")
    rest = value[len("bearer"):]
    if not rest:
        raise BearerError(400, "invalid_request", "the Bearer scheme without a token")
    if rest[0] != " " or rest[1:2] in (" ", "\t"):
        raise BearerError(400, "invalid_request", "Bearer and the token must be separated "
                          "by exactly one space (RFC 6750 section 2.1)")
    token = rest[1:]
    if TOKEN68.fullmatch(token) is None:
        raise BearerError(400, "invalid_request", "the Bearer credentials are not one "
                          "token68 (RFC 6750 section 2.1)")
    return token


def _from_body() -> str | None:
    """RFC 6750 §2.2: only a single-part form-encoded body of a method with a body."""
    if request.method not in _BODY_METHODS or request.mimetype != _FORM:
        return None
    values = request.form.getlist("access_token")
    if not values:
        return None
    if len(values) > 1:
        raise BearerError(400, "invalid_request", "more than one access_token in the body")
    token = values[0]
    if TOKEN68.fullmatch(token) is None:
        raise BearerError(400, "invalid_request", "the access_token in the body is not a "
                          "token68 (RFC 6750 section 2.1)")
    return token


def _answer(realm: str, problem: BearerError) -> Response:
    body: dict[str, str] = {}
    if problem.error is not None:
        body["error"] = problem.error
    body["error_description"] = problem.description
    if problem.scope is not None:
        body["scope"] = problem.scope
    response = current_app.json.response(body)
    response.status_code = problem.status
    if problem.status != 503:
        response.headers["WWW-Authenticate"] = bearer_challenge(
            realm, problem.error, problem.description if problem.error else None,
            problem.scope)
    response.headers["Cache-Control"] = "no-store"
    return response


def _default_realm(validator: Any) -> str:
    audience = getattr(validator, "audience", None)
    if isinstance(audience, str) and audience:
        return audience
    if isinstance(audience, (tuple, list)) and audience and isinstance(audience[0], str):
        return audience[0]
    issuer = getattr(validator, "issuer", None)
    if isinstance(issuer, str) and issuer:
        return issuer
    raise ValueError("give a realm: the validator has neither an audience nor an issuer")


def require_token(validator: Validator, scopes: str | Iterable[str] = (), *,
                  realm: str | None = None) -> Callable[[F], F]:
    """Decorator for a Flask view: run it only with a valid bearer token granting all of
    ``scopes`` (strings, or one space-separated string), the token in ``flask.g.token``;
    answer every other request as RFC 6750 §3 (see the module docstring).

    ``validator``: a :class:`~m2mauth.client.TokenValidator` or
    :class:`~m2mauth.client.IntrospectionValidator`. ``realm``: the challenges'
    ``realm`` (default: the validator's first audience, else its issuer). Put the decorator
    below ``@app.route``/``@app.get``. Works for ``async def`` views too.
    """
    # One string is space-separated; each item of a list is one scope, checked as it is.
    required = tuple(as_list(scopes, split=isinstance(scopes, str)))
    for scope in required:
        if not isinstance(scope, str) or SCOPE_TOKEN.fullmatch(scope) is None:
            raise ValueError(f"not a valid scope (RFC 6749 section 3.3): {scope!r}")
    if realm is None:
        realm = _default_realm(validator)
    elif not isinstance(realm, str):
        raise TypeError("realm must be a string")
    realm_name: str = realm

    def check() -> Response | None:
        """None when the view may run (g.token set), else the answer."""
        try:
            token = _bearer_token()
            if token is None:
                raise BearerError(401, None, _NEEDS_TOKEN)
            try:
                g.token = validator.validate(token, scopes=required)
            except InvalidTokenError as exc:
                log.info("invalid_token (%s) for %s %s: %s", exc.reason, request.method,
                         request.path, exc.error_description)
                raise BearerError(401, "invalid_token",
                                  exc.error_description or "invalid token") from None
            except InsufficientScopeError as exc:
                log.info("insufficient_scope for %s %s: missing %s", request.method,
                         request.path, " ".join(exc.missing))
                raise BearerError(403, "insufficient_scope", exc.error_description or
                                  "insufficient scope", scope=exc.scope) from None
            except (JWKSError, DiscoveryError, TransportError, IntrospectionError) as exc:
                # Our problem, not the caller's: no invalid_token (a client would throw away
                # a good token) and no details of our infrastructure in the answer.
                log.warning("cannot validate tokens for %s %s: %s", request.method,
                            request.path, exc)
                raise BearerError(503, "temporarily_unavailable", _INTROSPECTION_UNAVAILABLE
                                  if isinstance(exc, IntrospectionError)
                                  else _KEYS_UNAVAILABLE) from None
        except BearerError as problem:
            return _answer(realm_name, problem)
        return None

    def decorate(view: F) -> F:
        if inspect.iscoroutinefunction(view):
            @functools.wraps(view)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                answer = check()
                if answer is not None:
                    return answer
                return await view(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            answer = check()
            if answer is not None:
                return answer
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
