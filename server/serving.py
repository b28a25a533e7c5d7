"""Running a WSGI app over HTTP: bind first (so port 0 works and the issuer can name the
real port), then serve with werkzeug's threaded server, in the foreground for `m2mauth serve`
and `m2mauth demo-api`, or in a background thread for tests."""

from __future__ import annotations

import errno
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from flask import Flask
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

__all__ = ["BackgroundServer", "PortInUseError", "bind_app"]


class PortInUseError(OSError):
    """The address to listen on is taken."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(errno.EADDRINUSE, f"port {port} on {host} is already in use")
        self.host, self.port = host, port

    def __str__(self) -> str:
        return self.strerror or ""


class _QuietHandler(WSGIRequestHandler):
    """werkzeug's per-request access line goes to the 'werkzeug' logger at INFO; the token
    endpoint writes its own line, so the access log is left to logging configuration.

    A request line that does not parse is answered by http.server itself, before the app:
    with a status line (it would otherwise answer as to an HTTP/0.9 client, a bare body) and
    a JSON body (never an HTML page)."""

    default_request_version = "HTTP/1.0"
    error_content_type = "application/json"
    # explain: http.server's fixed text for the status (no quotes); message may quote input.
    error_message_format = '{"error": "invalid_request", "error_description": "%(explain)s"}'

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        # A request line that does not parse (GET / HTTP/9.9, a 70 KB URI, garbage) is answered
        # 400/414/505 before command and path are set: log what there is.
        path = getattr(self, "path", None) or "-"
        logging.getLogger("m2mauth.access").debug(
            "%s %s %s", getattr(self, "command", None) or "-", path.split("?", 1)[0], code
        )

    def log_error(self, format: str, *args: Any) -> None:
        # What http.server refused (a bad request line) – client input, not a server error.
        logging.getLogger("m2mauth.access").debug("refused: " + format, *args)


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket; our own so that a taken port is an exception, not werkzeug's exit."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise OSError(errno.EADDRNOTAVAIL, f"cannot resolve {host!r}: {exc.strerror}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(host, port) from None
        raise
    return sock


def bind_app(host: str, port: int, make_app: Callable[[int], Flask],
             ) -> tuple[BaseWSGIServer, Flask]:
    """Listen on ``host:port`` (0 picks a free port; a taken one raises
    :class:`PortInUseError`), build the app knowing the port actually bound, and wrap it in
    werkzeug's threaded server. Serve with ``server.serve_forever()`` or
    :class:`BackgroundServer`."""
    sock = _listen(host, port)
    try:
        bound = sock.getsockname()[1]
        app = make_app(bound)
        server = make_server(host, bound, app, threaded=True, request_handler=_QuietHandler,
                             fd=sock.fileno())
    finally:
        sock.close()  # werkzeug keeps its own duplicate of the descriptor
    return server, app


class BackgroundServer:
    """A bound werkzeug server answering from a daemon thread until :meth:`stop` (also a
    context manager): for tests, fixtures and benchmarks."""

    def __init__(self, server: BaseWSGIServer) -> None:
        self.server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"m2mauth-http-{self.port}", daemon=True,
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        """Where the server listens."""
        host = self.server.server_address[0]
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
