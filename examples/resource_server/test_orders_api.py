"""The orders API against tokens from a real (local) authorization server: good ones from the
token endpoint and from ``idp.issue_token``, and deliberately bad ones."""

from __future__ import annotations

import jwt
import pytest
import requests


def get_orders(api, token: str | None):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return api.get("/orders", headers=headers)


def test_accepts_a_token_from_the_token_endpoint(api, idp):
    response = requests.post(
        idp.token_endpoint, data={"grant_type": "client_credentials", "scope": "orders:read"},
        auth=("orders-web", "orders-web-secret"), timeout=10,  # conftest.py's m2mauth_clients
    )
    response.raise_for_status()

    answer = get_orders(api, response.json()["access_token"])

    assert answer.status_code == 200
    assert answer.get_json()["client"] == "orders-web"


def test_accepts_a_minted_token(api, idp):
    token = idp.issue_token("orders-web", scope="orders:read")  # no HTTP: fast, no secrets

    assert get_orders(api, token).status_code == 200


def test_asks_for_a_token(api):
    response = get_orders(api, None)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="orders"'  # RFC 6750 §3.1


BAD_TOKENS = {
    "expired": (lambda idp: idp.issue_token("orders-web", expires_in=-60), "token expired"),
    "not yet valid": (lambda idp: idp.issue_token("orders-web", claims={"nbf": idp.clock() + 600}),
                      "token not yet valid"),
    "wrong audience": (lambda idp: idp.issue_token("orders-web", audience="https://billing.test"),
                       "wrong audience"),
    "wrong issuer": (lambda idp: idp.issue_token("orders-web", claims={"iss": "https://evil.test"}),
                     "wrong issuer"),
    "missing claim": (lambda idp: idp.issue_token("orders-web", claims={"exp": None}),
                      "missing claim exp"),
    "unpublished key": (lambda idp: idp.issue_token("orders-web", signing_key="unpublished"),
                        "unknown signing key"),
    "no kid": (lambda idp: idp.issue_token("orders-web", headers={"kid": None}),
               "unknown signing key"),
    "alg none": (lambda idp: idp.issue_token("orders-web", alg="none"),
                 "signing algorithm not allowed"),
    "tampered": (lambda idp: idp.tampered(idp.issue_token("orders-web")), "bad signature"),
    "wrong typ": (lambda idp: idp.issue_token("orders-web", headers={"typ": "JWT"}),
                  "not an access token (typ must be at+jwt)"),
    "not a jwt": (lambda idp: "not-a-jwt", "malformed token"),
}


@pytest.mark.parametrize("case", BAD_TOKENS)
def test_rejects_bad_tokens(api, idp, case):
    make, reason = BAD_TOKENS[case]

    response = get_orders(api, make(idp))

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == (
        f'Bearer realm="orders", error="invalid_token", error_description="{reason}"')


def test_insufficient_scope_is_403(api, idp):
    token = idp.issue_token("orders-web", scope="orders:write")

    response = get_orders(api, token)

    assert response.status_code == 403
    assert response.headers["WWW-Authenticate"] == (
        'Bearer realm="orders", error="insufficient_scope", '
        'error_description="needs scope orders:read", scope="orders:read"')


def test_tokens_expire_on_the_shared_clock(api, idp):
    idp.clock.freeze()
    token = idp.issue_token("orders-web", expires_in=300)
    idp.clock.advance(300 + 29)  # within the API's 30 s leeway
    assert get_orders(api, token).status_code == 200

    idp.clock.advance(1)

    assert get_orders(api, token).status_code == 401


def test_picks_up_a_rotated_key(make_api, idp):
    # In production the API refetches the JWKS for an unknown kid at most every 30 s (of real
    # time); this test rotates within milliseconds, so it turns that cooldown off.
    api = make_api(jwks_refresh_cooldown=0)
    old_token = idp.issue_token("orders-web")
    assert get_orders(api, old_token).status_code == 200
    assert len(idp.jwks_requests) == 1  # fetched once, then cached

    new_kid = idp.rotate_key()
    new_token = idp.issue_token("orders-web")
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid

    assert get_orders(api, new_token).status_code == 200  # unknown kid: the API refetched
    assert get_orders(api, old_token).status_code == 200  # the old key is still published
    assert len(idp.jwks_requests) == 2
