"""Bounded, deterministic fuzzing (hypothesis, derandomized) of everything that takes
untrusted input: the token endpoint (form fields, bytes, encodings, Authorization headers,
client assertions with random headers and claims), the admin API's JSON bodies, and
TokenValidator.validate on mutated real tokens. The contracts: the server answers JSON with a
status below 500; the validator raises InvalidTokenError or InsufficientScopeError only.
In-process (Flask test client, JWKS from the server's own state): no network, no sleeping."""

from __future__ import annotations

import base64
import contextlib
import json
import string
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m2mauth.client import InsufficientScopeError, InvalidTokenError, JWKSCache, TokenValidator
from m2mauth.server import ServerSettings, create_app
from m2mauth.server.lab.admin import OPERATIONS
from m2mauth.server.settings import ClientSettings

FUZZ = settings(derandomize=True, max_examples=100, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
SECRET = "fuzz-secret-0123456789abcdef0123"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture(scope="module")
def app():
    client = ClientSettings(client_id="fuzz", client_secret=SECRET, scopes=("read", "write"),
                            auth_methods=("client_secret_basic", "client_secret_post",
                                          "client_secret_jwt"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_app(ServerSettings(clients=[client]))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
    st.sampled_from([10**400, -(10**400), 1e308, "fuzz", "HS256", "RS256", "none", "at+jwt"]),
    st.text(max_size=20),
)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8)
names = st.sampled_from(["grant_type", "client_id", "client_secret", "scope", "resource",
                         "audience", "client_assertion", "client_assertion_type",
                         "access_token", "x"])
field_values = st.one_of(st.text(max_size=40), st.sampled_from([
    "client_credentials", "fuzz", SECRET, ASSERTION_TYPE, "read", "read write",
    "https://api.example", "#frag", "", " ", "\x00", "é"]))


def _assertion(header: dict, claims: dict, signed: bool) -> str:
    import hashlib
    import hmac

    try:
        head = b64(json.dumps(header).encode())
        body = b64(json.dumps(claims).encode())
    except (ValueError, OverflowError):
        head, body = b64(b"{}"), b64(b"{}")
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest() \
        if signed else b"\x00" * 32
    return f"{head}.{body}.{b64(sig)}"


assertions = st.builds(
    _assertion,
    st.fixed_dictionaries({"alg": st.sampled_from(["HS256", "RS256", "none", "HS512"])},
                          optional={k: json_values for k in ("typ", "kid", "crit", "jku",
                                                              "zip", "enc", "b64")}),
    st.fixed_dictionaries({}, optional={
        "sub": st.sampled_from(["fuzz", "nobody"]) | json_values,
        "iss": st.sampled_from(["fuzz"]) | json_values,
        "aud": st.sampled_from(["http://127.0.0.1:8000/token"]) | json_values,
        "exp": json_values, "jti": json_values, "iat": json_values, "nbf": json_values}),
    st.booleans(),
)
authorization = st.one_of(
    st.none(),
    st.text(max_size=60),
    st.binary(max_size=60).map(lambda b: "Basic " + base64.b64encode(b).decode()),
    st.tuples(st.text(max_size=20), st.text(max_size=20)).map(
        lambda p: "Basic " + base64.b64encode(f"{p[0]}:{p[1]}".encode()).decode()),
    st.sampled_from(["Basic", "Basic ", "Bearer x", "Basic " + "A" * 20000,
                     "Basic " + base64.b64encode(f"fuzz:{SECRET}".encode()).decode()]),
)


def _check_json_error(response) -> None:
    assert response.status_code < 500, response.get_data()[:300]
    assert response.mimetype == "application/json", response.get_data()[:300]
    assert "Traceback" not in response.get_data(as_text=True)


@FUZZ
@given(fields=st.lists(st.tuples(names, field_values | assertions), max_size=6),
       auth=authorization,
       content_type=st.sampled_from(["application/x-www-form-urlencoded",
                                     "application/x-www-form-urlencoded; charset=latin-1",
                                     "application/json", "text/plain", None]),
       raw=st.none() | st.binary(max_size=80),
       query=st.sampled_from(["", "?client_secret=x", "?%ff=%00"]))
def test_token_endpoint_never_fails_with_a_5xx(app, fields, auth, content_type, raw, query):
    from urllib.parse import urlencode

    data = raw if raw is not None else urlencode(fields).encode()
    headers = {} if auth is None else {"Authorization": auth}
    if content_type is not None:
        headers["Content-Type"] = content_type
    try:
        response = app.test_client().post("/token" + query, data=data, headers=headers)
    except ValueError:  # the test client refuses header values it cannot send (newlines)
        return
    _check_json_error(response)


@FUZZ
@given(assertion=assertions, with_client_id=st.booleans())
def test_client_assertions_never_fail_with_a_5xx(app, assertion, with_client_id):
    form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion}
    if with_client_id:
        form["client_id"] = "fuzz"
    response = app.test_client().post("/token", data=form)
    _check_json_error(response)


_POSTS = [op for op in OPERATIONS if op["method"] == "POST"]


@FUZZ
@given(op=st.sampled_from(_POSTS), data=st.data())
def test_admin_bodies_never_fail_with_a_5xx(app, op, data):
    fields = op.get("fields", []) or ["x"]
    body = data.draw(st.dictionaries(st.sampled_from([*fields, "bogus"]), json_values,
                                     max_size=4))
    path = op["path"].replace("<kid>", data.draw(st.sampled_from(["nokid", "%00"])))
    client = app.test_client()
    try:
        payload = json.dumps(body)
    except ValueError:
        return
    response = client.post(path, data=payload, content_type="application/json")
    _check_json_error(response)
    client.post("/admin/reset")


@pytest.fixture(scope="module")
def tokens_and_validator(app):
    controls = app.extensions["m2mauth_lab"].controls
    state = app.extensions["m2mauth"]
    jwks = JWKSCache(None, fetch=lambda: (controls.jwks, None))
    validator = TokenValidator(state.issuer, state.settings.default_audience, jwks_cache=jwks,
                               algorithms=("RS256", "PS256", "ES256", "EdDSA", "HS256"),
                               hmac_secret="h" * 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokens = [controls.issue_token("fuzz", alg=alg) for alg in ("RS256", "ES256", "EdDSA")]
    return tokens, validator


_B64CHARS = string.ascii_letters + string.digits + "-_"


@st.composite
def mutated_tokens(draw, tokens):
    token = draw(st.sampled_from(tokens))
    parts = token.split(".")
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, 2))
        kind = draw(st.integers(0, 5))
        if kind == 0:  # truncate
            parts[i] = parts[i][: draw(st.integers(0, len(parts[i])))]
        elif kind == 1 and parts[i]:  # change one character
            at = draw(st.integers(0, len(parts[i]) - 1))
            parts[i] = parts[i][:at] + draw(st.sampled_from(_B64CHARS + "=.+/ é\x00")) \
                + parts[i][at + 1:]
        elif kind == 2:  # append
            parts[i] += draw(st.sampled_from(["A", "AA", "AAA", "=", ".", "." + parts[i]]))
        elif kind == 3 and i < 2:  # re-encode the JSON with a member changed
            try:
                doc = json.loads(base64.urlsafe_b64decode(parts[i] + "==="))
            except ValueError:
                continue
            if isinstance(doc, dict):
                doc[draw(st.sampled_from([*sorted(doc), "crit", "kid", "jku", "zip", "b64"]))] \
                    = draw(json_values)
                with contextlib.suppress(ValueError):
                    parts[i] = b64(json.dumps(doc).encode())
        elif kind == 4:  # random bytes
            parts[i] = b64(draw(st.binary(max_size=300)))
        else:  # whole-token oddities
            return draw(st.sampled_from(["", ".", "..", "a.b.c.d.e", "{}", "x" * 9000,
                                         token.encode(), bytearray(token.encode()), None, 5,
                                         token + "é"]))
    return ".".join(parts)


@FUZZ
@given(data=st.data(), scopes=st.sampled_from([(), ("read",), ("admin",), "read write"]))
def test_validator_raises_only_token_errors(tokens_and_validator, data, scopes):
    tokens, validator = tokens_and_validator
    token = data.draw(mutated_tokens(tokens))
    with contextlib.suppress(InvalidTokenError, InsufficientScopeError):
        validator.validate(token, scopes)


@FUZZ
@given(claims=st.dictionaries(st.sampled_from(["iss", "sub", "aud", "exp", "iat", "nbf", "jti",
                                               "client_id", "scope"]), json_values, max_size=4),
       headers=st.dictionaries(st.sampled_from(["typ", "kid", "crit", "cty", "b64"]),
                               json_values, max_size=2),
       scopes=st.sampled_from([(), ("read",)]))
def test_validator_on_signed_tokens_with_random_claims(app, tokens_and_validator, claims,
                                                        headers, scopes):
    from m2mauth.server.lab.controls import ControlError

    _, validator = tokens_and_validator
    try:
        token = app.extensions["m2mauth_lab"].controls.issue_token(
            "fuzz", claims=claims, headers=headers, alg="ES256")
    except ControlError:
        return
    with contextlib.suppress(InvalidTokenError, InsufficientScopeError):
        validator.validate(token, scopes)
