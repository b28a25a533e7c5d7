"""The baseline of the HTTP benchmarks as a WSGI module for gunicorn: the bare Flask + PyJWT
token view of bench/token_inprocess.py, signing with a key of the type and size m2mauth uses
for ``M2MAUTH_BENCH_ALG`` (default RS256). Run by bench/throughput.py as
``gunicorn -w 2 -k sync _bare_app:app`` from bench/."""

from __future__ import annotations

import os

from token_inprocess import _baseline_app

# The public-key shape _baseline_app sizes its own key from (RSA 2048, P-256, Ed25519, as
# server/algorithms.py generates), with kids as long as m2mauth's RFC 7638 thumbprints.
KID = "bench-bare-" + "x" * 32
_SHAPES = {
    "RS256": {"kty": "RSA", "n": "A" * 342, "kid": KID},
    "PS256": {"kty": "RSA", "n": "A" * 342, "kid": KID},
    "ES256": {"kty": "EC", "crv": "P-256", "kid": KID},
    "EdDSA": {"kty": "OKP", "crv": "Ed25519", "kid": KID},
}

ALG = os.environ.get("M2MAUTH_BENCH_ALG", "RS256")
app = _baseline_app(ALG, _SHAPES[ALG])
