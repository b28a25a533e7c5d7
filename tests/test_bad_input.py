"""Bad input at the token endpoint over real HTTP: every case gets an RFC 6749 §5.2 JSON error
with Cache-Control: no-store (never a 5xx or an HTML page), and the server keeps issuing."""

from __future__ import annotations

import base64
import json

import pytest
import requests

SECRET = "s3cret-for-tests"
GRANT = {"grant_type": "client_credentials"}
FORM = "application/x-www-form-urlencoded"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def post(live_server, data=None, **kwargs) -> requests.Response:
    return requests.post(live_server.issuer + "/token", data=data, timeout=5, **kwargs)


def basic(raw: bytes) -> dict:
    return {"Authorization": b"Basic " + base64.b64encode(raw)}


def assert_error(live_server, r: requests.Response, error: str, status: int = 400) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["Content-Type"].startswith("application/json"), r.text
    assert r.headers["Cache-Control"] == "no-store"
    assert "<html" not in r.text.lower()
    body = r.json()
    assert body["error"] == error, body
    description = body.get("error_description", "")
    assert all(c == " " or ("\x21" <= c <= "\x7e" and c not in '"\\') for c in description)
    if error == "invalid_client" and status == 401:
        assert r.headers["WWW-Authenticate"].startswith('Basic realm="')
    # ... and the server still serves.
    ok = post(live_server, GRANT, auth=("secret-client", SECRET))
    assert ok.status_code == 200, ok.text
    return body


def test_missing_grant_type(live_server):
    assert_error(live_server, post(live_server, {"scope": "read"}, auth=("secret-client", SECRET)),
                 "invalid_request")


@pytest.mark.parametrize("grant_type", [
    "password", "authorization_code", "refresh_token", "implicit",
    "urn:ietf:params:oauth:grant-type:jwt-bearer", "CLIENT_CREDENTIALS", "", "client_credentials ",
])
def test_unsupported_grant_type(live_server, grant_type):
    # An empty grant_type is a sent-but-unusable value: unsupported_grant_type, like any other
    # value the server does not know (only an absent one is invalid_request).
    r = post(live_server, {"grant_type": grant_type}, auth=("secret-client", SECRET))
    assert_error(live_server, r, "unsupported_grant_type")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_other_methods_on_token(live_server, method):
    r = requests.request(method, live_server.issuer + "/token", timeout=5,
                         auth=("secret-client", SECRET))
    body = assert_error(live_server, r, "invalid_request", 405)
    # The Allow an OPTIONS request gets; the description names what to use.
    assert r.headers["Allow"] == "OPTIONS, POST"
    assert body["error_description"].endswith("use POST.")


def test_json_body(live_server):
    r = post(live_server, json=GRANT, auth=("secret-client", SECRET))
    assert_error(live_server, r, "invalid_request")


def test_form_body_with_wrong_content_type(live_server):
    r = post(live_server, "grant_type=client_credentials", auth=("secret-client", SECRET),
             headers={"Content-Type": "text/plain"})
    assert_error(live_server, r, "invalid_request")


def test_form_content_type_with_charset_is_fine(live_server):
    r = post(live_server, "grant_type=client_credentials", auth=("secret-client", SECRET),
             headers={"Content-Type": FORM + "; charset=UTF-8"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("content_type", [None, FORM])
def test_empty_body(live_server, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    r = post(live_server, b"", auth=("secret-client", SECRET), headers=headers)
    assert_error(live_server, r, "invalid_request")


@pytest.mark.parametrize("body", [
    "grant_type=client_credentials&grant_type=client_credentials",
    "grant_type=client_credentials&grant_type=password",
    "grant_type=password&grant_type=client_credentials",
    "grant_type=client_credentials&scope=read&scope=write",
    "grant_type=client_credentials&scope=read&scope=read",
    "grant_type=client_credentials&client_id=post-only&client_id=post-only"
    f"&client_secret={SECRET}",
    f"grant_type=client_credentials&client_id=post-only&client_secret={SECRET}"
    f"&client_secret={SECRET}",
])
def test_duplicated_parameters(live_server, body):
    """RFC 6749 §3.2: request parameters MUST NOT be included more than once."""
    auth = None if "client_id" in body else ("secret-client", SECRET)
    r = post(live_server, body, auth=auth, headers={"Content-Type": FORM})
    assert_error(live_server, r, "invalid_request")


def test_credentials_in_header_and_body_secret(live_server):
    """RFC 6749 §2.3: a client MUST NOT use more than one authentication method."""
    r = post(live_server, {**GRANT, "client_id": "secret-client", "client_secret": SECRET},
             auth=("secret-client", SECRET))
    assert_error(live_server, r, "invalid_request")


def test_credentials_in_header_and_body_assertion(live_server):
    r = post(live_server, {**GRANT, "client_assertion_type": ASSERTION_TYPE,
                           "client_assertion": "a.b.c"}, auth=("secret-client", SECRET))
    assert_error(live_server, r, "invalid_request")


def test_secret_and_assertion_in_body(live_server):
    r = post(live_server, {**GRANT, "client_id": "secret-client", "client_secret": SECRET,
                           "client_assertion_type": ASSERTION_TYPE, "client_assertion": "a.b.c"})
    assert_error(live_server, r, "invalid_request")


def test_basic_header_and_other_client_id_in_body(live_server):
    r = post(live_server, {**GRANT, "client_id": "demo-client"}, auth=("secret-client", SECRET))
    assert_error(live_server, r, "invalid_request")


def test_basic_header_and_same_client_id_in_body(live_server):
    """Allowed: RFC 6749 §4.4 names no client_id, but sending the same id is harmless."""
    r = post(live_server, {**GRANT, "client_id": "secret-client"}, auth=("secret-client", SECRET))
    assert r.status_code == 200, r.text


# A malformed Authorization header is a failed attempt to authenticate with the header. RFC
# 6749 §5.2 puts "unsupported authentication method" under invalid_client and requires 401 with
# a challenge when the client used the Authorization header; invalid_request ("otherwise
# malformed") would also be defensible, but the client's credentials are what failed, and the
# Basic challenge tells it the scheme this endpoint does support.
@pytest.mark.parametrize("header", [
    {"Authorization": "Basic !!!not-base64!!!"},
    {"Authorization": "Basic c2VjcmV0LWNsaWVudA"},  # missing padding
    {"Authorization": "Basic " + base64.b64encode(b"secret-client").decode()},  # no colon
    basic(b"\xff\xfe:\xfa"),  # not UTF-8
    basic(b"secret-client:\xc3\x28"),  # invalid UTF-8 in the secret
    {"Authorization": b"Basic \xff\xfe"},  # raw non-ASCII bytes in the header itself
    {"Authorization": "Basic"},
    {"Authorization": "Basic "},
    {"Authorization": "Bearer abc.def.ghi"},
    {"Authorization": "Digest username=\"secret-client\""},
    {"Authorization": "secret-client:" + SECRET},
])
def test_malformed_authorization_header(live_server, header):
    r = post(live_server, GRANT, headers=header)
    assert_error(live_server, r, "invalid_client", 401)


def test_basic_header_with_empty_parts(live_server):
    for raw in (b":", b"secret-client:", b":" + SECRET.encode()):
        assert_error(live_server, post(live_server, GRANT, headers=basic(raw)),
                     "invalid_client", 401)


@pytest.mark.parametrize("body", [b"grant_type=client_credentials&scope=\xff\xfe",
                                  b"\xff\xfe\xfd", b"grant_type=client_credentials\xc0"])
def test_body_not_utf8(live_server, body):
    """Reported as what it is, not as unsupported_grant_type (the grant type was sent)."""
    r = post(live_server, body, auth=("secret-client", SECRET), headers={"Content-Type": FORM})
    assert_error(live_server, r, "invalid_request")


def test_percent_encoded_non_utf8_body(live_server):
    r = post(live_server, "grant_type=client_credentials&scope=%FF%FE",
             auth=("secret-client", SECRET), headers={"Content-Type": FORM})
    body = assert_error(live_server, r, "invalid_scope")
    assert "\ufffd" not in r.text and body["error_description"].isascii()


def test_one_megabyte_body(live_server):
    body = "grant_type=client_credentials&scope=" + "a" * (1024 * 1024)
    r = post(live_server, body, auth=("secret-client", SECRET), headers={"Content-Type": FORM})
    assert_error(live_server, r, "invalid_request", 413)


def test_body_just_under_the_limit_is_parsed(live_server):
    limit = live_server.settings.max_body_bytes
    prefix = "grant_type=client_credentials&scope="
    body = prefix + "a" * (limit - len(prefix))
    r = post(live_server, body, auth=("secret-client", SECRET), headers={"Content-Type": FORM})
    assert_error(live_server, r, "invalid_scope")


@pytest.mark.parametrize("how", ["basic", "post"])
def test_ten_kilobyte_client_id(live_server, how):
    client_id = "c" * 10 * 1024
    if how == "basic":
        r = post(live_server, GRANT, auth=(client_id, SECRET))
        body = assert_error(live_server, r, "invalid_client", 401)
    else:
        r = post(live_server, {**GRANT, "client_id": client_id, "client_secret": SECRET})
        body = assert_error(live_server, r, "invalid_client", 400)
    assert client_id not in json.dumps(body)
    entry = [e for e in live_server.token_requests
             if e.outcome == "invalid_client"][-1]
    # Kept as a prefix and a length: the request log bounds what it keeps of caller input.
    assert entry.client_id == "c" * 256 + f"...({len(client_id)} chars)"


@pytest.mark.parametrize("query", [
    "grant_type=client_credentials",
    f"client_id=secret-client&client_secret={SECRET}",
    "scope=admin",
    "x=1",
])
def test_parameters_in_query_string(live_server, query):
    """RFC 6749 §3.2 has the client send parameters in the body; this endpoint's URI has no
    query component, so any query is refused rather than merged (credentials in a URL leak
    into logs and histories)."""
    r = requests.post(live_server.issuer + "/token?" + query, data=GRANT, timeout=5,
                      auth=("secret-client", SECRET))
    assert_error(live_server, r, "invalid_request")


@pytest.mark.parametrize("scope", ['read"', "read\\x", "\x01", "r\u00e9ad", "read\r\nwrite"])
def test_odd_characters_in_scope(live_server, scope):
    r = post(live_server, {**GRANT, "scope": scope}, auth=("secret-client", SECRET))
    body = assert_error(live_server, r, "invalid_scope")
    assert scope not in body["error_description"]


@pytest.mark.parametrize("resource", ["orders", "/token", "https://orders.test#x", ""])
def test_resource_not_an_absolute_uri(live_server, resource):
    r = post(live_server, {**GRANT, "resource": resource}, auth=("aud-client", SECRET))
    assert_error(live_server, r, "invalid_target")


def test_unknown_parameters_are_ignored(live_server):
    """RFC 6749 §3.2: the server MUST ignore unrecognized request parameters."""
    r = post(live_server, {**GRANT, "foo": "bar", "nonce": "x"}, auth=("secret-client", SECRET))
    assert r.status_code == 200


def test_errors_are_logged_in_the_request_log(live_server):
    post(live_server, {"grant_type": "password"}, auth=("secret-client", SECRET))
    post(live_server, json=GRANT, auth=("secret-client", SECRET))
    outcomes = [(e.outcome, e.status) for e in live_server.token_requests]
    assert outcomes == [("unsupported_grant_type", 400), ("invalid_request", 400)]


def _deep(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize("assertion", [
    # JSON nested past Python's recursion limit, in the claims or the header: a RecursionError
    # (a 500 with a traceback in the log) before the fix. Well under the body size limit.
    _deep(b'{"alg":"HS256"}') + "." + _deep(b"[" * 30000) + ".AAAA",
    _deep(b'{"alg":"RS256"}') + "." + _deep(b'{"sub":"secret-client","x":' + b"[" * 30000)
    + ".AAAA",
    _deep(b"[" * 30000) + "." + _deep(b'{"sub":"secret-client"}') + ".AAAA",
], ids=["claims", "claim value", "header"])
def test_deeply_nested_client_assertion(live_server, assertion):
    r = post(live_server, {**GRANT, "client_assertion_type": ASSERTION_TYPE,
                           "client_assertion": assertion})
    assert_error(live_server, r, "invalid_client", 400)
