"""Reading a response body over ``requests`` within a size cap and one total deadline.

``requests``' ``timeout`` bounds each socket read, not the whole response: a peer that sends
one byte just inside it keeps a reader busy for as long as it likes, and ``.content`` reads
whatever size it is sent. :func:`read_body` reads in pieces, stops at ``max_bytes`` and gives
each read only the time left before ``deadline``. Callers turn its two exceptions into their
own error class (``TransportError``, ``DiscoveryError``, ``JWKSError``).
"""

from __future__ import annotations

import time
from typing import Any

import requests
import urllib3.exceptions

__all__ = ["DEFAULT_MAX_BYTES", "BodyTooLarge", "DeadlinePassed", "close", "read_body",
           "remaining"]

#: What metadata, token and JWKS responses may weigh: far more than any real one needs.
DEFAULT_MAX_BYTES = 256 * 1024
_PIECE = 16384


class BodyTooLarge(Exception):
    """The body is larger than the cap (reading stopped there)."""


class DeadlinePassed(Exception):
    """The deadline passed before the whole body arrived."""


def remaining(deadline: float) -> float:
    """Seconds left before ``deadline`` (on ``time.monotonic``); ``DeadlinePassed`` when none."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlinePassed
    return left


def _read_timeout(raw: Any, seconds: float) -> None:
    # The socket of the connection the body comes over: setting its timeout per read is what
    # makes the deadline total. urllib3 sets it again before the connection's next request.
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    if sock is not None:
        sock.settimeout(seconds)


def read_body(response: requests.Response, *, max_bytes: int, deadline: float) -> bytes:
    """The body of a ``stream=True`` response, decoded (gzip …), at most ``max_bytes`` long,
    complete before ``deadline`` (``time.monotonic``); else :class:`BodyTooLarge` or
    :class:`DeadlinePassed`. Other failures are ``requests.RequestException``."""
    raw = response.raw
    body = bytearray()
    if not hasattr(raw, "read1"):  # a stand-in response (tests, adapters): already in memory
        content = response.content or b""
        if len(content) > max_bytes:
            raise BodyTooLarge
        return content
    try:
        while True:
            _read_timeout(raw, remaining(deadline))
            piece = raw.read1(_PIECE, decode_content=True)
            if not piece:
                return bytes(body)
            body += piece
            if len(body) > max_bytes:
                raise BodyTooLarge
    except (urllib3.exceptions.ReadTimeoutError, TimeoutError):
        raise DeadlinePassed from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise requests.ConnectionError(exc) from exc
    finally:
        if len(body) > max_bytes or time.monotonic() >= deadline:
            close(response)  # never give a half-read connection back to the pool


def close(response: requests.Response) -> None:
    """Close ``response``, also a stand-in one without a connection (``raw`` None)."""
    if response.raw is not None:
        response.close()
