"""The token endpoint's signers (server/signing.py) write what joserfc writes: the same header
and payload bytes, a signature that PyJWT and joserfc both verify, for every algorithm."""

from __future__ import annotations

import jwt
import pytest
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey, RSAKey

from m2mauth.server.algorithms import ALGORITHMS
from m2mauth.server.keys import generate_signing_key
from m2mauth.server.signing import Signers, signer_for

CLAIMS = {
    "iss": "http://127.0.0.1:8000", "sub": "demo-client", "client_id": "demo-client",
    "aud": ["api://a", "api://b"], "jti": "abc", "scope": "read write",
    # A client's static claims are any JSON: non-ASCII text stays UTF-8, as joserfc writes it.
    "tenant": "Zürich ☃", "nested": {"a": [1, 2.5, True, None]},
    "iat": 1_700_000_000, "nbf": 1_700_000_000, "exp": 1_700_000_300,
}


def _joserfc_token(alg: str, key) -> str:
    # What tokens.py's access_token_generator hands joserfc for a token.
    header = {"alg": alg, "typ": "at+jwt", "kid": key.kid}
    return jose_jwt.encode(header, dict(CLAIMS), key, algorithms=[alg], default_type=None)


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_a_token_is_joserfcs_bytes_and_verifies_with_pyjwt_and_joserfc(alg):
    signing_key = generate_signing_key(alg)
    key = signing_key.key
    signer = signer_for(alg, key)
    assert signer is not None
    token = signer.sign(CLAIMS)
    header, payload, signature = token.split(".")
    theirs = _joserfc_token(alg, key).split(".")
    assert header.encode() == signer.header_segment
    assert [header, payload] == theirs[:2]  # byte-identical header and payload
    if alg in ("RS256", "EdDSA"):  # deterministic signatures: the whole token is the same
        assert signature == theirs[2]
    public = jwt.PyJWK(signing_key.public_jwk(), algorithm=alg)
    assert jwt.decode(token, public, algorithms=[alg], audience="api://a",
                      options={"verify_exp": False, "verify_iat": False}) == CLAIMS
    assert jwt.get_unverified_header(token) == {"alg": alg, "typ": "at+jwt",
                                                "kid": signing_key.kid}
    decoded = jose_jwt.decode(token, key, algorithms=[alg])
    assert decoded.header == {"alg": alg, "typ": "at+jwt", "kid": signing_key.kid}
    assert decoded.claims == CLAIMS


def test_es256_signatures_are_raw_r_and_s():
    """RFC 7518 section 3.4: 64 bytes, not the DER cryptography returns."""
    key = generate_signing_key("ES256").key
    signature = signer_for("ES256", key).sign(CLAIMS).rsplit(".", 1)[1]
    assert len(jwt.utils.base64url_decode(signature)) == 64


@pytest.mark.filterwarnings("ignore:Key size should be")  # the small key is the point
def test_a_key_that_does_not_fit_its_algorithm_gets_no_signer():
    """joserfc then signs or refuses it, as before (tests mint mismatched tokens)."""
    ec_key = generate_signing_key("ES256").key
    rsa_key = generate_signing_key("RS256").key
    assert signer_for("RS256", ec_key) is None
    assert signer_for("EdDSA", rsa_key) is None
    assert signer_for("PS256", rsa_key) is not None  # one RSA key signs both RSA algorithms
    public_only = ECKey.import_key(ec_key.as_dict(private=False))
    assert signer_for("ES256", public_only) is None
    small = RSAKey.generate_key(1024, private=True)  # below the 2048 bits keys.py requires
    small.ensure_kid()
    assert signer_for("RS256", small) is None


def test_signers_follow_the_key_object():
    """A rotated or reloaded key (another object, perhaps with the same kid) gets its own
    signer; the same key keeps its signer; the repr never shows the key."""
    signers = Signers()
    key = generate_signing_key("ES256").key
    first = signers.get("ES256", key)
    assert signers.get("ES256", key) is first
    reloaded = ECKey.import_key(key.as_dict(private=True))
    reloaded.ensure_kid()
    assert reloaded.kid == key.kid
    second = signers.get("ES256", reloaded)
    assert second is not first and second.key is reloaded
    assert "PRIVATE" not in repr(first) and key.kid in repr(first)


def test_signers_stay_bounded():
    signers = Signers()
    for _ in range(Signers.MAX_SIGNERS * 2):
        assert signers.get("EdDSA", generate_signing_key("EdDSA").key) is not None
    assert len(signers._signers) <= Signers.MAX_SIGNERS
