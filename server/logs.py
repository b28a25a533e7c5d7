"""The server's log output as ``m2mauth serve`` sets it up (:func:`configure_logging`): one
INFO line per token request that costs the request thread little.

Per record the request thread only freezes the message and queues the record; a writer thread
formats what has queued every :attr:`BackgroundStreamHandler.interval` seconds and writes it
in whole-line chunks, so a slow or blocked stderr (a container's log pipe) never holds up a
request, and a busy server makes a few writes a second instead of one per request. The
timestamp (``%(asctime)s``, as ``logging.Formatter`` writes it) is made once per second.
The token endpoint's line goes further when this handler is the only place it would go
(:func:`only_destination`): the request thread queues the frozen request record itself, and
the writer makes the log record and the line from it (:meth:`~BackgroundStreamHandler.defer`)
– a batch of them in a row costs a third of what one costs amid a request's other work.

Nothing is lost at exit: ``logging.shutdown`` (run at interpreter exit) flushes and closes the
handler, which writes what is queued. After ``fork`` (``serve --workers N`` forks the app
built in the parent) the child starts with an empty queue of its own and its own writer
thread, started on its first record: the parent's thread does not exist in the child, and the
parent writes the records it queued itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["SERVE_FORMAT", "BackgroundStreamHandler", "CachedTimeFormatter",
           "configure_logging", "only_destination"]

#: What `m2mauth serve` writes per line.
SERVE_FORMAT = "%(asctime)s %(name)s %(message)s"

#: A write of at most this many bytes to a pipe is atomic (POSIX PIPE_BUF): the lines of
#: several worker processes sharing one stderr never interleave within a line.
_CHUNK_BYTES = 4096


class CachedTimeFormatter(logging.Formatter):
    """``logging.Formatter`` with the default ``asctime`` (``2026-12-02 07:03:29,123``) whose
    date and time part is made once per second instead of once per line (``time.strftime``
    is most of what formatting a short line costs)."""

    def __init__(self, fmt: str | None = None) -> None:
        super().__init__(fmt)
        self._second: int | None = None
        self._text = ""
        self._serve_format = fmt == SERVE_FORMAT

    def format(self, record: logging.LogRecord) -> str:
        if self._serve_format and not (record.exc_info or record.exc_text or
                                       record.stack_info):
            # SERVE_FORMAT without %-formatting the record's whole __dict__: the same text.
            record.message = record.getMessage()
            record.asctime = self.formatTime(record)
            return f"{record.asctime} {record.name} {record.message}"
        return super().format(record)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return self._asctime(record.created, record.msecs)

    def _asctime(self, created: float, msecs: float) -> str:
        second = int(created)
        if second != self._second:  # a race only makes the same text twice
            self._text = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        return self.default_msec_format % (self._text, msecs)

    def serve_line(self, created: float, name: str, message: str) -> str | None:
        """The SERVE_FORMAT line of a record made at ``created`` by logger ``name``, without
        the record (None unless this formatter writes SERVE_FORMAT): what :meth:`format`
        would return for it."""
        if not self._serve_format:
            return None
        # LogRecord's msecs, from the same instant (see LogRecord.__init__).
        msecs = int((created - int(created)) * 1000) + 0.0
        return f"{self._asctime(created, msecs)} {name} {message}"


class BackgroundStreamHandler(logging.StreamHandler):
    """A ``StreamHandler`` whose writes happen on a thread of its own, in batches (see the
    module's docstring). ``flush()`` writes what is queued, now, in the calling thread."""

    #: Seconds between the writer thread's batches.
    interval = 0.05

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._reset()
        # Weak references: the fork hooks must not keep a closed handler alive.
        ref = weakref.ref(self)
        os.register_at_fork(before=lambda: _before_fork(ref),
                            after_in_parent=lambda: _after_fork_in_parent(ref),
                            after_in_child=lambda: _reset_in_child(ref))

    def _reset(self) -> None:
        # Appended by any thread, taken by the writer (deque appends and pops are atomic).
        self._queue: deque[logging.LogRecord | _Deferred] = deque()
        self._pid = os.getpid()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._write_lock = threading.Lock()  # one writer at a time: the thread or flush()
        self._held_for_fork = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # Frozen now: the arguments may change (or hold a traceback) by the time the
            # writer runs; what the line shows is what was true when it was logged.
            record.msg = record.getMessage()
            record.args = None
            if record.exc_info:
                record.exc_text = self.format_exception(record)
                record.exc_info = None
            self._queue.append(record)
            if self._thread is None:  # none yet in this process (a fork resets it: _reset)
                self._start()
        except Exception:
            self.handleError(record)

    def defer(self, logger: logging.Logger, level: int, msg: str,
              make_args: Callable[[Any], tuple[Any, ...]], value: Any, func: str) -> None:
        """Queue a line whose record the writer thread makes: ``make_args(value)`` is called
        there, so ``value`` must be immutable. Only for a logger whose one destination this
        handler is (:func:`only_destination`): nothing else would have seen the record
        earlier. The record keeps the caller's time and thread."""
        try:
            self._queue.append(_Deferred((time.time(), threading.current_thread(), logger,
                                          level, msg, make_args, value, func)))
            if self._thread is None:
                self._start()
        except Exception:  # as logging does: a log line never breaks the request
            _report("could not queue a log line")

    def format_exception(self, record: logging.LogRecord) -> str:
        formatter = self.formatter or logging.Formatter()
        return formatter.formatException(record.exc_info)  # type: ignore[arg-type]

    def _start(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._pid != os.getpid():  # forked without the hook (should not happen)
                self._reset()
            if self._thread is None and not self._stopping.is_set():
                self._thread = threading.Thread(target=self._run, name="m2mauth-log-writer",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            self._write_queued()

    def _write_queued(self) -> None:
        with self._write_lock:
            chunk: list[str] = []
            size = 0
            while True:
                try:
                    item = self._queue.popleft()
                except IndexError:
                    break
                try:
                    line = (self._deferred_line(item) if type(item) is _Deferred
                            else self.format(item)) + self.terminator
                except Exception:
                    if type(item) is _Deferred:
                        _report("could not format a log line")
                    else:
                        self.handleError(item)
                    continue
                if chunk and size + len(line) > _CHUNK_BYTES:
                    self._write(chunk)
                    chunk, size = [], 0
                chunk.append(line)
                size += len(line)
            if chunk:
                self._write(chunk)

    def _deferred_line(self, item: _Deferred) -> str:
        formatter = self.formatter
        if type(formatter) is CachedTimeFormatter:
            # The line straight from the deferred parts: no LogRecord to make only to read.
            line = formatter.serve_line(item.created, item.logger.name, item.message())
            if line is not None:
                return line
        return self.format(item.record())

    def _write(self, lines: list[str]) -> None:
        try:
            self.stream.write("".join(lines))
            self.stream.flush()
        except Exception:  # a closed stderr: said once per batch, never raised in the loop
            _report("could not write log lines")

    def flush(self) -> None:
        """Write every queued line now (logging.shutdown calls this at exit)."""
        if self._pid == os.getpid():
            self._write_queued()
        super().flush()

    def close(self) -> None:
        """Stop the writer thread after writing what is queued."""
        self._stopping.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread() \
                and self._pid == os.getpid():
            thread.join(timeout=5)
        self.flush()
        super().close()


class _Deferred(tuple):
    """A line queued before its record was made (see BackgroundStreamHandler.defer): a
    plain tuple underneath (created, thread, logger, level, msg, make_args, value, func),
    the cheapest thing a request can make."""

    __slots__ = ()

    created = property(lambda self: self[0])
    thread = property(lambda self: self[1])
    logger = property(lambda self: self[2])

    def message(self) -> str:
        return self[4] % self[5](self[6])

    def record(self) -> logging.LogRecord:
        logger, level, msg, make_args, value, func = self[2:]
        record = logger.makeRecord(logger.name, level, __file__, 0, msg, make_args(value),
                                   None, func)
        # The caller's instant and thread, as LogRecord.__init__ would have taken them.
        record.created = self.created
        record.msecs = int((self.created - int(self.created)) * 1000) + 0.0
        record.relativeCreated = (self.created - _START) * 1000
        record.thread, record.threadName = self.thread.ident, self.thread.name
        return record


def _logging_start() -> float:
    """When logging started its clock (``relativeCreated`` counts from there)."""
    probe = logging.LogRecord("", 0, "", 0, "", None, None)
    return probe.created - probe.relativeCreated / 1000


_START = _logging_start()


def only_destination(logger: logging.Logger, level: int) -> BackgroundStreamHandler | None:
    """The :class:`BackgroundStreamHandler` that is the one place ``logger``'s records of
    ``level`` go – no handler or filter on the way, the root's only handler – else None.
    Then the writer thread may make the record (:meth:`~BackgroundStreamHandler.defer`):
    nobody would have looked at it sooner."""
    node: logging.Logger | None = logger
    root = logging.root
    while node is not None and node is not root:
        if node.handlers or node.filters or not node.propagate:
            return None
        node = node.parent
    handlers = root.handlers
    if len(handlers) != 1 or root.filters:
        return None
    handler = handlers[0]
    if type(handler) is not BackgroundStreamHandler or handler.filters or \
            level < handler.level:
        return None
    return handler


def _report(what: str) -> None:
    """What logging does when a handler fails: a note on stderr (unless logging is told to
    stay quiet), never an exception into the caller."""
    if logging.raiseExceptions and sys.stderr is not None:
        with contextlib.suppress(Exception):  # stderr itself is gone: nowhere left to say it
            sys.stderr.write(f"--- m2mauth: {what} ---\n")


#: How long a fork waits for a batch being written (a stalled log pipe must not stop it).
_FORK_WAIT = 5.0


def _before_fork(ref: weakref.ReferenceType[BackgroundStreamHandler]) -> None:
    # No batch half-written at the fork: the child would inherit the stream's own lock held
    # by a thread it does not have, and hang on its first line.
    handler = ref()
    if handler is not None:
        handler._held_for_fork = handler._write_lock.acquire(timeout=_FORK_WAIT)


def _after_fork_in_parent(ref: weakref.ReferenceType[BackgroundStreamHandler]) -> None:
    handler = ref()
    if handler is not None and handler._held_for_fork:
        handler._held_for_fork = False
        handler._write_lock.release()


def _reset_in_child(ref: weakref.ReferenceType[BackgroundStreamHandler]) -> None:
    handler = ref()
    if handler is not None:
        handler._reset()  # a new queue, lock and thread of its own


def configure_logging(*, stream: TextIO | None = None) -> logging.Handler | None:
    """The root logger as `m2mauth serve` (and `demo-api`) set it up: INFO and up, one line
    each, to ``stream`` (default stderr) through a :class:`BackgroundStreamHandler`. Like
    ``logging.basicConfig``, it leaves a root logger that has handlers already as it is; the
    handler added, else None."""
    root = logging.getLogger()
    if root.handlers:
        return None
    handler = BackgroundStreamHandler(stream)
    handler.setFormatter(CachedTimeFormatter(SERVE_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler
