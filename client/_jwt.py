"""Reading a JWT without verifying it: to show what a token says (``m2mauth decode``) or to
time a refresh from its ``exp``. Nothing read here may be trusted – a resource server checks
tokens with :class:`~m2mauth.client.TokenValidator`, which decodes strictly, for itself."""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

__all__ = ["unverified_jwt"]

# By hand, not PyJWT's decode_complete(verify_signature=False): that one says neither which
# part is broken nor survives header JSON nested past the recursion limit, and nothing here
# needs a signature check; it is base64url and json.loads.

#: base64url without padding (RFC 7515 §2); trailing "=" is tolerated before the check.
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


def unverified_jwt(token: str, max_chars: int = 64 * 1024) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of a compact JWS, read WITHOUT checking its signature or any claim.

    ``ValueError`` with a short reason when ``token`` is not one: "longer than N characters"
    (checked before anything is decoded), "not a compact JWS (expected three dot-separated
    parts)", "the header is not base64url", "the payload is not JSON", "the payload is not a
    JSON object", ... JSON nested too deeply counts as not JSON.
    """
    if not isinstance(token, str):
        raise ValueError("not a string")
    if len(token) > max_chars:
        raise ValueError(f"longer than {max_chars} characters")
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWS (expected three dot-separated parts)")
    header = _json_object(_decoded(parts[0], "header"), "header")
    claims = _json_object(_decoded(parts[1], "payload"), "payload")
    _decoded(parts[2], "signature")
    return header, claims


def _decoded(segment: str, name: str) -> bytes:
    segment = segment.rstrip("=")
    if _BASE64URL.fullmatch(segment) is None:
        raise ValueError(f"the {name} is not base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except binascii.Error:
        raise ValueError(f"the {name} is not base64url") from None


def _json_object(data: bytes, name: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise ValueError(f"the {name} is not JSON") from None
    if not isinstance(value, dict):
        raise ValueError(f"the {name} is not a JSON object")
    return value
