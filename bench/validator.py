"""TokenValidator speed against PyJWT, per algorithm, on real tokens from an m2mauth server.

For RS256 and ES256 (and EdDSA/PS256 with --all), on the same token in the same run:

* floor     – cryptography's raw ``public_key.verify`` of the signature (no parsing at all);
* baseline  – ``jwt.decode(token, key, algorithms=[alg], audience=..., issuer=...)`` with
              the key pre-loaded (what a careful hand-written validator does);
* first     – ``TokenValidator.validate`` of a token it has not seen (cache of verified
              tokens off: every call does the full work, JWKS already cached);
* seen      – ``TokenValidator.validate`` of a token seen before (the verified-token cache).

Each timing is the median over ``--repeat`` runs of ``--n`` calls; ratios are
baseline time / our time (above 1.0 means faster than PyJWT's decode).
Run: python bench/validator.py [--n 2000] [--repeat 7] [--all]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding

from m2mauth.client import TokenValidator
from m2mauth.server import ServerSettings
from m2mauth.server.lab.idp import IdentityProvider

AUDIENCE = "api://default"


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


def _raw_verify(alg: str, key, token: str):
    signing_input, _, sig_b64 = token.encode().rpartition(b".")
    signature = jwt.utils.base64url_decode(sig_b64)
    if alg == "RS256":
        return lambda: key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
    if alg == "PS256":
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                          salt_length=padding.PSS.DIGEST_LENGTH)
        return lambda: key.verify(signature, signing_input, pss, hashes.SHA256())
    if alg == "ES256":
        half = len(signature) // 2
        der = jwt.utils.encode_dss_signature(int.from_bytes(signature[:half], "big"),
                                             int.from_bytes(signature[half:], "big"))
        return lambda: key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
    return lambda: key.verify(signature, signing_input)  # EdDSA


def measure(alg: str, n: int, repeat: int) -> dict[str, float | int | str]:
    with IdentityProvider.start(ServerSettings(algorithm=alg)) as idp:
        token = idp.issue_token("demo-client")
        first = TokenValidator(idp.issuer, AUDIENCE, jwks_uri=idp.jwks_uri,
                               algorithms=[alg], cache_max_entries=0)
        seen = TokenValidator(idp.issuer, AUDIENCE, jwks_uri=idp.jwks_uri, algorithms=[alg])
        first.validate(token, "read")
        seen.validate(token, "read")
        kid = jwt.get_unverified_header(token)["kid"]
        key = first.jwks.get(kid, alg).key  # the same pre-loaded cryptography key for PyJWT
        issuer = idp.issuer

        def baseline() -> None:
            jwt.decode(token, key, algorithms=[alg], audience=AUDIENCE, issuer=issuer)

        times = {
            "floor": _median_us(_raw_verify(alg, key, token), n, repeat),
            "pyjwt": _median_us(baseline, n, repeat),
            "first": _median_us(lambda: first.validate(token, "read"), n, repeat),
            "seen": _median_us(lambda: seen.validate(token, "read"), n * 10, repeat),
        }
    return {"alg": alg, "bytes": len(token), **times}


def main() -> None:
    # joserfc (the server, which only mints the tokens here) notes RFC 9864 on EdDSA signing.
    warnings.filterwarnings("ignore", message="EdDSA is deprecated via RFC 9864")
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="calls per run")
    parser.add_argument("--repeat", type=int, default=7, help="runs; the median is reported")
    parser.add_argument("--all", action="store_true", help="also PS256 and EdDSA")
    args = parser.parse_args()
    algs = ["RS256", "ES256"] + (["PS256", "EdDSA"] if args.all else [])
    rows = [measure(alg, args.n, args.repeat) for alg in algs]
    print(f"{'alg':6} {'token':>6} {'raw verify':>11} {'jwt.decode':>11} {'first seen':>11}"
          f" {'seen again':>11} {'first vs decode':>16} {'seen vs decode':>15}"
          f" {'decode/floor':>13} {'first/floor':>12}")
    for r in rows:
        print(f"{r['alg']:6} {r['bytes']:>5}B {r['floor']:>8.1f} us {r['pyjwt']:>8.1f} us"
              f" {r['first']:>8.1f} us {r['seen']:>8.2f} us"
              f" {r['pyjwt'] / r['first']:>15.2f}x {r['pyjwt'] / r['seen']:>14.1f}x"
              f" {r['pyjwt'] / r['floor']:>12.2f}x {r['first'] / r['floor']:>11.2f}x")
    print("'vs decode': jwt.decode time / ours (higher is faster; targets: first >= 1.0x,"
          " seen >= 20x). '/floor': time / cryptography's verify alone (1.0x = no overhead).")


if __name__ == "__main__":
    main()
