"""`m2mauth serve`'s log output (server/logs.py): the lines logging.basicConfig would write,
written off the request thread, none lost at exit or duplicated across a fork."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import textwrap

import pytest

from m2mauth.server.logs import (
    SERVE_FORMAT,
    BackgroundStreamHandler,
    CachedTimeFormatter,
    configure_logging,
    only_destination,
)


def _record(created: float, msg: str = "token request client_id=%s", args=("'a'",)):
    record = logging.LogRecord("m2mauth.server", logging.INFO, __file__, 1, msg, args, None)
    record.created = created
    record.msecs = (created - int(created)) * 1000
    return record


@pytest.mark.parametrize("created", [1_700_000_000.0, 1_700_000_000.999, 1_700_000_001.0005,
                                     1_800_000_059.5, 1_700_000_000.0])
def test_the_cached_timestamp_is_the_one_logging_writes(created):
    ours, theirs = CachedTimeFormatter(SERVE_FORMAT), logging.Formatter(SERVE_FORMAT)
    for t in (created, created + 0.25, created + 1, created):  # across a second, and back
        assert ours.format(_record(t)) == theirs.format(_record(t))


@pytest.mark.parametrize("created", [1_700_000_000.0, 1_700_000_000.9995, 1_750_000_123.456])
def test_a_line_made_without_a_record_is_the_line_made_from_one(created):
    ours = CachedTimeFormatter(SERVE_FORMAT)
    record = _record(created)
    assert ours.serve_line(created, record.name, record.getMessage()) == \
        logging.Formatter(SERVE_FORMAT).format(record)
    assert CachedTimeFormatter("%(message)s").serve_line(created, "x", "y") is None


def _handler() -> tuple[BackgroundStreamHandler, io.StringIO]:
    out = io.StringIO()
    handler = BackgroundStreamHandler(out)
    handler.setFormatter(CachedTimeFormatter(SERVE_FORMAT))
    return handler, out


def test_lines_are_written_in_order_and_show_what_was_true_when_logged():
    handler, out = _handler()
    logger = logging.Logger("m2mauth.test")
    logger.addHandler(handler)
    scopes = ["read"]
    logger.info("first scopes=%s", scopes)
    scopes.append("write")  # changed after the call: the line keeps what it was
    logger.info("second")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("third")
    handler.flush()
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("m2mauth.test first scopes=['read']")
    assert lines[1].endswith("m2mauth.test second")
    assert lines[2].endswith("m2mauth.test third")
    assert "ValueError: boom" in out.getvalue()
    handler.close()


def test_the_writer_thread_writes_without_being_asked():
    handler, out = _handler()
    handler.interval = 0.01
    logger = logging.Logger("m2mauth.test")
    logger.addHandler(handler)
    logger.info("one")
    for _ in range(500):  # up to 5 s, on a loaded machine
        if "one" in out.getvalue():
            break
        handler._stopping.wait(0.01)
    assert out.getvalue().endswith("m2mauth.test one\n")
    handler.close()
    assert not handler._thread.is_alive()


def test_configure_logging_leaves_a_configured_root_alone():
    root = logging.getLogger()
    if not root.handlers:
        pytest.skip("needs a configured root logger (pytest's)")
    before = list(root.handlers)
    assert configure_logging() is None
    assert root.handlers == before


def _run(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                          text=True, timeout=60, check=True)


def test_no_line_is_lost_at_exit():
    result = _run("""
        import logging
        from m2mauth.server.logs import configure_logging
        configure_logging()
        log = logging.getLogger("m2mauth.server")
        for i in range(2000):
            log.info("line %d", i)
    """)
    lines = result.stderr.splitlines()
    assert [line.rsplit(" ", 1)[1] for line in lines] == [str(i) for i in range(2000)]
    assert all(" m2mauth.server line " in line for line in lines)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_forked_child_writes_its_own_lines_once_and_none_of_the_parents():
    result = _run("""
        import logging, os, sys
        from m2mauth.server.logs import configure_logging
        configure_logging()
        log = logging.getLogger("m2mauth.server")
        log.info("parent before fork")  # queued, perhaps not yet written, at the fork
        pid = os.fork()
        if pid == 0:
            log.info("child line")
            sys.exit(0)  # a normal exit, as a gunicorn worker's: logging.shutdown flushes
        os.waitpid(pid, 0)
        log.info("parent after fork")
    """)
    messages = [line.split(" m2mauth.server ", 1)[1] for line in result.stderr.splitlines()]
    assert sorted(messages) == ["child line", "parent after fork", "parent before fork"]


def test_the_token_line_made_on_the_writer_thread_is_the_line_made_by_the_caller():
    """Where the background handler is the only destination the writer makes the record
    (logs.only_destination); the line is the one logging would write from the caller."""
    result = _run("""
        import logging, sys
        from m2mauth.server.logs import configure_logging, only_destination
        from m2mauth.server.token_request import TokenRequest, log_token_request
        record = TokenRequest(time=0.0, client_id="c\\nid", auth_method="client_secret_basic",
                              grant_type="client_credentials", scope=None, resource=(),
                              status=200, outcome="issued", jti="j1",
                              granted_scope=("read", "write"), audience=("api://x",))
        handler = configure_logging()
        log = logging.getLogger("m2mauth.server")
        assert only_destination(log, logging.INFO) is handler
        log_token_request(record)           # deferred: made on the writer thread
        handler.flush()
        extra = logging.StreamHandler(sys.stderr)
        extra.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
        log.addHandler(extra)               # another destination: made by the caller
        assert only_destination(log, logging.INFO) is None
        log.propagate = False
        log_token_request(record)
    """)
    lines = result.stderr.splitlines()
    assert len(lines) == 2
    expected = ("m2mauth.server token request client_id='c\\nid' auth_method="
                "client_secret_basic scope='read write' audience='api://x' outcome=issued "
                "jti=j1")
    assert [line.split(" ", 2)[2] for line in lines] == [expected, expected]


def test_only_destination_refuses_any_other_handler_or_filter():
    root = logging.getLogger()
    log = logging.getLogger("m2mauth.test.only")
    saved = root.handlers[:]
    handler = BackgroundStreamHandler(io.StringIO())
    try:
        root.handlers[:] = [handler]
        assert only_destination(log, logging.INFO) is handler
        handler.setLevel(logging.WARNING)
        assert only_destination(log, logging.INFO) is None
        handler.setLevel(logging.NOTSET)
        log.addFilter(lambda record: True)
        assert only_destination(log, logging.INFO) is None
        log.filters.clear()
        root.handlers.append(logging.NullHandler())  # e.g. pytest's caplog
        assert only_destination(log, logging.INFO) is None
    finally:
        root.handlers[:] = saved
        handler.close()
