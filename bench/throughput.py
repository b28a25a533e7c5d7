"""Token requests per second over loopback HTTP: `m2mauth serve` (one process, and
``--workers 2`` on the SQLite store) against a bare Flask + PyJWT token view on gunicorn with
2 sync workers, started in the same run.

* baseline     – bench/_bare_app.py (the bare view of bench/token_inprocess.py: parse the
                 form, check the Basic secret with hmac.compare_digest, sign an RFC 9068-shaped
                 JWT with PyJWT) under ``gunicorn -w 2 -k sync``;
* serve        – ``m2mauth serve --algorithm ALG`` as shipped (waitress, one process, INFO log
                 line per token to stderr, here /dev/null);
* serve -w 2   – ``m2mauth serve --algorithm ALG --workers 2 --store sqlite:TMP/state.db``.

Load: wrk (Debian's package) when it is on PATH, else a keep-alive Python load generator
(threads over http.client); POST /token, HTTP Basic demo-client:demo-secret,
grant_type=client_credentials. Every answer must be a 200: a run with any other status is
reported and fails. Method: per algorithm and connection count, R rounds of D seconds per
server, the order rotating per round; reported: median requests/s per server and the median of
the per-round ratios to the baseline (1.00x = as fast as the bare app on 2 gunicorn workers).

Targets (issue 13, at -c8): serve -w 2 >= 0.90x for RS256 and >= 0.75x for ES256; serve (one
process) >= 0.60x for RS256.
Run: python bench/throughput.py [--algs RS256,ES256] [--connections 1,8] [--duration 5]
     [--rounds 3] [--python-load]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import jwt
import requests
from _serve import start_serve

BENCH = Path(__file__).resolve().parent
BODY = b"grant_type=client_credentials"
AUTH = "Basic " + base64.b64encode(b"demo-client:demo-secret").decode()
TARGETS = {("serve -w 2", "RS256"): 0.90, ("serve -w 2", "ES256"): 0.75,
           ("serve", "RS256"): 0.60}
TARGET_CONNECTIONS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, deadline: float = 30.0) -> None:
    """Poll (bounded) until a token request is answered 200 with a JWT."""
    end = time.monotonic() + deadline
    while True:
        try:
            r = requests.post(url, data={"grant_type": "client_credentials"},
                              auth=("demo-client", "demo-secret"), timeout=5)
            if r.status_code == 200:
                jwt.get_unverified_header(r.json()["access_token"])
                return
        except requests.ConnectionError:
            pass
        if time.monotonic() > end:
            raise RuntimeError(f"{url} did not answer a token request in {deadline:.0f} s")
        time.sleep(0.1)  # bounded by the deadline above: the server is starting


def start_baseline(alg: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "M2MAUTH_BENCH_ALG": alg}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", "2", "-k", "sync", "--chdir", str(BENCH),
         "-b", f"127.0.0.1:{port}", "--log-level", "warning", "_bare_app:app"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return _ready(proc, f"http://127.0.0.1:{port}/token")


def start_m2mauth(alg: str, *extra: str) -> tuple[subprocess.Popen, str]:
    proc, issuer = start_serve("--algorithm", alg, *extra)
    return _ready(proc, issuer + "/token")


def _ready(proc: subprocess.Popen, url: str) -> tuple[subprocess.Popen, str]:
    """``proc`` and its token URL once it answers; killed if it never does."""
    try:
        _wait_ready(url)
    except BaseException:
        proc.kill()
        raise
    return proc, url


def has_workers() -> bool:
    out = subprocess.run([sys.executable, "-m", "m2mauth.server.cli", "serve", "--help"],
                         capture_output=True, text=True, timeout=30).stdout
    return "--workers" in out


# -- load generators ------------------------------------------------------------------------

_LUA = f"""wrk.method = "POST"
wrk.body = "{BODY.decode()}"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "{AUTH}"
"""


def wrk_load(url: str, connections: int, seconds: float, script: str) -> tuple[float, int]:
    """Requests/s and the number of answers that were not 2xx/3xx or failed (wrk -t1)."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", script, url],
        capture_output=True, text=True, timeout=seconds + 60).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read \d+, write (\d+), timeout (\d+)", out)
    failed = int(bad.group(1)) if bad else 0
    if errors:  # read errors are servers closing after a response (gunicorn sync): not failures
        failed += sum(int(g) for g in errors.groups())
    return rate, failed


def python_load(url: str, connections: int, seconds: float) -> tuple[float, int]:
    """Requests/s and failures from ``connections`` keep-alive client threads (http.client);
    a server that closes after each answer gets a new connection."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    stop = time.monotonic() + seconds
    counts = [[0, 0] for _ in range(connections)]
    headers = {"Authorization": AUTH, "Content-Type": "application/x-www-form-urlencoded"}

    def run(slot: list[int]) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        while time.monotonic() < stop:
            try:
                conn.request("POST", "/token", BODY, headers)
                response = conn.getresponse()
                response.read()
                slot[0 if response.status == 200 else 1] += 1
                if response.will_close:
                    conn.close()
            except (OSError, http.client.HTTPException):
                slot[1] += 1
                conn.close()
        conn.close()

    threads = [threading.Thread(target=run, args=(slot,)) for slot in counts]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 30)
    elapsed = time.monotonic() - start
    return sum(c[0] for c in counts) / elapsed, sum(c[1] for c in counts)


# -- the run --------------------------------------------------------------------------------

def measure(servers: dict[str, str], connections: int, seconds: float, rounds: int,
            load: Callable[[str, int, float], tuple[float, int]]) -> dict[str, dict]:
    names = list(servers)
    rates: dict[str, list[float]] = {n: [] for n in names}
    failed: dict[str, int] = {n: 0 for n in names}
    load(servers[names[0]], connections, 1)  # warm-up
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            rate, bad = load(servers[name], connections, seconds)
            rates[name].append(rate)
            failed[name] += bad
    result = {}
    for name in names:
        ratios = [a / b for a, b in zip(rates[name], rates["baseline"], strict=True)]
        result[name] = {"rps": statistics.median(rates[name]), "ratio": statistics.median(ratios),
                        "lo": min(ratios), "hi": max(ratios), "failed": failed[name]}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algs", default="RS256,ES256")
    parser.add_argument("--connections", default="1,8")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--python-load", action="store_true",
                        help="use the Python load generator even when wrk is installed")
    args = parser.parse_args()
    algs = args.algs.split(",")
    conns = [int(c) for c in args.connections.split(",")]
    use_wrk = shutil.which("wrk") is not None and not args.python_load
    workers = has_workers()

    tmp = tempfile.mkdtemp(prefix="m2mauth-bench-")
    script = os.path.join(tmp, "token.lua")
    Path(script).write_text(_LUA)

    def load(url: str, c: int, s: float) -> tuple[float, int]:
        return wrk_load(url, c, s, script) if use_wrk else python_load(url, c, s)

    rows = []
    try:
        for alg in algs:
            procs = []
            try:
                servers = {}
                proc, servers["baseline"] = start_baseline(alg)
                procs.append(proc)
                proc, servers["serve"] = start_m2mauth(alg)
                procs.append(proc)
                if workers:
                    store = f"sqlite:{tmp}/state-{alg}.db"
                    proc, servers["serve -w 2"] = start_m2mauth(alg, "--workers", "2",
                                                                "--store", store)
                    procs.append(proc)
                for c in conns:
                    for name, r in measure(servers, c, args.duration, args.rounds,
                                           load).items():
                        rows.append((alg, c, name, r))
            finally:
                for proc in procs:
                    proc.terminate()
                for proc in procs:
                    try:
                        proc.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        proc.kill()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    generator = "wrk -t1" if use_wrk else "Python keep-alive threads"
    print(f"POST /token over loopback, {generator}, {args.rounds} rounds x {args.duration:.0f} s"
          f" per server (medians); baseline: bare Flask + PyJWT on gunicorn -w 2 -k sync;"
          f" {os.cpu_count()} CPUs shared with the load generator")
    print(f"{'alg':<6} {'conns':>5} {'server':<11} {'req/s':>8} {'ratio':>7} "
          f"{'min-max':>11} {'target':>7} {'failed':>7}")
    ok = True
    for alg, c, name, r in rows:
        target = TARGETS.get((name, alg)) if c == TARGET_CONNECTIONS else None
        verdict = "" if target is None else (f">={target:.2f}" + (" ok" if r["ratio"] >= target
                                                                 else " MISS"))
        ok &= r["failed"] == 0
        print(f"{alg:<6} {c:>5} {name:<11} {r['rps']:>8.0f} {r['ratio']:>6.2f}x "
              f"{r['lo']:>5.2f}-{r['hi']:.2f}x {verdict:>7} {r['failed']:>7}")
    if not workers:
        print("(this m2mauth has no `serve --workers`: that row is left out)")
    if not ok:
        print("FAILED: some answers were not 200 (the 'failed' column)", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
