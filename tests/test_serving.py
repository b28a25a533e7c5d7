"""The HTTP layer under the apps: malformed request lines get werkzeug's status answers, not a
traceback and a silent close, and the server keeps serving."""

from __future__ import annotations

import logging
import socket

import pytest
import requests

from m2mauth.client.demo_api import create_demo_api
from m2mauth.server.serving import BackgroundServer, bind_app


def _send(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(raw)
        chunks = []
        while True:  # bounded by the peer closing, or the timeout
            chunk = sock.recv(4096)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


MALFORMED = [
    (b"GET / HTTP/9.9\r\n\r\n", b"505"),
    (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", b"414"),
    (b"garbage\r\n\r\n", b"400"),
    (b"GET / HTTP/1.1 extra words\r\n\r\n", b"400"),
]


@pytest.mark.parametrize(("raw", "status"), MALFORMED, ids=["version", "long-uri", "garbage",
                                                            "words"])
def test_the_authorization_server_answers_malformed_request_lines(idp, capfd, raw, status):
    answer = _send(idp.server.port, raw)
    assert answer.split(b" ", 2)[1] == status, answer[:100]
    assert "Traceback" not in capfd.readouterr().err
    assert requests.get(idp.jwks_uri, timeout=5).status_code == 200  # still serving


@pytest.mark.parametrize(("raw", "status"), MALFORMED[:1])
def test_the_demo_api_answers_malformed_request_lines(capfd, raw, status):
    server, _ = bind_app("127.0.0.1", 0, lambda _port: create_demo_api(
        "http://127.0.0.1:1", "api://demo"))
    with BackgroundServer(server) as running:
        answer = _send(running.port, raw)
        assert answer.split(b" ", 2)[1] == status, answer[:100]
        assert "Traceback" not in capfd.readouterr().err
        assert requests.get(running.url + "/", timeout=5).status_code == 200


def test_every_answer_gets_an_access_line_at_debug(idp, caplog):
    caplog.set_level(logging.DEBUG, logger="m2mauth.access")
    # Connection: close, so that the answer ends after the line is written (in finish()).
    jwks = _send(idp.server.port, b"GET /jwks.json?x=1 HTTP/1.1\r\nHost: a\r\n"
                 b"Connection: close\r\n\r\n")
    assert jwks.split(b" ", 2)[1] == b"200"
    assert _send(idp.server.port, b"GET /\x1b[2J HTTP/9.9\r\n\r\n").split(b" ", 2)[1] == b"505"
    lines = [r.getMessage() for r in caplog.records if r.name == "m2mauth.access"]
    assert "'GET' '/jwks.json' 200" in lines
    assert any(line.endswith(" 505") and "\x1b" not in line for line in lines)


# Found by attacking the server: each of these once wedged a connection, ran a smuggled
# request, or waited for a body it would never read.

@pytest.mark.parametrize("raw", [
    b"get / HTTP/1.1\r\nHost: x\r\n\r\n",  # no command parsed: the access line had none
    b"GET / HTTP/1.1\r\nHost: x\r\nBogusHeader\r\n\r\n",
    b"GET /jwks.json\xff HTTP/1.1\r\nHost: x\r\n\r\n",
], ids=["lowercase-method", "header-without-colon", "non-ascii-path"])
def test_a_refused_request_closes_its_connection_with_the_access_log_on(idp, caplog, capfd, raw):
    caplog.set_level(logging.DEBUG, logger="m2mauth.access")
    answer = _send(idp.server.port, raw)  # returns only once the server closes
    assert answer.split(b" ", 2)[1] == b"400", answer[:100]
    assert b'"invalid_request"' in answer
    assert "Traceback" not in capfd.readouterr().err


def test_content_length_with_transfer_encoding_is_refused_and_closed(idp):
    smuggled = b"GET /admin/requests/token HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    answer = _send(idp.server.port, (
        b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded"
        b"\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        % (5 + len(smuggled))) + smuggled)
    assert answer.split(b" ", 2)[1] == b"400", answer[:100]
    assert answer.count(b"HTTP/1.") == 1  # the smuggled request was never run


def test_transfer_encoding_in_http_1_0_is_refused(idp):
    answer = _send(idp.server.port, (
        b"POST /token HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"GET /jwks.json HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert answer.split(b" ", 2)[1] == b"400", answer[:100]
    assert answer.count(b"HTTP/1.") == 1


@pytest.mark.parametrize("hosts", [b"", b"Host: a\r\nHost: b\r\n"], ids=["none", "two"])
def test_http_1_1_needs_exactly_one_host(idp, hosts):
    answer = _send(idp.server.port, b"GET /jwks.json HTTP/1.1\r\n" + hosts + b"\r\n")
    assert answer.split(b" ", 2)[1] == b"400", answer[:100]


def test_an_oversized_body_behind_expect_100_continue_is_413_at_once(idp):
    answer = _send(idp.server.port, (
        b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded"
        b"\r\nAuthorization: Basic ZGVtby1jbGllbnQ6ZGVtby1zZWNyZXQ=\r\n"
        b"Content-Length: 70000\r\nExpect: 100-continue\r\n\r\n"))
    assert answer.split(b" ", 2)[1] == b"413", answer[:100]
    assert b"100 Continue" not in answer
    (entry,) = idp.token_requests
    assert (entry.status, entry.client_id) == (413, "demo-client")


def test_a_chunked_body_of_max_body_bytes_is_read(idp):
    limit = idp.settings.max_body_bytes
    prefix = b"grant_type=client_credentials&pad="
    body = prefix + b"x" * (limit - len(prefix))
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 1024]), body[i:i + 1024])
                      for i in range(0, len(body), 1024))
    answer = _send(idp.server.port, (
        b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded"
        b"\r\nAuthorization: Basic ZGVtby1jbGllbnQ6ZGVtby1zZWNyZXQ=\r\nConnection: close\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n") + chunks + b"0\r\n\r\n")
    assert answer.split(b" ", 2)[1] == b"200", answer[:300]


def _hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"hi"]


class _LoopSees:
    """A ``tick`` for :meth:`HTTPServer.serve_forever`: the event loop itself sets
    :attr:`event` after the poll at which ``condition()`` first holds."""

    def __init__(self, condition) -> None:
        import threading

        self.condition, self.event = condition, threading.Event()

    def __call__(self) -> None:
        if not self.event.is_set() and self.condition():
            self.event.set()


def test_a_graceful_stop_answers_a_request_half_received_and_closes_idle_connections():
    """A request on its way as the stop begins (its headers half sent) is answered when the
    rest comes at once; a connection idle after its answer is closed. (With --workers the
    listening socket stays open in the other workers: a request one worker accepted as it
    stopped is answered, not lost.)"""
    import threading

    server, _ = bind_app("127.0.0.1", 0, lambda _port: _hello)
    channels = server._server.active_channels
    half_read = _LoopSees(
        lambda: any(c.request_started is not None for c in list(channels.values())))
    thread = threading.Thread(target=server.serve_forever, kwargs={"tick": half_read},
                              daemon=True)
    thread.start()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as idle, \
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as arriving:
        idle.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        answer = b""
        for _ in range(50):  # bounded: the head and the body may come in separate segments
            answer += idle.recv(4096)
            if answer.endswith(b"\r\n\r\nhi"):
                break
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hi"), answer
        arriving.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n")
        assert half_read.event.wait(timeout=10), "the server never read the request's start"
        server.stop_gracefully()
        assert idle.recv(4096) == b""  # closed by the stop
        arriving.sendall(b"\r\n")
        assert arriving.recv(4096).startswith(b"HTTP/1.1 200")
    thread.join(timeout=15)
    assert not thread.is_alive()
