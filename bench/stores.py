"""What a shared state store costs on the token path, against the in-memory store measured in
the same run.

(a) In this process, through Flask's test client (no HTTP, no sockets but the store's): the
    median microseconds of one token request (client_secret_basic, ES256, so that signing is
    cheap and the store shows) with each store, the lab on (every request is also written to
    the request log) and off (reads only: the one version check). The rounds alternate the
    stores, so drift hits them alike.
(b) `m2mauth serve --store ...` (waitress, its own process each), a keep-alive sequential
    loop: tokens per second with each store and the ratio to memory's.

Redis is a `redis-server` this script starts on a free loopback port (skipped if it is not
installed); SQLite a file in a temporary directory.

Run: python bench/stores.py [--requests 2000] [--repeat 5] [--http-requests 500]
"""

from __future__ import annotations

import argparse
import base64
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import requests
from _serve import start_serve

GRANT = {"grant_type": "client_credentials"}
AUTH = {"Authorization": "Basic " + base64.b64encode(b"demo-client:demo-secret").decode()}


def start_redis() -> tuple[subprocess.Popen | None, str | None]:
    executable = shutil.which("redis-server")
    if executable is None:
        return None, None
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from _store_support import RedisServer

    server = RedisServer().start()
    return server, server.url()


def in_process(stores: dict[str, str], n: int, repeat: int) -> dict[tuple[str, bool], float]:
    """Median µs per token request for each (store, lab on)."""
    from m2mauth.server import ServerSettings, create_app

    clients = {}
    for name, url in stores.items():
        for lab in (True, False):
            settings = replace(ServerSettings(algorithm="ES256", ephemeral_keys=True,
                                              lab=lab), store=url)
            if url.startswith("redis"):
                import redis

                redis.Redis.from_url(url).flushdb()
            client = create_app(settings).test_client()
            client.post("/token", data=GRANT, headers=AUTH)  # warm
            clients[(name, lab)] = client
    times: dict[tuple[str, bool], list[float]] = {key: [] for key in clients}
    for _ in range(repeat):
        for key, client in clients.items():
            start = time.perf_counter()
            for _ in range(n):
                client.post("/token", data=GRANT, headers=AUTH)
            times[key].append((time.perf_counter() - start) / n * 1e6)
            if key[1]:
                client.delete("/admin/requests")  # the same (small) log each round
    return {key: statistics.median(values) for key, values in times.items()}


def over_http(stores: dict[str, str], n: int, repeat: int) -> dict[str, float]:
    """Median tokens/s of `m2mauth serve --store URL` for each store."""
    servers = {}
    try:
        for name, url in stores.items():
            if url.startswith("redis"):
                import redis

                redis.Redis.from_url(url).flushdb()
            proc, issuer = start_serve("--algorithm", "ES256", "--ephemeral-keys",
                                       "--store", url)
            session = requests.Session()
            session.post(issuer + "/token", data=GRANT, headers=AUTH, timeout=10)
            servers[name] = (proc, issuer, session)
        rates: dict[str, list[float]] = {name: [] for name in servers}
        for _ in range(repeat):
            for name, (_, issuer, session) in servers.items():
                start = time.perf_counter()
                for _ in range(n):
                    session.post(issuer + "/token", data=GRANT, headers=AUTH,
                                 timeout=10).raise_for_status()
                rates[name].append(n / (time.perf_counter() - start))
                session.delete(issuer + "/admin/requests", timeout=10)
        return {name: statistics.median(values) for name, values in rates.items()}
    finally:
        for proc, _, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--http-requests", type=int, default=500)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="m2mauth-bench-"))
    directory.chmod(0o700)
    redis_server, redis_url = start_redis()
    try:
        stores = {"memory": "memory", "sqlite": f"sqlite:{directory / 'state.db'}"}
        if redis_url is not None:
            stores["redis"] = redis_url
        else:
            print("(redis-server not installed: Redis skipped)")
        local = in_process(stores, args.requests, args.repeat)
        print(f"(a) in process (Flask test client), {args.requests} token requests x "
              f"{args.repeat} rounds, median µs per request; ES256")
        print(f"{'store':<8} {'lab on':>9} {'+ vs memory':>12} {'lab off':>9} {'+ vs memory':>12}")
        for name in stores:
            on, off = local[(name, True)], local[(name, False)]
            print(f"{name:<8} {on:>9.0f} {on - local[('memory', True)]:>+12.0f} "
                  f"{off:>9.0f} {off - local[('memory', False)]:>+12.0f}")
        remote = over_http(stores, args.http_requests, args.repeat)
        print(f"(b) m2mauth serve, keep-alive sequential loop, {args.http_requests} token "
              f"requests x {args.repeat} rounds (median); ES256, lab on")
        print(f"{'store':<8} {'tokens/s':>9} {'ratio':>7}")
        for name, rate in remote.items():
            print(f"{name:<8} {rate:>9.0f} {rate / remote['memory']:>7.2f}")
    finally:
        if redis_server is not None:
            redis_server.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
