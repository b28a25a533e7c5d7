"""The warning `m2mauth serve` gives when a configured issuer would send clients elsewhere than
the server it starts (server/bind_check.py): warned only when it looks like a mistake, never
for what proxies, TLS terminators and port mappings make legitimately different."""

import pytest

from m2mauth.server.bind_check import issuer_bind_mismatch


@pytest.mark.parametrize(("issuer", "host", "port", "bound", "warning"), [
    # the README's file (issuer on port 8000) served with --port 8010
    ("http://127.0.0.1:8000", "127.0.0.1", 8010, 8010,
     "issuer http://127.0.0.1:8000 names port 8000, but the server listens on 8010; clients "
     "will be sent to another server (set issuer to match, or leave it unset to follow the "
     "port)"),
    # loopback names are one address: localhost, 127.0.0.1 and ::1
    ("http://localhost:8000", "127.0.0.1", 8010, 8010, "names port 8000, but the server "
     "listens on 8010; clients will be sent"),
    ("http://[::1]:8000", "::1", 8001, 8001, "names port 8000, but the server listens on 8001"),
    ("http://127.0.0.1", "localhost", 8000, 8000,
     "issuer http://127.0.0.1 names port 80 (the http default), but the server listens on 8000"),
    # the same address, not loopback
    ("http://192.0.2.10:8000", "192.0.2.10", 8010, 8010, "names port 8000, but the server "
     "listens on 8010"),
    ("http://IDP.test:8000", "idp.test", 9000, 9000, "names port 8000, but the server listens "
     "on 9000"),
    # all interfaces include loopback: maybe a port mapping, but more likely a mistake
    ("http://127.0.0.1:9000", "0.0.0.0", 8000, 8000, "names port 9000, but the server listens "
     "on 8000; unless a port mapping forwards 9000 to 8000, clients will be sent to another "
     "server"),
    # a free port: the issuer's port matches by chance only
    ("http://127.0.0.1:8000", "127.0.0.1", 0, 41234, "issuer http://127.0.0.1:8000 names port "
     "8000, but the server listens on 41234 (a free port, as port is 0); clients will be sent"),
    ("https://idp.example.test", "127.0.0.1", 0, 41234, "issuer https://idp.example.test is "
     "fixed, but port 0 picks a free port (41234) at every start, which nothing in front of "
     "this server can know (set a port, or leave issuer unset to follow it)"),
    ("http://idp:8000", "0.0.0.0", 0, 8000, "issuer http://idp:8000 is fixed, but port 0"),
    # a loopback issuer, but the server is not on loopback
    ("http://127.0.0.1:8000", "192.0.2.10", 8000, 8000, "issuer http://127.0.0.1:8000 names a "
     "loopback address, but the server listens on 192.0.2.10 only; clients will reach another "
     "server or none"),
    # https on the very port this plain-HTTP server answers
    ("https://127.0.0.1:8000", "127.0.0.1", 8000, 8000, "issuer https://127.0.0.1:8000 names "
     "https on the port the server listens on, but the server speaks plain HTTP"),
])
def test_a_mistake_is_warned_in_one_sentence(issuer, host, port, bound, warning):
    found = issuer_bind_mismatch(issuer, host, port, bound)
    assert found is not None and warning in found
    assert "\n" not in found


@pytest.mark.parametrize(("issuer", "host", "port"), [
    ("http://127.0.0.1:8000", "127.0.0.1", 8000),           # exactly what is bound
    ("http://localhost:8000", "::1", 8000),                  # another loopback name
    ("http://127.0.0.1:8000", "0.0.0.0", 8000),              # all interfaces include loopback
    ("http://127.0.0.1:8000/tenant", "127.0.0.1", 8000),     # a path changes nothing here
    ("https://idp.example.test", "127.0.0.1", 8000),         # a reverse proxy with TLS
    ("https://127.0.0.1:8443", "127.0.0.1", 8000),           # a local TLS terminator
    ("http://idp.example.test", "127.0.0.1", 8000),          # a plain proxy on this machine
    ("http://idp:8000", "0.0.0.0", 8000),                    # a compose service name
    ("http://idp", "0.0.0.0", 8000),                         # a Kubernetes Service on port 80
    ("http://192.0.2.20:8000", "192.0.2.10", 8010),          # NAT, port forwarding
    ("http://192.0.2.10:9000", "0.0.0.0", 8000),             # maybe this host, maybe not
])
def test_what_proxies_and_mappings_make_different_is_not_warned(issuer, host, port):
    assert issuer_bind_mismatch(issuer, host, port, port) is None
