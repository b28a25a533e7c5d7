"""The HTTP server under the apps against slow and idle clients: keep-alive for the
well-behaved, deadlines for a request to arrive and for an idle connection, a connection limit
below the open-file limit, and no spinning at that limit. Real servers on loopback ports; every
wait is bounded and ends on an event (an answer, a close), never a sleep."""

from __future__ import annotations

import contextlib
import http.client
import os
import resource
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import requests

from m2mauth.server.lab import IdentityProvider
from m2mauth.server.settings import ServerSettings

DEMO = ("demo-client", "demo-secret")
GRANT = {"grant_type": "client_credentials"}
PARTIAL = b"POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # headers never finished


@pytest.fixture
def quick_deadlines() -> Iterator[IdentityProvider]:
    with IdentityProvider.start(ServerSettings(request_timeout=1, idle_timeout=1)) as idp:
        yield idp


@contextlib.contextmanager
def slow_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections that sent the start of a request and nothing more."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            socks.append(sock)
        for sock in socks:
            _, writable, _ = select.select([], [sock], [], 5)
            if writable:
                with contextlib.suppress(OSError):
                    sock.send(PARTIAL)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def _closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """Whether the peer closes ``sock`` (EOF or reset) within ``timeout`` seconds."""
    readable, _, _ = select.select([sock], [], [], timeout)
    if not readable:
        return False
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True


def test_responses_keep_the_connection_open():
    # werkzeug's development server sent Connection: close on every response.
    with IdentityProvider.start() as idp:
        conn = http.client.HTTPConnection("127.0.0.1", idp.server.port, timeout=5)
        try:
            conn.request("GET", "/jwks.json")
            first = conn.getresponse()
            first.read()
            sock = conn.sock
            conn.request("GET", "/.well-known/oauth-authorization-server")
            second = conn.getresponse()
            second.read()
            assert (first.status, second.status) == (200, 200)
            assert first.getheader("Connection", "").lower() != "close"
            assert conn.sock is sock and sock is not None  # the same connection, not a new one
        finally:
            conn.close()


def test_a_request_trickled_in_is_closed_at_the_request_deadline(quick_deadlines):
    # One byte at a time, never finishing the headers: each byte is activity, so an idle
    # timeout alone would keep the connection (and, on werkzeug, a thread) forever.
    with socket.create_connection(("127.0.0.1", quick_deadlines.server.port), timeout=5) as sock:
        sock.sendall(PARTIAL)
        closed = False
        for _ in range(60):  # bounded: 60 bytes, one each time the server has not closed
            if _closed_by_peer(sock, 0.2):
                closed = True
                break
            try:
                sock.sendall(b"X")
            except OSError:
                closed = True
                break
    assert closed, "the server kept a request that never finished arriving"
    assert requests.get(quick_deadlines.jwks_uri, timeout=5).status_code == 200


def test_an_idle_connection_is_closed(quick_deadlines):
    with socket.create_connection(("127.0.0.1", quick_deadlines.server.port), timeout=5) as sock:
        assert _closed_by_peer(sock, 15)


def test_a_kept_alive_connection_is_closed_when_idle(quick_deadlines):
    conn = http.client.HTTPConnection("127.0.0.1", quick_deadlines.server.port, timeout=5)
    try:
        conn.request("GET", "/jwks.json")
        conn.getresponse().read()
        assert _closed_by_peer(conn.sock, 15)
    finally:
        conn.close()


def test_slow_connections_do_not_starve_well_behaved_clients():
    # Requests are read on the event loop, not in a thread: gunicorn's gthread worker and
    # cheroot, which read in their threads, answered nothing with 500 such connections held.
    with IdentityProvider.start() as idp, slow_connections(idp.server.port, 300):
        for _ in range(10):
            response = requests.post(idp.token_endpoint, data=GRANT, auth=DEMO, timeout=5)
            assert response.status_code == 200, response.text


def test_a_header_block_over_the_limit_is_431_json():
    with IdentityProvider.start() as idp:
        response = requests.get(idp.jwks_uri, headers={"X-Big": "a" * 40_000}, timeout=5)
        assert response.status_code == 431
        assert response.json()["error"] == "invalid_request"
        assert requests.get(idp.jwks_uri, timeout=5).status_code == 200


def test_a_body_of_exactly_max_body_bytes_is_read():
    # waitress refuses a body of exactly its own limit; the app's limit is inclusive.
    with IdentityProvider.start(ServerSettings(max_body_bytes=1024)) as idp:
        body = "grant_type=client_credentials&pad="
        exact = body + "x" * (1024 - len(body))
        response = requests.post(idp.token_endpoint, data=exact, auth=DEMO, timeout=5, headers={
            "Content-Type": "application/x-www-form-urlencoded"})
        assert response.status_code == 200, response.text
        over = requests.post(idp.token_endpoint, data=exact + "x", auth=DEMO, timeout=5,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert over.status_code == 413 and over.json()["error"] == "invalid_request"


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads /proc")
def test_at_the_file_limit_the_server_does_not_spin_and_answers_once_they_go(tmp_path):
    # werkzeug accepted until accept() failed with EMFILE, then spun at 93% CPU on a listening
    # socket it could not drain. The connection limit stays below the file limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 800:
        pytest.skip("needs 800 open files for the test's own connections")
    if soft < 800:
        resource.setrlimit(resource.RLIMIT_NOFILE, (800, hard))
    limit = 256

    def lower_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    env = {k: v for k, v in os.environ.items() if not k.startswith("M2MAUTH_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "m2mauth.server.cli", "serve", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
        preexec_fn=lower_limit)
    try:
        issuer = next(line.split()[-1] for line in (proc.stdout.readline() for _ in range(30))
                      if line.strip().startswith("issuer"))
        port = int(issuer.rsplit(":", 1)[1])
        assert requests.get(issuer + "/jwks.json", timeout=5).status_code == 200
        with slow_connections(port, 2 * limit):
            start_cpu, start = _cpu_seconds(proc.pid), time.monotonic()
            for _ in range(4):  # a well-behaved client waiting in the listen queue meanwhile
                with contextlib.suppress(requests.RequestException):
                    requests.get(issuer + "/jwks.json", timeout=0.5)
            used = (_cpu_seconds(proc.pid) - start_cpu) / (time.monotonic() - start)
            assert proc.poll() is None
        assert used < 0.5, f"the server used {used:.0%} of a core while saturated"
        assert requests.get(issuer + "/jwks.json", timeout=10).status_code == 200
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_blank_lines_do_not_hold_a_connection_past_the_request_deadline(quick_deadlines):
    # waitress reads CRLF CRLF as an empty request and drops it; each was fresh activity.
    with socket.create_connection(("127.0.0.1", quick_deadlines.server.port), timeout=5) as sock:
        closed = False
        for _ in range(60):  # bounded: at most 60 pairs of blank lines
            try:
                sock.sendall(b"\r\n\r\n")
            except OSError:
                closed = True
                break
            if _closed_by_peer(sock, 0.2):
                closed = True
                break
    assert closed
