"""Running a WSGI app over HTTP, or HTTPS (see ``_TLSChannel``), with waitress: bind first (so
port 0 works and the issuer can name the real port), then serve in the foreground for
`m2mauth serve` and `m2mauth demo-api`, or from a background thread for tests.

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
import ssl
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
           "bind_app", "listen_app"]

#: The WSGI environ key of the connection's socket (as werkzeug's "werkzeug.socket" and
#: gunicorn's "gunicorn.socket"): the lab's ``drop`` fault closes it under the response.
SOCKET_KEY = "m2mauth.socket"

App = TypeVar("App", bound=Callable[..., Any])

# Descriptors kept back from the connection limit for everything else the process opens
# (the listening socket, waitress's wake-up pipe, logs, key files); accept() failing with
# EMFILE would leave the listening socket readable and the event loop spinning.
_RESERVED_FILES = 64
_access = logging.getLogger("m2mauth.access")
# A graceful stop still answers a request arriving as it begins – on a connection accepted
# just before (its first request not yet whole), or half received – if it is whole within
# this many seconds. (With --workers the listening socket stays open in the other workers,
# so a connection one worker accepted as it stopped would otherwise be lost, not refused.)
_ARRIVING_SECONDS = 1.0
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

    #: Whether a request has been received whole on this connection.
    requested = False
    #: Set by an answer given before the request was read to its end (413, 431, 400).
    linger = False
    linger_until: float | None = None
    _discarded = 0
    #: A close waiting for the last bytes to be sent is abandoned at this time (TLS).
    flush_until: float | None = None

    def sending(self) -> bool:
        """Whether bytes of an answer are still waiting to be sent."""
        return bool(self.total_outbufs_len)

    def arriving(self) -> bool:
        """Whether a request is on its way: the connection's first (nothing received whole
        yet; a TLS handshake perhaps), or one begun and not yet whole."""
        return not self.requested or self.request_started is not None

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
            if len(self.requests) > queued:
                self.requested = True
            if self.request is None and (len(self.requests) > queued or data.strip()):
                self.request_started = None


# TLS by hand: waitress has no TLS of its own, and a TLS terminator in front (stunnel, nginx)
# would be a second process to run and configure. The channel runs TLS sans-I/O over memory
# BIOs (ssl.SSLContext.wrap_bio): the handshake and every record are driven from the same
# event loop that reads requests, so a slow or stalled TLS client still costs a descriptor,
# not a thread, and the request and idle deadlines cut it as they cut a plain one.


class _TLSChannel(_Channel):
    """A connection that speaks TLS. Ciphertext from the socket goes into the TLS object's
    incoming BIO and the plaintext out of it to waitress's parser; what waitress sends is
    encrypted into the outgoing BIO and sent from a pending buffer, flushed on writable
    events. While ciphertext is pending no more plaintext is taken (backpressure: waitress
    keeps it in its own buffers) and nothing more is read.

    The TLS object is used by the event loop (reads, flushes) and by the threads answering
    (waitress sends from them): every use holds ``_tls_lock``, taken after waitress's
    ``outbuf_lock`` when both are held, never before it."""

    def __init__(self, server: _TLSServer, sock: socket.socket, addr: Any, adj: Any,
                 map: Any = None) -> None:
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = server.tls_context.wrap_bio(self._incoming, self._outgoing,
                                                server_side=True)
        self._tls_lock = threading.Lock()
        self._pending = bytearray()  # ciphertext the socket has not taken yet
        self._handshaken = False
        self._broken = False  # the socket failed under a send
        self._closing = False  # close_notify queued; the channel closes once it is sent
        super().__init__(server, sock, addr, adj, map)

    # -- the socket, under _tls_lock -------------------------------------------------------

    def _send_pending(self) -> None:
        """Send what of the pending ciphertext the socket takes now."""
        while self._pending and not self._broken:
            sock = self.socket
            try:
                if sock is None:
                    raise OSError(errno.EBADF, "closed")
                sent = sock.send(self._pending)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # reset, broken pipe, closed under us: nothing more goes out
                self._broken = True
                self._pending.clear()
                return
            del self._pending[:sent]
            self.last_activity = time.time()

    def _collect(self) -> None:
        self._pending += self._outgoing.read()

    def _decrypt(self) -> tuple[bytes, str | None, bool]:
        """(plaintext, why the connection failed or None, whether the peer closed TLS) from
        what the incoming BIO holds, handshaking first."""
        if not self._handshaken:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                return b"", None, False
            except ssl.SSLError as exc:
                return b"", f"handshake failed: {exc.reason or exc.__class__.__name__}", False
            self._handshaken = True
            self.request_started = None  # the handshake's deadline ends; the request's begins
        chunks: list[bytes] = []
        while True:
            try:
                chunk = self._tls.read(self.adj.recv_bytes)
            except ssl.SSLWantReadError:
                return b"".join(chunks), None, False
            except ssl.SSLZeroReturnError:
                return b"".join(chunks), None, True
            except ssl.SSLError as exc:
                return b"".join(chunks), exc.reason or exc.__class__.__name__, False
            if not chunk:  # close_notify
                return b"".join(chunks), None, True
            chunks.append(chunk)

    # -- waitress's hooks -------------------------------------------------------------------

    def readable(self) -> bool:
        if self.linger_until is not None:
            return True
        return not (self._closing or self._pending) and super().readable()

    def writable(self) -> bool:
        if self.linger_until is not None:
            return False
        return self._broken or self._closing or bool(self._pending) or super().writable()

    def sending(self) -> bool:
        return bool(self._pending) or super().sending()

    def handle_read(self) -> None:
        if self.linger_until is not None:
            return super().handle_read()  # a lingering close: raw bytes, read and dropped
        if self.socket is None:
            return None
        try:
            raw = self.socket.recv(self.adj.recv_bytes)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return self._abort()
        if not raw:  # the peer closed the connection
            return self._abort()
        self.last_activity = time.time()
        if self._closing:
            return None
        if not self._handshaken and self.request_started is None:
            self.request_started = self.last_activity  # a handshake has the request deadline
        # Handshake bytes alone yield no plaintext: received() is not called, and nothing
        # here looks like waitress's end-of-file (recv() returning b"").
        with self._tls_lock:
            self._incoming.write(raw)
            plaintext, failure, closed = self._decrypt()
            self._collect()
            self._send_pending()
        if failure is not None:
            # Plain HTTP sent to the TLS port, a bad ClientHello, a corrupt record: this
            # connection ends (with the alert OpenSSL wrote, if the socket takes it), quietly.
            _access.debug("TLS connection from %s closed: %s",
                          self.addr[0] if self.addr else "?", failure)
            return self._abort()
        if plaintext:
            self.received(plaintext)
        if closed:
            self.handle_close()
        return None

    def send(self, data: bytes, do_close: bool = True) -> int:
        """Encrypt what waitress sends; the number of plaintext bytes taken (0 while the
        socket has not taken the ciphertext of the last ones)."""
        with self._tls_lock:
            self._send_pending()
            taken = 0
            if self._handshaken and not (self._pending or self._broken or self._closing):
                try:
                    taken = self._tls.write(data)
                except ssl.SSLError:
                    self._broken = True
                else:
                    self._collect()
                    self._send_pending()
            broken = self._broken
        if broken and do_close:
            self._abort()
        return taken

    def handle_write(self) -> None:
        with self._tls_lock:
            self._send_pending()
        if self._broken:
            return self._abort()
        if self._closing:
            if not self._pending:
                super().handle_close()  # close_notify sent: now close (lingering or not)
            return None
        if self._pending and not self.will_close:
            return None  # the rest when the socket takes more
        return super().handle_write()

    def handle_close(self) -> None:
        """Close as TLS closes: close_notify first, sent before the socket closes (within
        the lingering time), best effort; then as a plain channel closes."""
        if self._broken or not self.connected or self.socket is None:
            return self._abort()
        if not self._closing:
            self._closing = True
            with self._tls_lock:
                if self._handshaken:
                    with contextlib.suppress(ssl.SSLError):  # it never waits for the peer's
                        self._tls.unwrap()
                self._collect()
                self._send_pending()
            if self._pending and not self._broken:
                self.flush_until = time.time() + _LINGER_SECONDS
                return None  # handle_write sends the rest, then closes
        elif self._pending and not self._broken:
            return None
        return super().handle_close()

    def _abort(self) -> None:
        """Close now, sending nothing more."""
        self._closing = True
        HTTPChannel.handle_close(self)


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
            elif channel.flush_until is not None and channel.flush_until < now:
                HTTPChannel.handle_close(channel)  # the peer never took the last bytes
            elif channel.request_started is not None and channel.request_started < cutoff:
                # Closed without an answer, as nginx does on client_header_timeout.
                channel.will_close = True


class _TLSServer(_Server):
    """The server of TLS connections (``wsgi.url_scheme`` https)."""

    channel_class = _TLSChannel
    tls_context: ssl.SSLContext


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
                 limits: ServingLimits, tls: ssl.SSLContext | None = None) -> None:
        self.app = app
        self.limits = limits
        #: The server side TLS context when it speaks HTTPS, else None.
        self.tls = tls
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._serving = False
        self._drain = False
        self._server = (_TLSServer if tls is not None else _Server)(
            app, map={}, _sock=sock, bind_socket=False, url_scheme=self.scheme,
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
        if tls is not None:
            self._server.tls_context = tls
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
    def scheme(self) -> str:
        """"https" when the server speaks TLS, else "http"."""
        return "http" if self.tls is None else "https"

    @property
    def url(self) -> str:
        """Where the server listens."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def serve_forever(self, tick: Callable[[], None] | None = None) -> None:
        """Answer requests until :meth:`shutdown` (from another thread) or KeyboardInterrupt;
        then close every connection and stop the threads. ``tick`` is called after every
        poll of the event loop, at least once a second (a ``--workers`` worker's heartbeat
        to its master, see workers.py)."""
        # waitress's own run() cannot be stopped from another thread: loop one poll at a time.
        server = self._server
        self._serving = True
        try:
            while not self._stopping.is_set():
                wasyncore.loop(timeout=1.0, map=server._map, use_poll=True, count=1)
                if tick is not None:
                    tick()
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
        start = time.monotonic()
        end = start + self.limits.drain_timeout
        arriving_until = start + min(_ARRIVING_SECONDS, self.limits.drain_timeout)
        while (now := time.monotonic()) < end:
            busy = False
            for channel in list(server.active_channels.values()):
                if channel.requests or channel.sending():
                    busy = True  # being answered, waiting for a thread, or still sending
                elif now < arriving_until and channel.arriving():
                    busy = True  # its request is on its way: answered if it comes now
                else:
                    channel.will_close = True  # idle, or a request that did not come whole
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
             limits: ServingLimits | None = None, *,
             tls: ssl.SSLContext | None = None) -> tuple[HTTPServer, App]:
    """Listen on ``host:port`` (0 picks a free port; a taken one raises
    :class:`PortInUseError`), build the app knowing the port actually bound, and wrap it in
    an :class:`HTTPServer` (speaking TLS with the server context ``tls``)."""
    sock, app = listen_app(host, port, make_app)
    try:
        return HTTPServer(sock, app, limits or ServingLimits(), tls), app
    except BaseException:
        sock.close()
        raise


def listen_app(host: str, port: int, make_app: Callable[[int], App]
               ) -> tuple[socket.socket, App]:
    """Listen on ``host:port`` (as :func:`bind_app`) and build the app knowing the port
    bound; the listening socket and the app, for a server made elsewhere (``--workers``:
    one in each worker process)."""
    sock = _listen(host, port)
    try:
        return sock, make_app(sock.getsockname()[1])
    except BaseException:
        sock.close()
        raise


class BackgroundServer:
    """An :class:`HTTPServer` answering from a daemon thread until :meth:`stop` (also a
    context manager): for tests, fixtures and benchmarks."""

    def __init__(self, server: HTTPServer, tick: Callable[[], None] | None = None) -> None:
        self.server = server
        # tick: called on the event loop after every poll (see HTTPServer.serve_forever), so
        # a test can wait on an event the loop sets instead of polling its state.
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"tick": tick},
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
