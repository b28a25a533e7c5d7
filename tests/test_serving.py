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
