"""Whether a token request costs the same however much the issuer holds: two apps per row,
alike but for what their state store holds, measured in the same run.

Rows (each a pair of apps made by ``create_app`` with the lab on, one store each):

* clients       – 10 registered clients against 10,000 (client_secret_basic, the demo client);
* request log   – the lab's token log empty (cleared before every round) against full at its
                  bound (10,000 records: every request also drops the oldest);
* replay cache  – client_secret_jwt assertions (a new jti each, made before the round) with
                  no remembered jti (the cache emptied before every round) against a cache
                  holding 105,000 live ones (100 other clients at 1,000 each, and 5,000 of
                  this client's own; rounds of at most 4,000 / R requests leave room in its
                  share of 10,000).

Method as bench/token_inprocess.py's: in-process WSGI calls, no sockets; a warm-up, then R
rounds of N requests per app, the order alternating per round; reported: the median
microseconds per request of each and the median of the per-round ratios large / small
(1.00x = no growth with what the store holds). Every answer must be a 200 with a token.

Run: python bench/scaling.py [--alg ES256] [--store memory|sqlite] [--requests 1000]
     [--rounds 7]
"""

from __future__ import annotations

import argparse
import gc
import io
import secrets
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

import jwt
from token_inprocess import ALGORITHMS, BODY, _environ_template

from m2mauth.server import ClientSettings, ServerSettings, create_app
from m2mauth.server.issuer import initial_keys
from m2mauth.server.store import MemoryStore, StateStore

JWT_CLIENT, JWT_SECRET = "jwt-client", "a-shared-secret-of-more-than-32-bytes!"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
LOG_BOUND = 10_000

WsgiApp = Callable[..., object]


def _open(kind: str, directory: Path, name: str) -> StateStore:
    """An empty store of ``kind``, the same bounds for every one (only what it holds differs)."""
    if kind == "memory":
        return MemoryStore(max_records=LOG_BOUND)
    from m2mauth.server.sqlite_store import SQLiteStore

    return SQLiteStore(str(directory / f"{name}.db"), max_records=LOG_BOUND)


def _app(settings: ServerSettings, store: StateStore, extra_clients: int) -> WsgiApp:
    clients = [*settings.clients, ClientSettings(JWT_CLIENT, JWT_SECRET, scopes=("read",))]
    clients += [ClientSettings(f"client-{i}", secrets.token_urlsafe(16), scopes=("read",))
                for i in range(extra_clients)]
    store.restore(clients, initial_keys(settings))
    return create_app(settings, store=store)


def _call(app: WsgiApp, template: dict, body: bytes) -> None:
    environ = template.copy()
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    status: list[str] = []
    result = app(environ, lambda line, headers, exc_info=None: status.append(line))
    try:
        data = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    if status[0][:3] != "200" or b'"access_token"' not in data:
        raise AssertionError(f"{status[0]}: {data[:200]!r}")


class Case:
    """One app and the requests of one round: ``prepare()`` before the round, untimed."""

    def __init__(self, app: WsgiApp, prepare: Callable[[int], list[bytes]],
                 template: dict) -> None:
        self.app, self.prepare, self.template = app, prepare, template

    def run(self, bodies: list[bytes]) -> float:
        gc.collect()
        start = time.perf_counter()
        for body in bodies:
            _call(self.app, self.template, body)
        return (time.perf_counter() - start) / len(bodies) * 1e6


def _basic(app: WsgiApp, before: Callable[[], None] = lambda: None) -> Case:
    def prepare(n: int) -> list[bytes]:
        before()
        return [BODY] * n
    return Case(app, prepare, _environ_template())


def _assertions(app: WsgiApp, token_url: str,
                before: Callable[[], None] = lambda: None) -> Case:
    template = _environ_template()
    del template["HTTP_AUTHORIZATION"]

    def prepare(n: int) -> list[bytes]:
        before()
        now = int(time.time())
        return [urlencode({
            "grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": jwt.encode(
                {"iss": JWT_CLIENT, "sub": JWT_CLIENT, "aud": token_url, "iat": now,
                 "exp": now + 300, "jti": secrets.token_urlsafe(16)},
                JWT_SECRET, algorithm="HS256"),
        }).encode() for _ in range(n)]
    return Case(app, prepare, template)


def measure(small: Case, large: Case, n: int, rounds: int) -> dict[str, float]:
    for case in (small, large):  # warm-up
        case.run(case.prepare(min(n, 200)))
    a_us, b_us, ratios = [], [], []
    for r in range(rounds):
        bodies = (small.prepare(n), large.prepare(n))
        if r % 2 == 0:
            a, b = small.run(bodies[0]), large.run(bodies[1])
        else:
            b, a = large.run(bodies[1]), small.run(bodies[0])
        a_us.append(a)
        b_us.append(b)
        ratios.append(b / a)
    return {"small": statistics.median(a_us), "large": statistics.median(b_us),
            "ratio": statistics.median(ratios), "lo": min(ratios), "hi": max(ratios)}


def main() -> None:
    warnings.filterwarnings("ignore", message="EdDSA is deprecated via RFC 9864")
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alg", choices=ALGORITHMS, default="ES256")
    parser.add_argument("--store", choices=("memory", "sqlite"), default="memory")
    parser.add_argument("--requests", type=int, default=1000,
                        help="requests per app per round (default: 1000)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds (default: 7)")
    args = parser.parse_args()
    if args.requests < 1 or args.rounds < 1:
        parser.error("--requests and --rounds must be at least 1")
    settings = ServerSettings(algorithm=args.alg).validate()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)

        def store(name: str) -> StateStore:
            return _open(args.store, directory, name)

        # 10 clients: the demo client, the assertion client and 8 more.
        few = _app(settings, store("few"), 8)
        many = _app(settings, store("many"), 10_000 - 2)
        rows.append(("clients: 10 vs 10,000", measure(_basic(few), _basic(many),
                                                      args.requests, args.rounds)))

        empty_store, full_store = store("log-empty"), store("log-full")
        empty_log, full_log = _app(settings, empty_store, 8), _app(settings, full_store, 8)
        for i in range(LOG_BOUND):
            full_store.append_record("token", {"client_id": "demo-client", "outcome": "issued",
                                               "jti": f"filler-{i}", "status": 200})
        rows.append(("request log: empty vs full", measure(
            _basic(empty_log, empty_store.clear_records), _basic(full_log),
            args.requests, args.rounds)))

        cold_store, full_cache = store("jti-empty"), store("jti-full")
        cold, warm = _app(settings, cold_store, 8), _app(settings, full_cache, 8)
        until, now = time.time() + 3600, time.time()
        for c in range(100):
            for j in range(1_000):
                assert full_cache.remember_jti(f"other-{c}", f"j{j}", until, now)
        for j in range(5_000):  # room left for the measured requests: the share is 10,000
            assert full_cache.remember_jti(JWT_CLIENT, f"own-{j}", until, now)
        token_url = settings.issuer_url + "/token"
        def forget_jtis() -> None:  # back to no remembered jti before each round
            cold_store.restore(cold_store.clients(), cold_store.signing_keys())

        rows.append(("replay cache: empty vs full", measure(
            _assertions(cold, token_url, forget_jtis), _assertions(warm, token_url),
            min(args.requests, 4_000 // args.rounds), args.rounds)))

    print(f"{args.alg}, store {args.store}, lab on: one token request through the WSGI app"
          f" (no sockets), {args.requests} requests x {args.rounds} rounds per app (medians)")
    print(f"{'case':<28} {'small':>11} {'large':>11} {'ratio':>7} {'ratio min-max':>14}")
    for name, r in rows:
        print(f"{name:<28} {r['small']:>8.1f} us {r['large']:>8.1f} us {r['ratio']:>6.2f}x"
              f" {r['lo']:>7.2f}-{r['hi']:.2f}x")
    print("ratio: large / small, per round, median (1.00x = the same cost however much the "
          "store holds).")


if __name__ == "__main__":
    sys.exit(main())
