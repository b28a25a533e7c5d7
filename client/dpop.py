"""The client's side of DPoP (RFC 9449): a :class:`DPoPKey` that makes proofs, the bounded
per-origin store of server nonces (:class:`DPoPNonceStore`) and the error raised when a server
answers a proof with a token that is not DPoP-bound (:class:`DPoPTokenTypeError`).

A proof is a compact JWS signed by PyJWT: header ``{"typ": "dpop+jwt", "alg": ..., "jwk":
<the public key>}``, claims ``jti`` (random), ``htm``, ``htu`` (the URL without query and
fragment, §4.2), ``iat``, and ``ath`` (base64url SHA-256 of the access token) and ``nonce``
when given. The token endpoint gets one per token request (``TokenProvider(dpop=True)``), a
resource server one per request (the ``requests``/``httpx`` adapters).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import get_default_algorithms

from ._grammar import NONCE
from ._untrusted import shown
from .dpop_validation import PROOF_TYPE, access_token_hash, jwk_thumbprint
from .errors import OAuthError

__all__ = ["DPOP_KEY_ALGORITHMS", "DPoPKey", "DPoPNonceStore", "DPoPTokenTypeError"]

#: The algorithms a :class:`DPoPKey` signs with (asymmetric only, RFC 9449 §4.2).
DPOP_KEY_ALGORITHMS = ("ES256", "ES384", "ES512", "RS256", "PS256", "EdDSA")
_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}
_CURVE_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
#: The public members of a JWK per key type (RFC 7638 §3.2): all a proof's ``jwk`` carries.
_PUBLIC_MEMBERS = {"EC": ("kty", "crv", "x", "y"), "RSA": ("kty", "n", "e"),
                   "OKP": ("kty", "crv", "x")}
_PYJWT = get_default_algorithms()
#: A nonce is ``1*NQCHAR`` (RFC 9449 §8.1); longer than this is not kept (a hostile server
#: could otherwise make every later proof huge).
MAX_NONCE_LENGTH = 512
_DEFAULT_PORTS = {"http": 80, "https": 443}


class DPoPTokenTypeError(OAuthError, code="dpop_not_bound"):
    """The token endpoint was sent a DPoP proof but answered a token of another
    ``token_type`` (``Bearer``): it ignored the proof, so the token is not bound to the key
    and is refused rather than used as a weaker bearer token. ``token_type`` is what it said."""

    def __init__(self, token_type: str, token_url: str, status: int | None = 200) -> None:
        super().__init__(self.code, f"{token_url} answered a DPoP proof with token_type "
                         f"{shown(token_type)}, not DPoP: the server does not bind tokens to the "
                         "key; use a provider without dpop to accept bearer tokens.", None,
                         status)
        self.token_type, self.token_url = token_type, token_url

    def __reduce__(self) -> Any:  # pickling/copying: the constructor's arguments differ
        return (type(self), (self.token_type, self.token_url, self.status))


def _algorithm_for(private_key: Any) -> str:
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        alg = _CURVE_ALGORITHMS.get(private_key.curve.name)
        if alg is None:
            raise ValueError(f"no DPoP algorithm for curve {private_key.curve.name}")
        return alg
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(private_key, rsa.RSAPrivateKey):
        return "RS256"
    raise TypeError(f"a DPoP key must be an EC, RSA or Ed25519 private key, not "
                    f"{type(private_key).__name__}")


def _check_fit(private_key: Any, alg: str) -> None:
    if alg not in DPOP_KEY_ALGORITHMS:
        raise ValueError(f"alg must be one of {', '.join(DPOP_KEY_ALGORITHMS)}")
    if alg.startswith("ES"):
        fits = (isinstance(private_key, ec.EllipticCurvePrivateKey)
                and _CURVE_ALGORITHMS.get(private_key.curve.name) == alg)
    elif alg == "EdDSA":
        fits = isinstance(private_key, ed25519.Ed25519PrivateKey)
    else:
        fits = isinstance(private_key, rsa.RSAPrivateKey) and private_key.key_size >= 2048
    if not fits:
        raise ValueError(f"the key does not fit {alg} (RSA keys need 2048 bits or more)")


def _htu(url: str) -> str:
    """``htu`` for ``url``: the URL without query and fragment (RFC 9449 §4.2); an empty path
    becomes ``/`` and userinfo is left out. ``ValueError`` for anything but an absolute
    http(s) URL."""
    parts = urlsplit(url)
    # Userinfo (user:password@) would put a password into every proof, and it is no part
    # of the URI a resource server compares htu with (it refuses an htu that has one).
    netloc = parts.netloc.rpartition("@")[2]
    if parts.scheme.lower() not in _DEFAULT_PORTS or not netloc:
        raise ValueError("a DPoP proof needs an absolute http(s) URL")
    return urlunsplit((parts.scheme, netloc, parts.path or "/", "", ""))


class DPoPKey:
    """A client's DPoP key pair, which makes proofs: ``DPoPKey.generate()`` (ES256),
    ``DPoPKey(private_key, alg=...)`` with a ``cryptography`` key, :meth:`from_pem` or
    :meth:`from_jwk`. ``alg`` defaults from the key (EC curve → ES256/384/512, Ed25519 →
    EdDSA, RSA → RS256; PS256 on request). ``clock`` gives a proof's ``iat``.
    ``repr()`` shows the algorithm and thumbprint, never the private key."""

    def __init__(self, private_key: Any, alg: str | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        alg = alg or _algorithm_for(private_key)
        _check_fit(private_key, alg)
        self._private_key = private_key
        self.alg = alg
        self.clock = clock
        full = json.loads(_PYJWT[alg].to_jwk(private_key.public_key()))
        jwk = {name: full[name] for name in _PUBLIC_MEMBERS[full["kty"]]}
        self._public_jwk = MappingProxyType(jwk)
        self.thumbprint: str = jwk_thumbprint(jwk)
        self._headers = {"typ": PROOF_TYPE, "jwk": jwk}

    @classmethod
    def generate(cls, alg: str = "ES256", *, clock: Callable[[], float] = time.time,
                 ) -> DPoPKey:
        """A new key for ``alg`` (RSA keys are 2048 bits)."""
        if alg in _CURVES:
            private: Any = ec.generate_private_key(_CURVES[alg]())
        elif alg == "EdDSA":
            private = ed25519.Ed25519PrivateKey.generate()
        elif alg in ("RS256", "PS256"):
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            raise ValueError(f"alg must be one of {', '.join(DPOP_KEY_ALGORITHMS)}")
        return cls(private, alg, clock=clock)

    @classmethod
    def from_pem(cls, pem: str | bytes, alg: str | None = None, *,
                 password: bytes | None = None, clock: Callable[[], float] = time.time,
                 ) -> DPoPKey:
        """A key from a PEM private key (PKCS#8, or traditional EC/RSA)."""
        data = pem.encode() if isinstance(pem, str) else pem
        return cls(serialization.load_pem_private_key(data, password=password), alg,
                   clock=clock)

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any] | str, alg: str | None = None, *,
                 clock: Callable[[], float] = time.time) -> DPoPKey:
        """A key from a private JWK (a mapping or its JSON); its ``alg`` member is used when
        ``alg`` is not given."""
        data = dict(json.loads(jwk) if isinstance(jwk, str) else jwk)
        kty = data.get("kty")
        if alg is None and isinstance(data.get("alg"), str):
            alg = data["alg"]
        name = {"EC": "ES256", "RSA": "RS256", "OKP": "EdDSA"}.get(kty) if isinstance(
            kty, str) else None
        if name is None or "d" not in data:
            raise ValueError("a DPoP key's JWK must be a private EC, RSA or OKP key")
        private = _PYJWT[name].from_jwk(data)
        return cls(private, alg, clock=clock)

    @property
    def public_jwk(self) -> Mapping[str, Any]:
        """The public key as a JWK (only the RFC 7638 members): a proof's ``jwk`` header."""
        return self._public_jwk

    def proof(self, method: str, url: str, *, access_token: str | None = None,
              nonce: str | None = None, now: float | None = None) -> str:
        """A proof for one request: ``htm`` ``method`` upper-cased, ``htu`` ``url`` without
        query, fragment and userinfo, ``iat`` ``now`` (default: the key's clock) in whole
        seconds, ``ath`` for ``access_token`` and ``nonce`` when given."""
        if not isinstance(method, str) or not method:
            raise ValueError("a DPoP proof needs the request's method")
        claims: dict[str, Any] = {
            "jti": secrets.token_urlsafe(16),
            "htm": method.upper(),
            "htu": _htu(url),
            "iat": int(self.clock() if now is None else now),
        }
        if access_token is not None:
            claims["ath"] = access_token_hash(access_token)
        if nonce is not None:
            claims["nonce"] = nonce
        return jwt.encode(claims, self._private_key, algorithm=self.alg, headers=self._headers)

    def __repr__(self) -> str:
        return f"DPoPKey(alg={self.alg!r}, thumbprint={self.thumbprint!r})"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        # No pickling: a pickle would carry the private key wherever it is sent or stored.
        raise TypeError("a DPoPKey is not picklable (it holds a private key)")


def _origin(url: str) -> str:
    """``scheme://host:port`` of ``url``, the default port filled in: what nonces are kept by
    (RFC 9449 §8: a server's nonce is for that server)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{scheme}://{parts.hostname or ''}:{port or _DEFAULT_PORTS.get(scheme, 0)}"


def _usable_nonce(value: object) -> str | None:
    """A ``DPoP-Nonce`` header value if it is a nonce (``1*NQCHAR``, at most
    :data:`MAX_NONCE_LENGTH` long), else None: the header is untrusted input."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NONCE_LENGTH:
        return None
    return value if NONCE.fullmatch(value) else None


class DPoPNonceStore:
    """The latest ``DPoP-Nonce`` of each origin, for the next proof to that origin; thread
    safe and bounded: past ``max_entries`` origins the least recently used is forgotten (a
    forgotten nonce costs one ``use_dpop_nonce`` round trip, nothing else)."""

    def __init__(self, max_entries: int = 256) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._nonces: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, url: str) -> str | None:
        """The nonce to put in a proof for ``url``, None when its origin gave none."""
        origin = _origin(url)
        with self._lock:
            nonce = self._nonces.get(origin)
            if nonce is not None:
                self._nonces.move_to_end(origin)
            return nonce

    def update(self, url: str, header_value: object) -> str | None:
        """Remember a response's ``DPoP-Nonce`` (``header_value``, None when it had none) for
        ``url``'s origin; the nonce kept, or None when the value is not a usable nonce."""
        nonce = _usable_nonce(header_value)
        if nonce is None:
            return None
        origin = _origin(url)
        with self._lock:
            self._nonces[origin] = nonce
            self._nonces.move_to_end(origin)
            while len(self._nonces) > self.max_entries:
                self._nonces.popitem(last=False)
        return nonce

    def __len__(self) -> int:
        return len(self._nonces)

    def __repr__(self) -> str:
        return f"<DPoPNonceStore {len(self)} origin(s)>"
