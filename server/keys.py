"""The signing-key store: load PEM keys from a directory, generate, rotate and retire keys,
and publish the JWKS.

A key is *active* (signs new tokens; one per algorithm), *published* (no longer signs but
stays in the JWKS so tokens in flight keep validating) or *retired* (gone from the JWKS).
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey

from .errors import KeyStoreError
from .settings import ALGORITHMS

__all__ = [
    "KeyStore", "SigningKey", "generate_key_files", "generate_signing_key", "shipped_keys_dir",
]

#: File name of each algorithm's key in a key directory.
KEY_FILES = {alg: f"{alg.lower()}.pem" for alg in ALGORITHMS}

ACTIVE, PUBLISHED, RETIRED = "active", "published", "retired"


def shipped_keys_dir() -> Path:
    """The public development keys that ship with m2mauth (test keys: never for production)."""
    return Path(str(resources.files("m2mauth._keys")))


def _unsupported(alg: str) -> str:
    return f"unsupported algorithm {alg!r} (supported: {', '.join(ALGORITHMS)})"


def _generate_private_key(alg: str) -> Any:
    if alg in ("RS256", "PS256"):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise KeyStoreError(_unsupported(alg))


def _check_key_matches(alg: str, native: Any, where: str) -> None:
    ok = (
        (alg in ("RS256", "PS256") and isinstance(native, rsa.RSAPrivateKey)
         and native.key_size >= 2048)
        or (alg == "ES256" and isinstance(native, ec.EllipticCurvePrivateKey)
            and isinstance(native.curve, ec.SECP256R1))
        or (alg == "EdDSA" and isinstance(native, ed25519.Ed25519PrivateKey))
    )
    if not ok:
        raise KeyStoreError(f"{where}: not a key for {alg} (RSA >= 2048 bits, P-256 or Ed25519)")


def _to_jwk(alg: str, native: Any) -> Key:
    """Wrap a cryptography private key as a joserfc key with alg, use and an RFC 7638 kid."""
    params = {"alg": alg, "use": "sig"}
    key: Key
    if isinstance(native, rsa.RSAPrivateKey):
        key = RSAKey(native, native, params)
    elif isinstance(native, ec.EllipticCurvePrivateKey):
        key = ECKey(native, native, params)
    else:
        key = OKPKey(native, native, params)
    key.ensure_kid()  # the RFC 7638 thumbprint: stable across restarts for the same key
    return key


def generate_signing_key(alg: str) -> SigningKey:
    """A new private key for ``alg``, held in memory only."""
    return SigningKey(alg, _to_jwk(alg, _generate_private_key(alg)))


@dataclass(eq=False)
class SigningKey:
    """One private signing key and its place in the rotation."""

    alg: str
    key: Key = field(repr=False)
    status: str = ACTIVE

    @property
    def kid(self) -> str:
        return str(self.key.kid)

    def public_jwk(self) -> dict[str, Any]:
        return dict(self.key.as_dict(private=False))

    def pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM."""
        native = self.key.private_key
        return native.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def __repr__(self) -> str:
        return f"<SigningKey {self.alg} kid={self.kid} {self.status}>"


class KeyStore:
    """Thread-safe set of signing keys; ``generate_missing`` creates keys for new algorithms."""

    def __init__(self, keys: Iterable[SigningKey] = (), *, generate_missing: bool = False) -> None:
        self._lock = threading.RLock()
        self._keys: list[SigningKey] = list(keys)
        self._generate_missing = generate_missing
        self._jwks: dict[str, Any] | None = None

    # -- construction -----------------------------------------------------------------

    @classmethod
    def from_directory(cls, path: Path, *, trusted: bool = False) -> KeyStore:
        """Load ``<alg>.pem`` files (see KEY_FILES) from ``path``.

        ``trusted`` skips cryptography's RSA key validation (about 40 ms a key); only for the
        keys m2mauth generated and ships itself.
        """
        keys: list[SigningKey] = []
        for alg, name in KEY_FILES.items():
            file = path / name
            if not file.exists():
                continue
            try:
                native = serialization.load_pem_private_key(
                    file.read_bytes(), password=None, unsafe_skip_rsa_key_validation=trusted
                )
            except (ValueError, TypeError, OSError) as exc:
                raise KeyStoreError(f"{file}: cannot load private key: {exc}") from None
            _check_key_matches(alg, native, str(file))
            keys.append(SigningKey(alg, _to_jwk(alg, native)))
        if not keys:
            raise KeyStoreError(
                f"{path}: no signing keys found (expected one of {', '.join(KEY_FILES.values())})"
            )
        return cls(keys)

    @classmethod
    def shipped(cls) -> KeyStore:
        """The public test keys in m2mauth's ``keys/`` directory."""
        return cls.from_directory(shipped_keys_dir(), trusted=True)

    @classmethod
    def ephemeral(cls, algorithms: Iterable[str]) -> KeyStore:
        """Fresh in-memory keys for ``algorithms``; keys for other algorithms appear on demand."""
        store = cls(generate_missing=True)
        for alg in algorithms:
            store.add(alg)
        return store

    # -- queries ----------------------------------------------------------------------

    def active(self, alg: str) -> SigningKey:
        """The key that signs new ``alg`` tokens."""
        with self._lock:
            for key in self._keys:
                if key.alg == alg and key.status == ACTIVE:
                    return key
            if self._generate_missing:
                return self.add(alg)
        raise KeyStoreError(f"no active {alg} signing key (the key directory has no {alg} key)")

    def get(self, kid: str) -> SigningKey:
        with self._lock:
            for key in self._keys:
                if key.kid == kid:
                    return key
        raise KeyStoreError(f"no key with kid {kid!r}")

    def all_keys(self) -> list[SigningKey]:
        with self._lock:
            return list(self._keys)

    def algorithms(self) -> list[str]:
        """Algorithms with an active key, in ALGORITHMS order."""
        with self._lock:
            have = {k.alg for k in self._keys if k.status == ACTIVE}
        return [a for a in ALGORITHMS if a in have]

    def jwks(self) -> dict[str, Any]:
        """The public JWKS: active and published keys, never retired ones."""
        with self._lock:
            if self._jwks is None:
                self._jwks = {
                    "keys": [k.public_jwk() for k in self._keys if k.status != RETIRED]
                }
            return self._jwks

    # -- changes ----------------------------------------------------------------------

    def _changed(self) -> None:
        self._jwks = None

    def add(self, alg: str, key: Key | None = None) -> SigningKey:
        """Make ``key`` (or a newly generated key) the active ``alg`` key; the previous active
        key stays published."""
        if alg not in ALGORITHMS:
            raise KeyStoreError(_unsupported(alg))
        new = SigningKey(alg, key) if key is not None else generate_signing_key(alg)
        with self._lock:
            for old in self._keys:
                if old.alg == alg and old.status == ACTIVE:
                    old.status = PUBLISHED
            self._keys.append(new)
            self._changed()
        return new

    rotate = add

    def snapshot(self) -> list[tuple[SigningKey, str]]:
        """The keys and their statuses now, for :meth:`restore`."""
        with self._lock:
            return [(k, k.status) for k in self._keys]

    def restore(self, snapshot: list[tuple[SigningKey, str]]) -> None:
        """Back to a :meth:`snapshot`: keys added since are dropped, statuses put back."""
        with self._lock:
            self._keys = [key for key, _ in snapshot]
            for key, status in snapshot:
                key.status = status
            self._changed()

    def retire(self, kid: str) -> SigningKey:
        """Remove a non-active key from the JWKS; tokens it signed stop validating."""
        with self._lock:
            key = self.get(kid)
            if key.status == ACTIVE:
                raise KeyStoreError(f"key {kid!r} is active; rotate {key.alg} before retiring it")
            key.status = RETIRED
            self._changed()
            return key


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, readable by the owner only (0600)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def generate_key_files(
    directory: Path, algorithms: Iterable[str] = ALGORITHMS, *, overwrite: bool = False
) -> list[SigningKey]:
    """Generate one key per algorithm into ``directory`` as ``<alg>.pem`` (mode 0600)."""
    directory.mkdir(parents=True, exist_ok=True)
    algs = list(algorithms)
    for alg in algs:
        if alg not in ALGORITHMS:
            raise KeyStoreError(_unsupported(alg))
        target = directory / KEY_FILES[alg]
        if target.exists() and not overwrite:
            raise KeyStoreError(f"{target} exists; refusing to replace it (use --force, or "
                                "overwrite=True from Python)")
    created = []
    for alg in algs:
        key = generate_signing_key(alg)
        _write_private(directory / KEY_FILES[alg], key.pem())
        created.append(key)
    return created
