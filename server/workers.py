"""``m2mauth serve --workers N``: N processes answering on one port as one issuer.

gunicorn's :class:`~gunicorn.arbiter.Arbiter` manages the processes: it forks them, forks a
new one when one dies, kills one whose heartbeat stops, and on SIGTERM stops them gracefully
(each answers what it has received) and exits 0. What runs in each worker is not one of
gunicorn's worker classes but m2mauth's own :class:`~.serving.HTTPServer` on the socket the
master bound, so every worker keeps what the one-process server has: keep-alive, the request
and idle deadlines that cut slow clients, waitress's refusals as JSON, and TLS (``--tls``).
(gunicorn's gthread worker answered nothing while 500 slow connections were held, see
serving.py; its sync worker closes every connection.)

The app is built once, in the master, before any fork (gunicorn's ``preload_app``): a
configuration error is one line and exit 2 before any worker starts, the banner is printed
once, a new shared store is seeded once and ephemeral keys are generated once, so every
worker signs with the same keys; a worker the arbiter starts again is forked from the same
master and app. Nothing a worker must not share crosses the fork: the store opens its own
connections in each process (:class:`~.sqlite_store.SQLiteStore` by pid; redis-py's pool
resets itself when it sees another pid), waitress's threads and event loop are made in the
worker, and the master serves nothing (it holds no request state to copy). Every piece of
the issuer's state is in the store, so the workers agree on it, request by request.

The master binds the socket itself, before gunicorn starts (as the one-process server does:
port 0 works, a taken port is one line and exit 2, the banner names the real port), and
hands it to the arbiter as its listener, the way gunicorn takes over an inherited socket.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gunicorn import sock as gunicorn_sock
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker

from .serving import HTTPServer, ServingLimits

__all__ = ["WORKER_HEADER", "WorkerOptions", "serve_workers"]

log = logging.getLogger("m2mauth.server")

#: The response header naming the worker process that answered (the lab's only: a test
#: can see that every worker answered, and which one saw a change).
WORKER_HEADER = "M2MAuth-Worker"
#: Seconds between heartbeats; gunicorn kills a worker silent for ``_WORKER_TIMEOUT``.
_HEARTBEAT = 1.0
_WORKER_TIMEOUT = 30


@dataclass(frozen=True)
class WorkerOptions:
    """What every worker serves: the app (built in the master), the listening socket, the
    serving limits of each worker, its TLS context, and whether the lab names the worker in
    a response header."""

    app: Callable[..., Any]
    sock: socket.socket
    workers: int
    limits: ServingLimits
    tls: ssl.SSLContext | None = None
    worker_header: bool = False


def serve_workers(options: WorkerOptions) -> None:
    """Run ``options.workers`` worker processes under gunicorn's arbiter until SIGTERM or
    SIGINT, then stop them gracefully; returns only by ``SystemExit`` (0 on SIGTERM)."""
    _Application(options).run()


def _with_worker_header(app: Callable[..., Any], pid: int) -> Callable[..., Any]:
    header = (WORKER_HEADER, str(pid))

    def answered_by_this_worker(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            headers.append(header)
            return start_response(status, headers, exc_info)
        return app(environ, start)

    return answered_by_this_worker


class _Worker(Worker):
    """A gunicorn worker that runs m2mauth's HTTPServer on the inherited listening socket,
    sends its heartbeat from the server's event loop, and stops it gracefully on SIGTERM."""

    server: HTTPServer | None = None
    _beat = 0.0

    def init_signals(self) -> None:
        super().init_signals()
        # Ctrl+C reaches every process of the terminal's group: SIGINT stops a worker as
        # SIGTERM does, gracefully, as it stops the one-process server. SIGQUIT (the
        # master's quick stop, after a second Ctrl+C) still exits at once.
        signal.signal(signal.SIGINT, self.handle_exit)
        signal.siginterrupt(signal.SIGINT, False)

    def handle_exit(self, sig: int, frame: Any) -> None:
        """SIGTERM or SIGINT: stop accepting, answer what was received, exit (safe in a
        signal handler: stop_gracefully sets a flag and wakes the loop). A second SIGINT
        exits at once."""
        if sig == signal.SIGINT and not self.alive:
            self.handle_quit(sig, frame)
        self.alive = False
        if self.server is not None:
            self.server.stop_gracefully()

    def run(self) -> None:
        options: WorkerOptions = self.app.options
        app = self.wsgi
        if options.worker_header:
            app = _with_worker_header(app, os.getpid())
        # gunicorn's listener wraps the socket the master bound; waitress wants the socket.
        listener = self.sockets[0]
        self.server = HTTPServer(getattr(listener, "sock", listener), app, options.limits,
                                 options.tls)
        log.info("worker %s (pid %d) answering on %s", self.age, os.getpid(), self.server.url)
        if not self.alive:  # SIGTERM came while the server was being made
            self.server.stop_gracefully()
        self.server.serve_forever(tick=self._tick)

    def _tick(self) -> None:
        now = time.monotonic()
        if now - self._beat >= _HEARTBEAT:
            self._beat = now
            self.notify()
            if self.ppid != os.getppid():  # the master died: nobody restarts or stops us
                log.warning("worker %s (pid %d): the master is gone; stopping",
                            self.age, os.getpid())
                self.alive = False
        if not self.alive and self.server is not None and not self.server.stopping:
            self.server.stop_gracefully()


class _Arbiter(Arbiter):
    """gunicorn's arbiter, with Ctrl+C (SIGINT) a graceful stop as SIGTERM is – gunicorn's
    own stops the workers at once – so ``serve --workers`` stops as ``serve`` does; a second
    Ctrl+C during the stop is gunicorn's quick one."""

    def handle_int(self) -> None:
        self.handle_term()

    def handle_usr2(self) -> None:
        # gunicorn's re-exec runs the command line again to adopt the socket; `m2mauth
        # serve` would bind it again instead.
        self.log.warning("USR2 (re-exec) is not supported by m2mauth serve --workers: "
                         "ignored; restart the server instead")


class _Application(BaseApplication):
    """gunicorn's application interface around an app already built: no config file, no
    ``GUNICORN_CMD_ARGS``, no command line of its own – m2mauth's settings decide."""

    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        # Read now: the socket is handed to the arbiter (detached) before a reload (SIGHUP)
        # loads this configuration again.
        self._address = options.sock.getsockname()[:2]
        super().__init__()

    def load_config(self) -> None:
        host, port = self._address
        limits = self.options.limits
        config: dict[str, Any] = {
            "bind": [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"],
            "workers": self.options.workers,
            "worker_class": _Worker,
            # The app is the one built in the master (load() returns it): every worker
            # forks with the seeded store, the same keys and the same settings.
            "preload_app": True,
            "timeout": _WORKER_TIMEOUT,
            # A worker's own drain (ServingLimits.drain_timeout), and a little for its exit.
            "graceful_timeout": math.ceil(limits.drain_timeout) + 5,
            # Quiet: only gunicorn's warnings and errors (a worker killed, one that timed
            # out); m2mauth logs its requests itself, so no access log.
            "loglevel": "warning",
            "accesslog": None,
            "proc_name": "m2mauth",
            # gunicorn 24+'s control socket (a Unix socket in the working directory) and
            # its "dirty" arbiter: neither is used.
            "control_socket_disable": True,
            "dirty_workers": 0,
        }
        for name, value in config.items():
            if name in self.cfg.settings:  # a setting an older gunicorn lacks is not needed
                self.cfg.set(name, value)

    def load(self) -> Callable[..., Any]:
        return self.options.app

    def run(self) -> None:
        arbiter = _Arbiter(self)
        # Our socket as the arbiter's listener, as gunicorn adopts an inherited one
        # (GUNICORN_FD, systemd's LISTEN_FDS): it is not bound again.
        fd = self.options.sock.detach()
        arbiter.LISTENERS = gunicorn_sock.create_sockets(self.cfg, arbiter.log, [fd])
        arbiter.run()
