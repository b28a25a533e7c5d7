"""What DPoP costs a resource server: TokenValidator.validate_dpop against validate, on real
tokens from an m2mauth server, in the same run.

Two tokens from the same server, the same claims and key, one of them bound to the proof key
(``cnf.jkt``; a bound token is refused as Bearer, so the bearer rows use its unbound twin):

* bearer seen     – ``validate(token)`` of a token seen before (the verified-token cache);
* bearer first    – ``validate(token)`` with the cache off (the token's signature every call);
* DPoP seen       – ``validate_dpop(token, proof, method, url)`` of a token seen before, a
                    fresh proof (new jti) each call: the proof is checked in full every time,
                    the token's signature is not;
* DPoP first      – the same with the verified-token cache off;
* proof alone     – the proof checks without the token (``validator.dpop.check``).

Proofs are signed before the clock starts (a client's cost, not the API's). The validator's
clock is frozen, so every proof is inside the ``iat`` window. The last lines count how often
the token's signature was verified during the "DPoP seen" runs (once, before them: the cache).
Each timing is the median over ``--repeat`` rounds of ``--n`` calls per case, the cases
taking turns within a round.
Run: python bench/dpop.py [--n 2000] [--repeat 5] [--token-alg RS256] [--proof-alg ES256]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

from m2mauth.client import DPoPKey, TokenValidator
from m2mauth.server import ServerSettings
from m2mauth.server.lab.idp import IdentityProvider

AUDIENCE = "api://default"
URL = "https://api.example/orders"


class _Counting:
    """A PyJWT algorithm object that counts its verify calls."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, 0

    def verify(self, *args):
        self.calls += 1
        return self.inner.verify(*args)


def _medians_us(cases: dict, n: int, repeat: int) -> dict[str, float]:
    """Median microseconds per call of each case, ``name: (fn, setup)``, over ``repeat`` rounds
    in which every case runs ``n`` calls in turn (so a slower moment of a shared machine
    falls on all of them); ``setup(n)``, untimed, gives the calls' arguments. Round 0 warms
    up and is dropped."""
    runs: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeat + 1):
        for name, (fn, setup) in cases.items():
            args = setup(n) if setup else [()] * n
            start = time.perf_counter()
            for a in args:
                fn(*a)
            runs[name].append((time.perf_counter() - start) / n * 1e6)
    return {name: statistics.median(values[1:]) for name, values in runs.items()}


def measure(token_alg: str, proof_alg: str, n: int, repeat: int) -> tuple[dict, int, int]:
    key = DPoPKey.generate(proof_alg)  # the client's key; proofs signed by PyJWT
    with IdentityProvider.start(ServerSettings(algorithm=token_alg)) as idp:
        now = idp.clock()
        bound = idp.issue_token("demo-client", "read", claims={"cnf": {"jkt": key.thumbprint}},
                                expires_in=3600)
        bearer = idp.issue_token("demo-client", "read", expires_in=3600)

        def validator(**options) -> TokenValidator:
            return TokenValidator(idp.issuer, AUDIENCE, jwks_uri=idp.jwks_uri,
                                  clock=lambda: now, **options)

        seen, first = validator(), validator(cache_max_entries=0)
        for v in (seen, first):
            v.validate(bearer, "read")
            v.validate_dpop(bound, key.proof("GET", URL, access_token=bound, now=now),
                            method="GET", url=URL)

        def proofs(count: int) -> list[tuple[str]]:
            return [(key.proof("GET", URL, access_token=bound, now=now),) for _ in range(count)]

        counting = _Counting(seen._pyjwt[token_alg])
        seen._pyjwt[token_alg] = counting
        ath = seen._entry(bound, now).ath
        times = _medians_us({
            "bearer seen": (lambda: seen.validate(bearer, "read"), None),
            "bearer first": (lambda: first.validate(bearer, "read"), None),
            "DPoP seen": (lambda p: seen.validate_dpop(
                bound, p, method="GET", url=URL, scopes="read"), proofs),
            "DPoP first": (lambda p: first.validate_dpop(
                bound, p, method="GET", url=URL, scopes="read"), proofs),
            "proof alone": (lambda p: seen.dpop.check(
                p, method="GET", url=URL, access_token_hash=ath, jkt=key.thumbprint, now=now),
                proofs),
        }, n, repeat)
        dpop_requests = n * (repeat + 1)
    return times, counting.calls, dpop_requests


def main() -> None:
    warnings.filterwarnings("ignore", message="EdDSA is deprecated via RFC 9864")
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="calls per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the median is reported")
    parser.add_argument("--token-alg", default="RS256", help="the server's signing algorithm")
    parser.add_argument("--proof-alg", default="ES256",
                        choices=["ES256", "RS256", "PS256", "EdDSA"], help="the client's key")
    args = parser.parse_args()
    times, verified, requests = measure(args.token_alg, args.proof_alg, args.n, args.repeat)
    base = times["bearer seen"]
    print(f"token {args.token_alg}, proofs {args.proof_alg}; median of {args.repeat} runs of "
          f"{args.n} calls")
    print(f"{'':14} {'per call':>11} {'vs bearer seen':>15}")
    for name, us in times.items():
        print(f"{name:14} {us:>8.1f} us {us / base:>14.1f}x")
    print(f"DPoP seen / bearer first: {times['DPoP seen'] / times['bearer first']:.2f}x; "
          f"proof alone + bearer seen: {times['proof alone'] + base:.1f} us (DPoP seen: "
          f"{times['DPoP seen']:.1f} us, so the token's share is the cached lookup)")
    print(f"token signature verifications during {requests} 'DPoP seen' requests: {verified}"
          " (it was verified once, before them; each proof's signature was verified)")


if __name__ == "__main__":
    main()
