"""The five steps of the flow, each its real exchanges: discover, client, token, inspect,
call. The texts come from :mod:`m2mauth.server.lab.lessons`; what is checked here is what
those texts say will happen."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import jwt

from m2mauth.client.validator import DEFAULT_ALGORITHMS

from ...settings import DEMO_CLIENT_SECRET
from ..lessons import CLAIMS, CLIENT_FIELDS, DEMO_SCOPE, HEADER, METADATA_FIELDS
from .checks import Misbehaved, bearer_challenge, check, expect, json_object, oauth_error
from .context import METADATA_PATH, Walk, token_answer

__all__ = ["STEP_RUNS"]


def discover(walk: Walk) -> None:
    out = walk.out
    response = walk.wire.get(walk.issuer + METADATA_PATH)
    check(out, "HTTP", 200, response.status_code)
    metadata = json_object(response)
    out.line()
    out.line("What each field says:", bold=True)
    for name, value in metadata.items():
        out.explain(name, _shown(value), METADATA_FIELDS.get(name, "(not covered here)"),
                    width=22)
    out.line()
    check(out, "issuer, exactly the URL asked", walk.issuer, metadata.get("issuer"))
    for name in ("token_endpoint", "jwks_uri"):
        expect(out, isinstance(metadata.get(name), str), f"a {name}", repr(metadata.get(name)))
    expect(out, "client_credentials" in (metadata.get("grant_types_supported") or []),
           "client_credentials among grant_types_supported")
    expect(out, "client_secret_basic" in
           (metadata.get("token_endpoint_auth_methods_supported") or []),
           "client_secret_basic among token_endpoint_auth_methods_supported")
    walk.metadata = metadata


#: What to pass when the walkthrough has no client it can use.
WHAT_TO_PASS = ("pass --client-id and --client-secret (or M2MAUTH_CLIENT_SECRET) of a "
                "registered client, or --register-client")
#: The scopes a client registered without a model gets: read for the API, write for the
#: insufficient-scope lesson.
REGISTERED_SCOPES = ("read", "write")


def client(walk: Walk) -> None:
    """Settle on the client every later step and lesson uses: the one named (demo-client
    unless --client-id) with its secret, or one registered now (--register-client, modelled
    on the named one when it exists); a client that cannot get a token fails here."""
    out = walk.out
    clients = walk.admin("GET", "/clients").get("clients") or []
    named = next((c for c in clients if isinstance(c, dict)
                  and c.get("client_id") == walk.client_id), None)
    out.line()
    if walk.register:
        record = _register(walk, named)
    else:
        if named is None:
            raise Misbehaved(f"no client {walk.client_id} is registered at {walk.issuer}: "
                             + WHAT_TO_PASS)
        if walk.client_secret is None:
            raise Misbehaved(f"no secret for {walk.client_id}: pass --client-secret (or "
                             "M2MAUTH_CLIENT_SECRET), or --register-client")
        out.ok(f"the client {walk.client_id} registered")
        record = named
    for name, why in CLIENT_FIELDS.items():
        value = record.get(name)
        out.explain(name, " ".join(value) if isinstance(value, list) else str(value), why)
    out.line()
    expect(out, "client_secret_basic" in (record.get("auth_methods") or []),
           "client_secret_basic allowed")
    expect(out, DEMO_SCOPE in (record.get("scopes") or []), f"scope {DEMO_SCOPE} allowed")
    if walk.register:
        walk.client_settled = True
        return
    # Its secret, tried once (quietly): a refused one would fail every step after this.
    with walk.wire.printing("brief"):
        response = walk.request_token()
    if response.status_code == 401:
        raise Misbehaved(f"the server refused the secret given for {walk.client_id} (HTTP 401 "
                         f"{oauth_error(response) or ''}".rstrip() + "): pass its "
                         "--client-secret (or M2MAUTH_CLIENT_SECRET), or --register-client")
    if response.status_code == 200:
        token_answer(response)
        out.ok(f"its secret gets a token for scope {DEMO_SCOPE}")
    else:  # not a refused secret: the token step shows what it is
        out.detail(f"  (its secret not refused, but no token either: HTTP "
                   f"{response.status_code})")
    if walk.client_secret == DEMO_CLIENT_SECRET:
        out.prose(f"Using {walk.client_id} with its public demo secret (--register-client "
                  "registers a new one through POST /admin/clients instead).", indent="  ")
    else:
        out.prose(f"Using {walk.client_id} with the secret given (not printed).", indent="  ")
    walk.client_settled = True


def _register(walk: Walk, model: dict[str, Any] | None) -> dict[str, Any]:
    """A new client through POST /admin/clients, removed when the walkthrough ends."""
    out = walk.out
    if model is not None:
        scopes, audiences = model.get("scopes"), model.get("audiences")
        out.detail(f"  registering a client with the scopes and audiences of {walk.client_id}")
    else:
        scopes, audiences = list(REGISTERED_SCOPES), []
        out.detail(f"  ({walk.client_id} is not registered: a client with scopes "
                   f"{' '.join(REGISTERED_SCOPES)} and the server's default audience)")
    added = walk.admin("POST", "/clients", {
        "scopes": scopes, "audiences": audiences,
        "auth_methods": ["client_secret_basic"]}, expected=201)
    client_id, secret = added.get("client_id"), added.get("client_secret")
    if not isinstance(client_id, str) or not isinstance(secret, str):
        raise Misbehaved("POST /admin/clients answered no client_id and client_secret")
    walk.client_id, walk.client_secret = client_id, secret
    walk.cleanups.append(lambda: walk.admin("DELETE", f"/clients/{client_id}"))
    out.ok(f"registered {client_id}; its secret is answered once, and not printed here")
    return added


def token(walk: Walk) -> None:
    out = walk.out
    response = walk.request_token()
    check(out, "HTTP", 200, response.status_code)
    body = json_object(response)
    check(out, "token_type", "bearer", str(body.get("token_type")).lower())
    expect(out, isinstance(body.get("access_token"), str), "an access_token")
    expires_in = body.get("expires_in")
    expect(out, isinstance(expires_in, int) and expires_in > 0,
           "expires_in: seconds the token lives", repr(expires_in))
    expect(out, DEMO_SCOPE in str(body.get("scope", "")).split(),
           f"scope granted: {DEMO_SCOPE}", repr(body.get("scope")))
    check(out, "Cache-Control", "no-store", response.headers.get("Cache-Control"))
    walk.token = body["access_token"]


def inspect(walk: Walk) -> None:
    out = walk.out
    token = _needs_token(walk)
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise Misbehaved(f"the access token is not a JWT: {exc}") from None
    out.line()
    out.line("header.claims.signature - each part base64url; the header:", bold=True)
    for name, value in header.items():
        out.explain(name, _shown(value), HEADER.get(name, "(not covered here)"), width=9)
    now = walk.server_now()
    out.line()
    out.line("the claims (times against the server's clock, GET /admin/clock):", bold=True)
    for name, value in claims.items():
        out.explain(name, _claim_value(name, value, now), CLAIMS.get(name, "(not covered here)"),
                    width=9)
    out.line()
    check(out, "typ", "at+jwt", header.get("typ"))
    check(out, "iss", walk.issuer, claims.get("iss"))
    check(out, "sub (the client)", walk.client_id, claims.get("sub"))
    expect(out, DEMO_SCOPE in str(claims.get("scope", "")).split(), f"scope has {DEMO_SCOPE}")
    exp = claims.get("exp")
    expect(out, isinstance(exp, (int, float)) and exp > now, "exp after the server's now",
           repr(exp))
    _verify(walk, token, header)


def _verify(walk: Walk, token: str, header: dict[str, Any]) -> None:
    """The signature, with PyJWT, against the key of the JWKS whose kid the header names."""
    out = walk.out
    response = walk.wire.get(walk.jwks_uri)
    check(out, "JWKS HTTP", 200, response.status_code)
    keys = [k for k in json_object(response).get("keys") or [] if isinstance(k, dict)]
    out.line()
    kid, alg = header.get("kid"), header.get("alg")
    for key in keys:
        mark = "   <- the token's kid" if key.get("kid") == kid else ""
        out.detail(f"  JWKS key {key.get('kid')} ({key.get('kty')}, {key.get('alg')}){mark}")
    matching = [k for k in keys if k.get("kid") == kid]
    expect(out, len(matching) == 1, f"one JWKS key with the header's kid {kid}",
           f"{len(matching)} keys")
    # The algorithm comes from our allow-list, never from the token alone (RFC 8725 3.1).
    expect(out, alg in DEFAULT_ALGORITHMS, f"alg {alg} on the validator's allow-list")
    try:
        key = jwt.PyJWK(matching[0], algorithm=alg).key
        jwt.PyJWS().decode(token, key=key, algorithms=[alg])
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise Misbehaved(f"the signature does not verify: {exc}") from None
    out.ok(f"signature valid (PyJWT, {alg}, the public key {kid})")


def call(walk: Walk) -> None:
    out = walk.out
    token = _needs_token(walk)
    ok = walk.call_api(token)
    check(out, "with the token: HTTP", 200, ok.status_code)
    expect(out, json_object(ok).get("sub") == walk.client_id,
           f"the API knows the caller: sub {walk.client_id}")
    anonymous = walk.call_api(None)
    check(out, "without a token: HTTP", 401, anonymous.status_code)
    challenge = bearer_challenge(anonymous)
    expect(out, challenge is not None, "WWW-Authenticate: Bearer realm=...",
           repr(anonymous.headers.get("WWW-Authenticate")))
    assert challenge is not None
    # RFC 6750 section 3.1: a request without credentials gets no error code.
    expect(out, "error" not in challenge.params, "no error code (none was tried)",
           repr(challenge.params.get("error")))
    bad = walk.call_api(tampered(token))
    check(out, "with a tampered token: HTTP", 401, bad.status_code)
    challenge = bearer_challenge(bad)
    check(out, "error", "invalid_token", challenge.params.get("error") if challenge else None)


def tampered(token: str) -> str:
    """``token`` with one character of its signature changed (well inside the segment: the
    last character may carry unused bits, so changing it might not change the bytes)."""
    head, _, signature = token.rpartition(".")
    i = len(signature) // 2
    swapped = "A" if signature[i] != "A" else "B"
    return f"{head}.{signature[:i]}{swapped}{signature[i + 1:]}"


def _needs_token(walk: Walk) -> str:
    if walk.token is None:
        raise Misbehaved("no token: the token step did not get one")
    return walk.token


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _claim_value(name: str, value: Any, now: float) -> str:
    if name not in ("iat", "nbf", "exp") or isinstance(value, bool) \
            or not isinstance(value, (int, float)):
        return _shown(value)
    when = datetime.fromtimestamp(value, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    delta = round(value - now)
    relative = "now" if delta == 0 else f"in {delta} s" if delta > 0 else f"{-delta} s ago"
    return f"{value}  ({when}, {relative})"


STEP_RUNS: dict[str, Callable[[Walk], None]] = {
    "discover": discover, "client": client, "token": token, "inspect": inspect, "call": call,
}
