"""``--trust-proxy``: the issuer of each request from Forwarded / X-Forwarded-*, every value
checked, bounded; off by default, when the issuer never comes from the request."""

from __future__ import annotations

import pytest
import requests

from m2mauth.client import TokenValidator, private_key_jwt_assertion
from m2mauth.server.forwarded import ForwardedError, external_origin
from m2mauth.server.issuer import Issuer

FORM = {"grant_type": "client_credentials"}
DEMO = ("demo-client", "demo-secret")
PROXIED = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "idp.example.com"}


def environ(**headers: str) -> dict[str, str]:
    env = {"wsgi.url_scheme": "http", "HTTP_HOST": "127.0.0.1:8000"}
    env.update({"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()})
    return env


@pytest.mark.parametrize(("headers", "expected"), [
    ({}, ("http://127.0.0.1:8000", "")),
    ({"X-Forwarded-Proto": "https", "X-Forwarded-Host": "idp.example.com"},
     ("https://idp.example.com", "")),
    ({"X-Forwarded-Proto": "HTTPS, http", "X-Forwarded-Host": "a.example, b.example"},
     ("https://a.example", "")),
    ({"X-Forwarded-Host": "idp.example.com", "X-Forwarded-Port": "8080"},
     ("http://idp.example.com:8080", "")),
    ({"X-Forwarded-Proto": "https", "X-Forwarded-Host": "idp.example.com:443"},
     ("https://idp.example.com", "")),
    ({"X-Forwarded-Proto": "https", "X-Forwarded-Host": "idp.example.com",
      "X-Forwarded-Port": "443", "X-Forwarded-Prefix": "/auth/"},
     ("https://idp.example.com", "/auth")),
    ({"X-Forwarded-Prefix": "/.auth/v1..2/..."}, ("http://127.0.0.1:8000", "/.auth/v1..2/...")),
    ({"Forwarded": 'for=192.0.2.60;proto=https;host="IdP.Example.com:8443", for=198.51.100.1'},
     ("https://idp.example.com:8443", "")),
    ({"Forwarded": "proto=https;host=[2001:db8::1]:8443", "X-Forwarded-Host": "other.example"},
     ("https://[2001:db8::1]:8443", "")),
    ({"Forwarded": "for=192.0.2.60"}, ("http://127.0.0.1:8000", "")),
    # A port is one spelling: leading zeros go, the scheme's default port is dropped.
    ({"X-Forwarded-Proto": "https", "X-Forwarded-Host": "idp.example.com:0443"},
     ("https://idp.example.com", "")),
    ({"X-Forwarded-Host": "idp.example.com:08080"}, ("http://idp.example.com:8080", "")),
])
def test_external_origin(headers, expected):
    assert external_origin(environ(**headers)) == expected


@pytest.mark.parametrize(("headers", "why"), [
    ({"X-Forwarded-Proto": "gopher"}, "not http or https"),
    ({"X-Forwarded-Host": "evil.example/path"}, "host name"),
    ({"X-Forwarded-Host": "evil.example@other"}, "host name"),
    ({"X-Forwarded-Host": "a" * 70 + ".example"}, "host name"),
    ({"X-Forwarded-Host": "ok.example", "X-Forwarded-Port": "99999"}, "port"),
    ({"X-Forwarded-Host": "ok.example", "X-Forwarded-Port": "-1"}, "port"),
    ({"X-Forwarded-Prefix": "/a b"}, "not a path"),
    ({"X-Forwarded-Prefix": "no-slash"}, "not a path"),
    ({"X-Forwarded-Prefix": "/a?x=1"}, "not a path"),
    ({"X-Forwarded-Prefix": "/../idp"}, "not a path"),
    ({"X-Forwarded-Prefix": "/auth/."}, "not a path"),
    ({"Forwarded": "garbage"}, "RFC 7239"),
    ({"Forwarded": 'host="unterminated'}, "RFC 7239"),
    ({"Forwarded": "host=" + "a" * 2000}, "longer than"),
    ({"X-Forwarded-Host": "a," * 600}, "longer than"),
    # The port inside a host is checked as X-Forwarded-Port is.
    ({"X-Forwarded-Host": "ok.example:0"}, "port"),
    ({"X-Forwarded-Host": "ok.example:99999"}, "port"),
    ({"Forwarded": "host=ok.example:70000"}, "port"),
    ({"X-Forwarded-Host": "[:::::]"}, "host name"),
    ({"X-Forwarded-Host": "[1.2.3.4]"}, "host name"),
    # A Latin-1 superscript two is a digit to str.isdigit(), not to int().
    ({"X-Forwarded-Host": "ok.example", "X-Forwarded-Port": "\u00b2"}, "port"),
])
def test_bad_forwarding_headers_are_refused(headers, why):
    with pytest.raises(ForwardedError, match=why):
        external_origin(environ(**headers))


@pytest.fixture
def proxied(idp_factory):
    """A server that trusts its proxy, with a further issuer a."""
    return idp_factory(trust_proxy=True, issuers={"a": {}})


def test_the_issuer_follows_the_proxy(proxied):
    meta = requests.get(proxied.metadata_url, headers=PROXIED, timeout=5).json()
    assert meta["issuer"] == "https://idp.example.com"
    assert meta["token_endpoint"] == "https://idp.example.com/token"
    assert meta["jwks_uri"] == "https://idp.example.com/jwks.json"
    answer = requests.post(proxied.token_endpoint, data=FORM, auth=DEMO, headers=PROXIED,
                           timeout=5)
    assert answer.status_code == 200, answer.text
    validator = TokenValidator("https://idp.example.com", audience="api://default",
                               jwks_uri=proxied.jwks_uri)
    assert validator.validate(answer.json()["access_token"]).claims["iss"] == \
        "https://idp.example.com"
    # The further issuer keeps its path under the proxy's origin and prefix.
    headers = {**PROXIED, "X-Forwarded-Prefix": "/auth"}
    meta_a = requests.get(proxied.url + "/.well-known/oauth-authorization-server/a",
                          headers=headers, timeout=5).json()
    assert meta_a["issuer"] == "https://idp.example.com/auth/a"
    # Without forwarding headers the request's own Host names it.
    direct = requests.get(proxied.metadata_url, timeout=5).json()
    assert direct["issuer"] == proxied.issuer


def test_assertions_are_for_the_token_endpoint_the_client_used(proxied):
    from cryptography.hazmat.primitives.asymmetric import ec
    from joserfc.jwk import ECKey

    key = ec.generate_private_key(ec.SECP256R1())
    jwk = ECKey.import_key(key).as_dict(private=False)
    proxied.add_client("jwt-client", jwks={"keys": [jwk]}, scopes=["read"])
    external = "https://idp.example.com/token"

    def ask(audience: str) -> requests.Response:
        assertion = private_key_jwt_assertion("jwt-client", audience, key)
        return requests.post(proxied.token_endpoint, headers=PROXIED, timeout=5, data={
            **FORM, "client_id": "jwt-client", "client_assertion": assertion,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"})

    assert ask(external).status_code == 200
    refused = ask(proxied.token_endpoint)  # the server's own URL is not the one used
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_client"


def test_bad_forwarding_headers_get_an_rfc_error(proxied):
    answer = requests.post(proxied.token_endpoint, data=FORM, auth=DEMO, timeout=5,
                           headers={"X-Forwarded-Host": "evil.example/x"})
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_request"
    assert requests.get(proxied.url + "/readyz", timeout=5,
                        headers={"X-Forwarded-Host": "evil.example/x"}).status_code == 200


@pytest.mark.parametrize("headers", [
    {"X-Forwarded-Host": "ok.example", "X-Forwarded-Port": "\u00b2"},  # sent as byte 0xB2
    {"X-Forwarded-Host": "[:::::]"},
    {"X-Forwarded-Host": "ok.example:99999"},
])
def test_odd_forwarding_headers_get_a_400_not_a_500(proxied, headers):
    for url in (proxied.metadata_url, proxied.issuer + "/a/jwks.json"):
        answer = requests.get(url, headers=headers, timeout=5)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"] == "invalid_request"


@pytest.mark.parametrize("headers", [
    PROXIED, {"X-Forwarded-Host": "idp.example.com"}, {"X-Forwarded-Proto": "https"},
    {"X-Forwarded-Port": "443"}, {"X-Forwarded-Prefix": "/auth"},
])
def test_tokenless_admin_refuses_what_trust_proxy_reads_as_forwarded(proxied, headers):
    # A proxy that names only the origin (nginx with X-Forwarded-Proto and -Host, and the
    # upstream's own Host) forwards for anyone: the issuer follows it, so the guard must too.
    for url in (proxied.admin_url + "/issuers", proxied.issuer + "/a/admin/clock"):
        answer = requests.get(url, headers=headers, timeout=5)
        assert answer.status_code == 403, (url, answer.text)
        assert "proxy" in answer.json()["error_description"]
    created = requests.post(proxied.admin_url + "/issuers", json={"name": "intruder"},
                            headers=headers, timeout=5)
    assert created.status_code == 403
    assert sorted(proxied.issuers) == ["a"]


def test_answers_that_follow_the_proxy_say_so_to_caches(proxied, idp):
    # The metadata may be cached (public, max-age=300) and names the token endpoint: a cache
    # keyed on the URL alone would hand one caller's forged host to every client.
    for url in (proxied.metadata_url, proxied.url + "/.well-known/oauth-authorization-server/a",
                proxied.issuer + "/a/.well-known/openid-configuration",
                proxied.issuer + "/playground"):
        answer = requests.get(url, headers=PROXIED, timeout=5)
        assert answer.status_code == 200
        vary = {v.strip().lower() for v in answer.headers.get("Vary", "").split(",")}
        assert {"forwarded", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-port",
                "x-forwarded-prefix", "host"} <= vary, (url, vary)
    # Without trust_proxy nothing depends on them.
    assert "Vary" not in requests.get(idp.metadata_url, headers=PROXIED, timeout=5).headers


def test_an_injected_401_names_the_realm_the_token_endpoint_names(proxied):
    a = proxied.issuers["a"]
    real = requests.post(a.token_endpoint, data=FORM, auth=("demo-client", "wrong"),
                         headers=PROXIED, timeout=5)
    assert real.status_code == 401
    assert real.headers["WWW-Authenticate"].startswith('Basic realm="https://idp.example.com/a"')
    a.fail_next(status=401)
    injected = requests.post(a.token_endpoint, data=FORM, auth=DEMO, headers=PROXIED, timeout=5)
    assert injected.status_code == 401
    assert injected.headers["WWW-Authenticate"] == real.headers["WWW-Authenticate"]


def test_issuer_urls_kept_for_a_proxy_are_bounded(proxied):
    core = proxied.core
    for i in range(Issuer.MAX_SEEN_AS + 8):
        answer = requests.get(proxied.metadata_url, timeout=5,
                              headers={"X-Forwarded-Host": f"h{i}.example"})
        assert answer.json()["issuer"] == f"http://h{i}.example"
    assert len(core._seen_as) == Issuer.MAX_SEEN_AS


def test_without_trust_proxy_the_issuer_never_comes_from_the_request(idp):
    headers = {**PROXIED, "Forwarded": "proto=https;host=idp.example.com",
               "Host": "elsewhere.example"}
    meta = requests.get(idp.metadata_url, headers=headers, timeout=5).json()
    assert meta["issuer"] == idp.issuer
    answer = requests.post(idp.token_endpoint, data=FORM, auth=DEMO, headers=headers,
                           timeout=5)
    assert TokenValidator(idp.issuer, audience="api://default").validate(
        answer.json()["access_token"]).claims["iss"] == idp.issuer


def test_the_requests_own_host_is_bounded_too(proxied):
    answer = requests.get(proxied.metadata_url, timeout=5,
                          headers={"Host": ".".join(["a" * 60] * 40)})
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_request"
