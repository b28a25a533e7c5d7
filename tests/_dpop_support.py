"""DPoP proofs for tests, built by hand from real keys (cryptography, signed by PyJWT's
algorithm objects), so that every header and claim – the bad ones included – is the test's
choice; and DPoP-bound access tokens from the session's authorization server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import get_default_algorithms

from m2mauth.client import jwk_thumbprint
from m2mauth.server import create_app
from m2mauth.server.serving import BackgroundServer, bind_app
from m2mauth.server.settings import ServerSettings

_PYJWT = get_default_algorithms()


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` on a free loopback port for the block: its base URL."""
    server, _ = bind_app("127.0.0.1", 0, lambda _port: app)
    with BackgroundServer(server) as running:
        yield running.url


@contextmanager
def serving_m2mauth() -> Iterator[tuple[str, Any]]:
    """``m2mauth serve``'s app (create_app: the lab on, the demo API at /demo) on a free
    loopback port for the block: its base URL and the lab's controls."""
    server, app = bind_app("127.0.0.1", 0, lambda port: create_app(
        replace(ServerSettings(), port=port)))
    with BackgroundServer(server) as running:
        yield running.url, app.extensions["m2mauth_lab"].controls


def b64(data: bytes | dict) -> str:
    if isinstance(data, dict):
        data = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def ath(token: str) -> str:
    return b64(hashlib.sha256(token.encode()).digest())


@dataclass
class ProofKey:
    """A client's DPoP key: the private key, its public JWK and the JWK's thumbprint."""

    alg: str
    private: Any
    jwk: dict
    jkt: str

    @classmethod
    def generate(cls, alg: str = "ES256") -> ProofKey:
        if alg.startswith("ES"):
            curve = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}[alg]
            private = ec.generate_private_key(curve())
        elif alg in ("EdDSA", "Ed25519"):
            private = ed25519.Ed25519PrivateKey.generate()
        else:
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pyjwt = _PYJWT["EdDSA" if alg == "Ed25519" else alg]
        jwk = pyjwt.to_jwk(private.public_key(), as_dict=True)
        return cls(alg, private, jwk, jwk_thumbprint(jwk))

    def private_jwk(self) -> dict:
        return _PYJWT["EdDSA" if self.alg == "Ed25519" else self.alg].to_jwk(
            self.private, as_dict=True)

    def proof(self, htm: str, htu: str, iat: float, *, token: str | None = None,
              jti: str | None = None, nonce: str | None = None, header: dict | None = None,
              claims: dict | None = None, sign_with: Any = None, alg: str | None = None,
              ) -> str:
        """A proof for ``htm htu`` at ``iat``, with ``ath`` of ``token``; ``header`` and
        ``claims`` override entries (a value of None removes one); ``sign_with`` another key
        (or bytes for HMAC) and ``alg`` another algorithm object to sign with."""
        head = {"typ": "dpop+jwt", "alg": self.alg, "jwk": self.jwk, **(header or {})}
        body: dict[str, Any] = {"jti": jti or uuid.uuid4().hex, "htm": htm, "htu": htu,
                                "iat": iat}
        if token is not None:
            body["ath"] = ath(token)
        if nonce is not None:
            body["nonce"] = nonce
        body.update(claims or {})
        head = {k: v for k, v in head.items() if v is not None}
        body = {k: v for k, v in body.items() if v is not None}
        signing_input = f"{b64(head)}.{b64(body)}"
        signer_alg = alg or head.get("alg", self.alg)
        if signer_alg == "none":
            return signing_input + "."
        key = sign_with if sign_with is not None else self.private
        if isinstance(key, bytes):  # HMAC by hand: PyJWT refuses key-looking secrets
            digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384}[signer_alg]
            return f"{signing_input}.{b64(hmac.new(key, signing_input.encode(), digest).digest())}"
        signer = _PYJWT["EdDSA" if signer_alg == "Ed25519" else signer_alg]
        return f"{signing_input}.{b64(signer.sign(signing_input.encode(), key))}"


def bound_token(idp, key: ProofKey, *, client_id: str = "demo-client",
                audience: str = "api://default", scope: str = "read", **kw) -> str:
    """A DPoP-bound access token (``cnf.jkt`` of ``key``) signed by the session's server."""
    return idp.issue_token(client_id, scope=scope, audience=audience,
                           claims={"cnf": {"jkt": key.jkt}}, **kw)
