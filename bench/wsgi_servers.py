"""Which HTTP server runs `m2mauth serve`: the measurements behind the choice of waitress.

Each candidate serves the same app (`create_app()` on built-in defaults) in one process of
its own on a loopback port:

- ``waitress``: `m2mauth serve` itself (waitress as m2mauth configures it);
- ``werkzeug``: werkzeug's threaded development server, what `serve` used before (baseline);
- ``cheroot``: cheroot's thread pool (10 threads, 10 s socket timeout), if installed;
- ``gunicorn``: one gunicorn gthread worker with 8 threads (one process holds the lab's
  state), if installed.

Three measurements per candidate:

1. tokens per second with wrk at 8 connections (RS256 and ES256; the median of ``--rounds``
   runs, candidates alternating), and the ratio to werkzeug in the same run;
2. with ``--slow`` connections (default 500) held half-open (headers never finished), one
   well-behaved token request every 0.2 s for ``--hold`` seconds: how many got a 200 (3 s
   timeout each) and their median latency;
3. with the server's open-file limit at 1,024 and 1,500 such connections: the server's CPU
   use while they are held (spinning shows as ~100%) and how soon it answers once they close.

Every candidate logs as `serve` does (an INFO line per token request). Needs wrk (Debian
package ``wrk``). Run: python bench/wsgi_servers.py [--seconds 8] [--rounds 3] [--slow 500]
[--hold 10] [--only waitress,werkzeug]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import re
import resource
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

CANDIDATES = ("waitress", "werkzeug", "cheroot", "gunicorn")
BASIC = "Basic ZGVtby1jbGllbnQ6ZGVtby1zZWNyZXQ="  # demo-client:demo-secret, the public demo
TOKEN_REQUEST = (
    b"POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: " + BASIC.encode()
    + b"\r\nContent-Type: application/x-www-form-urlencoded\r\nConnection: close\r\n"
    b"Content-Length: 29\r\n\r\ngrant_type=client_credentials")
WRK_SCRIPT = f"""wrk.method = "POST"
wrk.body = "grant_type=client_credentials"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "{BASIC}"
"""


def make_app():
    """The app the non-m2mauth candidates serve (gunicorn calls this as its factory)."""
    from m2mauth.server import create_app
    from m2mauth.server.cli import _configure_logging
    from m2mauth.server.settings import ServerSettings

    _configure_logging(verbose=False)  # as `serve` logs: one INFO line per token request
    return create_app(ServerSettings(port=int(os.environ["BENCH_PORT"]),
                                     algorithm=os.environ.get("BENCH_ALG", "RS256")))


def _serve_child(kind: str) -> None:
    """The server process of one candidate (this file run with --child KIND)."""
    port = int(os.environ["BENCH_PORT"])
    app = make_app()
    if kind == "werkzeug":
        from werkzeug.serving import WSGIRequestHandler, make_server

        class Quiet(WSGIRequestHandler):  # as serve ran it: no access line per request
            def log_request(self, *args: object) -> None:
                pass

        make_server("127.0.0.1", port, app, threaded=True,
                    request_handler=Quiet).serve_forever()
    elif kind == "cheroot":
        from cheroot import wsgi

        wsgi.Server(("127.0.0.1", port), app, numthreads=10, timeout=10,
                    request_queue_size=1024).safe_start()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    kind: str
    proc: subprocess.Popen
    port: int

    def pids(self) -> list[int]:
        found = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                               text=True).stdout.split()
        return [self.proc.pid, *map(int, found)]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start(kind: str, alg: str = "RS256", nofile: int | None = None) -> Server:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("M2MAUTH_")}
    env.update(BENCH_PORT=str(port), BENCH_ALG=alg)

    def limit_files() -> None:
        if nofile:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    here = os.path.dirname(os.path.abspath(__file__))
    if kind == "waitress":
        cmd = [sys.executable, "-m", "m2mauth.server.cli", "serve", "--port", str(port),
               "--algorithm", alg]
    elif kind == "gunicorn":
        cmd = [sys.executable, "-m", "gunicorn", "-k", "gthread", "-w", "1", "--threads", "8",
               "--worker-connections", "2000", "-b", f"127.0.0.1:{port}", "--chdir", here,
               "--log-level", "warning", "wsgi_servers:make_app()"]
    else:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", kind]
    proc = subprocess.Popen(cmd, env=env, preexec_fn=limit_files, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    server = Server(kind, proc, port)
    for _ in range(200):  # bounded: 20 s for the server to answer
        if _token(port, 0.5)[0]:
            return server
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"{kind} did not start")


def _token(port: int, timeout: float) -> tuple[bool, float]:
    """One token request on a new connection: (got a 200, seconds taken)."""
    began = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(TOKEN_REQUEST)
            status = sock.recv(64)
        return status.split(b" ", 2)[1:2] == [b"200"], time.perf_counter() - began
    except OSError:
        return False, time.perf_counter() - began


def wrk_rate(kind: str, alg: str, seconds: int, script: str) -> float:
    server = start(kind, alg)
    try:
        url = f"http://127.0.0.1:{server.port}/token"
        subprocess.run(["wrk", "-t2", "-c8", "-d2s", "-s", script, url], capture_output=True,
                       check=True)  # warm-up
        out = subprocess.run(["wrk", "-t2", "-c8", f"-d{seconds}s", "-s", script, url],
                             capture_output=True, text=True, check=True).stdout
    finally:
        server.stop()
    if "Non-2xx" in out:
        raise RuntimeError(f"{kind}: wrk saw non-2xx answers:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


@contextlib.contextmanager
def half_open(port: int, count: int):
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            socks.append(sock)
        time.sleep(0.5)  # let the server accept what it will
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.send(b"POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        yield socks
    finally:
        for sock in socks:
            sock.close()


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def slow_clients(kind: str, count: int, hold: float) -> tuple[int, int, float]:
    """(answered, tried, median seconds) with ``count`` half-open connections held."""
    server = start(kind)
    latencies, tried = [], 0
    try:
        with half_open(server.port, count):
            end = time.monotonic() + hold
            while time.monotonic() < end:
                tried += 1
                ok, took = _token(server.port, 3)
                if ok:
                    latencies.append(took)
                select.select([], [], [], 0.2)
    finally:
        server.stop()
    latencies.sort()
    return len(latencies), tried, latencies[len(latencies) // 2] if latencies else float("nan")


def file_limit(kind: str, count: int = 1500, nofile: int = 1024) -> tuple[float, float | None]:
    """(CPU share while saturated, seconds to answer again once the connections close)."""
    server = start(kind, nofile=nofile)
    try:
        with half_open(server.port, count):
            pids, began = server.pids(), time.monotonic()
            cpu_began = _cpu(pids)
            for _ in range(6):  # ~3 s: a well-behaved client retrying in the meantime
                _token(server.port, 0.5)
            share = (_cpu(pids) - cpu_began) / (time.monotonic() - began)
        released = time.monotonic()
        while time.monotonic() - released < 30:
            if _token(server.port, 2)[0]:
                return share, time.monotonic() - released
        return share, None
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=8, help="wrk duration per run")
    parser.add_argument("--rounds", type=int, default=3, help="wrk runs per candidate")
    parser.add_argument("--slow", type=int, default=500)
    parser.add_argument("--hold", type=float, default=10)
    parser.add_argument("--only", default=",".join(CANDIDATES))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _serve_child(args.child)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096 and (hard == resource.RLIM_INFINITY or hard >= 4096):
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))
    kinds = [k for k in args.only.split(",") if k in ("waitress", "werkzeug")
             or importlib.util.find_spec(k) is not None]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    rows: dict[str, dict] = {kind: {} for kind in kinds}
    try:
        for alg in ("RS256", "ES256"):  # candidates alternate, round after round
            rates: dict[str, list[float]] = {kind: [] for kind in kinds}
            for _ in range(args.rounds):
                for kind in kinds:
                    rates[kind].append(wrk_rate(kind, alg, args.seconds, script.name))
            for kind in kinds:
                rows[kind][alg] = statistics.median(rates[kind])
        for kind in kinds:
            rows[kind]["slow"] = slow_clients(kind, args.slow, args.hold)
            rows[kind]["limit"] = file_limit(kind)
            print(f"measured {kind}", file=sys.stderr)
    finally:
        os.unlink(script.name)
    base = rows.get("werkzeug")
    print(f"wrk -c8, median of {args.rounds} x {args.seconds}s (tokens/s, ratio to werkzeug "
          "in this run); "
          f"{args.slow} half-open connections held {args.hold:.0f}s; "
          "1,500 held at a 1,024 file limit")
    print(f"{'server':<9} {'RS256':>7} {'ratio':>6} {'ES256':>7} {'ratio':>6} "
          f"{'answered':>9} {'median':>8} {'CPU at limit':>13} {'answers again':>14}")
    for kind, row in rows.items():
        answered, tried, median = row["slow"]
        share, again = row["limit"]
        ratios = [row[a] / base[a] if base else float("nan") for a in ("RS256", "ES256")]
        print(f"{kind:<9} {row['RS256']:>7.0f} {ratios[0]:>6.2f} {row['ES256']:>7.0f} "
              f"{ratios[1]:>6.2f} {f'{answered}/{tried}':>9} {median * 1000:>6.1f}ms "
              f"{share:>12.0%} {'never' if again is None else f'{again:.1f}s':>14}")


if __name__ == "__main__":
    main()
