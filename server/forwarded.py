"""The origin a client used, as a reverse proxy reports it: RFC 7239 ``Forwarded``, else
``X-Forwarded-Proto``, ``-Host``, ``-Port`` and ``-Prefix``, else the request's own scheme
and ``Host``. Only read with ``trust_proxy`` on: otherwise the issuer never comes from the
request.

By hand: werkzeug's ``ProxyFix`` rewrites the WSGI environ for ``X-Forwarded-*`` but knows
no ``Forwarded``, and checks no value; here every value is checked before it can become part
of an issuer URL that tokens carry.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

__all__ = ["ForwardedError", "external_origin"]

_HOST = re.compile(r"(?P<name>[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
                   r"|\[(?P<ipv6>[0-9A-Fa-f:.]{2,45})\])(?::(?P<port>[0-9]{1,5}))?")
#: ASCII digits only: str.isdigit() also takes "²" (a Latin-1 header byte), which int() refuses.
_PORT = re.compile(r"[0-9]{1,5}")
#: Segments of RFC 3986 pchars, but "." and "..": clients remove dot segments before they
#: send (urllib3 does), so "/../idp" would name a token endpoint they never reach.
_PREFIX = re.compile(r"(?:/(?!\.\.?(?:/|$))[A-Za-z0-9._~!$&'()*+,;=:@-]+)*")
#: RFC 7239 section 4: a forwarded-pair is token "=" ( token / quoted-string ).
_PAIR = re.compile(r'\s*([A-Za-z0-9!#$%&\'*+.^_`|~-]+)=("(?:[^"\\]|\\.)*"|[^;,\s"]*)\s*')
_MAX_HEADER = 1024


class ForwardedError(ValueError):
    """A forwarding header that cannot name an origin; names the header."""


def external_origin(environ: dict[str, Any]) -> tuple[str, str]:
    """``(origin, prefix)``: ``https://host[:port]`` as the client used it, and the path the
    proxy strips before forwarding ("" when none)."""
    forwarded = _first_forwarded(environ.get("HTTP_FORWARDED"))
    scheme = forwarded.get("proto") or _first(environ, "HTTP_X_FORWARDED_PROTO") \
        or environ.get("wsgi.url_scheme", "http")
    host = forwarded.get("host") or _first(environ, "HTTP_X_FORWARDED_HOST") \
        or environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "")
    port = None if "host" in forwarded else _first(environ, "HTTP_X_FORWARDED_PORT")
    prefix = _first(environ, "HTTP_X_FORWARDED_PREFIX") or ""
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        raise ForwardedError(f"the forwarded protocol is {scheme[:16]!r}, not http or https")
    # A DNS name is at most 253 characters; the request's own Host has no other bound here.
    found = _HOST.fullmatch(host) if len(host) <= 253 + len(":65535") else None
    if found is None or not _is_address(found.group("ipv6")):
        raise ForwardedError("the forwarded host is not a host name or address (with a port)")
    if port is not None:
        if not _PORT.fullmatch(port) or not 0 < int(port) < 65536:
            raise ForwardedError("X-Forwarded-Port is not a port number")
    else:
        port = found.group("port")
        # The same check as X-Forwarded-Port's: "h:0" or "h:99999" would be an issuer URL
        # no client can use ("h:0443" becomes "h:443", then the default port is dropped).
        if port is not None and not 0 < int(port) < 65536:
            raise ForwardedError("the forwarded host's port is not a port number")
    host = found.group("name") or f"[{found.group('ipv6')}]"
    if port is not None and int(port) != (443 if scheme == "https" else 80):
        host = f"{host}:{int(port)}"
    host = host.lower()
    prefix = prefix.rstrip("/")
    if not _PREFIX.fullmatch(prefix):
        raise ForwardedError("X-Forwarded-Prefix is not a path")
    return f"{scheme}://{host}", prefix


def _first(environ: dict[str, Any], key: str) -> str | None:
    """The first (client-side) value of a comma-separated X-Forwarded-* header."""
    value = environ.get(key)
    if value is None:
        return None
    if len(value) > _MAX_HEADER:
        raise ForwardedError(f"{_header_name(key)} is longer than {_MAX_HEADER} bytes")
    return value.split(",", 1)[0].strip() or None


def _first_forwarded(value: str | None) -> dict[str, str]:
    """The parameters of the first element of a ``Forwarded`` header (the proxy nearest the
    client wrote it), lower-cased names, unquoted values."""
    if not value:
        return {}
    if len(value) > _MAX_HEADER:
        raise ForwardedError(f"Forwarded is longer than {_MAX_HEADER} bytes")
    found: dict[str, str] = {}
    position = 0
    while position < len(value) and value[position] != ",":
        match = _PAIR.match(value, position)
        if match is None:
            raise ForwardedError("Forwarded is not a list of name=value pairs (RFC 7239)")
        name, raw = match.group(1).lower(), match.group(2)
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        found.setdefault(name, raw)
        position = match.end()
        if position < len(value) and value[position] == ";":
            position += 1
    return found


def _is_address(ipv6: str | None) -> bool:
    """Whether a bracketed host is an IPv6 address (None: not bracketed): "[:::::]" passes
    the pattern, and would make an issuer URL that urlsplit() refuses."""
    if ipv6 is None:
        return True
    try:
        ipaddress.IPv6Address(ipv6)
    except ValueError:
        return False
    return True


def _header_name(key: str) -> str:
    return "-".join(part.capitalize() for part in key.removeprefix("HTTP_").split("_"))
