"""Soak: `m2mauth serve` under steady load while its state keeps changing, every token checked.

For ``--seconds`` (default 60), ``--concurrency`` threads (default 8) request tokens over
keep-alive sessions and validate each one right away with one shared ``TokenValidator``. Meanwhile
a controller, through the admin API, rotates the signing key every 2 s (retiring keys two
rotations old, so the JWKS stays small), moves the server's clock by a few seconds either way,
and adds and removes a client (and gets a token for it) every second. The validator's clock
follows the server's offset; its JWKS cache may look up a new kid at once (cooldown 0: the
keys here rotate, and sign at once, far more often than any real issuer's).

It prints the requests made, the non-200 answers to valid requests (must be 0), the tokens
that failed validation (must be 0), and the server's RSS at the start and the end. Baseline in
the same run: the token rate of the first and the last fifth of the run (a ratio near 1 means
no slowdown as state accumulates).

Run: python bench/soak.py [--seconds 60] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import itertools
import threading
import time
from dataclasses import dataclass, field

import requests
from _serve import rss_mb, start_serve

from m2mauth.client import JWKSCache, OAuthError, TokenValidator

AUDIENCE = "api://default"
DEMO = ("demo-client", "demo-secret")
GRANT = {"grant_type": "client_credentials"}


@dataclass
class Counts:
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    non_200: int = 0
    invalid: int = 0
    stamps: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def note(self, problem: str | None, ok_status: bool) -> None:
        with self.lock:
            self.requests += 1
            self.stamps.append(time.monotonic())
            if not ok_status:
                self.non_200 += 1
            elif problem is not None:
                self.invalid += 1
            if problem is not None and len(self.problems) < 10:
                self.problems.append(problem)


def run(seconds: float, concurrency: int) -> dict:
    """The soak itself; returns its counts and RSS figures."""
    proc, issuer = start_serve("--algorithm", "ES256", "--ephemeral-keys")
    offset = [0.0]  # the server clock's offset, which the controller alone changes
    counts = Counts()
    stop = threading.Event()
    validator = TokenValidator(
        issuer, AUDIENCE, clock=lambda: time.time() + offset[0],
        # Keys rotate every 2 s and sign at once, far more often than a real issuer's: the
        # cache may look a new kid up as soon as it appears (still one fetch in flight).
        # Its own timing on real time: only the claim checks follow the server's clock, and
        # an offset moved back would stretch a cooldown.
        jwks_cache=JWKSCache(issuer + "/jwks.json", cooldown=0.0, negative_ttl=0.0))

    def check(http: requests.Session, auth: tuple[str, str]) -> None:
        response = http.post(issuer + "/token", data=GRANT, auth=auth, timeout=10)
        if response.status_code != 200:
            counts.note(f"HTTP {response.status_code}: {response.text[:120]}", False)
            return
        try:
            validator.validate(response.json()["access_token"])
        except OAuthError as exc:
            counts.note(f"invalid: {exc}", True)
            return
        counts.note(None, True)

    def worker() -> None:
        with requests.Session() as http:
            while not stop.is_set():
                check(http, DEMO)

    def controller() -> None:
        admin = issuer + "/admin"
        kids: list[str] = []
        with requests.Session() as http:
            for tick in itertools.count():
                if stop.wait(1.0):  # the pace of the changes, not a wait for a result
                    return
                client = http.post(admin + "/clients", json={"scopes": ["read"]}, timeout=10)
                added = client.json()
                check(http, (added["client_id"], added["client_secret"]))
                http.delete(f"{admin}/clients/{added['client_id']}", timeout=10)
                if tick % 2 == 1:
                    kids.append(http.post(admin + "/keys/rotate", json={"alg": "ES256"},
                                          timeout=10).json()["kid"])
                    if len(kids) > 2:
                        http.post(f"{admin}/keys/{kids.pop(0)}/retire", timeout=10)
                if tick % 3 == 2:
                    move = 5.0 if offset[0] <= 0 else -5.0
                    http.post(admin + "/clock", json={"advance": move}, timeout=10)
                    offset[0] += move

    rss_start = rss_mb(proc.pid)
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    threads.append(threading.Thread(target=controller, daemon=True))
    started = time.monotonic()
    try:
        for thread in threads:
            thread.start()
        stop.wait(seconds)  # the run's length
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=15)
        rss_end = rss_mb(proc.pid)
        proc.terminate()
        proc.wait(timeout=10)
    fifth = seconds / 5
    first = sum(1 for t in counts.stamps if t - started < fifth)
    last = sum(1 for t in counts.stamps if t - started >= seconds - fifth)
    return {"requests": counts.requests, "non_200": counts.non_200, "invalid": counts.invalid,
            "rss_start": rss_start, "rss_end": rss_end, "problems": counts.problems,
            "first_fifth": first, "last_fifth": last}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    result = run(args.seconds, args.concurrency)
    print(f"soak: {args.seconds:g} s, {args.concurrency} threads, key rotation every 2 s,"
          " clock moves, clients added and removed")
    print(f"{'requests':<28} {result['requests']}")
    print(f"{'non-200 for valid requests':<28} {result['non_200']}")
    print(f"{'tokens that failed validation':<28} {result['invalid']}")
    print(f"{'RSS start / end (MB)':<28} {result['rss_start']:.1f} / {result['rss_end']:.1f}")
    ratio = result["last_fifth"] / max(result["first_fifth"], 1)
    print(f"{'rate, last / first fifth':<28} {ratio:.2f}")
    for problem in result["problems"]:
        print("  e.g.", problem)


if __name__ == "__main__":
    main()
