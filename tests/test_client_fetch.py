"""m2mauth.client: fetch_token, discovery, assertions and typed errors, end to end against the
live server (and a stub transport only where a real server cannot misbehave on purpose)."""

from __future__ import annotations

import base64
import json
import logging
import pickle
import socket
import threading
from collections.abc import Iterator

import jwt
import pytest
import requests

from conftest import SECRET
from m2mauth.client import (
    DiscoveryError,
    InvalidClientError,
    InvalidRequestError,
    InvalidScopeError,
    InvalidTargetError,
    MetadataCache,
    OAuthError,
    ServerError,
    TemporarilyUnavailableError,
    Token,
    TransportError,
    UnauthorizedClientError,
    discover,
    error_class,
    fetch_token,
    load_private_key,
    metadata_urls,
)
from m2mauth.client import errors as client_errors
from m2mauth.client.assertions import (
    client_secret_jwt_assertion,
    key_algorithm,
    private_key_jwt_assertion,
)
from m2mauth.server import ClientSettings

FIXED_NOW = 1_700_000_000.0


def claims_of(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def last_request(server):
    return server.token_requests[-1]


@pytest.fixture
def token_url(live_server) -> str:
    return live_server.issuer + "/token"


# -- every auth method ---------------------------------------------------------------------


@pytest.mark.parametrize(("client_id", "method"), [
    ("basic-only", "client_secret_basic"),
    ("post-only", "client_secret_post"),
    ("hmac-jwt", "client_secret_jwt"),
    ("secret-client", "client_secret_basic"),
    ("secret-client", "client_secret_post"),
    ("secret-client", "client_secret_jwt"),
])
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_secret_methods(live_server, token_url, client_id, method):
    token = fetch_token(token_url, client_id=client_id, client_secret=SECRET, auth_method=method)
    assert isinstance(token, Token)
    assert token.token_type.lower() == "bearer"
    claims = claims_of(token.access_token)
    assert claims["sub"] == client_id
    assert claims["iss"] == live_server.issuer
    entry = last_request(live_server)
    assert (entry.outcome, entry.auth_method, entry.client_id) == ("issued", method, client_id)


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
@pytest.mark.parametrize("as_pem", [True, False], ids=["pem", "key-object"])
def test_private_key_jwt(live_server, token_url, client_keys, alg, as_pem):
    key = client_keys[alg]
    private_key = key.pem() if as_pem else load_private_key(key.pem())
    client_id = f"jwt-{alg.lower()}"
    token = fetch_token(token_url, client_id=client_id, private_key=private_key,
                        kid=key.jwk.kid, auth_method="private_key_jwt")
    assert claims_of(token.access_token)["sub"] == client_id
    entry = last_request(live_server)
    assert (entry.outcome, entry.auth_method) == ("issued", "private_key_jwt")


def test_private_key_jwt_with_the_wrong_key_is_invalid_client(live_server, token_url,
                                                              client_keys):
    with pytest.raises(InvalidClientError) as caught:
        fetch_token(token_url, client_id="jwt-rs256", private_key=client_keys["ES256"].pem(),
                    auth_method="private_key_jwt")
    assert caught.value.status == 400  # no Basic header, so no 401 challenge (RFC 6749 §5.2)


@pytest.mark.parametrize(("client_id", "secret"), [
    ("odd:id%2F+", "p@ss:w%rd+/="),  # ':' '%' '+' '/' survive the trip
    ("space client", "two words"),  # a space is sent as '+', decoded back to a space
])
def test_basic_credentials_are_form_urlencoded(live_server, token_url, client_id, secret):
    """RFC 6749 §2.3.1: id and secret are form-urlencoded before Base64, and the server must
    decode them back."""
    live_server.core.store.add_client(ClientSettings(client_id, secret, scopes=("read",)))
    try:
        token = fetch_token(token_url, client_id=client_id, client_secret=secret)
    finally:
        live_server.core.store.remove_client(client_id)
    assert claims_of(token.access_token)["client_id"] == client_id


# -- discovery -------------------------------------------------------------------------------


def test_fetch_token_discovers_the_token_endpoint(live_server):
    token = fetch_token(issuer=live_server.issuer, client_id="secret-client",
                        client_secret=SECRET)
    assert claims_of(token.access_token)["iss"] == live_server.issuer


def test_discover_returns_rfc8414_metadata(live_server):
    metadata = discover(live_server.issuer)
    assert metadata["issuer"] == live_server.issuer
    assert metadata["token_endpoint"] == live_server.issuer + "/token"
    assert metadata["jwks_uri"] == live_server.issuer + "/jwks.json"


def test_discover_rejects_an_issuer_that_differs_even_by_a_slash(live_server):
    with pytest.raises(DiscoveryError) as caught:
        discover(live_server.issuer + "/")
    assert "RFC 8414 section 3.3" in str(caught.value)


def test_discover_reports_missing_metadata(live_server):
    with pytest.raises(DiscoveryError, match="HTTP 404"):
        discover(live_server.issuer + "/tenant")


def test_metadata_urls_follow_rfc8414_and_oidc():
    assert metadata_urls("https://idp.test") == [
        "https://idp.test/.well-known/oauth-authorization-server",
        "https://idp.test/.well-known/openid-configuration",
    ]
    assert metadata_urls("https://idp.test/t1") == [
        "https://idp.test/.well-known/oauth-authorization-server/t1",
        "https://idp.test/t1/.well-known/openid-configuration",
        "https://idp.test/t1/.well-known/oauth-authorization-server",
    ]
    with pytest.raises(DiscoveryError):
        metadata_urls("https://idp.test/?x=1")
    with pytest.raises(DiscoveryError):
        metadata_urls("idp.test")


class CountingSession(requests.Session):
    """A real session that counts requests and can pretend some URLs are missing."""

    def __init__(self, missing: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.urls: list[str] = []
        self._lock = threading.Lock()
        self.missing = missing

    def request(self, method, url, *args, **kwargs):
        with self._lock:
            self.urls.append(url)
        if any(url.endswith(m) for m in self.missing):
            response = requests.Response()
            response.status_code = 404
            response._content = b'{"error": "not_found"}'
            response.url = url
            return response
        return super().request(method, url, *args, **kwargs)


def test_discover_falls_back_to_openid_configuration(live_server):
    session = CountingSession(missing=("/.well-known/oauth-authorization-server",))
    metadata = discover(live_server.issuer, session=session)
    assert metadata["issuer"] == live_server.issuer
    assert [u.rsplit("/", 1)[-1] for u in session.urls] == [
        "oauth-authorization-server", "openid-configuration",
    ]


def test_metadata_cache_fetches_once_until_ttl_passes(live_server):
    now = [FIXED_NOW]
    cache = MetadataCache(ttl=60, clock=lambda: now[0])
    session = CountingSession()
    first = discover(live_server.issuer, session=session, cache=cache)
    first["token_endpoint"] = "changed by the caller"
    second = cache.get(live_server.issuer, session=session)
    assert second["token_endpoint"] == live_server.issuer + "/token"
    assert len(session.urls) == 1
    now[0] += 61
    cache.get(live_server.issuer, session=session)
    assert len(session.urls) == 2
    cache.clear()
    assert len(cache) == 0
    cache.get(live_server.issuer, session=session)
    cache.invalidate(live_server.issuer)
    cache.get(live_server.issuer, session=session)
    assert len(session.urls) == 4


def test_metadata_cache_single_flight(live_server):
    cache = MetadataCache()
    session = CountingSession()
    barrier = threading.Barrier(8)
    results = []

    def worker():
        barrier.wait()
        results.append(cache.get(live_server.issuer, session=session)["issuer"])

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [live_server.issuer] * 8
    assert len(session.urls) == 1


def test_fetch_token_uses_a_given_metadata_cache(live_server):
    cache = MetadataCache()
    session = CountingSession()
    for _ in range(2):
        fetch_token(issuer=live_server.issuer, client_id="secret-client", client_secret=SECRET,
                    session=session, metadata_cache=cache)
    assert [u.rsplit("/", 1)[-1] for u in session.urls] == [
        "oauth-authorization-server", "token", "token",
    ]


# -- scope and resource ----------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["read write", ["read", "write"], ["read write"]])
def test_scope_as_string_or_list(token_url, scope):
    token = fetch_token(token_url, client_id="secret-client", client_secret=SECRET, scope=scope)
    assert token.scope == ["read", "write"]
    assert claims_of(token.access_token)["scope"] == "read write"


def test_default_scope_when_none_requested(token_url):
    token = fetch_token(token_url, client_id="secret-client", client_secret=SECRET)
    assert token.scope == ["read"]


def test_resources_become_the_audience(live_server, token_url):
    token = fetch_token(token_url, client_id="aud-client", client_secret=SECRET,
                        resource=["https://orders.test", "https://billing.test"])
    assert claims_of(token.access_token)["aud"] == ["https://orders.test",
                                                     "https://billing.test"]
    assert last_request(live_server).resource == ("https://orders.test", "https://billing.test")


def test_single_resource_and_audience_parameter(token_url):
    token = fetch_token(token_url, client_id="aud-client", client_secret=SECRET,
                        resource="https://billing.test")
    assert claims_of(token.access_token)["aud"] == "https://billing.test"
    token = fetch_token(token_url, client_id="aud-client", client_secret=SECRET,
                        extra_params={"audience": ["payments"]})
    assert claims_of(token.access_token)["aud"] == "payments"


def test_token_fields_and_clock(token_url):
    token = fetch_token(token_url, client_id="aud-client", client_secret=SECRET,
                        clock=lambda: FIXED_NOW)
    assert token.expires_in == 60
    assert token.expires_at == FIXED_NOW + 60
    assert token.expires_within(0, FIXED_NOW + 60)
    assert not token.expires_within(10, FIXED_NOW)
    assert token.raw["access_token"] == token.access_token


# -- typed errors ----------------------------------------------------------------------------


def test_wrong_secret_with_basic_is_invalid_client_401(token_url):
    with pytest.raises(InvalidClientError) as caught:
        fetch_token(token_url, client_id="secret-client", client_secret="wrong-secret-value")
    error = caught.value
    assert (error.error, error.status) == ("invalid_client", 401)
    assert str(error).startswith("invalid_client: ")
    assert str(error).endswith("(HTTP 401)")


def test_wrong_secret_with_post_is_invalid_client_400(token_url):
    with pytest.raises(InvalidClientError) as caught:
        fetch_token(token_url, client_id="secret-client", client_secret="wrong-secret-value",
                    auth_method="client_secret_post")
    assert caught.value.status == 400


def test_unknown_scope_is_invalid_scope(token_url):
    with pytest.raises(InvalidScopeError) as caught:
        fetch_token(token_url, client_id="secret-client", client_secret=SECRET,
                    scope="read delete")
    assert (caught.value.error, caught.value.status) == ("invalid_scope", 400)
    assert "delete" in caught.value.error_description


def test_unknown_resource_is_invalid_target(token_url):
    with pytest.raises(InvalidTargetError) as caught:
        fetch_token(token_url, client_id="aud-client", client_secret=SECRET,
                    resource="https://elsewhere.test")
    assert (caught.value.error, caught.value.status) == ("invalid_target", 400)


def test_method_not_allowed_for_client_is_invalid_client(token_url):
    with pytest.raises(InvalidClientError):
        fetch_token(token_url, client_id="basic-only", client_secret=SECRET,
                    auth_method="client_secret_post")


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A loopback port that is bound but not listening: connections are refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def test_connection_refused_is_transport_error(refused_url):
    with pytest.raises(TransportError) as caught:
        fetch_token(refused_url + "/token", client_id="c", client_secret=SECRET, timeout=2)
    error = caught.value
    assert error.status is None
    assert "Connection refused" in str(error)
    assert isinstance(error, OAuthError)


def test_unanswered_request_times_out_as_transport_error():
    with socket.socket() as sock:  # listening: the kernel accepts, nobody ever answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/token"
        with pytest.raises(TransportError, match="Timed out") as caught:
            fetch_token(url, client_id="c", client_secret=SECRET, timeout=0.05)
    assert caught.value.status is None


def test_discovery_connection_refused_is_transport_error(refused_url):
    with pytest.raises(TransportError):
        fetch_token(issuer=refused_url, client_id="c", client_secret=SECRET, timeout=2)


def test_error_class_maps_every_code():
    expected = {
        "invalid_request": InvalidRequestError, "invalid_client": InvalidClientError,
        "invalid_scope": InvalidScopeError, "invalid_target": InvalidTargetError,
        "unauthorized_client": UnauthorizedClientError, "server_error": ServerError,
        "temporarily_unavailable": TemporarilyUnavailableError,
        "invalid_grant": client_errors.InvalidGrantError,
        "unsupported_grant_type": client_errors.UnsupportedGrantTypeError,
    }
    for code, cls in expected.items():
        assert error_class(code) is cls
        assert issubclass(cls, OAuthError)
        assert cls().error == code
    assert error_class("something_new") is OAuthError
    assert issubclass(TransportError, OAuthError)


def test_errors_pickle_and_clean_server_text():
    error = InvalidScopeError("invalid_scope", "bad\nline\x1b[31m" + "x" * 1000, None, 400)
    assert "\n" not in str(error) and "\x1b" not in str(error)
    assert len(error.error_description) < 400
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.error, copy.status) == (InvalidScopeError, "invalid_scope", 400)


def test_arguments_are_checked(token_url):
    with pytest.raises(ValueError, match="token_url or issuer"):
        fetch_token(client_id="c", client_secret=SECRET)
    with pytest.raises(ValueError, match="token_url or issuer"):
        fetch_token(token_url, issuer="http://127.0.0.1:1", client_id="c", client_secret=SECRET)
    with pytest.raises(ValueError, match="needs client_secret"):
        fetch_token(token_url, client_id="c")
    with pytest.raises(ValueError, match="needs private_key"):
        fetch_token(token_url, client_id="c", auth_method="private_key_jwt")
    with pytest.raises(ValueError, match="auth_method"):
        fetch_token(token_url, client_id="c", client_secret=SECRET, auth_method="none")
    with pytest.raises(ValueError, match="http"):
        fetch_token("ftp://127.0.0.1/token", client_id="c", client_secret=SECRET)
    with pytest.raises(ValueError, match="extra_params"):
        fetch_token(token_url, client_id="c", client_secret=SECRET,
                    extra_params={"grant_type": "password"})


# -- responses a real server should never send (stub transport) -------------------------------


class StubAdapter(requests.adapters.BaseAdapter):
    """Answers every request with one canned response."""

    def __init__(self, status: int, body: bytes, headers: dict | None = None) -> None:
        super().__init__()
        self.status, self.body, self.headers = status, body, headers or {}

    def send(self, request, **kwargs):
        response = requests.Response()
        response.status_code = self.status
        response._content = self.body
        response.headers.update(self.headers)
        response.url = request.url
        response.request = request
        return response

    def close(self) -> None:
        pass


def stub_session(status: int, body: bytes | dict, headers: dict | None = None):
    if isinstance(body, dict):
        body = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **(headers or {})}
    session = requests.Session()
    session.mount("http://", StubAdapter(status, body, headers))
    return session


STUB_URL = "http://127.0.0.1:9/token"


@pytest.mark.parametrize(("status", "body", "match"), [
    (200, b"<html>hello</html>", "not a JSON object"),
    (200, b"[1, 2]", "not a JSON object"),
    (200, {"token_type": "Bearer"}, "no access_token"),
    (200, {"access_token": "abc", "token_type": "Bearer", "expires_in": -5}, "expires_in"),
    (200, {"access_token": "abc", "token_type": "Bearer", "scope": ["read"]}, "scope"),
    (502, b"<html>Bad Gateway</html>", "HTTP 502"),
    (400, {"message": "no error field"}, "not an OAuth error"),
    (302, b"", "redirect"),
])
def test_malformed_responses_are_transport_errors(status, body, match):
    with pytest.raises(TransportError, match=match) as caught:
        fetch_token(STUB_URL, client_id="c", client_secret=SECRET,
                    session=stub_session(status, body))
    assert caught.value.status == status


def test_error_response_carries_retry_after():
    session = stub_session(503, {"error": "temporarily_unavailable"}, {"Retry-After": "7"})
    with pytest.raises(TemporarilyUnavailableError) as caught:
        fetch_token(STUB_URL, client_id="c", client_secret=SECRET, session=session)
    assert (caught.value.status, caught.value.retry_after) == (503, 7.0)


def test_token_without_scope_or_expiry_in_response():
    session = stub_session(200, {"access_token": "opaque-token-value", "token_type": "Bearer",
                                 "expires_in": "3600"})
    token = fetch_token(STUB_URL, client_id="c", client_secret=SECRET, session=session,
                        scope="read", clock=lambda: FIXED_NOW)
    assert (token.scope, token.expires_in, token.expires_at) == (["read"], 3600,
                                                                 FIXED_NOW + 3600)
    session = stub_session(200, {"access_token": "opaque-token-value", "token_type": "Bearer"})
    token = fetch_token(STUB_URL, client_id="c", client_secret=SECRET, session=session)
    assert (token.expires_in, token.expires_at) == (None, None)
    assert not token.expires_within(10**9, FIXED_NOW)


# -- assertions ------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_private_key_jwt_assertion_claims(client_keys, alg):
    key = client_keys[alg]
    private = load_private_key(key.pem())
    assert key_algorithm(private) == alg
    made = [private_key_jwt_assertion("me", STUB_URL, private, kid="k1", clock=lambda: FIXED_NOW)
            for _ in range(2)]
    header = jwt.get_unverified_header(made[0])
    assert (header["alg"], header["kid"]) == (alg, "k1")
    claims = jwt.decode(made[0], private.public_key(), algorithms=[alg], audience=STUB_URL,
                        options={"verify_exp": False, "verify_iat": False})
    assert claims["iss"] == claims["sub"] == "me"
    assert (claims["iat"], claims["exp"]) == (FIXED_NOW, FIXED_NOW + 60)
    assert claims["jti"] != claims_of(made[1])["jti"]


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_client_secret_jwt_assertion_is_hs256():
    made = client_secret_jwt_assertion("me", STUB_URL, SECRET, clock=lambda: FIXED_NOW)
    assert jwt.get_unverified_header(made)["alg"] == "HS256"
    claims = jwt.decode(made, SECRET, algorithms=["HS256"], audience=STUB_URL,
                        options={"verify_exp": False, "verify_iat": False})
    assert claims["exp"] - claims["iat"] == 60


def test_unsupported_keys_are_refused():
    from cryptography.hazmat.primitives.asymmetric import ec

    with pytest.raises(ValueError, match="P-256"):
        key_algorithm(ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(ValueError, match="cannot load PEM"):
        load_private_key(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")


# -- secrets stay secret ---------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_secrets_absent_from_errors_token_and_logs(token_url, client_keys, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-but-secret-value"
    basic = base64.b64encode(f"secret-client:{wrong}".encode()).decode()
    seen: list[str] = []
    for method in ("client_secret_basic", "client_secret_post", "client_secret_jwt"):
        with pytest.raises(InvalidClientError) as caught:
            fetch_token(token_url, client_id="secret-client", client_secret=wrong,
                        auth_method=method)
        seen += [str(caught.value), repr(caught.value)]
    token = fetch_token(token_url, client_id="secret-client", client_secret=SECRET)
    pem = client_keys["RS256"].pem().decode()
    keyed = fetch_token(token_url, client_id="jwt-rs256", private_key=pem,
                        auth_method="private_key_jwt")
    # Only the client side's loggers: this process also runs the server (and Authlib logs
    # issued tokens at DEBUG there).
    client_log = "\n".join(
        r.getMessage() for r in caplog.records
        if r.name.startswith(("m2mauth.client", "urllib3", "requests"))
    )
    seen += [str(token), repr(token), repr(keyed), client_log]
    text = "\n".join(seen)
    assert token.access_token[:8] in repr(token)  # the prefix tells tokens apart
    for secret in (wrong, basic, SECRET, token.access_token, keyed.access_token,
                   token.access_token.split(".")[2], pem.splitlines()[1]):
        assert secret not in text
    assert "token request to" in client_log  # the client does log, just not secrets


def _nested_json_response(status: int = 200) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = b"[" * 30000  # nested past json's recursion limit
    response.headers["Content-Type"] = "application/json"
    return response


def test_deeply_nested_json_from_a_server_is_a_typed_error_not_recursion():
    # A broken or hostile token endpoint, metadata document or access token: the typed error
    # (or "no usable value"), never a RecursionError out of json.
    from m2mauth.client import TransportError
    from m2mauth.client.discovery import _get_json
    from m2mauth.client.provider import _jwt_claims
    from m2mauth.client.tokens import parse_response

    with pytest.raises(TransportError):
        parse_response(_nested_json_response(), "http://127.0.0.1:1/token",
                       requested_scope=[], started=0.0, now=0.0)

    class Session:
        def get(self, url, **kwargs):
            return _nested_json_response()

    assert _get_json("http://127.0.0.1:1/.well-known/x", Session(), 1.0) == (200, None)
    payload = base64.urlsafe_b64encode(b"[" * 12000).rstrip(b"=").decode()
    assert _jwt_claims(f"e30.{payload}.sig") == {}
