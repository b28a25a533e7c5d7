"""The token endpoint reads an ordinary body straight from the WSGI input (token_request.py
_read_body) and answers everything else as werkzeug's guarded stream would: a body larger
than the limit is a 413, a short one a 400, never a 500; a later reader gets the same bytes."""

from __future__ import annotations

import base64
import io
import json

import pytest
from flask import request

from m2mauth.server import ServerSettings, create_app

BODY = b"grant_type=client_credentials"
BASIC = "Basic " + base64.b64encode(b"demo-client:demo-secret").decode()


class Trickle(io.RawIOBase):
    """A WSGI input that hands over at most ``step`` bytes per read, then ends."""

    def __init__(self, data: bytes, step: int = 3) -> None:
        self.data, self.step = data, step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.step)
        chunk, self.data = self.data[:n], self.data[n:]
        buffer[:len(chunk)] = chunk
        return len(chunk)


def _call(app, body, *, length=None, stream=None, **extra):
    environ = {
        "REQUEST_METHOD": "POST", "SCRIPT_NAME": "", "PATH_INFO": "/token",
        "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1", "wsgi.url_scheme": "http",
        "wsgi.input": stream if stream is not None else io.BytesIO(body),
        "wsgi.errors": io.StringIO(), "HTTP_AUTHORIZATION": BASIC,
        "CONTENT_TYPE": "application/x-www-form-urlencoded",
        "CONTENT_LENGTH": str(len(body)) if length is None else length, **extra,
    }
    status = []
    data = b"".join(app(environ, lambda s, h, exc_info=None: status.append(s)))
    return int(status[0][:3]), json.loads(data)


@pytest.fixture
def app():
    return create_app(ServerSettings(max_body_bytes=1024))


@pytest.mark.parametrize("terminated", [False, True])
def test_a_body_in_pieces_is_read_whole(app, terminated):
    extra = {"wsgi.input_terminated": True} if terminated else {}
    status, body = _call(app, BODY, stream=Trickle(BODY), **extra)
    assert status == 200 and body["access_token"]


def test_a_short_body_is_a_400_not_a_500(app):
    status, body = _call(app, BODY, length=str(len(BODY) + 10))
    assert status == 400 and body["error"] == "invalid_request"


def test_a_short_body_the_server_terminated_is_what_was_sent(app):
    """As werkzeug: the server says the input ends there; the form read is the one sent."""
    status, _ = _call(app, BODY, length=str(len(BODY) + 10),
                      **{"wsgi.input_terminated": True})
    assert status == 200


@pytest.mark.parametrize("length", ["2048", "99999999999999999999"])
def test_a_declared_length_over_the_limit_is_a_413_and_is_logged(app, length):
    status, body = _call(app, BODY, length=length)
    assert status == 413 and body["error"] == "invalid_request"
    log = app.extensions["m2mauth_lab"].controls.token_requests
    assert [r.status for r in log] == [413]


@pytest.mark.parametrize("length", ["+29", " 29", "29.0", "٢٩"])
def test_an_odd_content_length_goes_through_werkzeug(app, length):
    status, _ = _call(app, BODY, length=length)
    assert status != 500


def test_a_later_reader_of_the_body_gets_the_same_bytes(app):
    seen = []

    @app.after_request
    def read_again(response):
        seen.append(request.get_data())
        return response

    status, _ = _call(app, BODY)
    assert status == 200 and seen == [BODY]
