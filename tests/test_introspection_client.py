"""IntrospectionValidator, introspect_token and revoke_token end to end against the real
server's POST /introspect and POST /revoke over loopback HTTP: active JWT and opaque tokens,
every inactive case, scopes, audience and issuer, each client auth method, the cache (counted
with a requests.Session of the test's own – the HTTP is real), single flight under threads,
stale answers and failing closed, require_token, the combination with TokenValidator, and a
third-party client (Authlib's OAuth2Session) at the same endpoints.

One server for the module (its clients may introspect, which the session's server's may not),
reset before each test; its clock is frozen and is the validator's clock too, so moving it
expires tokens and cache entries alike. No sleeps."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from flask import Flask, Response, g, jsonify, request

from m2mauth.client import (
    INVALID_TOKEN_REASONS,
    InsufficientScopeError,
    IntrospectionError,
    IntrospectionValidator,
    InvalidTokenError,
    TokenValidator,
    ValidatedToken,
    fetch_token,
    introspect_token,
    revoke_token,
)
from m2mauth.client.flask import require_token
from m2mauth.server import ClientSettings, ServerSettings
from m2mauth.server.lab.idp import IdentityProvider
from m2mauth.server.serving import BackgroundServer, bind_app

API = "https://orders.test"
#: The resource server's own secret: 32+ bytes, as client_secret_jwt's HS256 wants.
RS_SECRET = "orders-api-introspection-secret-0123456789"
CALLER_SECRET = "caller-secret-for-tests"
SECRET_METHODS = ("client_secret_basic", "client_secret_post", "client_secret_jwt")


@pytest.fixture(scope="module")
def server(client_keys) -> Iterator[IdentityProvider]:
    """An issuer whose resource-server clients may introspect: ``orders-api`` (every secret
    method), ``rs-<method>`` (that method only), ``rs-jwt-<alg>`` (private_key_jwt with the
    conftest's client keys) and ``no-introspect`` (may not); callers of the API ``caller``
    (JWTs), ``opaque-caller`` (opaque tokens), ``short-caller`` (30 s tokens) and
    ``elsewhere`` (tokens for another API)."""
    clients = [
        ClientSettings("orders-api", RS_SECRET, introspect=True),
        ClientSettings("no-introspect", RS_SECRET),
        ClientSettings("caller", CALLER_SECRET, scopes=("read", "write"), audiences=(API,)),
        ClientSettings("opaque-caller", CALLER_SECRET, scopes=("read",), audiences=(API,),
                       token_format="opaque"),
        ClientSettings("short-caller", CALLER_SECRET, scopes=("read",), audiences=(API,),
                       token_lifetime=30),
        ClientSettings("elsewhere", CALLER_SECRET, scopes=("read",),
                       audiences=("https://billing.test",)),
    ]
    clients += [ClientSettings(f"rs-{m}", RS_SECRET, auth_methods=(m,), introspect=True)
                for m in SECRET_METHODS]
    clients += [ClientSettings(f"rs-jwt-{alg.lower()}", jwks=key.public_jwks(),
                               introspect=True) for alg, key in client_keys.items()]
    settings = ServerSettings(ephemeral_keys=True, algorithm="ES256", clients=clients)
    with IdentityProvider.start(settings) as idp:
        yield idp


@pytest.fixture
def issuer(server) -> Iterator[IdentityProvider]:
    """The module's server, reset, its clock frozen on a whole second."""
    server.reset()
    server.clock.freeze(at=float(int(server.clock.now())))
    yield server
    server.reset()


class CountingSession(requests.Session):
    """A real ``requests.Session`` that records the path of every request it sends and can
    hold requests at a ``gate`` (a callable run before sending): the test's own transport
    hook, not a stand-in for any part of m2mauth."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []
        self.gate: Callable[[], None] | None = None
        self._lock = threading.Lock()

    def request(self, method, url, *args, **kwargs):  # type: ignore[override]
        with self._lock:
            self.paths.append(urlsplit(url).path)
        if self.gate is not None:
            self.gate()
        return super().request(method, url, *args, **kwargs)

    def count(self, path: str = "/introspect") -> int:
        with self._lock:
            return sum(p == path for p in self.paths)


@pytest.fixture
def http() -> CountingSession:
    return CountingSession()


@pytest.fixture
def make_validator(issuer, http) -> Callable[..., IntrospectionValidator]:
    """``make_validator(**options)``: an IntrospectionValidator of the module's issuer for
    ``API``, as ``orders-api``, on the issuer's clock and the counting session."""

    def make(**options: Any) -> IntrospectionValidator:
        options.setdefault("client_id", "orders-api")
        if "private_key" not in options:
            options.setdefault("client_secret", RS_SECRET)
        options.setdefault("clock", issuer.clock.now)
        options.setdefault("session", http)
        return IntrospectionValidator(options.pop("issuer", issuer.issuer),
                                      options.pop("audience", API), **options)

    return make


def token_of(idp: IdentityProvider, client_id: str = "caller", scope: str = "read",
             secret: str = CALLER_SECRET) -> str:
    """A token from the real token endpoint."""
    return fetch_token(idp.token_endpoint, client_id=client_id, client_secret=secret,
                       scope=scope).access_token


class ManualClock:
    """A clock of the test's own for a validator whose issuer is stopped."""

    def __init__(self, now: float) -> None:
        self.now_value = now

    def now(self) -> float:
        return self.now_value

    def advance(self, seconds: float) -> None:
        self.now_value += seconds


@contextmanager
def serving(app: Flask) -> Iterator[str]:
    """``app`` on a free loopback port in a background thread; yields its base URL."""
    server, _ = bind_app("127.0.0.1", 0, lambda _port: app)
    with BackgroundServer(server) as running:
        yield running.url


@contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port nobody listens on (bound without listen: connections are refused)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


class Relay:
    """A loopback relay in front of the real introspection endpoint that a test switches to
    misbehave: it forwards each request as it came (body, Authorization) and answers what the
    server answered – or, with ``fault`` set, (status, body, content type) instead; with
    ``rewrite``, the server's JSON answer changed by that function."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.fault: tuple[int, bytes, str] | None = None
        self.rewrite: Callable[[dict], dict] | None = None
        self.app = Flask("relay")
        self.app.add_url_rule("/introspect", "introspect", self._introspect, methods=["POST"])

    def _introspect(self) -> Response:
        if self.fault is not None:
            status, body, content_type = self.fault
            return Response(body, status, content_type=content_type)
        headers = {"Content-Type": request.content_type or ""}
        if "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]
        answer = requests.post(self.target, data=request.get_data(), headers=headers,
                               timeout=5)
        body = answer.content
        if self.rewrite is not None and answer.status_code == 200:
            body = json.dumps(self.rewrite(answer.json())).encode()
        return Response(body, answer.status_code, content_type=answer.headers["Content-Type"])


@pytest.fixture
def relay(issuer) -> Iterator[tuple[Relay, str]]:
    """A :class:`Relay` to the issuer's endpoint, and the relay's /introspect URL."""
    relay = Relay(issuer.core.introspection_endpoint)
    with serving(relay.app) as url:
        yield relay, url + "/introspect"


# -- active tokens -----------------------------------------------------------------------------


def test_an_active_jwt_validates_with_the_answers_claims(issuer, make_validator, http):
    token = token_of(issuer, scope="read write")
    validator = make_validator()
    result = validator.validate(token, scopes=["read"])
    assert isinstance(result, ValidatedToken)
    assert (result.subject, result.client_id, result.issuer) == ("caller", "caller",
                                                                  issuer.issuer)
    assert result.scopes == ("read", "write") and result.audience == (API,)
    assert result.expires_at == issuer.clock.now() + 300
    assert result.issued_at == issuer.clock.now() and result.jti
    assert result.claims["active"] is True and result.claims["token_type"] == "Bearer"
    assert dict(result.header) == {}  # no header: the token was not read here
    # discovered through the issuer's metadata, once; then one introspection request
    assert validator.introspection_endpoint == issuer.issuer + "/introspect"
    assert http.count("/.well-known/oauth-authorization-server") == 1
    assert http.count() == 1


def test_an_opaque_token_validates(issuer, make_validator):
    token = token_of(issuer, "opaque-caller")
    assert token.count(".") == 0  # not a JWT: nothing to verify locally
    result = make_validator().validate(token, "read")
    assert result.client_id == "opaque-caller" and result.scopes == ("read",)


def test_the_validator_agrees_with_token_validator_on_a_jwt(issuer, make_validator):
    token = token_of(issuer, scope="read write")
    local = TokenValidator(issuer.issuer, API, clock=issuer.clock.now).validate(token)
    asked = make_validator().validate(token)
    for name in ("subject", "client_id", "scopes", "expires_at", "issued_at", "audience",
                 "issuer", "jti"):
        assert getattr(asked, name) == getattr(local, name), name


def test_an_explicit_endpoint_skips_discovery(issuer, make_validator, http):
    validator = make_validator(introspection_endpoint=issuer.core.introspection_endpoint)
    validator.validate(token_of(issuer))
    assert http.paths == ["/introspect"]


# -- inactive: every case the server answers {"active": false} -------------------------------


def _expired(idp: IdentityProvider, idp_factory) -> str:
    token = token_of(idp)
    idp.clock.advance(301)
    return token


def _revoked(idp: IdentityProvider, idp_factory) -> str:
    token = token_of(idp)
    revoke_token(token, issuer=idp.issuer, client_id="caller", client_secret=CALLER_SECRET)
    return token


def _revoked_opaque(idp: IdentityProvider, idp_factory) -> str:
    token = token_of(idp, "opaque-caller")
    revoke_token(token, revocation_endpoint=idp.core.revocation_endpoint,
                 client_id="opaque-caller", client_secret=CALLER_SECRET,
                 auth_method="client_secret_post")
    return token


def _unknown(idp: IdentityProvider, idp_factory) -> str:
    return "q" * 43  # shaped like an opaque token, never issued


def _malformed(idp: IdentityProvider, idp_factory) -> str:
    return "not.a.jwt"


def _tampered(idp: IdentityProvider, idp_factory) -> str:
    header, payload, signature = token_of(idp).split(".")
    return f"{header}.{payload}.{signature[:-4]}AAAA"


def _other_issuer(idp: IdentityProvider, idp_factory) -> str:
    other = idp_factory()  # its own keys; its demo client's token for the default audience
    return fetch_token(other.token_endpoint, client_id="demo-client",
                       client_secret="demo-secret").access_token


def _retired_key(idp: IdentityProvider, idp_factory) -> str:
    token = token_of(idp)
    keys = idp.keys()
    old = next(k["kid"] for k in keys if k["status"] == "active")
    idp.rotate_key()
    idp.retire_key(old)
    return token


@pytest.mark.parametrize("case", [_expired, _revoked, _revoked_opaque, _unknown, _malformed,
                                  _tampered, _other_issuer, _retired_key],
                         ids=lambda f: f.__name__.strip("_"))
def test_every_inactive_case_is_invalid_token(issuer, idp_factory, make_validator, case):
    token = case(issuer, idp_factory)
    with pytest.raises(InvalidTokenError) as caught:
        make_validator().validate(token)
    assert caught.value.reason == "inactive"
    assert "inactive" in INVALID_TOKEN_REASONS
    assert caught.value.status == 401
    assert token not in str(caught.value) and token not in repr(caught.value)


def test_revoked_mid_test_is_seen_when_the_cached_answer_runs_out(issuer, make_validator,
                                                                     http):
    token = token_of(issuer)
    validator = make_validator(cache_ttl=60)
    validator.validate(token)
    revoke_token(token, issuer=issuer.issuer, client_id="caller", client_secret=CALLER_SECRET)
    validator.validate(token)  # the cached answer stands for cache_ttl: documented
    assert http.count() == 1
    issuer.clock.advance(60)
    with pytest.raises(InvalidTokenError, match="not active"):
        validator.validate(token)
    assert http.count() == 2


def test_without_a_cache_a_revocation_is_seen_at_once(issuer, make_validator):
    token = token_of(issuer, "opaque-caller")
    validator = make_validator(cache_ttl=0)
    validator.validate(token)
    revoke_token(token, issuer=issuer.issuer, client_id="opaque-caller",
                 client_secret=CALLER_SECRET)
    with pytest.raises(InvalidTokenError) as caught:
        validator.validate(token)
    assert caught.value.reason == "inactive"


@pytest.mark.parametrize(("token", "reason"), [
    ("a b", "malformed"),
    ("tok\u00e9n", "malformed"),
    ("", "malformed"),
    (12345, "malformed"),
    ("x" * 8193, "too_large"),
])
def test_a_token_that_cannot_be_one_is_refused_before_any_request(make_validator, http,
                                                                   token, reason):
    validator = make_validator(introspection_endpoint="http://127.0.0.1:9/introspect")
    with pytest.raises(InvalidTokenError) as caught:
        validator.validate(token)
    assert caught.value.reason == reason
    assert http.paths == []


def test_bytes_are_accepted_like_a_string(issuer, make_validator):
    token = token_of(issuer)
    assert make_validator().validate(token.encode()).client_id == "caller"


# -- scopes, audience, issuer --------------------------------------------------------------


def test_missing_scopes_are_insufficient_scope(issuer, make_validator):
    token = token_of(issuer, scope="read")
    validator = make_validator()
    with pytest.raises(InsufficientScopeError) as caught:
        validator.validate(token, scopes="read write")
    assert caught.value.required == ("read", "write")
    assert caught.value.missing == ("write",)
    assert caught.value.granted == ("read",)
    assert validator.validate(token, scopes=["read"]).scopes == ("read",)


def test_a_token_for_another_api_is_wrong_audience_and_cached_briefly(issuer, make_validator,
                                                                       http):
    token = token_of(issuer, "elsewhere")
    validator = make_validator(inactive_ttl=5)
    for _ in range(2):
        with pytest.raises(InvalidTokenError) as caught:
            validator.validate(token)
        assert caught.value.reason == "wrong_audience" and caught.value.claim == "aud"
    assert http.count() == 1
    issuer.clock.advance(5)
    with pytest.raises(InvalidTokenError):
        validator.validate(token)
    assert http.count() == 2


def test_several_audiences_accept_any_of_them(issuer, make_validator):
    token = token_of(issuer, "elsewhere")
    validator = make_validator(audience=[API, "https://billing.test"])
    assert validator.validate(token).audience == ("https://billing.test",)


def test_the_issuer_is_compared_exactly(issuer, make_validator):
    validator = make_validator(issuer=issuer.issuer + "/",
                               introspection_endpoint=issuer.core.introspection_endpoint)
    with pytest.raises(InvalidTokenError) as caught:
        validator.validate(token_of(issuer))
    assert caught.value.reason == "wrong_issuer"


def test_a_token_the_server_calls_dpop_bound_is_wrong_type(issuer, make_validator, relay):
    proxy, url = relay
    proxy.rewrite = lambda answer: {**answer, "token_type": "DPoP"}
    with pytest.raises(InvalidTokenError) as caught:
        make_validator(introspection_endpoint=url).validate(token_of(issuer))
    assert caught.value.reason == "wrong_type"


def test_an_answer_with_cnf_jkt_is_wrong_type_without_a_token_type(issuer, make_validator,
                                                                   relay):
    """RFC 9449 §6.2: the answer of a DPoP-bound token carries cnf.jkt; without token_type
    the binding still stands, so it is no bearer token."""
    proxy, url = relay
    proxy.rewrite = lambda answer: {**{k: v for k, v in answer.items() if k != "token_type"},
                                    "cnf": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}}
    with pytest.raises(InvalidTokenError) as caught:
        make_validator(introspection_endpoint=url).validate(token_of(issuer))
    assert caught.value.reason == "wrong_type" and "cnf.jkt" in caught.value.error_description


@pytest.mark.parametrize(("change", "reason", "claim"), [
    ({"aud": None}, "missing_claim", "aud"),
    ({"exp": "soon"}, "invalid_claim", "exp"),
    ({"scope": ["read"]}, "invalid_claim", "scope"),
    ({"iss": "http://evil.test"}, "wrong_issuer", "iss"),
])
def test_the_answers_claims_get_token_validators_checks(issuer, make_validator, relay, change,
                                                        reason, claim):
    proxy, url = relay

    def rewrite(answer: dict) -> dict:
        answer = {**answer, **change}
        return {k: v for k, v in answer.items() if v is not None}

    proxy.rewrite = rewrite
    with pytest.raises(InvalidTokenError) as caught:
        make_validator(introspection_endpoint=url).validate(token_of(issuer))
    assert (caught.value.reason, caught.value.claim) == (reason, claim)


def test_an_answer_active_by_our_clock_expired_is_refused(issuer, make_validator):
    """Active for the server, expired beyond the leeway on this resource server's clock."""
    token = token_of(issuer)
    validator = make_validator(clock=lambda: issuer.clock.now() + 400)
    with pytest.raises(InvalidTokenError) as caught:
        validator.validate(token)
    assert caught.value.reason == "expired"


# -- the resource server's own client -------------------------------------------------------


def test_a_client_that_may_not_introspect_gets_a_clear_error(issuer, make_validator):
    token = token_of(issuer)
    validator = make_validator(client_id="no-introspect", client_secret=RS_SECRET)
    with pytest.raises(IntrospectionError) as caught:
        validator.validate(token)
    error = caught.value
    assert error.error == "unauthorized_client" and error.status == 400
    assert "refused this resource server's client 'no-introspect'" in str(error)
    assert "introspect = true" in str(error)
    assert isinstance(error.__cause__, Exception)
    for secret in (RS_SECRET, token):
        assert secret not in str(error) and secret not in repr(error)


def test_wrong_credentials_are_invalid_client(issuer, make_validator):
    wrong = "wrong-secret-never-printed-0123456789abcdef"
    validator = make_validator(client_secret=wrong)
    with pytest.raises(IntrospectionError) as caught:
        validator.validate(token_of(issuer))
    assert (caught.value.error, caught.value.status) == ("invalid_client", 401)
    assert wrong not in str(caught.value) and wrong not in repr(validator)


@pytest.mark.parametrize("method", SECRET_METHODS)
def test_each_secret_method(issuer, make_validator, method):
    """``rs-<method>`` may use that method only: a valid answer proves it was used."""
    validator = make_validator(client_id=f"rs-{method}", client_secret=RS_SECRET,
                               auth_method=method)
    assert validator.validate(token_of(issuer)).client_id == "caller"
    other = next(m for m in SECRET_METHODS if m != method)
    refused = make_validator(client_id=f"rs-{method}", client_secret=RS_SECRET,
                             auth_method=other)
    with pytest.raises(IntrospectionError, match="invalid_client"):
        refused.validate(token_of(issuer))


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_private_key_jwt_with_a_key_registered_as_the_clients_jwks(issuer, make_validator,
                                                                    client_keys, alg):
    key = client_keys[alg]
    validator = make_validator(client_id=f"rs-jwt-{alg.lower()}", private_key=key.pem(),
                               kid=key.jwk.kid)
    assert repr(validator).endswith("auth_method=private_key_jwt>")
    assert validator.validate(token_of(issuer, "opaque-caller")).client_id == "opaque-caller"


def test_private_key_jwt_with_another_key_is_refused(issuer, make_validator, client_keys):
    validator = make_validator(client_id="rs-jwt-es256", private_key=client_keys["RS256"].pem())
    with pytest.raises(IntrospectionError) as caught:
        validator.validate(token_of(issuer))
    assert caught.value.error == "invalid_client"


@pytest.mark.parametrize(("options", "message"), [
    ({"client_secret": None}, "client_secret_basic needs client_secret"),
    ({"auth_method": "private_key_jwt"}, "private_key_jwt needs private_key"),
    ({"auth_method": "tls_client_auth"}, "auth_method must be one of"),
    ({"cache_ttl": -1}, "cache_ttl must not be negative"),
    ({"introspection_endpoint": "/introspect"}, "absolute http"),
    ({"audience": []}, "audience"),
    ({"issuer": ""}, "issuer"),
])
def test_arguments_are_checked_before_any_request(make_validator, http, options, message):
    with pytest.raises(ValueError, match=message):
        make_validator(**options)
    assert http.paths == []


# -- the cache ------------------------------------------------------------------------------


def test_an_active_answer_is_cached_up_to_cache_ttl(issuer, make_validator, http):
    token = token_of(issuer)
    validator = make_validator(cache_ttl=60)
    for _ in range(5):
        validator.validate(token, "read")
    assert http.count() == 1
    issuer.clock.advance(59)
    validator.validate(token)
    assert http.count() == 1
    issuer.clock.advance(1)
    validator.validate(token)
    assert http.count() == 2


def test_an_active_answer_is_never_cached_past_the_tokens_exp(issuer, make_validator, http):
    token = token_of(issuer, "short-caller")  # expires in 30 s
    validator = make_validator(cache_ttl=60)
    validator.validate(token)
    issuer.clock.advance(29)
    validator.validate(token)
    assert http.count() == 1
    issuer.clock.advance(1)
    with pytest.raises(InvalidTokenError) as caught:  # asked again: the server says expired
        validator.validate(token)
    assert caught.value.reason == "inactive"
    assert http.count() == 2


def test_an_inactive_answer_is_cached_briefly(issuer, make_validator, http):
    validator = make_validator(inactive_ttl=5)
    for _ in range(3):
        with pytest.raises(InvalidTokenError):
            validator.validate("unknown-token")
    assert http.count() == 1
    issuer.clock.advance(4.5)
    with pytest.raises(InvalidTokenError):
        validator.validate("unknown-token")
    assert http.count() == 1
    issuer.clock.advance(0.5)
    with pytest.raises(InvalidTokenError):
        validator.validate("unknown-token")
    assert http.count() == 2


def test_each_caller_gets_its_own_error_object(issuer, make_validator):
    validator = make_validator()
    errors = []
    for _ in range(2):
        with pytest.raises(InvalidTokenError) as caught:
            validator.validate("unknown-token")
        errors.append(caught.value)
    assert errors[0] is not errors[1]


def test_the_cache_is_bounded_and_least_recently_used_leaves_first(issuer, make_validator,
                                                                     http):
    one, two, three = (token_of(issuer) for _ in range(3))
    validator = make_validator(cache_max_entries=2)
    validator.validate(one)
    validator.validate(two)
    validator.validate(one)  # now two is the least recently used
    validator.validate(three)
    assert http.count() == 3 and validator.cache_size[0] == 2
    validator.validate(one)
    assert http.count() == 3
    validator.validate(two)
    assert http.count() == 4


def test_the_cache_bytes_are_bounded(issuer, make_validator):
    validator = make_validator(cache_max_bytes=2000)
    for _ in range(5):
        validator.validate(token_of(issuer))
    entries, size = validator.cache_size
    assert 0 < entries < 5 and size <= 2000


def test_no_cache_with_zero_entries(issuer, make_validator, http):
    token = token_of(issuer)
    validator = make_validator(cache_max_entries=0)
    validator.validate(token)
    validator.validate(token)
    assert http.count() == 2 and validator.cache_size == (0, 0)


def test_the_cache_holds_hashes_never_tokens(issuer, make_validator, caplog):
    caplog.set_level(logging.DEBUG, logger="m2mauth")
    token = token_of(issuer)
    validator = make_validator()
    validator.validate(token)
    with pytest.raises(InvalidTokenError):
        validator.validate(token + "x")
    keys = list(validator._cache)
    assert keys and all(isinstance(k, bytes) and len(k) == 32 for k in keys)
    everything = repr(validator) + repr(vars(validator)) + caplog.text
    for secret in (token, RS_SECRET):
        assert secret not in everything
    assert validator.introspections == 2


def test_clear_cache(issuer, make_validator, http):
    token = token_of(issuer)
    validator = make_validator()
    validator.validate(token)
    validator.clear_cache()
    assert validator.cache_size == (0, 0)
    validator.validate(token)
    assert http.count() == 2


# -- single flight --------------------------------------------------------------------------


def _together(n: int, work: Callable[[], Any], http: CountingSession,
              gate: Callable[[], None] | None = None) -> tuple[list[Any], list[BaseException]]:
    """``work()`` in ``n`` threads released at once by a barrier. ``gate`` runs before each
    request; by default the first request is held until every thread has entered ``work``,
    and any other until then too (bounded waits only)."""
    entered = threading.Semaphore(0)
    released = threading.Event()
    first = threading.Lock()

    def hold_the_first() -> None:
        if first.acquire(blocking=False):
            for _ in range(n):  # every thread is in validate() (or already done with it)
                assert entered.acquire(timeout=10)
            released.set()
        assert released.wait(timeout=10)

    http.gate = gate or hold_the_first
    barrier = threading.Barrier(n)
    results: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        barrier.wait(timeout=10)
        entered.release()
        try:
            value = work()
        except BaseException as exc:  # collected for the assertions
            with lock:
                errors.append(exc)
        else:
            with lock:
                results.append(value)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert not any(t.is_alive() for t in threads)
    return results, errors


def test_concurrent_callers_of_one_uncached_token_make_one_request(issuer, make_validator,
                                                                   http):
    token = token_of(issuer)
    validator = make_validator(introspection_endpoint=issuer.core.introspection_endpoint)
    results, errors = _together(16, lambda: validator.validate(token, "read"), http)
    assert errors == [] and len(results) == 16
    assert len({r.jti for r in results}) == 1
    assert http.count() == 1


def test_concurrent_callers_share_a_failure_too(issuer, make_validator, http):
    with closed_port() as port:
        validator = make_validator(
            introspection_endpoint=f"http://127.0.0.1:{port}/introspect")
        results, errors = _together(8, lambda: validator.validate("some-token"), http)
    assert results == [] and len(errors) == 8
    assert all(isinstance(e, IntrospectionError) for e in errors)
    assert len({id(e) for e in errors}) == 8  # a copy each, not one object in 8 threads
    assert http.count() == 1


def test_different_tokens_do_not_wait_for_each_other(issuer, make_validator, http):
    tokens = [token_of(issuer) for _ in range(4)]
    validator = make_validator(introspection_endpoint=issuer.core.introspection_endpoint)
    picks = iter(tokens)
    lock = threading.Lock()

    def work() -> ValidatedToken:
        with lock:
            token = next(picks)
        return validator.validate(token)

    # Every request is held until all four are in flight: one lock across tokens would
    # keep the others out, and the barrier would break.
    arrived = threading.Barrier(4)
    results, errors = _together(4, work, http, gate=lambda: arrived.wait(timeout=10) and None)
    assert errors == [] and len({r.jti for r in results}) == 4
    assert http.count() == 4


# -- when the endpoint fails: stale answers, then closed -------------------------------------


@pytest.fixture
def doomed(idp_factory):
    """A second issuer of this test's own, with an introspecting client, to stop mid-test."""
    settings = ServerSettings(ephemeral_keys=True, algorithm="ES256", clients=[
        ClientSettings("orders-api", RS_SECRET, introspect=True),
        ClientSettings("caller", CALLER_SECRET, scopes=("read",), audiences=(API,),
                       token_lifetime=120),
    ])
    idp = idp_factory(settings)
    idp.clock.freeze(at=float(int(idp.clock.now())))
    return idp


def test_a_stopped_endpoint_serves_the_cached_answer_within_max_stale(doomed, http):
    clock = ManualClock(doomed.clock.now())
    validator = IntrospectionValidator(doomed.issuer, API, client_id="orders-api",
                                       client_secret=RS_SECRET, clock=clock.now,
                                       session=http, cache_ttl=60, max_stale=30,
                                       failure_backoff=1)
    token = token_of(doomed)
    validator.validate(token)
    doomed.stop()
    clock.advance(59)
    validator.validate(token)  # fresh: no request
    assert http.count() == 1
    clock.advance(1)
    assert validator.validate(token).client_id == "caller"  # stale, the request failed
    assert (http.count(), validator.failures) == (2, 1)
    validator.validate(token)  # within failure_backoff: no request at all
    assert http.count() == 2
    clock.advance(28.5)
    validator.validate(token)  # still within max_stale; a new attempt
    assert http.count() == 3
    clock.advance(1.5)  # 90 s: cache_ttl + max_stale
    with pytest.raises(IntrospectionError) as caught:
        validator.validate(token)
    assert caught.value.error == "transport_error" and "Connection refused" in str(caught.value)
    assert http.count() == 4
    with pytest.raises(IntrospectionError):  # an uncached token fails closed at once
        validator.validate("never-asked-about-this-token")
    assert http.count() == 4  # within failure_backoff


def test_a_stale_answer_never_outlives_the_tokens_exp(doomed, http):
    clock = ManualClock(doomed.clock.now())
    validator = IntrospectionValidator(doomed.issuer, API, client_id="orders-api",
                                       client_secret=RS_SECRET, clock=clock.now,
                                       session=http, cache_ttl=100, max_stale=60)
    token = token_of(doomed)  # expires in 120 s
    validator.validate(token)
    doomed.stop()
    clock.advance(110)
    validator.validate(token)  # stale, before exp
    clock.advance(10)
    with pytest.raises(IntrospectionError):
        validator.validate(token)


@pytest.mark.parametrize(("fault", "error"), [
    ((500, b'{"error": "server_error"}', "application/json"), "server_error"),
    ((503, b'{"error": "temporarily_unavailable"}', "application/json"),
     "temporarily_unavailable"),
    ((502, b"<html>bad gateway</html>", "text/html"), "transport_error"),
    ((429, b"", "text/plain"), "transport_error"),
    ((200, b"not json", "text/html"), "transport_error"),
    ((200, b'{"active": "true"}', "application/json"), "transport_error"),
    ((200, b"[]", "application/json"), "transport_error"),
    ((200, b'{"active": true, "pad": "' + b"x" * 70_000 + b'"}', "application/json"),
     "transport_error"),
    ((302, b"", "text/plain"), "transport_error"),
])
def test_5xx_and_malformed_answers_serve_stale_then_fail_closed(issuer, make_validator, relay,
                                                                http, fault, error):
    proxy, url = relay
    token = token_of(issuer)
    validator = make_validator(introspection_endpoint=url, cache_ttl=10, max_stale=20,
                               failure_backoff=0)
    validator.validate(token)
    proxy.fault = fault
    issuer.clock.advance(15)
    assert validator.validate(token).client_id == "caller"
    issuer.clock.advance(15)
    with pytest.raises(IntrospectionError) as caught:
        validator.validate(token)
    assert caught.value.error == error
    assert http.count() == 3
    proxy.fault = None  # recovered: asked again, answered, cached
    validator.validate(token)
    assert http.count() == 4


def test_a_refusal_of_our_credentials_is_never_served_stale(issuer, make_validator, relay):
    proxy, url = relay
    token = token_of(issuer)
    validator = make_validator(introspection_endpoint=url, cache_ttl=10, max_stale=60)
    validator.validate(token)
    proxy.fault = (401, b'{"error": "invalid_client"}', "application/json")
    issuer.clock.advance(11)
    with pytest.raises(IntrospectionError) as caught:
        validator.validate(token)
    assert caught.value.error == "invalid_client"


def test_the_failure_backoff_spares_a_down_endpoint(issuer, make_validator, http):
    with closed_port() as port:
        validator = make_validator(introspection_endpoint=f"http://127.0.0.1:{port}/x",
                                   failure_backoff=2)
        for token in ("one", "two", "three"):
            with pytest.raises(IntrospectionError):
                validator.validate(token)
        assert len(http.paths) == 1
        issuer.clock.advance(2)
        with pytest.raises(IntrospectionError, match="Connection refused"):
            validator.validate("four")
        assert len(http.paths) == 2


def test_a_request_refused_for_its_token_does_not_stop_the_others(issuer, make_validator,
                                                                   http):
    """The issuer's 400 invalid_request is about that one request (here: a token over its
    16 KiB, which a validator allowing 32 KiB sends): no failure backoff for every other
    token, which got that token's error for failure_backoff seconds – one junk token a
    second from anyone kept every new caller out."""
    validator = make_validator(max_token_bytes=32 * 1024, failure_backoff=60)
    with pytest.raises(IntrospectionError) as caught:
        validator.validate("a" * 20_000)
    assert (caught.value.error, caught.value.status) == ("invalid_request", 400)
    assert validator.validate(token_of(issuer)).client_id == "caller"
    assert http.count() == 2


def test_a_failed_discovery_is_an_introspection_error(issuer, http):
    with closed_port() as port:
        validator = IntrospectionValidator(f"http://127.0.0.1:{port}", API,
                                           client_id="orders-api", client_secret=RS_SECRET,
                                           session=http)
        with pytest.raises(IntrospectionError) as caught:
            validator.validate("some-token")
    assert "Connection refused" in str(caught.value)


def test_stale_answers_and_failures_are_logged_without_tokens(doomed, http, caplog):
    caplog.set_level(logging.DEBUG, logger="m2mauth")
    clock = ManualClock(doomed.clock.now())
    validator = IntrospectionValidator(doomed.issuer, API, client_id="orders-api",
                                       client_secret=RS_SECRET, clock=clock.now,
                                       session=http, cache_ttl=1)
    token = token_of(doomed)
    jti = validator.validate(token).jti
    doomed.stop()
    clock.advance(2)
    validator.validate(token)
    assert f"serving the cached answer for jti {jti}" in caplog.text
    assert token not in caplog.text and RS_SECRET not in caplog.text


# -- the lab's own view: its introspection log and faults ------------------------------------


@pytest.mark.parametrize("method", [*SECRET_METHODS, "private_key_jwt"])
def test_the_server_logs_the_method_the_validator_used(issuer, make_validator, client_keys,
                                                       method):
    if method == "private_key_jwt":
        key = client_keys["ES256"]
        validator = make_validator(client_id="rs-jwt-es256", private_key=key.pem(),
                                   kid=key.jwk.kid)
    else:
        validator = make_validator(auth_method=method)
    token = token_of(issuer)
    validator.validate(token)
    with pytest.raises(InvalidTokenError):
        validator.validate("never-issued")
    logged = issuer.introspection_requests
    assert [(r.auth_method, r.token_type_hint, r.status, r.outcome) for r in logged] == [
        (method, "access_token", 200, "active"), (method, "access_token", 200, "inactive")]
    assert logged[0].client_id == validator.client_id


@pytest.mark.parametrize("kind", ["error", "drop", "malformed"])
def test_the_labs_introspection_faults_serve_stale_then_fail_closed(issuer, make_validator,
                                                                    http, kind):
    token = token_of(issuer)
    validator = make_validator(introspection_endpoint=issuer.core.introspection_endpoint,
                               cache_ttl=10, max_stale=20, failure_backoff=0)
    validator.validate(token)
    issuer.fail_next(2, endpoint="introspection", kind=kind)
    issuer.clock.advance(15)
    assert validator.validate(token).client_id == "caller"  # stale
    issuer.clock.advance(15)
    with pytest.raises(IntrospectionError):
        validator.validate(token)
    assert validator.validate(token).client_id == "caller"  # the faults are spent
    assert http.count() == 4
    assert [r.fault for r in issuer.introspection_requests][-1] is None


# -- require_token ---------------------------------------------------------------------------


def make_api(validator: Any) -> Flask:
    app = Flask(__name__)

    @app.get("/read")
    @require_token(validator, ["read"])
    def read() -> Any:
        return jsonify(client_id=g.token.client_id, scopes=list(g.token.scopes))

    @app.get("/write")
    @require_token(validator, "write")
    def write() -> Any:
        return jsonify(client_id=g.token.client_id)

    return app


def _answer(r: requests.Response) -> tuple[int, str | None, Any, str]:
    return r.status_code, r.headers.get("WWW-Authenticate"), r.json(), r.headers[
        "Cache-Control"]


def test_require_token_with_an_introspection_validator(issuer, make_validator):
    token, opaque = token_of(issuer), token_of(issuer, "opaque-caller")
    with serving(make_api(make_validator())) as url:
        def get(path: str, bearer: str) -> requests.Response:
            return requests.get(url + path, headers={"Authorization": f"Bearer {bearer}"},
                                timeout=5)

        for good in (token, opaque):
            r = get("/read", good)
            assert r.status_code == 200 and r.json()["scopes"] == ["read"]
        r = get("/read", "unknown-token")
        assert _answer(r) == (401, f'Bearer realm="{API}", error="invalid_token", '
                                   'error_description="the issuer says the token is not active '
                                   '(RFC 7662: expired, revoked, unknown or not its own)"',
                              {"error": "invalid_token", "error_description":
                               "the issuer says the token is not active (RFC 7662: expired, "
                               "revoked, unknown or not its own)"}, "no-store")
        r = get("/write", opaque)
        assert r.status_code == 403
        assert r.headers["WWW-Authenticate"] == (
            f'Bearer realm="{API}", error="insufficient_scope", '
            'error_description="the token lacks scope write", scope="write"')
        r = requests.get(url + "/read", timeout=5)
        assert (r.status_code, r.headers["WWW-Authenticate"]) == (401, f'Bearer realm="{API}"')


def test_require_token_answers_alike_for_both_validators(issuer, make_validator):
    """The same requests to one API guarded by TokenValidator and one guarded by
    IntrospectionValidator get the same RFC 6750 answers."""
    local = TokenValidator(issuer.issuer, API, clock=issuer.clock.now)
    tokens = {"good": token_of(issuer), "other api": token_of(issuer, "elsewhere")}
    answers = []
    for validator in (local, make_validator()):
        with serving(make_api(validator)) as url:
            seen = {}
            for name, bearer in tokens.items():
                for path in ("/read", "/write"):
                    r = requests.get(url + path, headers={"Authorization": f"Bearer {bearer}"},
                                     timeout=5)
                    seen[name, path] = (r.status_code, r.headers.get("WWW-Authenticate"),
                                        r.json())
            answers.append(seen)
    assert answers[0] == answers[1]
    assert answers[0]["good", "/write"][0] == 403
    assert answers[0]["other api", "/read"][0] == 401


@pytest.mark.parametrize("how", ["refused", "unreachable"])
def test_require_token_answers_503_when_the_issuer_cannot_be_asked(issuer, make_validator,
                                                                   how):
    with closed_port() as port:
        if how == "refused":
            validator = make_validator(client_id="no-introspect", client_secret=RS_SECRET)
        else:
            validator = make_validator(
                introspection_endpoint=f"http://127.0.0.1:{port}/introspect")
        with serving(make_api(validator)) as url:
            r = requests.get(url + "/read", headers={
                "Authorization": f"Bearer {token_of(issuer)}"}, timeout=10)
    assert r.status_code == 503
    assert "WWW-Authenticate" not in r.headers
    assert r.json() == {"error": "temporarily_unavailable", "error_description":
                        "the access token cannot be checked now: the issuer's introspection "
                        "endpoint is unavailable; try again later"}


# -- the combination: local JWT validation, revocation by introspection ----------------------


def test_token_validator_with_a_revocation_check(issuer, make_validator, http):
    check = make_validator(cache_ttl=0)
    validator = TokenValidator(issuer.issuer, API, clock=issuer.clock.now,
                               revocation_check=check)
    token = token_of(issuer, scope="read write")
    assert validator.validate(token, "read").header["typ"] == "at+jwt"
    assert validator.validate(token).client_id == "caller"  # locally cached; asked again
    assert http.count() == 2
    revoke_token(token, issuer=issuer.issuer, client_id="caller", client_secret=CALLER_SECRET)
    with pytest.raises(InvalidTokenError) as caught:
        validator.validate(token, "admin")  # revoked beats insufficient scope: a 401
    assert caught.value.reason == "inactive"


def test_a_forged_token_never_reaches_the_introspection_endpoint(issuer, make_validator, http):
    validator = TokenValidator(issuer.issuer, API, clock=issuer.clock.now,
                               revocation_check=make_validator())
    header, payload, signature = token_of(issuer).split(".")
    with pytest.raises(InvalidTokenError) as caught:
        validator.validate(f"{header}.{payload}.{signature[:-4]}AAAA")
    assert caught.value.reason == "bad_signature"
    with pytest.raises(InvalidTokenError):
        validator.validate("opaque-looking-token")
    assert http.count() == 0


def test_a_dpop_bound_token_with_a_revocation_check(issuer, make_validator, relay):
    """RFC 9449 §6.2: the answer names the key (token_type DPoP, cnf.jkt). validate_dpop
    checked the proof, so its revocation check accepts the bound answer; asked directly, as
    for a Bearer token, the introspection validator refuses it."""
    from _dpop_support import ProofKey

    key = ProofKey.generate("ES256")
    proxy, url = relay
    proxy.rewrite = lambda answer: {**answer, "token_type": "DPoP",
                                    "cnf": {"jkt": key.jkt}}
    check = make_validator(introspection_endpoint=url, cache_ttl=0)
    validator = TokenValidator(issuer.issuer, API, clock=issuer.clock.now,
                               revocation_check=check)
    token = issuer.issue_token("caller", scope="read", audience=API,
                               claims={"cnf": {"jkt": key.jkt}})
    proof = key.proof("GET", "https://orders.test/x", issuer.clock.now(), token=token)
    assert validator.validate_dpop(token, proof, method="GET", url="https://orders.test/x",
                                   scopes="read").jkt == key.jkt
    with pytest.raises(InvalidTokenError) as caught:
        check.validate(token)
    assert caught.value.reason == "wrong_type"
    proxy.rewrite = lambda answer: {**answer, "token_type": "DPoP"}  # no cnf.jkt
    with pytest.raises(InvalidTokenError) as caught:
        make_validator(introspection_endpoint=url).validate(token, dpop_proven=True)
    assert "no cnf.jkt" in caught.value.error_description


def test_the_revocation_check_must_ask_the_same_issuer(issuer, make_validator):
    with pytest.raises(ValueError, match="same issuer"):
        TokenValidator("http://elsewhere.test", API, revocation_check=make_validator())


# -- the plain calls, and a third-party client at the same endpoints ---------------------------


def test_introspect_token_returns_the_answer_as_it_came(issuer):
    token = token_of(issuer)
    answer = introspect_token(token, issuer=issuer.issuer, client_id="orders-api",
                              client_secret=RS_SECRET, auth_method="client_secret_jwt")
    assert answer["active"] is True and answer["aud"] == API
    assert introspect_token("nope", introspection_endpoint=issuer.core.introspection_endpoint,
                            client_id="orders-api", client_secret=RS_SECRET) == {
        "active": False}


def test_revoking_another_clients_token_changes_nothing(issuer):
    token = token_of(issuer)
    assert revoke_token(token, issuer=issuer.issuer, client_id="opaque-caller",
                        client_secret=CALLER_SECRET) is None
    assert introspect_token(token, issuer=issuer.issuer, client_id="orders-api",
                            client_secret=RS_SECRET)["active"] is True


@pytest.mark.parametrize(("call", "message"), [
    (lambda: introspect_token("t", client_id="c", client_secret="s"), "either"),
    (lambda: revoke_token("t", issuer="http://a.test", revocation_endpoint="http://a.test/r",
                          client_id="c", client_secret="s"), "either"),
    (lambda: revoke_token("", issuer="http://a.test", client_id="c", client_secret="s"),
     "non-empty"),
])
def test_the_calls_check_their_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_authlib_oauth2session_introspects_and_revokes(issuer, make_validator):
    from authlib.integrations.requests_client import OAuth2Session

    token = token_of(issuer)
    with OAuth2Session("orders-api", RS_SECRET) as rs:
        r = rs.introspect_token(issuer.core.introspection_endpoint, token=token,
                                token_type_hint="access_token")
        assert r.status_code == 200 and r.json()["active"] is True
    with OAuth2Session("caller", CALLER_SECRET,
                       revocation_endpoint_auth_method="client_secret_post") as caller:
        r = caller.revoke_token(issuer.core.revocation_endpoint, token=token)
        assert r.status_code == 200
    with OAuth2Session("orders-api", RS_SECRET) as rs:
        r = rs.introspect_token(issuer.core.introspection_endpoint, token=token)
        assert r.json() == {"active": False}
    with pytest.raises(InvalidTokenError):  # and our validator agrees
        make_validator().validate(token)
