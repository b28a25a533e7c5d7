"""What the token endpoint received, in order: for logs, and for tests to assert on."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TokenRequest:
    """One token request and its outcome. ``client_id`` is what the caller claimed, verified
    only when ``outcome`` is ``"issued"``; secrets and assertions are never recorded."""

    time: float
    client_id: str | None
    auth_method: str | None
    grant_type: str | None
    scope: str | None
    resource: tuple[str, ...]
    status: int
    outcome: str  # "issued" or the RFC 6749 error code
    jti: str | None = None
    granted_scope: tuple[str, ...] = field(default=())
    audience: tuple[str, ...] = field(default=())


class RequestLog:
    """A bounded, thread-safe list of :class:`TokenRequest`."""

    def __init__(self, maxlen: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._entries: deque[TokenRequest] = deque(maxlen=maxlen)

    def append(self, entry: TokenRequest) -> None:
        with self._lock:
            self._entries.append(entry)

    def snapshot(self) -> list[TokenRequest]:
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
