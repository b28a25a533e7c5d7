"""Introspection against the token endpoint on the same server, and the validators' cached
paths against each other, in one run.

(a) `m2mauth serve` (waitress, its own process) per algorithm; a keep-alive Python load
    generator (``--threads`` threads, each its own ``requests.Session``) sends ``--requests``
    requests per thread, the three kinds alternating per round, ``--repeat`` rounds (median):

    * token        – POST /token (client_secret_basic, client credentials): the baseline;
    * introspect   – POST /introspect of a JWT (client_secret_basic): the server verifies the
                     signature and looks the jti up in its revocation list;
    * opaque       – POST /introspect of an opaque token: a SHA-256 and a store lookup.

    The ratio is requests/s of each kind over the token endpoint's in the same round.

(b) In this process (``IdentityProvider.start()``), on the same JWT: median microseconds of
    ``IntrospectionValidator.validate`` with the answer cached, against
    ``TokenValidator.validate`` with the verified token cached (the baseline); and, for
    scale, the first sight of each (no cache: an HTTP round trip to /introspect, against a
    signature check with the keys cached).

Run: python bench/introspection.py [--requests 300] [--repeat 5] [--threads 2] [--n 20000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import requests
from _serve import start_serve

from m2mauth.client import IntrospectionValidator, TokenValidator, fetch_token
from m2mauth.server import ClientSettings, ServerSettings
from m2mauth.server.lab.idp import IdentityProvider

AUDIENCE = "https://api.bench"
CONFIG = """algorithm = "{alg}"
token_lifetime = 3600

[[clients]]
client_id = "bench-client"
client_secret = "bench-client-secret"
scopes = ["read"]
audiences = ["{aud}"]

[[clients]]
client_id = "bench-opaque"
client_secret = "bench-client-secret"
scopes = ["read"]
audiences = ["{aud}"]
token_format = "opaque"

[[clients]]
client_id = "bench-rs"
client_secret = "bench-rs-secret-0123456789abcdef0123"
introspect = true
"""
CLIENT = ("bench-client", "bench-client-secret")
RS = ("bench-rs", "bench-rs-secret-0123456789abcdef0123")


def _rate(send, threads: int, n: int) -> float:
    """Requests per second: ``threads`` threads, ``n`` calls of ``send(session)`` each, all
    released at once; each thread its own keep-alive session, warmed up first."""
    sessions = [requests.Session() for _ in range(threads)]
    for session in sessions:
        send(session)
    barrier = threading.Barrier(threads + 1)

    def work(session: requests.Session) -> None:
        barrier.wait()
        for _ in range(n):
            send(session)

    workers = [threading.Thread(target=work, args=(s,)) for s in sessions]
    for worker in workers:
        worker.start()
    barrier.wait()
    start = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - start
    for session in sessions:
        session.close()
    return threads * n / elapsed


def endpoints(alg: str, threads: int, n: int, repeat: int) -> dict[str, float | str]:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.toml"
        config.write_text(CONFIG.format(alg=alg, aud=AUDIENCE))
        proc, issuer = start_serve("--config", str(config))
    try:
        token_url, introspect_url = issuer + "/token", issuer + "/introspect"
        jwt = fetch_token(token_url, client_id=CLIENT[0], client_secret=CLIENT[1]).access_token
        opaque = fetch_token(token_url, client_id="bench-opaque",
                             client_secret=CLIENT[1]).access_token

        def token(session: requests.Session) -> None:
            r = session.post(token_url, data={"grant_type": "client_credentials"},
                             auth=CLIENT, timeout=10)
            r.raise_for_status()

        def introspect(session: requests.Session, which: str = jwt) -> None:
            r = session.post(introspect_url, data={"token": which}, auth=RS, timeout=10)
            r.raise_for_status()
            assert r.json()["active"] is True

        def introspect_opaque(session: requests.Session) -> None:
            introspect(session, opaque)

        rounds: dict[str, list[float]] = {"token": [], "introspect": [], "opaque": []}
        for _ in range(repeat):  # alternating, so drift hits every kind alike
            rounds["token"].append(_rate(token, threads, n))
            rounds["introspect"].append(_rate(introspect, threads, n))
            rounds["opaque"].append(_rate(introspect_opaque, threads, n))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return {"alg": alg, **{k: statistics.median(v) for k, v in rounds.items()}}


def _median_us(fn, n: int, repeat: int) -> float:
    """Median microseconds per call over ``repeat`` runs of ``n`` calls (after a warm-up)."""
    for _ in range(min(n, 200)):
        fn()
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(runs)


def validators(n: int, repeat: int) -> dict[str, float]:
    settings = ServerSettings(ephemeral_keys=True, algorithm="ES256", clients=[
        ClientSettings(RS[0], RS[1], introspect=True),
        ClientSettings(CLIENT[0], CLIENT[1], scopes=("read",), audiences=(AUDIENCE,)),
    ])
    with IdentityProvider.start(settings) as idp:
        token = fetch_token(idp.token_endpoint, client_id=CLIENT[0],
                            client_secret=CLIENT[1]).access_token
        local = TokenValidator(idp.issuer, AUDIENCE, jwks_uri=idp.jwks_uri)
        asked = IntrospectionValidator(idp.issuer, AUDIENCE, client_id=RS[0],
                                       client_secret=RS[1],
                                       introspection_endpoint=idp.core.introspection_endpoint,
                                       cache_ttl=3600)
        local_first = TokenValidator(idp.issuer, AUDIENCE, jwks_uri=idp.jwks_uri,
                                     cache_max_entries=0)
        asked_first = IntrospectionValidator(
            idp.issuer, AUDIENCE, client_id=RS[0], client_secret=RS[1],
            introspection_endpoint=idp.core.introspection_endpoint, cache_max_entries=0)
        for validator in (local, asked, local_first, asked_first):
            validator.validate(token, "read")
        times = {}
        for _ in range(2):  # alternate the pair, keep the better of each
            for name, fn, calls in (
                    ("local cached", lambda: local.validate(token, "read"), n),
                    ("introspection cached", lambda: asked.validate(token, "read"), n)):
                us = _median_us(fn, calls, repeat)
                times[name] = min(us, times.get(name, us))
        times["local first"] = _median_us(lambda: local_first.validate(token, "read"),
                                          max(n // 50, 100), repeat)
        times["introspection first"] = _median_us(
            lambda: asked_first.validate(token, "read"), max(n // 50, 100), repeat)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="requests per thread per "
                        "kind and round")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; the median is reported")
    parser.add_argument("--threads", type=int, default=2, help="load-generator threads")
    parser.add_argument("--n", type=int, default=20000, help="validate() calls per run (b)")
    parser.add_argument("--algs", default="RS256,ES256", help="server algorithms for (a)")
    args = parser.parse_args()

    rows = [endpoints(alg, args.threads, args.requests, args.repeat)
            for alg in args.algs.split(",")]
    print(f"(a) m2mauth serve (waitress), {args.threads} keep-alive threads x {args.requests} "
          f"requests, {args.repeat} rounds (median)")
    print(f"{'alg':<6} {'token/s':>9} {'introspect JWT/s':>17} {'ratio':>6}"
          f" {'introspect opaque/s':>20} {'ratio':>6}")
    for r in rows:
        print(f"{r['alg']:<6} {r['token']:>9.0f} {r['introspect']:>17.0f}"
              f" {r['introspect'] / r['token']:>5.2f}x {r['opaque']:>20.0f}"
              f" {r['opaque'] / r['token']:>5.2f}x")
    print("ratio: requests/s of that kind / token requests/s in the same rounds (above 1.0: "
          "introspection is cheaper for the server than issuing)")
    print()
    times = validators(args.n, args.repeat)
    base = times["local cached"]
    print(f"(b) validate() in-process, ES256 token, median of {args.repeat} runs")
    print(f"{'path':<40} {'time':>10} {'vs TokenValidator cached':>25}")
    for name, label in (("local cached", "TokenValidator, cached (baseline)"),
                        ("introspection cached", "IntrospectionValidator, cached answer"),
                        ("local first", "TokenValidator, first sight (no cache)"),
                        ("introspection first", "IntrospectionValidator, no cache (HTTP)")):
        print(f"{label:<40} {times[name]:>7.2f} us {times[name] / base:>24.1f}x")
    print("x: time / TokenValidator's cached validate (1.0x: as fast)")


if __name__ == "__main__":
    main()
