"""A tiny "orders service": the code under test. It gets an access token with the OAuth 2.0
client-credentials grant, keeps it until shortly before it expires, and calls the orders API
with ``Authorization: Bearer <token>``.

Time and sleeping are injected (``clock``, ``sleep``) so that tests can share the
authorization server's clock and never really wait.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import requests

from m2mauth.client import (
    InvalidClientError,
    OAuthError,
    ServerError,
    TemporarilyUnavailableError,
    Token,
    TransportError,
    fetch_token,
)


class TokenConfigurationError(RuntimeError):
    """The authorization server refused our credentials: a configuration problem that
    retrying cannot fix. The message names the client and the server's reason, never the
    secret."""


class TokenUnavailableError(RuntimeError):
    """No token after every retry: the authorization server is down or overloaded."""


class TokenSource:
    """Client-credentials tokens for one client, cached until ``refresh_margin`` seconds
    before expiry, with retries on temporary failures that honour ``Retry-After``."""

    RETRYABLE = (TemporarilyUnavailableError, ServerError, TransportError)

    def __init__(
        self, token_url: str, client_id: str, client_secret: str, *, scope: str,
        audience: str | None = None, refresh_margin: float = 30, max_attempts: int = 4,
        clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
        session: requests.Session | None = None,
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self._client_secret = client_secret
        self.scope = scope
        self.audience = audience
        self.refresh_margin = refresh_margin
        self.max_attempts = max_attempts
        self.clock = clock
        self.sleep = sleep
        self.session = session or requests.Session()
        self._token: Token | None = None
        self._lock = threading.Lock()

    def get(self) -> str:
        """A valid access token: the cached one, or a new one when it is about to expire."""
        with self._lock:
            token = self._token
            if token is None or token.expires_at is None or token.expires_within(
                    self.refresh_margin, self.clock()):
                token = self._token = self._fetch()
            return token.access_token

    def invalidate(self) -> None:
        """Forget the cached token (e.g. after the API answered 401)."""
        with self._lock:
            self._token = None

    def _fetch(self) -> Token:
        for attempt in range(1, self.max_attempts + 1):
            try:
                return fetch_token(
                    self.token_url, client_id=self.client_id, client_secret=self._client_secret,
                    scope=self.scope, resource=self.audience, session=self.session,
                    clock=self.clock,
                )
            except InvalidClientError as exc:
                raise TokenConfigurationError(
                    f"the authorization server rejected client {self.client_id!r} "
                    f"({exc.error}: {exc.error_description or 'no description'}); "
                    "check the client id and secret"
                ) from None
            except self.RETRYABLE as exc:
                if attempt == self.max_attempts:
                    raise TokenUnavailableError(
                        f"no token for {self.client_id!r} after {attempt} attempts: {exc}"
                    ) from exc
                # Retry-After when the server sent one, else exponential backoff.
                self.sleep(exc.retry_after if exc.retry_after is not None else 2 ** attempt)
            except OAuthError:
                raise  # invalid_scope, invalid_target...: a bug in our request, not transient
        raise AssertionError("unreachable")


class OrdersService:
    """Calls the orders API on behalf of this service."""

    def __init__(self, api_url: str, tokens: TokenSource,
                 session: requests.Session | None = None) -> None:
        self.api_url = api_url.rstrip("/")
        self.tokens = tokens
        self.session = session or requests.Session()

    def list_orders(self) -> list[dict[str, Any]]:
        response = self._get("/orders")
        if response.status_code == 401:  # e.g. the API restarted with new keys: retry once
            self.tokens.invalidate()
            response = self._get("/orders")
        response.raise_for_status()
        return response.json()

    def _get(self, path: str) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.tokens.get()}"}
        return self.session.get(self.api_url + path, headers=headers, timeout=10)
