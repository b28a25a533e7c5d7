"""What the steps and lessons share: the issuer's URLs (discovered from its metadata), the
printing session, the client the steps use, the token they got, and the few exchanges every
lesson makes (a token request, a call to the demo API, the admin API)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus

import requests

from ...settings import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET
from ..admin import ADMIN_PREFIX
from ..lessons import DEMO_RESOURCE, DEMO_SCOPE
from .checks import Misbehaved, json_object, oauth_error
from .output import Output
from .wire import Wire

__all__ = ["METADATA_PATH", "Walk", "token_answer"]

METADATA_PATH = "/.well-known/oauth-authorization-server"


@dataclass
class Walk:
    """One run of the walkthrough against one issuer."""

    out: Output
    wire: Wire
    issuer: str
    #: The RFC 8414 metadata: where the token endpoint and the JWKS are.
    metadata: dict[str, Any] = field(default_factory=dict)
    #: The client the steps and lessons use: demo-client unless --client-id, or the one the
    #: client step registered; its secret (None: none was given, the client step fails).
    client_id: str = DEMO_CLIENT_ID
    client_secret: str | None = DEMO_CLIENT_SECRET
    #: Register a client through the admin API in the client step, instead of the demo one.
    register: bool = False
    #: The client step has settled on the client (``--only`` a later one settles it first).
    client_settled: bool = False
    #: The token the token step got, for the inspect and call steps.
    token: str | None = None
    #: How the rate-limit lesson waits out Retry-After (injectable, like every clock here).
    sleep: Callable[[float], None] = time.sleep
    #: Undo what the run added (a registered client), whatever happened.
    cleanups: list[Callable[[], object]] = field(default_factory=list)

    @property
    def token_endpoint(self) -> str:
        return str(self.metadata["token_endpoint"])

    @property
    def jwks_uri(self) -> str:
        return str(self.metadata["jwks_uri"])

    @property
    def admin_url(self) -> str:
        return self.issuer + ADMIN_PREFIX

    @property
    def demo_url(self) -> str:
        return self.issuer + DEMO_RESOURCE

    # -- the exchanges every lesson makes ------------------------------------------------

    def request_token(self, *, client_id: str | None = None, secret: str | None = None,
                      scope: str | None = DEMO_SCOPE, **form: str) -> requests.Response:
        """POST grant_type=client_credentials to the token endpoint, client_secret_basic."""
        data = {"grant_type": "client_credentials"}
        if scope is not None:
            data["scope"] = scope
        data.update(form)
        # RFC 6749 section 2.3.1: id and secret are form-encoded before they are joined.
        auth = (quote_plus(client_id or self.client_id),
                quote_plus((self.client_secret or "") if secret is None else secret))
        return self.wire.post(self.token_endpoint, data=data, auth=auth)

    def get_token(self, scope: str = DEMO_SCOPE, **form: str) -> str:
        """A token from the token endpoint, or the lesson fails."""
        return str(self.token_response(scope, **form)["access_token"])

    def token_response(self, scope: str = DEMO_SCOPE, **form: str) -> dict[str, Any]:
        """The token endpoint's answer (with a string access_token), or the lesson fails."""
        return token_answer(self.request_token(scope=scope, **form), scope)

    def call_api(self, token: str | None) -> requests.Response:
        """GET the demo resource, with ``Authorization: Bearer <token>`` unless None."""
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return self.wire.get(self.demo_url, headers=headers)

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None,
              expected: int = 200) -> dict[str, Any]:
        """One admin API call (``path`` below /admin), answered ``expected``, or the lesson
        fails: the issuer does not offer the test control the lesson needs."""
        response = self.wire.request(method, self.admin_url + path, json=body)
        if response.status_code != expected:
            raise Misbehaved(f"the admin API answered {method} {ADMIN_PREFIX}{path} with HTTP "
                             f"{response.status_code}, expected {expected}")
        return json_object(response)

    def server_now(self) -> float:
        """The issuer's time (the lab's clock), which the demo API reads too."""
        now = self.admin("GET", "/clock").get("now")
        if isinstance(now, bool) or not isinstance(now, (int, float)):
            raise Misbehaved("GET /admin/clock did not answer a time")
        return float(now)

    @contextlib.contextmanager
    def clock_kept(self) -> Iterator[None]:
        """Put the issuer's clock back as it was (offset, freeze) after the block."""
        with self.wire.printing("quiet"):
            before = self.admin("GET", "/clock")
        try:
            yield
        finally:
            restore: dict[str, Any] = {"reset": True, "offset": before.get("offset", 0)}
            if before.get("frozen"):
                restore["at"] = before.get("now")
            with self.wire.printing("brief"):
                self.admin("POST", "/clock", restore)


def token_answer(response: requests.Response, scope: str | None = DEMO_SCOPE) -> dict[str, Any]:
    """A token response's JSON, checked: HTTP 200 and an access_token, or the step or lesson
    fails saying what came instead (never a KeyError)."""
    if response.status_code != 200:
        error = oauth_error(response)
        raise Misbehaved(f"expected a token (200) for scope {scope!r}, got HTTP "
                         f"{response.status_code}" + (f" {error}" if error else ""))
    body = json_object(response)
    if not isinstance(body.get("access_token"), str):
        raise Misbehaved("the token response has no access_token")
    return body
