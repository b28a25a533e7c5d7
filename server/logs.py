"""The server's log output as ``m2mauth serve`` sets it up (:func:`configure_logging`): one
INFO line per token request that costs the request thread little.

Per record the request thread only freezes the message and queues the record; a writer thread
formats what has queued every :attr:`BackgroundStreamHandler.interval` seconds and writes it
in whole-line chunks, so a slow or blocked stderr (a container's log pipe) never holds up a
request, and a busy server makes a few writes a second instead of one per request. The
timestamp (``%(asctime)s``, as ``logging.Formatter`` writes it) is made once per second.

Nothing is lost at exit: ``logging.shutdown`` (run at interpreter exit) flushes and closes the
handler, which writes what is queued. After ``fork`` (``serve --workers N`` forks the app
built in the parent) the child starts with an empty queue of its own and its own writer
thread, started on its first record: the parent's thread does not exist in the child, and the
parent writes the records it queued itself.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
import weakref
from typing import TextIO

__all__ = ["SERVE_FORMAT", "BackgroundStreamHandler", "CachedTimeFormatter",
           "configure_logging"]

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
        second = int(record.created)
        if second != self._second:  # a race only makes the same text twice
            self._text = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        return self.default_msec_format % (self._text, record.msecs)


class BackgroundStreamHandler(logging.StreamHandler):
    """A ``StreamHandler`` whose writes happen on a thread of its own, in batches (see the
    module's docstring). ``flush()`` writes what is queued, now, in the calling thread."""

    #: Seconds between the writer thread's batches.
    interval = 0.05

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._reset()
        # A weak reference: the fork hook must not keep a closed handler alive.
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _reset_in_child(ref))

    def _reset(self) -> None:
        self._queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self._pid = os.getpid()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._write_lock = threading.Lock()  # one writer at a time: the thread or flush()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # Frozen now: the arguments may change (or hold a traceback) by the time the
            # writer runs; what the line shows is what was true when it was logged.
            record.msg = record.getMessage()
            record.args = None
            if record.exc_info:
                record.exc_text = self.format_exception(record)
                record.exc_info = None
            self._queue.put(record)
            if self._thread is None or self._pid != os.getpid():
                self._start()
        except Exception:
            self.handleError(record)

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
                    record = self._queue.get_nowait()
                except queue.Empty:
                    break
                try:
                    line = self.format(record) + self.terminator
                except Exception:
                    self.handleError(record)
                    continue
                if chunk and size + len(line) > _CHUNK_BYTES:
                    self._write(chunk)
                    chunk, size = [], 0
                chunk.append(line)
                size += len(line)
            if chunk:
                self._write(chunk)

    def _write(self, lines: list[str]) -> None:
        try:
            self.stream.write("".join(lines))
            self.stream.flush()
        except Exception:
            # What logging does when a stream fails (a closed stderr): say so once per batch
            # on stderr, never raise into the writer thread's loop.
            if logging.raiseExceptions and sys.stderr is not None:
                sys.stderr.write("--- m2mauth: could not write log lines ---\n")

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


def _reset_in_child(ref: weakref.ReferenceType[BackgroundStreamHandler]) -> None:
    handler = ref()
    if handler is not None:
        handler._reset()


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
