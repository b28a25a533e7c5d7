"""What third-party clients expect, over real HTTP on loopback: RFC 9864's ``Ed25519`` name in
private_key_jwt assertions (openid-client 6 sends it), the metadata fields RFC 8414 and OIDC
Discovery require (where a client-credentials-only server can state them truthfully), and an
``error_description`` on every error the server answers."""

from __future__ import annotations

import uuid

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ed25519
from joserfc import jwt
from joserfc.jwk import OKPKey

SECRET = "s3cret-for-tests"
GRANT = {"grant_type": "client_credentials"}
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated via RFC 9864")


def post(idp, data=None, **kwargs) -> requests.Response:
    return requests.post(idp.issuer + "/token", data=data, timeout=5, **kwargs)


def ed25519_client(idp, registered_alg: str | None) -> tuple[str, OKPKey]:
    """A private_key_jwt client whose Ed25519 key is registered with ``alg`` (or none)."""
    native = ed25519.Ed25519PrivateKey.generate()
    key = OKPKey(native, native, {"alg": registered_alg} if registered_alg else {})
    key.ensure_kid()
    client = idp.add_client(jwks={"keys": [key.as_dict(private=False)]}, scopes=["read"],
                            auth_methods=["private_key_jwt"])
    signer = OKPKey(native, native, {"kid": key.kid})  # the client signs under either name
    return client.client_id, signer


def signed_assertion(idp, client_id: str, key: OKPKey, alg: str) -> str:
    now = int(idp.clock())
    claims = {"iss": client_id, "sub": client_id, "aud": idp.issuer + "/token",
              "iat": now, "exp": now + 60, "jti": uuid.uuid4().hex}
    return jwt.encode({"alg": alg, "kid": key.kid}, claims, key, algorithms=[alg])


def with_assertion(token: str) -> dict:
    return {**GRANT, "client_assertion_type": ASSERTION_TYPE, "client_assertion": token}


# -- Ed25519 (RFC 9864) -------------------------------------------------------------------

@pytest.mark.parametrize("registered_alg", ["EdDSA", "Ed25519", None])
@pytest.mark.parametrize("alg", ["EdDSA", "Ed25519"])
def test_ed25519_assertion_under_either_name(idp, registered_alg, alg):
    client_id, key = ed25519_client(idp, registered_alg)
    r = post(idp, with_assertion(signed_assertion(idp, client_id, key, alg)))
    assert r.status_code == 200, r.text
    entry = idp.token_requests[-1]
    assert (entry.client_id, entry.auth_method, entry.outcome) == (
        client_id, "private_key_jwt", "issued")


def test_ed25519_name_does_not_open_other_keys(idp, client_keys):
    # An RS256-registered key stays RS256-only: the two Ed25519 names are one signature,
    # nothing else is aliased.
    rsa = client_keys["RS256"]
    now = int(idp.clock())
    claims = {"iss": "jwt-rs256", "sub": "jwt-rs256", "aud": idp.issuer + "/token",
              "iat": now, "exp": now + 60, "jti": uuid.uuid4().hex}
    token = jwt.encode({"alg": "Ed25519", "kid": rsa.jwk.kid}, claims,
                       OKPKey.generate_key("Ed25519"), algorithms=["Ed25519"])
    r = post(idp, with_assertion(token))
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_client"


def test_ed25519_jwk_alg_is_accepted_at_registration(idp):
    client_id, _ = ed25519_client(idp, "Ed25519")
    assert client_id in {c.client_id for c in idp.clients()}


# -- metadata -------------------------------------------------------------------------------

@pytest.fixture(params=["/.well-known/oauth-authorization-server",
                        "/.well-known/openid-configuration"])
def metadata(request, idp) -> dict:
    r = requests.get(idp.issuer + request.param, timeout=5)
    assert r.status_code == 200
    return r.json()


def test_both_ed25519_names_are_advertised(metadata):
    algs = metadata["token_endpoint_auth_signing_alg_values_supported"]
    assert {"EdDSA", "Ed25519", "RS256", "PS256", "ES256", "HS256"} <= set(algs)
    assert "none" not in algs


def test_no_response_types_and_no_authorization_endpoint(metadata):
    # RFC 8414 section 2 calls response_types_supported REQUIRED, but the truthful value is
    # [], and section 3.2 says claims with zero elements MUST be omitted (see issuer.py).
    assert "response_types_supported" not in metadata
    assert "authorization_endpoint" not in metadata
    assert all(value != [] for value in metadata.values())


def test_oidc_fields_stated_truthfully(metadata, idp):
    assert metadata["issuer"] == idp.issuer
    assert metadata["jwks_uri"] == idp.issuer + "/jwks.json"
    # sub is the client id, the same for every audience: OIDC's "public" subject type.
    assert metadata["subject_types_supported"] == ["public"]
    # No ID tokens are issued, and OIDC requires RS256 in this list: it is left out rather
    # than claiming ID tokens.
    assert "id_token_signing_alg_values_supported" not in metadata
    assert metadata["grant_types_supported"] == ["client_credentials"]


# -- error_description on every error -------------------------------------------------------

def _many_jtis(idp):
    """A private_key_jwt assertion replayed: the second use is refused."""
    client_id, key = ed25519_client(idp, None)
    token = signed_assertion(idp, client_id, key, "Ed25519")
    assert post(idp, with_assertion(token)).status_code == 200
    return post(idp, with_assertion(token))


ERROR_CASES = {
    "unsupported_grant_type": lambda idp: post(idp, {"grant_type": "password"},
                                               auth=("secret-client", SECRET)),
    "empty_grant_type": lambda idp: post(idp, {"grant_type": ""},
                                         auth=("secret-client", SECRET)),
    "hostile_grant_type": lambda idp: post(idp, {"grant_type": 'a"b\\c\u00e9\n'},
                                           auth=("secret-client", SECRET)),
    "long_grant_type": lambda idp: post(idp, {"grant_type": "x" * 5000},
                                        auth=("secret-client", SECRET)),
    "missing_grant_type": lambda idp: post(idp, {"scope": "read"},
                                           auth=("secret-client", SECRET)),
    "repeated_grant_type": lambda idp: post(
        idp, [("grant_type", "client_credentials")] * 2, auth=("secret-client", SECRET)),
    "no_credentials": lambda idp: post(idp, GRANT),
    "client_id_only": lambda idp: post(idp, {**GRANT, "client_id": "secret-client"}),
    "wrong_secret_basic": lambda idp: post(idp, GRANT, auth=("secret-client", "nope")),
    "wrong_secret_post": lambda idp: post(
        idp, {**GRANT, "client_id": "secret-client", "client_secret": "nope"}),
    "malformed_authorization": lambda idp: post(idp, GRANT,
                                                headers={"Authorization": "Bearer x"}),
    "bad_assertion_type": lambda idp: post(
        idp, {**GRANT, "client_assertion_type": "x", "client_assertion": "a.b.c"}),
    "replayed_assertion": _many_jtis,
    "scope_not_allowed": lambda idp: post(idp, {**GRANT, "scope": "nope"},
                                          auth=("secret-client", SECRET)),
    "malformed_scope": lambda idp: post(idp, {**GRANT, "scope": "a\\b"},
                                        auth=("secret-client", SECRET)),
    "resource_not_allowed": lambda idp: post(idp, {**GRANT, "resource": "https://x.test"},
                                             auth=("secret-client", SECRET)),
    "resource_not_absolute": lambda idp: post(idp, {**GRANT, "resource": "relative"},
                                              auth=("secret-client", SECRET)),
    "repeated_scope": lambda idp: post(idp, [*GRANT.items(), ("scope", "a"), ("scope", "b")],
                                       auth=("secret-client", SECRET)),
    "both_credentials": lambda idp: post(idp, {**GRANT, "client_secret": SECRET},
                                         auth=("secret-client", SECRET)),
    "json_body": lambda idp: post(idp, json=GRANT, auth=("secret-client", SECRET)),
    "query_string": lambda idp: requests.post(idp.issuer + "/token?grant_type=x", data=GRANT,
                                              auth=("secret-client", SECRET), timeout=5),
    "not_utf8": lambda idp: post(idp, b"grant_type=\xff",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"}),
    "too_large": lambda idp: post(idp, {"grant_type": "x" * (2 << 20)}),
    "get_token": lambda idp: requests.get(idp.issuer + "/token", timeout=5),
    "post_jwks": lambda idp: requests.post(idp.issuer + "/jwks.json", timeout=5),
    "post_metadata": lambda idp: requests.post(
        idp.issuer + "/.well-known/openid-configuration", timeout=5),
    "not_found": lambda idp: requests.get(idp.issuer + "/nope", timeout=5),
    "admin_bad_field": lambda idp: requests.post(idp.issuer + "/admin/clients",
                                                 json={"nope": 1}, timeout=5),
    "admin_not_json": lambda idp: requests.post(idp.issuer + "/admin/clients", data="x",
                                                timeout=5),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_every_error_has_a_description(idp, case):
    r = ERROR_CASES[case](idp)
    assert r.status_code >= 400, (case, r.status_code, r.text)
    body = r.json()
    assert body.get("error"), body
    description = body.get("error_description")
    assert isinstance(description, str) and description.strip(), (case, body)
    # RFC 6749 section 5.2's character set, whatever the request quoted.
    assert all(c == " " or ("\x21" <= c <= "\x7e" and c not in '"\\') for c in description)


def test_unsupported_grant_type_names_the_supported_one(idp):
    r = post(idp, {"grant_type": "password"}, auth=("secret-client", SECRET))
    assert r.status_code == 400
    body = r.json()
    assert body["error"] == "unsupported_grant_type"
    assert "password" in body["error_description"]
    assert "client_credentials" in body["error_description"]
