"""Running a WSGI app over HTTP with waitress: bind first (so port 0 works and the issuer can
name the real port), then serve in the foreground for `m2mauth serve` and `m2mauth demo-api`,
or from a background thread for tests.

waitress was chosen by measurement (``python bench/wsgi_servers.py``): it reads requests on
one event loop and hands only complete ones to a bounded thread pool, so slow clients cost a
file descriptor, not a thread; gunicorn's gthread worker and cheroot answered nothing while 500
slow connections were held, and werkzeug's development server has no timeouts at all.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import resource
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser, ParsingError
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, WSGITask
from waitress.utilities import (
    BadRequest,
    Error,
    RequestEntityTooLarge,
    RequestHeaderFieldsTooLarge,
)

from .syntax import printable

if TYPE_CHECKING:
    from .settings import ServerSettings

__all__ = ["SOCKET_KEY", "BackgroundServer", "HTTPServer", "PortInUseError", "ServingLimits",
           "bind_app"]

#: The WSGI environ key of the connection's socket (as werkzeug's "werkzeug.socket" and
#: gunicorn's "gunicorn.socket"): the lab's ``drop`` fault closes it under the response.
SOCKET_KEY = "m2mauth.socket"

App = TypeVar("App", bound=Callable[..., Any])

# Descriptors kept back from the connection limit for everything else the process opens
# (the listening socket, waitress's wake-up pipe, logs, key files); accept() failing with
# EMFILE would leave the listening socket readable and the event loop spinning.
_RESERVED_FILES = 64
_access = logging.getLogger("m2mauth.access")
# A lingering close reads and discards at most this long and this much.
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 1024 * 1024
# A chunked body may take this many times max_body_bytes on the wire with its chunk sizes;
# its decoded length is then checked by the app. (Bodies in chunks of a few bytes are refused
# sooner.)
_CHUNK_FRAMING = 2


class PortInUseError(OSError):
    """The address to listen on is taken."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(errno.EADDRINUSE, f"port {port} on {host} is already in use")
        self.host, self.port = host, port

    def __str__(self) -> str:
        return self.strerror or ""


@dataclass(frozen=True)
class ServingLimits:
    """What one server process spends on its callers: threads, connections, time and bytes."""

    #: Threads that run the app; requests are read in full before one is taken.
    threads: int = 8
    #: Open connections at once; beyond it the server stops accepting until one closes.
    #: None: the process's open-file limit less a reserve.
    connection_limit: int | None = None
    #: Seconds a request may take to arrive, headers and body, from its first byte.
    request_timeout: float = 10.0
    #: Seconds a connection may stay open with nothing to do (keep-alive idle, a stalled read).
    idle_timeout: float = 30.0
    #: Largest request line plus headers; larger ones get 431.
    max_header_bytes: int = 32 * 1024
    #: Largest request body; larger ones are answered 413 by the app, without their body.
    max_body_bytes: int = 64 * 1024
    #: Seconds a graceful stop waits for requests already received to be answered.
    drain_timeout: float = 10.0

    @classmethod
    def of(cls, settings: ServerSettings) -> ServingLimits:
        """The limits a server's settings declare."""
        return cls(threads=settings.threads, connection_limit=settings.connection_limit,
                   request_timeout=settings.request_timeout, idle_timeout=settings.idle_timeout,
                   max_body_bytes=settings.max_body_bytes)

    def connections(self) -> int:
        """The connection limit in force."""
        if self.connection_limit is not None:
            return self.connection_limit
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            soft = 65536
        return max(16, soft - _RESERVED_FILES)


class _AccessLogged:
    """One DEBUG line per answer on ``m2mauth.access`` (``serve -v``); the token endpoint
    writes its own INFO line."""

    def finish(self) -> None:
        super().finish()  # type: ignore[misc]
        if _access.isEnabledFor(logging.DEBUG):
            # A request refused in its request line has no command or path.
            request = self.request  # type: ignore[attr-defined]
            _access.debug("%s %s %s", printable(getattr(request, "command", None), 16),
                          printable(getattr(request, "path", None), 200),
                          self.status.split(" ", 1)[0])  # type: ignore[attr-defined]


def _json_error(task: ErrorTask) -> None:
    """waitress's own refusals (a request that does not parse, headers too large) as JSON, not
    its text/plain page; the description is fixed text, never the caller's input."""
    error = task.request.error
    body = json.dumps({"error": "invalid_request" if error.code < 500 else "server_error",
                       "error_description": f"{error.reason}."}).encode()
    task.status = f"{error.code} {error.reason}"
    task.response_headers.extend([("Content-Type", "application/json"),
                                  ("Cache-Control", "no-store")])
    task.set_close_on_finish()
    task.channel.linger = True
    task.content_length = len(body)
    task.write(body)


class _JSONErrorTask(_AccessLogged, ErrorTask):
    def execute(self) -> None:
        _json_error(self)


class _Task(_AccessLogged, WSGITask):
    def get_environment(self) -> dict[str, Any]:
        environ = super().get_environment()
        environ[SOCKET_KEY] = self.channel.socket
        return environ


class _TooLargeTask(_Task):
    """A body over the limit, refused by waitress before it is buffered, is still answered by
    the app – with the headers and no body – so the app's 413 and the lab's request log see it
    as they would under any other server."""

    def get_environment(self) -> dict[str, Any]:
        environ = super().get_environment()
        limit = self.channel.server.adj.m2mauth_max_body_bytes
        declared = environ.get("CONTENT_LENGTH", "")
        if not declared.isdigit() or int(declared) <= limit:  # chunked: no length declared
            environ["CONTENT_LENGTH"] = str(limit + 1)
        environ["wsgi.input"] = io.BytesIO()
        return environ

    def execute(self) -> None:
        self.set_close_on_finish()  # the rest of the body is never read
        self.channel.linger = True
        super().execute()


def _error_task(channel: HTTPChannel, request: Any) -> ErrorTask | WSGITask:
    if isinstance(request.error, RequestEntityTooLarge) and request.headers_finished:
        return _TooLargeTask(channel, request)
    return _JSONErrorTask(channel, request)


class _VersionNotSupported(Error):
    code = 505
    reason = "HTTP Version Not Supported"


class _URITooLong(Error):
    code = 414
    reason = "URI Too Long"


class _Parser(HTTPRequestParser):
    """waitress's parser, stricter where RFC 9112 says a server must be:

    - a version other than 1.0 and 1.1 is refused (505; none at all, HTTP/0.9: 400), where
      waitress answers any HTTP/x.y as 1.0; a request line that alone exceeds the header
      limit is 414, not 431;
    - an HTTP/1.1 request without exactly one Host is 400 (section 3.2);
    - Content-Length with Transfer-Encoding, and Transfer-Encoding in HTTP/1.0, are 400 and
      close the connection: framing two parties could read differently (sections 6.1, 6.3);
    - a Content-Length over the app's limit is refused from the headers (413, answered by
      the app), and a request already refused is never sent 100 Continue.
    """

    def parse_header(self, header_plus: bytes) -> None:
        super().parse_header(header_plus)
        headers = self.headers
        if self.version == "1.1":
            host = headers.get("HOST")
            if host is None or "," in host:  # waitress joins repeated fields with ", "
                raise ParsingError("Host")
            if self.chunked and "CONTENT_LENGTH" in headers:
                raise ParsingError("Content-Length with Transfer-Encoding")
        elif "TRANSFER_ENCODING" in headers:
            raise ParsingError("Transfer-Encoding in HTTP/1.0")

    def received(self, data: bytes) -> int:
        in_first_line = not self.headers_finished and b"\n" not in self.header_plus
        consumed = super().received(data)
        if (isinstance(self.error, RequestHeaderFieldsTooLarge) and in_first_line
                and b"\n" not in data[:consumed]):
            self.error = _URITooLong("uri")
        if self.headers_finished and self.error is None and not self.empty:
            if self.version not in ("1.0", "1.1"):
                self.error = (_VersionNotSupported if self.version else BadRequest)("version")
                self.completed = True
            elif not self.chunked and self.content_length > self.adj.m2mauth_max_body_bytes:
                self.error = RequestEntityTooLarge("body")
                self.completed = True
        if self.error is not None:
            # waitress would send 100 Continue and wait for a body it will not read.
            self.expect_continue = False
        return consumed


class _Channel(HTTPChannel):
    """One connection; notes when the request now arriving began, for the request deadline."""

    task_class = _Task
    error_task_class = staticmethod(_error_task)
    parser_class = _Parser
    request_started: float | None = None

    #: Set by an answer given before the request was read to its end (413, 431, 400).
    linger = False
    linger_until: float | None = None
    _discarded = 0

    def handle_close(self) -> None:
        # Closing with unread input makes the kernel reset the connection, and the reset can
        # destroy the answer before the client reads it: shut the sending side, then read and
        # discard for a moment (a lingering close, RFC 9112 section 9.6).
        if self.linger and self.linger_until is None and self.connected:
            try:
                self.socket.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            else:
                self.linger_until = time.time() + _LINGER_SECONDS
                return
        super().handle_close()

    def readable(self) -> bool:
        return True if self.linger_until is not None else super().readable()

    def writable(self) -> bool:
        return False if self.linger_until is not None else super().writable()

    def handle_read(self) -> None:
        if self.linger_until is None:
            return super().handle_read()
        try:
            data = self.recv(self.adj.recv_bytes)
        except OSError:
            data = b""
        self._discarded += len(data)
        if not data or self._discarded > _LINGER_BYTES:
            super().handle_close()

    def received(self, data: bytes) -> bool:
        if self.request is None and self.request_started is None:
            self.request_started = time.time()
        queued = len(self.requests)
        try:
            return super().received(data)
        finally:
            # Every request in the data is complete – unless it was only blank lines, which
            # waitress drops as empty requests: those do not restart the deadline.
            if self.request is None and (len(self.requests) > queued or data.strip()):
                self.request_started = None


class _Server(TcpWSGIServer):
    """waitress's server with a deadline for a request to arrive: waitress closes idle
    connections only, so a client trickling a byte at a time would keep one forever."""

    channel_class = _Channel
    request_timeout = 10.0

    def maintenance(self, now: float) -> None:
        super().maintenance(now)
        cutoff = now - self.request_timeout
        for channel in list(self.active_channels.values()):
            if channel.linger_until is not None and channel.linger_until < now:
                channel.handle_close()
            elif channel.request_started is not None and channel.request_started < cutoff:
                # Closed without an answer, as nginx does on client_header_timeout.
                channel.will_close = True


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket; our own so that a taken port is an exception, not an exit."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise OSError(errno.EADDRNOTAVAIL, f"cannot resolve {host!r}: {exc.strerror}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(host, port) from None
        raise
    return sock


class HTTPServer:
    """A bound HTTP/1.1 server (keep-alive, a bounded thread pool, read and idle deadlines)
    for one WSGI app. :meth:`serve_forever` in the foreground, or :class:`BackgroundServer`."""

    def __init__(self, sock: socket.socket, app: Callable[..., Any],
                 limits: ServingLimits) -> None:
        self.app = app
        self.limits = limits
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._serving = False
        self._drain = False
        self._server = _Server(
            app, map={}, _sock=sock, bind_socket=False,
            sockinfo=(sock.family, sock.type, sock.proto, sock.getsockname()),
            sockets=[sock], threads=limits.threads, connection_limit=limits.connections(),
            channel_timeout=limits.idle_timeout, cleanup_interval=1,
            max_request_header_size=limits.max_header_bytes,
            # waitress counts a chunked body with its framing; Content-Length is checked
            # against the app's own limit by _Parser.
            max_request_body_size=_CHUNK_FRAMING * limits.max_body_bytes,
            # poll(), not select(): select() cannot watch descriptors above 1023.
            asyncore_use_poll=True, backlog=1024, ident="m2mauth",
            # The app sees forwarding headers as sent (the admin guard refuses them).
            clear_untrusted_proxy_headers=False,
        )
        self._server.request_timeout = limits.request_timeout
        # The parser sees only waitress's Adjustments: the app's own body limit rides on it.
        self._server.adj.m2mauth_max_body_bytes = limits.max_body_bytes
        # "Task queue depth is N" is normal under load: every thread busy, requests waiting.
        logging.getLogger("waitress.queue").setLevel(logging.ERROR)

    @property
    def host(self) -> str:
        return str(self._server.effective_host)

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    @property
    def stopping(self) -> bool:
        """Whether a stop has been asked for."""
        return self._stopping.is_set()

    @property
    def url(self) -> str:
        """Where the server listens."""
        host = self.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def serve_forever(self) -> None:
        """Answer requests until :meth:`shutdown` (from another thread) or KeyboardInterrupt;
        then close every connection and stop the threads."""
        # waitress's own run() cannot be stopped from another thread: loop one poll at a time.
        server = self._server
        self._serving = True
        try:
            while not self._stopping.is_set():
                wasyncore.loop(timeout=1.0, map=server._map, use_poll=True, count=1)
            if self._drain:
                self._answer_what_was_received()
        finally:
            server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)
            wasyncore.close_all(server._map)
            self._stopped.set()

    def stop_gracefully(self) -> None:
        """Make :meth:`serve_forever` stop accepting, answer the requests it has received
        (within ``drain_timeout``), close every connection and return. Safe in a signal
        handler: it sets a flag and wakes the loop."""
        self._drain = True
        self._stopping.set()
        with contextlib.suppress(OSError):  # the loop may have closed its trigger already
            self._server.pull_trigger()

    def _answer_what_was_received(self) -> None:
        server = self._server
        # The listening socket alone: TcpWSGIServer.close() would close the wake-up pipe too,
        # which the threads still answering need.
        wasyncore.dispatcher.close(server)
        end = time.monotonic() + self.limits.drain_timeout
        while time.monotonic() < end:
            busy = False
            for channel in list(server.active_channels.values()):
                if channel.requests or channel.total_outbufs_len:
                    busy = True  # being answered, waiting for a thread, or still sending
                else:
                    channel.will_close = True  # idle, or a request not yet received whole
            if not busy:
                break
            wasyncore.loop(timeout=0.1, map=server._map, use_poll=True, count=1)

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever` and wait (a few seconds at most) for it to finish."""
        self._stopping.set()
        if not self._serving:
            return self.close()
        # The loop may see the flag at its next poll and close the trigger first.
        with contextlib.suppress(OSError):
            self._server.pull_trigger()
        self._stopped.wait(timeout=10)
        return None

    def close(self) -> None:
        """Release the port and the threads of a server that is not serving."""
        if not self._stopped.is_set():
            self._server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)
            wasyncore.close_all(self._server._map)
            self._stopped.set()


def bind_app(host: str, port: int, make_app: Callable[[int], App],
             limits: ServingLimits | None = None) -> tuple[HTTPServer, App]:
    """Listen on ``host:port`` (0 picks a free port; a taken one raises
    :class:`PortInUseError`), build the app knowing the port actually bound, and wrap it in
    an :class:`HTTPServer`."""
    sock = _listen(host, port)
    try:
        app = make_app(sock.getsockname()[1])
        return HTTPServer(sock, app, limits or ServingLimits()), app
    except BaseException:
        sock.close()
        raise


class BackgroundServer:
    """An :class:`HTTPServer` answering from a daemon thread until :meth:`stop` (also a
    context manager): for tests, fixtures and benchmarks."""

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self._thread = threading.Thread(target=server.serve_forever,
                                        name=f"m2mauth-http-{server.port}", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        """Where the server listens."""
        return self.server.url

    def stop(self) -> None:
        self.server.shutdown()
        self._thread.join(timeout=5)

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
