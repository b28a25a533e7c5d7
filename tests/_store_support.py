"""What the store tests share: a real ``redis-server`` on a free loopback port (started,
stopped and restarted by its PID, every wait bounded, no sleeps), and the bodies of the
worker processes that use one store at once (spawned, so they import this module)."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

REDIS_MISSING = ("redis-server is not on the PATH (apt-get install redis-server; .ci/run "
                 "installs it)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """``redis-server`` on 127.0.0.1:``port``: in memory only, or with ``directory`` its
    data in an append-only file there, fsynced on every write, so that a restart keeps it.
    ``password``: the server requires it."""

    def __init__(self, directory: Path | None = None, *, password: str | None = None) -> None:
        self.directory = directory
        self.password = password
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def start(self) -> RedisServer:
        """Start on the port it had (a restart), or a free one; returns once it answers
        PING."""
        executable = shutil.which("redis-server")
        assert executable is not None, REDIS_MISSING
        for _ in range(5):  # a free port may be taken between the pick and the bind
            port = self.port or free_port()
            args = [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                    "--logfile", "", "--protected-mode", "no"]
            if self.directory is not None:
                args += ["--dir", str(self.directory), "--appendonly", "yes",
                         "--appendfsync", "always"]
            else:
                args += ["--appendonly", "no"]
            if self.password:
                args += ["--requirepass", self.password]
            # Unbuffered: select() then sees every line that arrived, none hidden in a buffer.
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    bufsize=0)
            if _wait_for_line(proc, b"Ready to accept connections", timeout=20):
                self.proc, self.port = proc, port
                assert self.ping(), "redis-server said it was ready but does not answer"
                return self
            _stop(proc)
            if self.port:  # a restart must get its port back
                break
        raise RuntimeError(f"redis-server did not start on port {self.port or 'any'}")

    def ping(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=5) as sock:
            if self.password:
                sock.sendall(f"AUTH {self.password}\r\n".encode())
                sock.recv(64)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
        return False

    def stop(self) -> None:
        """SIGTERM, and wait (bounded) until it exited: with a directory, it flushed."""
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def _wait_for_line(proc: subprocess.Popen[bytes], marker: bytes, timeout: float) -> bool:
    """Read ``proc``'s output (bounded in lines and time) until a line holds ``marker``;
    False if it exits or the time runs out first."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    for _ in range(500):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        readable, _, _ = select.select([proc.stdout], [], [], left)
        if not readable:
            return False
        line = proc.stdout.readline()
        if not line:
            return False
        if marker in line:
            # Keep draining its output in the background, so that it never blocks on a
            # full pipe: hand the pipe to a reader that discards.
            _drain(proc)
            return True
    return False


def _drain(proc: subprocess.Popen[bytes]) -> None:
    import threading

    def discard() -> None:
        assert proc.stdout is not None
        with contextlib.suppress(OSError, ValueError):
            for _ in iter(lambda: proc.stdout.read(4096), b""):
                pass

    threading.Thread(target=discard, daemon=True).start()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


# -- stores by kind, for the contract tests and the worker processes ------------------------


def open_shared(kind: str, target: str, namespace: str, **options: Any) -> Any:
    """A new handle (its own cache) on the SQLite file or Redis database ``target``."""
    if kind == "sqlite":
        from m2mauth.server.sqlite_store import SQLiteStore

        return SQLiteStore(target, namespace=namespace, **options)
    from m2mauth.server.redis_store import RedisStore

    return RedisStore(target, namespace=namespace, **options)


# -- worker processes --------------------------------------------------------------------


def worker_round(kind: str, target: str, namespace: str, index: int, barrier: Any,
                 appends: int) -> dict[str, Any]:
    """One process of several on one store, all released together by ``barrier``: take
    faults until none is left, race to register one client id, race to remember one jti,
    append ``appends`` records, rotate an ES256 key; what it got, for the parent to check."""
    from m2mauth.server import ClientSettings
    from m2mauth.server.keys import generate_signing_key

    store = open_shared(kind, target, namespace)
    key = generate_signing_key("ES256")
    barrier.wait(timeout=60)
    taken = []
    for _ in range(10_000):  # bounded; ends when the queue is empty
        fault = store.take_fault("token")
        if fault is None:
            break
        taken.append((fault["id"], fault["remaining"]))
    won = store.add_client(ClientSettings("same", f"secret-{index}"))
    fresh = store.remember_jti("client", "one-jti", 2_000_000_000.0, 1_700_000_000.0)
    for n in range(appends):
        store.append_record("token", {"worker": index, "n": n})
    store.add_signing_key(key)
    store.close()
    return {"taken": taken, "won": won, "jti": fresh, "kid": key.kid, "pid": os.getpid()}


def worker_change(kind: str, target: str, namespace: str) -> str:
    """Another process's change: a client, the clock frozen; returns nothing but its pid."""
    from m2mauth.server import ClientSettings
    from m2mauth.server.store import ClockState

    store = open_shared(kind, target, namespace)
    store.add_client(ClientSettings("from-another-process", "s"))
    store.update_clock(lambda state: ClockState(frozen_at=1_700_000_123.0))
    store.close()
    return str(os.getpid())


def in_process(queue: Any, index: int, function: Any, args: tuple[Any, ...]) -> None:
    """A spawned process's body: ``function(*args)``, its result (or its error) on the
    queue."""
    import traceback

    try:
        queue.put((index, True, function(*args)))
    except BaseException:  # reported to the parent, which fails the test with it
        queue.put((index, False, traceback.format_exc()))
