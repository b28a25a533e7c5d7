"""Signals the core sends, for extensions such as the lab to listen to (blinker, as Flask and
Authlib's Flask integration do). Signals notify; they never change a response – an extension
that must (a fault) uses Flask's request hooks instead."""

from __future__ import annotations

from blinker import Namespace

__all__ = ["endpoint_request_handled", "token_request_handled"]

_signals = Namespace()

#: Sent by the token endpoint after every request it answered, with ``record``: the
#: :class:`~m2mauth.server.token_request.TokenRequest` (client, auth method, scope, outcome,
#: jti ...). Sender: the Flask app.
token_request_handled = _signals.signal("m2mauth-token-request-handled")

#: Sent by the introspection and revocation endpoints after every request they answered,
#: with ``record``: the :class:`~m2mauth.server.token_request.EndpointRequest`. Sender: the
#: Flask app.
endpoint_request_handled = _signals.signal("m2mauth-endpoint-request-handled")
