"""``Lab``: the test controls attached to an authorization server app as a Flask extension.

``Lab(app)`` or ``lab.init_app(app)`` on an app made by
:func:`~m2mauth.server.app.create_core_app`. It adds, without the core knowing:

- fault injection, as request hooks on the token, JWKS, introspection and revocation
  endpoints (``before_request`` answers in the endpoint's place or waits; ``after_request``
  strips ``expires_in`` or drops the connection);
- the request log, fed by the core's ``token_request_handled`` and
  ``endpoint_request_handled`` signals and by the same hooks for JWKS fetches and requests
  a fault answered;
- :class:`Controls` at ``app.extensions["m2mauth_lab"].controls``, and the ``/admin``
  blueprint over them;
- the playground page at ``/playground``, which drives the admin API from the browser (on
  the root issuer only: its demo API trusts that issuer);
- on a server with further issuers (:mod:`..issuers`), the same on each of their apps, and
  :class:`IssuerControls` to add and remove them at run time.

Everything the issuer serves is under its path: ``/admin`` for ``http://host:port``,
``/a/admin`` for ``http://host:port/a``.

Request hooks for faults, because a fault changes or replaces a response, which signals must
not do; a signal for the log, because the token endpoint's record (what the grant verified,
the issued token's jti) exists only inside the core.
"""

from __future__ import annotations

from flask import Flask, Response, g, request

from ..errors import StoreUnavailableError
from ..issuer import EXTENSION as CORE_EXTENSION
from ..issuer import Issuer, current_issuer
from ..issuers import router_of
from ..signals import endpoint_request_handled, token_request_handled
from ..store import StateStore
from ..token_request import (
    EndpointRequest,
    TokenRequest,
    describe,
    describe_endpoint_request,
    log_endpoint_request,
    log_token_request,
)
from ..views import STORE_FAILED, store_unavailable
from . import requestlog
from .admin import ADMIN_PREFIX, EXTENSION
from .admin import bp as admin_bp
from .controls import Controls
from .faults import (
    ANSWERING_KINDS,
    ENDPOINTS,
    Fault,
    drop_connection,
    response_for,
    strip_expires_in,
)
from .issuers import IssuerControls
from .playground import PLAYGROUND_PREFIX
from .playground import bp as playground_bp

__all__ = ["Lab", "LabState"]

_VIEWS = {view: endpoint for endpoint, view in ENDPOINTS.items()}
#: Per request, on flask.g: the fault spoiling this request (the lab's own request state).
_FAULT = "_m2mauth_lab_fault"


def _fault_endpoint() -> str | None:
    """The endpoint ("token", "jwks") whose view answers this request, if any: not an
    OPTIONS request, which Flask answers itself without running the view."""
    current = request._get_current_object()  # type: ignore[attr-defined]  # one lookup
    if current.method == "OPTIONS":
        return None
    return _VIEWS.get(current.endpoint or "")


class Lab:
    """The lab of one app (``Lab(app)``) or, Flask style, of any number of them
    (``lab = Lab(); lab.init_app(app)``: each app gets its own controls). On a root app it
    also attaches to every further issuer the app serves."""

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> LabState:
        if EXTENSION in app.extensions:
            # A second set of hooks would log every request twice and take two faults.
            raise RuntimeError("this app already has a lab (create_app() attaches one "
                               "unless lab = false)")
        core: Issuer = app.extensions[CORE_EXTENSION]
        state = app.extensions[EXTENSION] = LabState(core)
        app.before_request(state.before_request)
        app.after_request(state.after_request)
        # A weak reference (blinker's default): the app holds the state, and an app that is
        # gone takes its receiver with it.
        token_request_handled.connect(state.on_token_request, sender=app)
        endpoint_request_handled.connect(state.on_endpoint_request, sender=app)
        if core.settings.admin_api:
            app.register_blueprint(admin_bp, url_prefix=core.mount + ADMIN_PREFIX)
        router = router_of(app)
        if router is not None:
            state.issuers = IssuerControls(app, router)
            for named in router.apps():
                self.init_app(named)
            # Whenever the lab is on: without the admin API the page still walks through
            # the steps and says why the lessons cannot run.
            app.register_blueprint(playground_bp, url_prefix=core.mount + PLAYGROUND_PREFIX)
        return state


class LabState:
    """What the lab keeps for one app: its controls (replaceable: an ``IdentityProvider``
    puts itself here), and whether the admin API answers."""

    def __init__(self, core: Issuer) -> None:
        self.controls = Controls(core)
        # Decided once, like the address the server binds ("localhost" resolves only here).
        self.admin_enabled = core.settings.admin_enabled
        #: The further issuers, on a root app (None on theirs: each manages only itself).
        self.issuers: IssuerControls | None = None

    def reset(self) -> None:
        """Undo every change since start: this issuer's state and, on a root app, the
        issuers added at run time (removed) and the declared ones (reset)."""
        Controls.reset(self.controls)  # not an IdentityProvider's override, which calls this
        if self.issuers is not None:
            self.issuers.reset()

    @property
    def store(self) -> StateStore:
        return self.controls.core.store

    def before_request(self) -> Response | None:
        endpoint = _fault_endpoint()
        fault = self.controls.take_fault(endpoint) if endpoint is not None else None
        if fault is None:
            return None
        setattr(g, _FAULT, fault)
        # The issuer as this client sees it (behind a proxy, the proxy's URL): the realm the
        # token endpoint's own 401s name.
        issuer = current_issuer()
        response = response_for(fault, request, issuer.issuer)
        if response is not None and fault.error == "use_dpop_nonce" and endpoint == "token":
            # A queued use_dpop_nonce answer gives a nonce, as the real one does (RFC 9449
            # section 8): a client's retry with it then reaches the real endpoint.
            response.headers["DPoP-Nonce"] = issuer.dpop.current_nonce()
        return response

    def after_request(self, response: Response) -> Response:
        request_g = g._get_current_object()  # type: ignore[attr-defined]  # one lookup
        if request_g.get(STORE_FAILED):  # answered 503 already; the log cannot be kept either
            request_g.pop(_FAULT, None)
            return response
        try:
            return self._after_request(response, request_g.pop(_FAULT, None))
        except StoreUnavailableError as exc:
            # The record cannot be kept: the core's answer for an unreachable store, not
            # a 500 (Flask sends errors of after-request hooks to its 500 handler).
            return store_unavailable(exc)

    def _after_request(self, response: Response, fault: Fault | None) -> Response:
        endpoint = _fault_endpoint()
        if endpoint is None:
            return response
        if fault is None and endpoint != "jwks":
            return response  # the usual request: the endpoint itself sent its record
        kind = fault.kind if fault is not None else None
        if kind == "no_expires_in":
            strip_expires_in(response)
        now = self.controls.clock.now()
        if endpoint == "jwks":
            requestlog.append(self.store, requestlog.JwksRequest(now, response.status_code,
                                                                 kind))
        elif kind in ANSWERING_KINDS and endpoint == "token":
            # The token endpoint never ran: the lab writes its record and log line.
            record = describe(request, response, None, now,
                              outcome=None if kind == "error" else kind)
            log_token_request(record)
            requestlog.append(self.store, requestlog.logged(record, kind))
        elif kind in ANSWERING_KINDS:
            # Nor did the introspection or revocation endpoint.
            endpoint_record = describe_endpoint_request(
                endpoint, request, response, None, now,
                outcome=None if kind == "error" else kind)
            log_endpoint_request(endpoint_record)
            requestlog.append(self.store, requestlog.logged(endpoint_record, kind))
        if kind == "drop":  # after the record: a client that sees the drop sees the entry
            drop_connection(request)
        return response

    def on_token_request(self, app: Flask, record: TokenRequest) -> None:
        fault: Fault | None = g.get(_FAULT)
        requestlog.append_logged(self.store, record, fault.kind if fault else None)

    def on_endpoint_request(self, app: Flask, record: EndpointRequest) -> None:
        fault: Fault | None = g.get(_FAULT)
        requestlog.append_logged(self.store, record, fault.kind if fault else None)
