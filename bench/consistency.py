"""Consistency under load: `m2mauth serve --workers 2` on one shared store, 8 client
connections for 30 s while the admin API rotates the signing key every 2 s, and every second
adds a client and queues a fault. Checked, over the whole run:

* every token request is a 200 – with the demo client or any client added so far, whichever
  worker answers (a client is used as soon as its POST /admin/clients returned: read-your-
  writes) – except those an injected fault answered;
* every token verifies against the JWKS fetched right after it (same connection);
* every queued fault fires exactly once (each carries its own error_description), or is still
  queued at the end;
* the token request log holds every request, once, each client connection's in the order it
  sent them (the log is read every ``--log-every`` seconds and the overlapping reads joined;
  a gap would mean the log dropped records between two reads and is reported as such).

Prints a table of counts; exits 1 when any check fails.
Run: python bench/consistency.py [--seconds 30] [--connections 8] [--workers 2]
     [--store sqlite:PATH | redis://HOST:PORT/DB] [--alg RS256]
"""

from __future__ import annotations

import argparse
import itertools
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import jwt
import requests
from _serve import start_serve

FAULT_PREFIX = "bench-fault-"


@dataclass
class Run:
    """What the client side saw, shared by the threads (under ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    clients: list[tuple[str, str]] = field(default_factory=lambda: [("demo-client",
                                                                      "demo-secret")])
    sent: int = 0
    issued: int = 0
    verified: int = 0
    faults_seen: Counter = field(default_factory=Counter)
    faults_queued: list[str] = field(default_factory=list)
    rotations: int = 0
    failures: list[str] = field(default_factory=list)
    #: Per connection, the jti (or fault id) of each answered request, in sending order.
    sequences: dict[int, list[str]] = field(default_factory=dict)

    def fail(self, what: str) -> None:
        with self.lock:
            if len(self.failures) < 50:  # bounded: the first ones say enough
                self.failures.append(what)


def token_request(session: requests.Session, issuer: str, client: tuple[str, str],
                  run: Run) -> str | None:
    """One token request, classified; the jti or fault id it produced (None: a failure)."""
    with run.lock:
        run.sent += 1
    r = session.post(issuer + "/token", data={"grant_type": "client_credentials"},
                     auth=client, timeout=30)
    body = r.json() if r.headers.get("Content-Type", "").startswith("application/json") else {}
    if r.status_code != 200:
        description = str(body.get("error_description", ""))
        if description.startswith(FAULT_PREFIX):
            with run.lock:
                run.faults_seen[description] += 1
            return description
        run.fail(f"{client[0]}: {r.status_code} {r.text[:200]}")
        return None
    token = body["access_token"]
    kid = jwt.get_unverified_header(token)["kid"]
    keys = session.get(issuer + "/jwks.json", timeout=30).json()["keys"]
    jwk = next((k for k in keys if k["kid"] == kid), None)
    if jwk is None:
        run.fail(f"token signed by {kid}, which the JWKS fetched right after lacks")
        return None
    try:
        claims = jwt.decode(token, jwt.PyJWK(jwk).key, algorithms=[jwk["alg"]],
                            options={"verify_aud": False})
    except jwt.InvalidTokenError as exc:
        run.fail(f"token does not verify: {exc}")
        return None
    with run.lock:
        run.issued += 1
        run.verified += 1
    return claims["jti"]


def load(slot: int, issuer: str, run: Run, stop: threading.Event) -> None:
    session = requests.Session()
    sequence = run.sequences.setdefault(slot, [])
    rng = random.Random(slot)
    while not stop.is_set():
        with run.lock:
            client = rng.choice(run.clients)
        try:
            outcome = token_request(session, issuer, client, run)
        except (requests.RequestException, ValueError, KeyError) as exc:
            run.fail(f"{type(exc).__name__}: {exc}")
            continue
        if outcome is not None:
            sequence.append(outcome)


def admin(issuer: str, run: Run, stop: threading.Event, logs: list[list[dict]],
          log_every: float) -> None:
    """Every second a new client (used at once, on a new connection) and a fault; every 2 s a
    key rotation; every ``log_every`` s a read of the token request log."""
    session = requests.Session()
    tick = time.monotonic()
    last_log = tick
    for second in itertools.count():
        if stop.wait(max(0.0, tick - time.monotonic())):
            return
        tick += 1.0
        client_id = f"bench-{second}"
        r = session.post(issuer + "/admin/clients", json={"client_id": client_id}, timeout=30)
        if r.status_code != 201:
            run.fail(f"add client: {r.status_code} {r.text[:200]}")
        else:
            client = (client_id, r.json()["client_secret"])
            with requests.Session() as fresh:  # any worker may answer this connection
                outcome = token_request(fresh, issuer, client, run)
                if outcome is not None and outcome.startswith(FAULT_PREFIX):
                    outcome = token_request(fresh, issuer, client, run)  # once more
            with run.lock:
                run.clients.append(client)
        fault_id = f"{FAULT_PREFIX}{second}"
        r = session.post(issuer + "/admin/faults", timeout=30, json={
            "status": 503, "error": "temporarily_unavailable", "error_description": fault_id})
        if r.status_code != 201:
            run.fail(f"queue fault: {r.status_code} {r.text[:200]}")
        else:
            with run.lock:
                run.faults_queued.append(fault_id)
        if second % 2 == 1:
            r = session.post(issuer + "/admin/keys/rotate", json={}, timeout=30)
            if r.status_code != 201:
                run.fail(f"rotate: {r.status_code} {r.text[:200]}")
            else:
                with run.lock:
                    run.rotations += 1
        if time.monotonic() - last_log >= log_every:
            last_log = time.monotonic()
            logs.append(session.get(issuer + "/admin/requests/token", timeout=60)
                        .json()["requests"])


def join_logs(reads: list[list[dict]]) -> tuple[list[dict], list[str]]:
    """The whole log from overlapping reads of its newest records; and any gaps."""
    joined: list[dict] = []
    gaps = []
    for read in reads:
        if not joined:
            joined = list(read)
            continue
        last = joined[-1]
        at = next((i for i in range(len(read) - 1, -1, -1) if read[i] == last), None)
        if at is None:
            gaps.append(f"a read of {len(read)} records does not reach back to the previous")
            joined.extend(read)
        else:
            joined.extend(read[at + 1:])
    return joined, gaps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--store", default=None, help="default: sqlite in a temporary dir")
    parser.add_argument("--alg", default="RS256")
    parser.add_argument("--log-every", type=float, default=2.0)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="m2mauth-consistency-")
    store = args.store or f"sqlite:{tmp}/state.db"
    extra = ("--workers", str(args.workers)) if args.workers > 1 else ()
    proc, issuer = start_serve("--algorithm", args.alg, "--store", store, *extra)
    run, stop, logs = Run(), threading.Event(), []
    try:
        threads = [threading.Thread(target=load, args=(i, issuer, run, stop), daemon=True)
                   for i in range(args.connections)]
        threads.append(threading.Thread(target=admin, daemon=True,
                                        args=(issuer, run, stop, logs, args.log_every)))
        for t in threads:
            t.start()
        stop.wait(args.seconds)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        alive = [t.name for t in threads if t.is_alive()]
        if alive:
            run.fail(f"threads still running after the run: {alive}")
        session = requests.Session()
        pending = [f["error_description"] for f in
                   session.get(issuer + "/admin/faults", timeout=30).json()["faults"]]
        logs.append(session.get(issuer + "/admin/requests/token", timeout=60).json()["requests"])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except Exception:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    log, gaps = join_logs(logs)
    checks: list[tuple[str, str, bool]] = []
    fired_twice = [f for f, n in run.faults_seen.items() if n > 1]
    unaccounted = [f for f in run.faults_queued if run.faults_seen[f] == 0 and f not in pending]
    checks.append(("token requests answered 200 or by their fault",
                   f"{run.sent} sent, {len(run.failures)} failures", not run.failures))
    checks.append(("tokens verified against the JWKS fetched next",
                   f"{run.verified} of {run.issued}", run.verified == run.issued))
    checks.append(("faults fired exactly once",
                   f"{len(run.faults_queued)} queued, {sum(run.faults_seen.values())} fired,"
                   f" {len(pending)} still queued, {len(fired_twice)} twice,"
                   f" {len(unaccounted)} lost", not fired_twice and not unaccounted))
    logged_jtis = [r["jti"] for r in log if r.get("jti")]
    logged_faults = sum(1 for r in log if r.get("fault") == "error")
    complete = (len(log) == run.sent and logged_faults == sum(run.faults_seen.values())
                and len(set(logged_jtis)) == len(logged_jtis) == run.issued and not gaps)
    checks.append(("request log holds every request once",
                   f"{len(log)} records for {run.sent} requests, {logged_faults} faulted,"
                   f" {len(gaps)} gaps", complete))
    position = {jti: i for i, jti in enumerate(logged_jtis)}
    out_of_order = 0
    for sequence in run.sequences.values():
        places = [position[j] for j in sequence if j in position]
        out_of_order += sum(1 for a, b in itertools.pairwise(places) if b < a)
    checks.append(("each connection's requests logged in order",
                   f"{out_of_order} out of order", out_of_order == 0))
    workers = f"--workers {args.workers}" if args.workers > 1 else "one process"
    print(f"m2mauth serve {workers}, store {store.split(':')[0]}, {args.alg}, "
          f"{args.connections} connections for {args.seconds:.0f} s; {run.rotations} key "
          f"rotations, {len(run.clients) - 1} clients added, {len(run.faults_queued)} faults")
    print(f"{'check':<46} {'ok':<4} figures")
    for name, figures, ok in checks:
        print(f"{name:<46} {'yes' if ok else 'NO':<4} {figures}")
    for failure in run.failures[:10]:
        print("  failure:", failure, file=sys.stderr)
    for gap in gaps:
        print("  gap:", gap, file=sys.stderr)
    return 0 if all(ok for _, _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
