"""Whether a configured issuer sends clients to the server that binds ``host:port``.

The issuer is the URL clients are told to use (tokens' ``iss``, every metadata URL). Set
explicitly, it may legitimately differ from the address the server binds: behind a reverse
proxy or TLS terminator (without ``--tls`` m2mauth speaks plain HTTP, so an ``https``
issuer then has one in front), through a Docker or Kubernetes port mapping, under a service
name. It is a mistake
when it names the very address the server binds with another port, names a loopback address
that the server does not listen on, or is fixed while the port is picked at random.
:func:`issuer_bind_mismatch` says which, as one sentence; it looks at the strings only (no
name resolution, no interfaces), so it is a pure function of its arguments.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from .settings import is_loopback

__all__ = ["issuer_bind_mismatch"]

_ALL_INTERFACES = ("0.0.0.0", "::", "")  # noqa: S104 - names compared, nothing bound
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _local(host: str) -> bool:
    """Loopback by its name or address ("localhost" counts as written; not resolved)."""
    return host == "localhost" or is_loopback(host)


def issuer_bind_mismatch(issuer: str, host: str, port: int, bound_port: int, *,
                         tls: bool = False) -> str | None:
    """Why the configured ``issuer`` probably points clients at another server than the one
    bound to ``host`` on ``bound_port`` (``port`` as configured: 0 asks for a free one), or
    None when it does not look like a mistake. ``tls``: the server speaks HTTPS itself (an
    http issuer is then refused by the settings).

    The rules, in order (on a plain-HTTP server an ``https`` issuer is exempt from the first
    two: a TLS terminator in front may listen anywhere, but not on the port this server
    binds; on a TLS server they apply to the ``https`` issuer, as they do to http ones on a
    plain server):

    0. a plain server's ``https`` issuer names the bound address and port;
    1. the issuer names the bound address – the same host, or a loopback host while the
       server binds loopback or all interfaces – with another port;
    2. the issuer names a loopback host, but the server binds one other address only (so
       clients on this machine reach another server, or none);
    3. ``port`` is 0 while the issuer is fixed: whatever forwards to this server cannot know
       a port picked at random at every start.

    Anything else – another host name or address, a different port under a host name – is
    taken for a proxy or a port mapping and not warned about.
    """
    parts = urlsplit(issuer)
    issuer_host = (parts.hostname or "").lower()
    try:
        issuer_port = parts.port
    except ValueError:  # the settings refuse such an issuer; nothing to compare here
        return None
    implicit = issuer_port is None
    if implicit:
        issuer_port = _DEFAULT_PORTS.get(parts.scheme, 80)
    bind = host.strip("[]").lower()
    all_interfaces = bind in _ALL_INTERFACES
    free = " (a free port, as port is 0)" if port == 0 else ""
    same_address = issuer_host == bind or (
        _local(issuer_host) and (all_interfaces or _local(bind)))
    served = "https" if tls else "http"
    if parts.scheme == "https" and not tls and same_address and issuer_port == bound_port:
        return (f"issuer {issuer} names https on the port the server listens on, but the "
                "server speaks plain HTTP; clients will fail their TLS handshake (serve with "
                "--tls, put a TLS terminator in front on another port, or use http)")
    if parts.scheme == served:
        if same_address and issuer_port != bound_port:
            named = f"port {issuer_port}" + (f" (the {served} default)" if implicit else "")
            mapping = (f"unless a port mapping forwards {issuer_port} to {bound_port}, "
                       if all_interfaces else "")
            return (f"issuer {issuer} names {named}, but the server listens on "
                    f"{bound_port}{free}; {mapping}clients will be sent to another server "
                    "(set issuer to match, or leave it unset to follow the port)")
        if _local(issuer_host) and not all_interfaces and not _local(bind):
            return (f"issuer {issuer} names a loopback address, but the server listens on "
                    f"{host} only; clients will reach another server or none (set issuer to "
                    f"the URL clients use, or leave it unset to follow the host)")
    if port == 0:
        return (f"issuer {issuer} is fixed, but port 0 picks a free port ({bound_port}) at "
                "every start, which nothing in front of this server can know (set a port, "
                "or leave issuer unset to follow it)")
    return None
