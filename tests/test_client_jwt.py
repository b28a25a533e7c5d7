"""Reading a JWT without verifying it (``m2mauth.client._jwt.unverified_jwt``): what the
provider times a refresh with and the CLI's ``decode`` shows; every refusal a ValueError with a
short reason, nothing decoded past the size bound."""

from __future__ import annotations

import base64
import json

import pytest

from m2mauth.client._jwt import unverified_jwt


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jws(header: object, claims: object, signature: bytes = b"sig") -> str:
    return ".".join([b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()),
                     b64(signature)])


def test_header_and_claims_of_a_compact_jws():
    header = {"alg": "RS256", "typ": "at+jwt", "kid": "k1"}
    claims = {"iss": "https://idp.test", "exp": 1800000300, "scope": "read"}
    assert unverified_jwt(jws(header, claims)) == (header, claims)
    assert unverified_jwt(jws(header, claims, b"")) == (header, claims)  # no signature


@pytest.mark.parametrize(("token", "reason"), [
    ("x" * 70_000, "longer than 65536 characters"),
    ("not-a-jwt", "not a compact JWS (expected three dot-separated parts)"),
    ("a.b", "not a compact JWS (expected three dot-separated parts)"),
    ("a.b.c.d.e", "not a compact JWS (expected three dot-separated parts)"),
    ("!!!.@@@.###", "the header is not base64url"),
    ("abcde.e30.c2ln", "the header is not base64url"),  # 5 characters cannot be base64
    (b64(b"\xff\xfe") + ".e30.c2ln", "the header is not JSON"),
    ("WzEsMl0.e30.c2ln", "the header is not a JSON object"),
    ("eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln", "the payload is not JSON"),
    ("eyJhbGciOiJSUzI1NiJ9.WzEsMl0.c2ln", "the payload is not a JSON object"),
    ("e30." + b64(b"[" * 12000) + ".c2ln", "the payload is not JSON"),  # nested too deeply
    ("e30.e30.!!", "the signature is not base64url"),
])
def test_refusals_say_why(token, reason):
    with pytest.raises(ValueError) as info:
        unverified_jwt(token)
    assert str(info.value) == reason


def test_the_size_bound_is_the_callers():
    token = jws({"alg": "none"}, {"pad": "x" * 200})
    with pytest.raises(ValueError, match="longer than 100 characters"):
        unverified_jwt(token, max_chars=100)
    assert unverified_jwt(token, max_chars=len(token))[1]["pad"] == "x" * 200


def test_not_a_string_is_refused():
    with pytest.raises(ValueError, match="not a string"):
        unverified_jwt(b"e30.e30.c2ln")  # type: ignore[arg-type]
