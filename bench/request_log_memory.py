"""How much memory a server keeps for hostile requests: `m2mauth serve` on a free port gets N
unauthenticated token requests with 64 KiB bodies of resource= values, then (baseline, same
run, fresh server) N small ones; the RSS growth of each is printed with their ratio. Issue 9
item 1's target: under 50 MB for 5,000 hostile requests.

Run: python bench/request_log_memory.py [--requests 5000]
"""

from __future__ import annotations

import argparse

import requests
from _serve import rss_mb, start_serve

FORM = "application/x-www-form-urlencoded"


def _hostile_body() -> str:
    body = "grant_type=client_credentials&scope=" + "s" * 2000
    while len(body) < 64 * 1024 - 1100:
        body += "&resource=https://x.test/" + "r" * 1000
    return body


def _growth(body: str, n: int) -> tuple[float, float]:
    proc, issuer = start_serve()
    token_url = issuer + "/token"
    try:
        with requests.Session() as http:
            http.post(token_url, data=body, headers={"Content-Type": FORM}, timeout=10)
            start = rss_mb(proc.pid)
            for _ in range(n):
                http.post(token_url, data=body, headers={"Content-Type": FORM}, timeout=10)
        return start, rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    args = parser.parse_args()
    hostile = _growth(_hostile_body(), args.requests)
    small = _growth("grant_type=client_credentials", args.requests)
    print(f"{args.requests} unauthenticated token requests per server, RSS in MB")
    print(f"{'requests':<22} {'start':>7} {'end':>7} {'growth':>7}")
    for name, (start, end) in (("64 KiB of resource=", hostile), ("small (baseline)", small)):
        print(f"{name:<22} {start:>7.1f} {end:>7.1f} {end - start:>7.1f}")
    base = max(small[1] - small[0], 0.1)
    print(f"growth ratio hostile / small: {(hostile[1] - hostile[0]) / base:.2f}")


if __name__ == "__main__":
    main()
