"""What ONE token request costs inside the process, no sockets: m2mauth's WSGI app called
directly, against a bare Flask token view measured in the same run.

* m2mauth  – ``create_app(ServerSettings(algorithm=ALG))`` with the demo client (with
             ``--no-lab``: the core alone, ``lab=False``)
             (demo-client/demo-secret, issuer http://127.0.0.1:8000);
* baseline – a bare Flask app with one POST /token view: parse the form, check grant_type,
             decode the Basic credentials, compare the secret with hmac.compare_digest, sign an
             RFC 9068-shaped JWT with PyJWT (same claims, typ at+jwt, kid; a key of the same
             type and size as m2mauth's, created once) and answer the same JSON with
             Cache-Control: no-store.

Both get the same driver: a fresh WSGI environ per request (a copy of one prebuilt dict and
a new BytesIO body: POST /token, HTTP Basic, grant_type=client_credentials), ``app(environ,
start_response)``, the body joined; every answer must be a 200 with an access_token.

Two logging modes, one row each: "quiet" (logging not configured, as in a library or under
pytest) and "serve-like" (the root logger set up by the function `m2mauth serve` calls,
m2mauth.server.logs.configure_logging, writing to os.devnull: INFO, the per-request line
queued and written in batches by a background thread whose time counts in the run too):
m2mauth writes one INFO line per token request, the baseline none.

Method: a warm-up, then R rounds of N requests per app (the order alternating per round);
reported: the median microseconds per request of each app over the rounds and the median
of the per-round ratios m2mauth / baseline (1.0 = as cheap as the bare view).
Run: python bench/token_inprocess.py [--alg ES256] [--requests 2000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import base64
import gc
import hmac
import io
import json
import logging
import os
import secrets
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from urllib.parse import unquote_plus

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from flask import Flask, Response, request

from m2mauth.server import ServerSettings, create_app
from m2mauth.server.logs import configure_logging

ALGORITHMS = ("ES256", "RS256", "PS256", "EdDSA")
CLIENT_ID, CLIENT_SECRET = "demo-client", "demo-secret"  # m2mauth's default demo client
ISSUER, AUDIENCE, SCOPE, LIFETIME = "http://127.0.0.1:8000", "api://default", "read write", 300
BODY = b"grant_type=client_credentials"

WsgiApp = Callable[..., object]


def _environ_template(method: str = "POST", path: str = "/token", body: bytes = BODY) -> dict:
    """The WSGI environ of one request as werkzeug's server would build it; copied per call."""
    basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    environ = {
        "REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "54321", "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_ACCEPT": "application/json", "HTTP_USER_AGENT": "bench/token_inprocess",
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
    }
    if method == "POST":
        environ.update({
            "HTTP_AUTHORIZATION": f"Basic {basic}",
            "CONTENT_TYPE": "application/x-www-form-urlencoded",
            "CONTENT_LENGTH": str(len(body)),
        })
    return environ


def _call(app: WsgiApp, template: dict, body: bytes = BODY) -> tuple[str, bytes]:
    """One request: a fresh environ and body stream, the app called, its body joined."""
    environ = template.copy()
    environ["wsgi.input"] = io.BytesIO(body)
    status: list[str] = []

    def start_response(status_line, headers, exc_info=None):
        status.append(status_line)

    result = app(environ, start_response)
    try:
        data = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return status[0], data


def _token_request(app: WsgiApp) -> Callable[[], None]:
    template = _environ_template()

    def one() -> None:
        status, data = _call(app, template)
        if status[:3] != "200" or b'"access_token"' not in data:  # cheap, every request
            raise AssertionError(f"{status}: {data[:200]!r}")

    return one


def _m2mauth_app(alg: str, lab: bool = True) -> tuple[WsgiApp, dict]:
    app = create_app(ServerSettings(algorithm=alg, lab=lab))
    status, data = _call(app, _environ_template("GET", "/jwks.json", b""))
    assert status.startswith("200"), status
    jwk = next(k for k in json.loads(data)["keys"] if k.get("alg") == alg)
    return app, jwk


def _matching_key(jwk: dict):
    """A new private key of the same type and size as m2mauth's public key ``jwk``."""
    if jwk["kty"] == "RSA":
        bits = len(base64.urlsafe_b64decode(jwk["n"] + "==")) * 8
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    if jwk["kty"] == "EC":
        curves = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
        return ec.generate_private_key(curves[jwk["crv"]])
    if jwk["kty"] == "OKP" and jwk["crv"] == "Ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"no baseline key for {jwk['kty']} {jwk.get('crv')}")


def _baseline_app(alg: str, jwk: dict) -> Flask:
    """A bare Flask token endpoint: what a careful hand-written one does, nothing more."""
    key = _matching_key(jwk)  # created once, like a PEM loaded at start
    headers = {"typ": "at+jwt", "kid": jwk["kid"]}  # same kid: tokens of the same size
    clients = {CLIENT_ID: CLIENT_SECRET.encode()}
    app = Flask("baseline")

    def error(status: int, code: str) -> Response:
        response = Response(json.dumps({"error": code}), status, mimetype="application/json")
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.post("/token")
    def token() -> Response:
        if request.form.get("grant_type") != "client_credentials":
            return error(400, "unsupported_grant_type")
        scheme, _, value = (request.headers.get("Authorization") or "").partition(" ")
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
            decoded = ""
        client_id, _, secret = decoded.partition(":")
        client_id, secret = unquote_plus(client_id), unquote_plus(secret)
        expected = clients.get(client_id)
        if (scheme.lower() != "basic" or expected is None
                or not hmac.compare_digest(secret.encode(), expected)):
            return error(401, "invalid_client")
        now = int(time.time())
        claims = {
            "iss": ISSUER, "sub": client_id, "client_id": client_id, "aud": AUDIENCE,
            "jti": secrets.token_urlsafe(16), "scope": SCOPE,
            "iat": now, "nbf": now, "exp": now + LIFETIME,
        }
        access_token = jwt.encode(claims, key, algorithm=alg, headers=headers)
        body = {"token_type": "Bearer", "access_token": access_token,
                "expires_in": LIFETIME, "scope": SCOPE}
        response = Response(json.dumps(body), 200, mimetype="application/json")
        response.headers["Cache-Control"] = "no-store"
        response.headers["Pragma"] = "no-cache"
        return response

    return app


def _check_same_shape(alg: str, m2mauth: WsgiApp, baseline: WsgiApp) -> int:
    """Once, in full: both answer the same token response with a token of the same shape.
    Returns the token's length in bytes."""
    shapes, lengths = [], []
    for app in (m2mauth, baseline):
        status, data = _call(app, _environ_template())
        assert status.startswith("200"), (status, data[:200])
        body = json.loads(data)
        token = body["access_token"]
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
        assert header["alg"] == alg and header["typ"] == "at+jwt", header
        shapes.append((sorted(body), sorted(header), sorted(claims)))
        lengths.append(len(token))
    assert shapes[0] == shapes[1], shapes
    return max(lengths)


def _batch_us(fn: Callable[[], None], n: int) -> float:
    gc.collect()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def measure(ours: Callable[[], None], base: Callable[[], None], n: int,
            rounds: int) -> dict[str, float]:
    for _ in range(min(n, 300)):  # warm-up: imports, caches, code paths, branch predictors
        ours()
        base()
    ours_us, base_us, ratios = [], [], []
    for r in range(rounds):
        if r % 2 == 0:
            a = _batch_us(ours, n)
            b = _batch_us(base, n)
        else:
            b = _batch_us(base, n)
            a = _batch_us(ours, n)
        ours_us.append(a)
        base_us.append(b)
        ratios.append(a / b)
    return {"ours": statistics.median(ours_us), "base": statistics.median(base_us),
            "ratio": statistics.median(ratios), "lo": min(ratios), "hi": max(ratios)}


def main() -> None:
    # joserfc (m2mauth's signer) notes RFC 9864 on every EdDSA signature.
    warnings.filterwarnings("ignore", message="EdDSA is deprecated via RFC 9864")
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alg", choices=ALGORITHMS, default="ES256",
                        help="signing algorithm of both apps (default: ES256)")
    parser.add_argument("--no-lab", action="store_true",
                        help="measure the core alone (ServerSettings(lab=False))")
    parser.add_argument("--requests", type=int, default=2000,
                        help="requests per app per round (default: 2000)")
    parser.add_argument("--rounds", type=int, default=7,
                        help="rounds; medians over them are reported (default: 7)")
    args = parser.parse_args()
    if args.requests < 1 or args.rounds < 1:
        parser.error("--requests and --rounds must be at least 1")
    if logging.getLogger().handlers:
        parser.error("logging is already configured; the 'quiet' row needs it unconfigured")

    m2mauth, jwk = _m2mauth_app(args.alg, lab=not args.no_lab)
    baseline = _baseline_app(args.alg, jwk)
    token_bytes = _check_same_shape(args.alg, m2mauth, baseline)
    ours, base = _token_request(m2mauth), _token_request(baseline)

    rows = [("quiet", measure(ours, base, args.requests, args.rounds))]
    with open(os.devnull, "w") as devnull:
        handler = configure_logging(stream=devnull)  # exactly what `m2mauth serve` sets up
        try:
            rows.append(("serve-like", measure(ours, base, args.requests, args.rounds)))
        finally:
            if handler is not None:
                logging.getLogger().removeHandler(handler)
                handler.close()

    which = " (the core alone, --no-lab)" if args.no_lab else ""
    print(f"{args.alg}{which}, one token request through the WSGI app (no sockets), {args.requests}"
          f" requests x {args.rounds} rounds per app (medians), token {token_bytes} B")
    print(f"{'logging':<11} {'m2mauth':>11} {'baseline':>11} {'extra':>11}"
          f" {'ratio':>7} {'ratio min-max':>14}")
    for mode, r in rows:
        print(f"{mode:<11} {r['ours']:>8.1f} us {r['base']:>8.1f} us"
              f" {r['ours'] - r['base']:>8.1f} us {r['ratio']:>6.2f}x"
              f" {r['lo']:>7.2f}-{r['hi']:.2f}x")
    print("ratio: m2mauth / bare Flask + PyJWT view, per round, median (1.00x = no overhead)."
          " serve-like: INFO logging to os.devnull (m2mauth logs one line per token).")


if __name__ == "__main__":
    main()
