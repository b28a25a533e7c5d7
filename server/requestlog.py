"""What the token and JWKS endpoints received, in order: for logs, and for tests to assert on."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar


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
    #: The injected fault that answered this request, if any (see faults.KINDS).
    fault: str | None = None


@dataclass(frozen=True)
class JwksRequest:
    """One JWKS fetch: when, the answer's status, and the injected fault if any."""

    time: float
    status: int
    fault: str | None = None


_Entry = TypeVar("_Entry")


class RequestLog(Generic[_Entry]):
    """A bounded, thread-safe list of request records."""

    def __init__(self, maxlen: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._entries: deque[_Entry] = deque(maxlen=maxlen)

    def append(self, entry: _Entry) -> None:
        with self._lock:
            self._entries.append(entry)

    def snapshot(self) -> list[_Entry]:
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
