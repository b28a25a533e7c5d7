"""Token requests per second over HTTPS (`m2mauth serve --tls`) against plain HTTP, same run.

Two `m2mauth serve` processes (ES256, the same settings but TLS), rounds interleaved so both
see the same machine load; each round times a sequential loop of token requests on one
keep-alive connection, and one on a new connection per request (a full TLS handshake each
time). The ratio of each round is TLS over plain; the table shows the medians.
Run: python bench/tls.py [--requests N] [--rounds R]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import requests
from _serve import start_serve

FORM = {"grant_type": "client_credentials"}
DEMO = ("demo-client", "demo-secret")


def _rate(issuer: str, n: int, verify: str | bool, keep_alive: bool) -> float:
    session = requests.Session() if keep_alive else None
    post = session.post if session is not None else requests.post
    post(issuer + "/token", data=FORM, auth=DEMO, timeout=10, verify=verify).raise_for_status()
    start = time.perf_counter()
    for _ in range(n):
        post(issuer + "/token", data=FORM, auth=DEMO, timeout=10,
             verify=verify).raise_for_status()
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tls_dir:
        plain, plain_issuer = start_serve("--algorithm", "ES256")
        tls, tls_issuer = start_serve("--algorithm", "ES256", "--tls", "--tls-dir", tls_dir)
        ca = str(Path(tls_dir) / "ca.pem")
        try:
            results: dict[str, list[tuple[float, float]]] = {"keep-alive": [], "new": []}
            for i in range(args.rounds):
                for mode, keep in (("keep-alive", True), ("new", False)):
                    # Which goes first alternates, so neither always meets a warmer machine.
                    if i % 2:
                        over_tls = _rate(tls_issuer, args.requests, ca, keep)
                        base = _rate(plain_issuer, args.requests, True, keep)
                    else:
                        base = _rate(plain_issuer, args.requests, True, keep)
                        over_tls = _rate(tls_issuer, args.requests, ca, keep)
                    results[mode].append((base, over_tls))
        finally:
            for proc in (plain, tls):
                proc.terminate()
                proc.wait(timeout=10)
    print(f"ES256 token requests, sequential, {args.requests} x {args.rounds} rounds "
          "(medians; ratio per round)")
    print(f"{'connection':<22} {'plain/s':>8} {'TLS/s':>8} {'TLS/plain':>10}")
    for mode, label in (("keep-alive", "one keep-alive"), ("new", "new per request")):
        rows = results[mode]
        print(f"{label:<22} {statistics.median(r[0] for r in rows):>8.0f} "
              f"{statistics.median(r[1] for r in rows):>8.0f} "
              f"{statistics.median(r[1] / r[0] for r in rows):>10.2f}")


if __name__ == "__main__":
    main()
