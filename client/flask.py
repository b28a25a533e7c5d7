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

DPoP (RFC 9449), on when the validator has ``validate_dpop`` (a
:class:`~m2mauth.client.TokenValidator`; ``dpop=False`` turns it off): ``Authorization: DPoP
<token>`` with one ``DPoP`` header holding the proof, checked against the request's method and
URL by :meth:`~m2mauth.client.TokenValidator.validate_dpop`. A DPoP-bound token (``cnf.jkt``)
sent as Bearer is ``invalid_token``. The answers (RFC 9449 §7.1, §8), each with the JSON body
as above; ``A`` is ``algs="…"``, the proof algorithms accepted:

============================================  ======  ==========================================
request                                       status  ``WWW-Authenticate``
============================================  ======  ==========================================
no token at all                               401     ``Bearer realm="R", DPoP realm="R", A``
DPoP token, proof missing or bad (two         401     ``DPoP realm="R",
proofs, wrong htm/htu, stale iat, replayed            error="invalid_dpop_proof",
jti, wrong ath, key not the cnf.jkt …)                error_description="…", A``
DPoP token, nonce required and missing or     401     ``DPoP realm="R", error="use_dpop_nonce",
stale                                                 error_description="…", A`` and a
                                                      ``DPoP-Nonce`` header
DPoP token rejected (or not DPoP-bound)       401     ``DPoP realm="R", error="invalid_token",
                                                      error_description="…", A``
DPoP token without a required scope           403     ``DPoP realm="R",
                                                      error="insufficient_scope", …, scope="…",
                                                      A``
malformed DPoP Authorization header           400     ``DPoP realm="R", error="invalid_request",
                                                      …``
too many live proofs to remember one more     503     none
============================================  ======  ==========================================

With nonces on, every answer to a DPoP request carries the current ``DPoP-Nonce`` (RFC 9449
§8.2), so clients move to a new nonce before the old one expires.

The URL a proof's ``htu`` is compared with: ``public_url`` (the origin, and any path prefix,
clients call this service at; else the app's ``M2MAUTH_PUBLIC_URL`` config) followed by the
request's path as the WSGI server saw it, the app's mount point (``SCRIPT_NAME``) included;
without either, ``request.base_url`` – built from the ``Host`` header and scheme as the WSGI
server saw them. Behind a reverse proxy or TLS terminator that is not what the client called:
pass ``public_url``, or let werkzeug's ``ProxyFix`` restore the forwarded host and scheme
(only for a proxy you trust to set them).
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

from flask import Response, after_this_request, current_app, g, request

from ._arguments import as_list
from ._grammar import SCOPE_TOKEN, TOKEN68
from .dpop_validation import InvalidDPoPProofError, UseDPoPNonceError
from .errors import (
    DiscoveryError,
    InsufficientScopeError,
    IntrospectionError,
    InvalidTokenError,
    JWKSError,
    TransportError,
)
from .validator import ValidatedToken

__all__ = ["BearerError", "bearer_challenge", "dpop_challenge", "require_token"]

log = logging.getLogger("m2mauth.client.flask")

F = TypeVar("F", bound=Callable[..., Any])

#: Not allowed in a quoted-string (RFC 9110 §5.6.4) nor in an RFC 6750 attribute value.
_NOT_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]")
#: Methods whose request body has defined semantics (RFC 6750 §2.2 rules out GET).
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_FORM = "application/x-www-form-urlencoded"

_NEEDS_TOKEN = "this resource needs a bearer access token (Authorization: Bearer <token>)"
_NEEDS_TOKEN_OR_DPOP = ("this resource needs an access token (Authorization: Bearer <token>, "
                        "or DPoP <token> with a DPoP proof header)")
_TOO_MANY_PROOFS = "too many recent DPoP proofs to check another now; try again shortly"
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
    bare 401 challenge). ``scheme``: the challenge's, ``"bearer"`` or ``"dpop"`` (None: both,
    for a request without credentials); ``nonce``: a ``DPoP-Nonce`` to send."""

    def __init__(self, status: int, error: str | None, description: str,
                 scope: str | None = None, *, scheme: str | None = "bearer",
                 nonce: str | None = None) -> None:
        super().__init__(status, error, description)
        self.status, self.error, self.description, self.scope = status, error, description, scope
        self.scheme, self.nonce = scheme, nonce


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


def dpop_challenge(realm: str, algorithms: Iterable[str], error: str | None = None,
                   description: str | None = None, scope: str | None = None) -> str:
    """The RFC 9449 §7.1 challenge: ``DPoP realm="…"[, error="…"][, error_description="…"]
    [, scope="…"], algs="ES256 …"``, every value a correctly escaped quoted-string."""
    bearer = bearer_challenge(realm, error, description, scope)
    return f"DPoP {bearer[len('Bearer '):]}, algs={_quoted(' '.join(algorithms))}"


def _bearer_token(dpop: bool = False) -> tuple[str, str] | None:
    """The request's (scheme, token) – scheme ``"bearer"``, or ``"dpop"`` when ``dpop`` –
    None when it has none; :class:`BearerError` (400 invalid_request) when it is malformed or
    sent in more than one way."""
    # RFC 6750 §2.3 (the URI query) is a SHOULD NOT for clients and a hazard for everyone: the
    # token ends up in access logs, proxies, browser history and Referer headers. It is not
    # accepted as a credential; a request that tries is malformed (400), even with the token
    # also in the header, so that the client learns to stop putting it in URLs.
    if "access_token" in request.args:
        raise BearerError(400, "invalid_request", "an access_token in the URL query is not "
                          "accepted (RFC 6750 section 2.3); send it in the Authorization "
                          "header")
    header = _from_header(("bearer", "dpop") if dpop else ("bearer",))
    body = _from_body()
    if header is not None and body is not None:
        raise BearerError(400, "invalid_request", "the token was sent in more than one way "
                          "(Authorization header and form body; RFC 6750 section 2)",
                          scheme=header[0])
    if header is not None:
        return header
    return ("bearer", body) if body is not None else None


def _from_header(schemes: tuple[str, ...]) -> tuple[str, str] | None:
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
    named = [p.split(None, 1)[0].lower() for p in pieces if p.split(None, 1)]
    ours = [word for word in named if word in schemes]
    if not ours:
        return None  # another scheme (Basic, ...): no bearer credentials at all
    scheme = ours[0]
    if len(pieces) > 1:
        raise BearerError(400, "invalid_request", "more than one Authorization header, or "
                          "more than one set of credentials in it", scheme=scheme)
    name = "DPoP" if scheme == "dpop" else "Bearer"
    section = "RFC 9449 section 7.1" if scheme == "dpop" else "RFC 6750 section 2.1"
    rest = value[len(scheme):]  # the one piece's first word is ``scheme``
    if not rest:
        raise BearerError(400, "invalid_request", f"the {name} scheme without a token",
                          scheme=scheme)
    if rest[0] != " " or rest[1:2] in (" ", "\t"):
        raise BearerError(400, "invalid_request", f"{name} and the token must be separated "
                          f"by exactly one space ({section})", scheme=scheme)
    token = rest[1:]
    if TOKEN68.fullmatch(token) is None:
        raise BearerError(400, "invalid_request", f"the {name} credentials are not one "
                          f"token68 ({section})", scheme=scheme)
    return scheme, token


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


def _answer(realm: str, problem: BearerError,
            dpop_algorithms: tuple[str, ...] | None = None) -> Response:
    body: dict[str, str] = {}
    if problem.error is not None:
        body["error"] = problem.error
    body["error_description"] = problem.description
    if problem.scope is not None:
        body["scope"] = problem.scope
    response = current_app.json.response(body)
    response.status_code = problem.status
    if problem.status != 503:
        described = problem.description if problem.error else None
        challenges = []
        if problem.scheme != "dpop" or dpop_algorithms is None:
            challenges.append(bearer_challenge(realm, problem.error, described,
                                               problem.scope))
        if problem.scheme != "bearer" and dpop_algorithms is not None:
            challenges.append(dpop_challenge(realm, dpop_algorithms, problem.error, described,
                                             problem.scope))
        response.headers["WWW-Authenticate"] = ", ".join(challenges)
    if problem.nonce is not None:
        response.headers["DPoP-Nonce"] = problem.nonce
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
                  realm: str | None = None, dpop: bool | None = None,
                  public_url: str | None = None) -> Callable[[F], F]:
    """Decorator for a Flask view: run it only with a valid bearer or DPoP token granting
    all of ``scopes`` (strings, or one space-separated string), the token in ``flask.g.token``;
    answer every other request as RFC 6750 §3 and RFC 9449 §7.1 (see the module docstring).

    ``validator``: a :class:`~m2mauth.client.TokenValidator` or
    :class:`~m2mauth.client.IntrospectionValidator`. ``realm``: the challenges'
    ``realm`` (default: the validator's first audience, else its issuer). ``dpop``: accept
    ``Authorization: DPoP`` with a proof (default: when the validator has ``validate_dpop``).
    ``public_url``: the origin (and path prefix) clients call this app at, e.g.
    ``"https://api.example"``, for the proofs' ``htu``; None uses the app's
    ``M2MAUTH_PUBLIC_URL`` config, else ``request.base_url`` (see the module docstring on
    proxies). Put the decorator below
    ``@app.route``/``@app.get``. Works for ``async def`` views too.
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
    validate_dpop = getattr(validator, "validate_dpop", None)
    if dpop is None:
        dpop = validate_dpop is not None
    elif dpop and validate_dpop is None:
        raise ValueError("this validator cannot check DPoP proofs (no validate_dpop)")
    algorithms: tuple[str, ...] | None = (
        tuple(getattr(validator, "dpop_algorithms", ())) if dpop else None)
    nonce_of: Callable[[], str | None] = getattr(validator, "dpop_nonce", lambda: None)
    if public_url is not None:
        if not isinstance(public_url, str) or not public_url.startswith(("http://",
                                                                         "https://")):
            raise ValueError("public_url must be an http(s) URL")
        public_url = public_url.rstrip("/")

    def request_url() -> str:
        base = public_url or current_app.config.get("M2MAUTH_PUBLIC_URL")
        if not base:
            return request.base_url
        return base.rstrip("/") + request.base_url[len(request.host_url) - 1:]

    def check() -> Response | None:
        """None when the view may run (g.token set), else the answer."""
        scheme = "bearer"
        try:
            credentials = _bearer_token(dpop=bool(dpop))
            if credentials is None:
                raise BearerError(401, None, _NEEDS_TOKEN_OR_DPOP if dpop else _NEEDS_TOKEN,
                                  scheme=None if dpop else "bearer")
            scheme, token = credentials
            if scheme == "dpop" and nonce_of() is not None:
                @after_this_request
                def _fresh_nonce(response: Response) -> Response:  # RFC 9449 §8.2
                    nonce = nonce_of()
                    if nonce is not None and "DPoP-Nonce" not in response.headers:
                        response.headers["DPoP-Nonce"] = nonce
                    return response
            try:
                if scheme == "dpop":
                    g.token = validate_dpop(  # type: ignore[misc]
                        token, request.headers.getlist("DPoP"), method=request.method,
                        url=request_url(), scopes=required)
                else:
                    g.token = validator.validate(token, scopes=required)
            except UseDPoPNonceError as exc:
                log.info("use_dpop_nonce for %s %s", request.method, request.path)
                raise BearerError(401, "use_dpop_nonce", exc.error_description or
                                  "use the DPoP-Nonce", scheme="dpop", nonce=exc.nonce) from None
            except InvalidDPoPProofError as exc:
                log.info("invalid_dpop_proof (%s) for %s %s: %s", exc.reason, request.method,
                         request.path, exc.error_description)
                if exc.reason == "replay_cache_full":
                    raise BearerError(503, "temporarily_unavailable", _TOO_MANY_PROOFS,
                                      scheme="dpop") from None
                raise BearerError(401, "invalid_dpop_proof", exc.error_description or
                                  "invalid DPoP proof", scheme="dpop") from None
            except InvalidTokenError as exc:
                log.info("invalid_token (%s) for %s %s: %s", exc.reason, request.method,
                         request.path, exc.error_description)
                raise BearerError(401, "invalid_token",
                                  exc.error_description or "invalid token",
                                  scheme=scheme) from None
            except InsufficientScopeError as exc:
                log.info("insufficient_scope for %s %s: missing %s", request.method,
                         request.path, " ".join(exc.missing))
                raise BearerError(403, "insufficient_scope", exc.error_description or
                                  "insufficient scope", scope=exc.scope,
                                  scheme=scheme) from None
            except (JWKSError, DiscoveryError, TransportError, IntrospectionError) as exc:
                # Our problem, not the caller's: no invalid_token (a client would throw away
                # a good token) and no details of our infrastructure in the answer.
                log.warning("cannot validate tokens for %s %s: %s", request.method,
                            request.path, exc)
                raise BearerError(503, "temporarily_unavailable", _INTROSPECTION_UNAVAILABLE
                                  if isinstance(exc, IntrospectionError)
                                  else _KEYS_UNAVAILABLE) from None
        except BearerError as problem:
            if problem.scheme == "dpop" and problem.nonce is None:
                problem.nonce = nonce_of()
            return _answer(realm_name, problem, algorithms)
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
