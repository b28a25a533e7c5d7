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
Each timing is the median over ``--repeat`` runs of ``--n`` calls.
Run: python bench/dpop.py [--n 2000] [--repeat 5] [--token-alg RS256] [--proof-alg ES256]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import statistics
import time
import uuid
import warnings

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import get_default_algorithms

from m2mauth.client import TokenValidator, jwk_thumbprint
from m2mauth.server import ServerSettings
from m2mauth.server.lab.idp import IdentityProvider

AUDIENCE = "api://default"
URL = "https://api.example/orders"
_PYJWT = get_default_algorithms()


def _b64(data: bytes | dict) -> str:
    if isinstance(data, dict):
        data = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class _ProofKey:
    """A client's DPoP key, signing proofs as RFC 9449 §4.2 describes."""

    def __init__(self, alg: str) -> None:
        if alg.startswith("ES"):
            self.private = ec.generate_private_key(ec.SECP256R1())
        elif alg == "EdDSA":
            self.private = ed25519.Ed25519PrivateKey.generate()
        else:
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.alg, self.signer = alg, _PYJWT[alg]
        self.jwk = self.signer.to_jwk(self.private.public_key(), as_dict=True)
        self.jkt = jwk_thumbprint(self.jwk)

    def proof(self, htm: str, htu: str, iat: float, *, token: str) -> str:
        ath = _b64(hashlib.sha256(token.encode()).digest())
        head = {"typ": "dpop+jwt", "alg": self.alg, "jwk": self.jwk}
        body = {"jti": uuid.uuid4().hex, "htm": htm, "htu": htu, "iat": iat, "ath": ath}
        signing_input = f"{_b64(head)}.{_b64(body)}"
        return f"{signing_input}.{_b64(self.signer.sign(signing_input.encode(), self.private))}"


class _Counting:
    """A PyJWT algorithm object that counts its verify calls."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, 0

    def verify(self, *args):
        self.calls += 1
        return self.inner.verify(*args)


def _median_us(fn, n: int, repeat: int, setup=None) -> float:
    """Median microseconds per call over ``repeat`` runs of ``n`` calls (``setup(n)`` before
    each run, untimed, returns the per-call arguments)."""
    runs = []
    for _ in range(repeat + 1):  # the first run warms up
        args = setup(n) if setup else [()] * n
        start = time.perf_counter()
        for a in args:
            fn(*a)
        runs.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(runs[1:])


def measure(token_alg: str, proof_alg: str, n: int, repeat: int) -> tuple[dict, int, int]:
    key = _ProofKey(proof_alg)
    with IdentityProvider.start(ServerSettings(algorithm=token_alg)) as idp:
        now = idp.clock()
        bound = idp.issue_token("demo-client", "read", claims={"cnf": {"jkt": key.jkt}},
                                expires_in=3600)
        bearer = idp.issue_token("demo-client", "read", expires_in=3600)

        def validator(**options) -> TokenValidator:
            return TokenValidator(idp.issuer, AUDIENCE, jwks_uri=idp.jwks_uri,
                                  clock=lambda: now, **options)

        seen, first = validator(), validator(cache_max_entries=0)
        for v in (seen, first):
            v.validate(bearer, "read")
            v.validate_dpop(bound, key.proof("GET", URL, now, token=bound), method="GET",
                            url=URL)

        def proofs(count: int) -> list[tuple[str]]:
            return [(key.proof("GET", URL, now, token=bound),) for _ in range(count)]

        counting = _Counting(seen._pyjwt[token_alg])
        seen._pyjwt[token_alg] = counting
        times = {
            "bearer seen": _median_us(lambda: seen.validate(bearer, "read"), n, repeat),
            "bearer first": _median_us(lambda: first.validate(bearer, "read"), n, repeat),
            "DPoP seen": _median_us(lambda p: seen.validate_dpop(
                bound, p, method="GET", url=URL, scopes="read"), n, repeat, proofs),
            "DPoP first": _median_us(lambda p: first.validate_dpop(
                bound, p, method="GET", url=URL, scopes="read"), n, repeat, proofs),
        }
        dpop_requests = n * (repeat + 1)
        ath = seen._entry(bound, now).ath
        times["proof alone"] = _median_us(lambda p: seen.dpop.check(
            p, method="GET", url=URL, access_token_hash=ath, jkt=key.jkt, now=now),
            n, repeat, proofs)
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
          f"DPoP seen - proof alone: {times['DPoP seen'] - times['proof alone']:.1f} us")
    print(f"token signature verifications during {requests} 'DPoP seen' requests: {verified}"
          " (it was verified once, before them; each proof's signature was verified)")


if __name__ == "__main__":
    main()
