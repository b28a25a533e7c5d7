"""Injected failures for negative tests: the next N responses of an endpoint are an error,
a delay, a dropped connection, a malformed body, or (token endpoint) a token response without
``expires_in``."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["ENDPOINTS", "KINDS", "Fault", "FaultQueue"]

#: Endpoints that take faults.
ENDPOINTS = ("token", "jwks")
#: What a fault does to one response.
KINDS = ("error", "delay", "drop", "malformed", "no_expires_in")


@dataclass(frozen=True)
class Fault:
    """One queued failure; ``remaining`` responses still to spoil."""

    endpoint: str = "token"
    kind: str = "error"
    status: int = 503
    error: str | None = "temporarily_unavailable"
    error_description: str | None = None
    #: ``Retry-After`` header value in seconds (error kind only).
    retry_after: int | None = None
    #: Seconds to wait before answering (delay kind: then the normal response).
    delay: float = 0.0
    remaining: int = 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class FaultQueue:
    """Faults in the order they were queued, per endpoint; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, deque[Fault]] = {e: deque() for e in ENDPOINTS}

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._queues[fault.endpoint].append(fault)

    def take(self, endpoint: str) -> Fault | None:
        """The fault for the response being made now, if any (consumes one use)."""
        with self._lock:
            queue = self._queues[endpoint]
            if not queue:
                return None
            fault = queue[0]
            if fault.remaining <= 1:
                queue.popleft()
            else:
                queue[0] = replace(fault, remaining=fault.remaining - 1)
            return fault

    def pending(self) -> list[Fault]:
        with self._lock:
            return [f for e in ENDPOINTS for f in self._queues[e]]

    def clear(self) -> None:
        with self._lock:
            for queue in self._queues.values():
                queue.clear()
