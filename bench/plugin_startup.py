"""What the pytest plugin costs: import time in a run that does not use it, session start
(server object created -> listening -> first 200 from the metadata endpoint, imports
excluded), and the per-test reset. Medians over repeated runs, each against a baseline
measured in the same run, printed as a table with the issue's targets.

Run: python bench/plugin_startup.py [--repeat N]
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _median_ms(fn, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def _pytest_run(test_dir: str, *extra: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra,
                    test_dir], check=True, capture_output=True, env=env, cwd=test_dir)


def _plugin_import_ms(repeat: int) -> tuple[float, float]:
    """(import of the plugin module alone, pytest itself already imported) in subprocesses."""
    code = ("import time, pytest; t = time.perf_counter(); import m2mauth.server.lab.pytest_plugin;"
            " print((time.perf_counter() - t) * 1000)")
    samples = [float(subprocess.run([sys.executable, "-c", code], check=True,
                                    capture_output=True, text=True).stdout)
               for _ in range(repeat)]
    return statistics.median(samples), min(samples)


def _get_metadata(host: str, port: int) -> None:
    conn = http.client.HTTPConnection(host, port, timeout=5)
    conn.request("GET", "/.well-known/oauth-authorization-server")
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.status == 200, response.status


def _bare_server_start() -> float:
    """Baseline: ms for the same HTTP server (m2mauth.server.serving, waitress) with a
    trivial WSGI app to answer its first 200 (shutdown excluded)."""
    from m2mauth.server.serving import BackgroundServer, bind_app

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]

    start = time.perf_counter()
    server, _ = bind_app("127.0.0.1", 0, lambda _port: app)
    running = BackgroundServer(server)
    _get_metadata("127.0.0.1", running.port)
    elapsed = (time.perf_counter() - start) * 1000
    running.stop()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    rows = []

    # 1. A pytest run that never uses the plugin: with it (entry point) and without it.
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "test_plain.py").write_text("def test_plain():\n    assert 1 + 1 == 2\n")
        _pytest_run(tmp)  # warm the file system caches
        with_plugin = _median_ms(lambda: _pytest_run(tmp), args.repeat)
        without = _median_ms(lambda: _pytest_run(tmp, "-p", "no:m2mauth"), args.repeat)
    import_median, import_min = _plugin_import_ms(args.repeat)
    rows.append(("pytest run, plugin unused (ms)", with_plugin, without, "< +50 ms"))
    rows.append(("  plugin module import alone (ms)", import_median, None, f"min {import_min:.2f}"))

    # 2. Session start with the shipped keys, imports excluded.
    from m2mauth.server.lab.idp import IdentityProvider
    from m2mauth.server.settings import ServerSettings

    def session_start() -> float:
        # stop() waits for the serving thread (poll interval 0.05 s): time the start only.
        start = time.perf_counter()
        idp = IdentityProvider.start(ServerSettings())
        _get_metadata("127.0.0.1", idp.server.port)
        elapsed = (time.perf_counter() - start) * 1000
        idp.stop()
        return elapsed

    session_start(), _bare_server_start()  # warm-up: first-use imports inside the libraries
    starts = [session_start() for _ in range(args.repeat)]
    bare = [_bare_server_start() for _ in range(args.repeat)]
    rows.append(("session start to first 200 (ms)", statistics.median(starts),
                 statistics.median(bare), "< 50 ms"))

    # 3. Per-test reset after a test-sized mess, against a reset of a clean server.
    idp = IdentityProvider.start(ServerSettings())
    try:
        def dirty_reset() -> float:
            idp.add_client("bench", scopes=["read"])
            idp.rotate_key()
            idp.fail_next(3, status=503)
            idp.clock.advance(3600)
            for _ in range(5):
                idp.issue_token("bench")
            start = time.perf_counter()
            idp.reset()
            return (time.perf_counter() - start) * 1000

        dirty = statistics.median(dirty_reset() for _ in range(max(args.repeat, 50)))
        clean = _median_ms(idp.reset, max(args.repeat, 50))
    finally:
        idp.stop()
    rows.append(("per-test reset (ms)", dirty, clean, "< 1 ms"))

    print(f"medians over {args.repeat} runs (reset: {max(args.repeat, 50)})")
    print(f"{'measure':<36} {'m2mauth':>9} {'baseline':>9} {'ratio':>6}  target")
    for name, value, base, target in rows:
        ratio = f"{value / base:6.2f}" if base else "     -"
        base_text = f"{base:9.2f}" if base is not None else "        -"
        print(f"{name:<36} {value:9.2f} {base_text} {ratio}  {target}")
    print("baselines: pytest run with -p no:m2mauth; the same HTTP server serving a trivial "
          "app; reset of an already clean server")


if __name__ == "__main__":
    main()
