"""A demo resource server for learning and examples: ``GET /hello`` needs scope ``read``,
``GET /admin`` needs scope ``admin``. Built on :func:`m2mauth.client.flask.require_token` and a
:class:`~m2mauth.client.TokenValidator` that finds the issuer's keys through its metadata –
the API side of the flow, as a service of yours would do it. Both take a bearer token or a
DPoP-bound one (``Authorization: DPoP <token>`` with a ``DPoP`` proof header, RFC 9449); pass
``dpop=DPoPPolicy(require_nonce=True)`` to make clients use the API's nonces.

``m2mauth demo-api --issuer URL --audience AUD`` runs it; :func:`create_demo_api` is the app
factory (serve it with any WSGI server). It lives on the client side: a resource server is a
client of the issuer, and needs nothing of the server package.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, g, jsonify, request

from .flask import require_token
from .validator import TokenValidator, ValidatedToken

__all__ = ["ENDPOINTS", "create_demo_api"]

#: path -> the scope it needs
ENDPOINTS = {"/hello": "read", "/admin": "admin"}


def _caller(token: ValidatedToken) -> dict[str, Any]:
    caller: dict[str, Any] = {"sub": token.subject, "client_id": token.client_id,
                              "scopes": list(token.scopes)}
    if token.jkt is not None:  # a DPoP-bound token, with a valid proof of its key
        caller["jkt"] = token.jkt
    return caller


def create_demo_api(issuer: str, audience: str, *, validator: TokenValidator | None = None,
                    realm: str | None = None, public_url: str | None = None,
                    **validator_options: Any) -> Flask:
    """The demo API's Flask app, trusting tokens of ``issuer`` for ``audience``.

    ``validator``: a ready :class:`~m2mauth.client.TokenValidator` (else one is made from
    ``issuer``, ``audience`` and ``validator_options`` such as ``jwks_uri``, ``leeway`` or
    ``clock``; without ``jwks_uri`` it is discovered from the issuer on the first request).
    ``realm``: of the ``WWW-Authenticate`` challenges (default: the audience).
    ``public_url``: the origin clients call the API at, for DPoP proofs' ``htu`` (default:
    the request's own URL – see :func:`~m2mauth.client.flask.require_token` on proxies).
    """
    if validator is None:
        validator = TokenValidator(issuer, audience, **validator_options)
    elif validator_options:
        raise TypeError("give either a validator or options for one, not both")
    app = Flask(__name__)
    app.extensions["m2mauth_demo_api"] = validator

    @app.get("/")
    def index() -> Any:
        base = request.url_root.rstrip("/")  # with the mount point, if mounted (/demo)
        return jsonify(
            service="m2mauth demo API", issuer=validator.issuer,
            audience=list(validator.audience),
            endpoints={base + path: {"method": "GET", "scope": scope}
                       for path, scope in ENDPOINTS.items()},
            authorization=["Bearer", "DPoP"],
            dpop_algorithms=list(validator.dpop_algorithms),
        )

    @app.get("/hello")
    @require_token(validator, scopes=[ENDPOINTS["/hello"]], realm=realm, public_url=public_url)
    def hello() -> Any:
        token: ValidatedToken = g.token
        return jsonify(message=f"hello, {token.subject}", **_caller(token))

    @app.get("/admin")
    @require_token(validator, scopes=[ENDPOINTS["/admin"]], realm=realm, public_url=public_url)
    def admin() -> Any:
        token: ValidatedToken = g.token
        return jsonify(message=f"welcome to the admin area, {token.subject}", **_caller(token))

    return app
