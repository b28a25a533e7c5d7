"""Tokens per second from a simple sequential loop against `m2mauth serve`, per algorithm.

Baseline in the same run: the same loop against the server's JWKS endpoint (same HTTP stack,
no client authentication, no signing), so the ratio shows what issuing a token costs on top of
a plain request. Run: python bench/token_endpoint.py [--requests N] [--repeat R]
"""

from __future__ import annotations

import argparse
import statistics
import time

import requests
from _serve import start_serve


def _rate(fn, n: int, repeat: int) -> float:
    """Median requests per second over ``repeat`` runs of ``n`` sequential calls."""
    rates = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for alg in ("RS256", "ES256", "EdDSA", "PS256"):
        proc, issuer = start_serve("--algorithm", alg)
        try:
            session = requests.Session()
            token_url, jwks_url = issuer + "/token", issuer + "/jwks.json"

            def token(session=session, token_url=token_url) -> None:
                r = session.post(token_url, data={"grant_type": "client_credentials"},
                                 auth=("demo-client", "demo-secret"), timeout=10)
                r.raise_for_status()

            def jwks(session=session, jwks_url=jwks_url) -> None:
                session.get(jwks_url, timeout=10).raise_for_status()

            token(), jwks()  # warm up connections and caches
            token_rate = _rate(token, args.requests, args.repeat)
            jwks_rate = _rate(jwks, args.requests, args.repeat)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        rows.append((alg, token_rate, jwks_rate))
    print(f"sequential loop, {args.requests} requests x {args.repeat} runs (median), "
          "one keep-alive connection to `m2mauth serve` (waitress)")
    print(f"{'alg':<7} {'tokens/s':>10} {'JWKS GET/s':>11} {'ratio':>7}")
    for alg, token_rate, jwks_rate in rows:
        print(f"{alg:<7} {token_rate:>10.0f} {jwks_rate:>11.0f} {token_rate / jwks_rate:>7.2f}")


if __name__ == "__main__":
    main()
