"""How much memory a server keeps for hostile requests: `m2mauth serve` on a free port gets N
unauthenticated token requests with 64 KiB bodies of resource= values, then (baseline, same
run, fresh server) N small ones; the RSS growth of each is printed with their ratio. Issue 9
item 1's target: under 50 MB for 5,000 hostile requests.

Run: python bench/request_log_memory.py [--requests 5000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import requests

FORM = "application/x-www-form-urlencoded"


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _hostile_body() -> str:
    body = "grant_type=client_credentials&scope=" + "s" * 2000
    while len(body) < 64 * 1024 - 1100:
        body += "&resource=https://x.test/" + "r" * 1000
    return body


def _growth(body: str, n: int) -> tuple[float, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("M2MAUTH_")}
    proc = subprocess.Popen([sys.executable, "-m", "m2mauth.server.cli", "serve", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        token_url = None
        for _ in range(30):  # bounded: the banner is a dozen lines
            line = proc.stdout.readline()
            if line.strip().startswith("token "):
                token_url = line.split()[-1]
                break
        assert token_url, "no banner"
        with requests.Session() as http:
            http.post(token_url, data=body, headers={"Content-Type": FORM}, timeout=10)
            start = _rss_mb(proc.pid)
            for _ in range(n):
                http.post(token_url, data=body, headers={"Content-Type": FORM}, timeout=10)
        return start, _rss_mb(proc.pid)
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
