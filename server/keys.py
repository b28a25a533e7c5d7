"""Signing keys: load PEM keys from a directory, generate them, and the :class:`KeyStore`
that rotates and retires them (in the issuer's state store) and publishes the JWKS.

A key is *active* (signs new tokens; one per algorithm), *published* (no longer signs but
stays in the JWKS so tokens in flight keep validating) or *retired* (gone from the JWKS).
"""

from __future__ import annotations

import os
import stat
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey

from .algorithms import ALGORITHMS, KEY_TYPES, fits, generate_private_key
from .errors import KeyStoreError
from .store import MemoryStore, StateStore

__all__ = [
    "KeyStore", "SigningKey", "check_key_directory", "check_key_file", "generate_key_files",
    "generate_signing_key", "load_signing_keys", "shipped_keys_dir",
]

#: File name of each algorithm's key in a key directory.
KEY_FILES = {alg: f"{alg.lower()}.pem" for alg in ALGORITHMS}

ACTIVE, PUBLISHED, RETIRED = "active", "published", "retired"

_JWK_CLASSES: dict[str, type[Key]] = {"RSA": RSAKey, "EC": ECKey, "OKP": OKPKey}


def shipped_keys_dir() -> Path:
    """The public development keys that ship with m2mauth (test keys: never for production)."""
    return Path(str(resources.files("m2mauth._keys")))


def _unsupported(alg: str) -> str:
    return f"unsupported algorithm {alg!r} (supported: {', '.join(ALGORITHMS)})"


def _to_jwk(alg: str, native: Any) -> Key:
    """Wrap a cryptography private key as a joserfc key with alg, use and an RFC 7638 kid."""
    key = _JWK_CLASSES[KEY_TYPES[alg]](native, native, {"alg": alg, "use": "sig"})
    key.ensure_kid()  # the RFC 7638 thumbprint: stable across restarts for the same key
    return key


def generate_signing_key(alg: str) -> SigningKey:
    """A new private key for ``alg``, held in memory only."""
    if alg not in ALGORITHMS:
        raise KeyStoreError(_unsupported(alg))
    return SigningKey(alg, _to_jwk(alg, generate_private_key(alg)))


@dataclass(frozen=True, eq=False)
class SigningKey:
    """One private signing key and its place in the rotation (immutable: a status change is
    a new record in the state store)."""

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


def load_signing_keys(path: Path, *, trusted: bool = False,
                      check_permissions: bool = True) -> list[SigningKey]:
    """The ``<alg>.pem`` files (see KEY_FILES) in ``path``, as active keys.

    ``trusted`` skips cryptography's RSA key validation (about 40 ms a key); only for the
    keys m2mauth generated and ships itself. ``check_permissions`` refuses, as ssh does, a
    directory or key file that another local user could change or read (see
    :func:`check_key_directory` and :func:`check_key_file`); off only on request
    (``unsafe_key_permissions``) and for the shipped test keys.
    """
    path = Path(path)
    if check_permissions and path.is_dir():
        check_key_directory(path)
    keys: list[SigningKey] = []
    for alg, name in KEY_FILES.items():
        file = path / name
        if not file.exists():
            continue
        try:
            # Checked on the open file, so the file checked is the file read.
            with open(file, "rb") as fh:
                if check_permissions:
                    check_key_file(file, os.fstat(fh.fileno()))
                data = fh.read()
            native = serialization.load_pem_private_key(
                data, password=None, unsafe_skip_rsa_key_validation=trusted
            )
        except (ValueError, TypeError, OSError) as exc:
            raise KeyStoreError(f"{file}: cannot load private key: {exc}") from None
        if not fits(alg, native):
            raise KeyStoreError(
                f"{file}: not a key for {alg} (RSA >= 2048 bits, P-256 or Ed25519)")
        keys.append(SigningKey(alg, _to_jwk(alg, native)))
    if not keys:
        raise KeyStoreError(
            f"{path}: no signing keys found (expected one of {', '.join(KEY_FILES.values())})"
        )
    return keys


#: What a refusal at load time adds: the override (``keys generate`` has none).
_OVERRIDE = " (or, for a throwaway setup only, --unsafe-key-permissions)"


def _check_owner(path: Path, st: os.stat_result, what: str, hint: str) -> None:
    """Owned by this user or root (root could change it anyway), as ssh requires."""
    uid = os.geteuid()
    if st.st_uid not in (uid, 0):
        raise KeyStoreError(
            f"{path}: {what} is owned by uid {st.st_uid}, not by this user (uid {uid}) or"
            f" root, so that user can replace the signing keys; run chown {uid} {path}{hint}")


def check_key_directory(path: Path, st: os.stat_result | None = None, *,
                        hint: str = _OVERRIDE) -> None:
    """Raise :class:`KeyStoreError` unless only its owner (this user or root) can change
    what ``path`` holds: a group- or world-writable key directory (even with the sticky
    bit: anyone could add a key for a missing algorithm) lets another user swap the keys."""
    st = os.stat(path) if st is None else st
    _check_owner(path, st, "the key directory", hint)
    _check_mode(path, st, 0o022, "the key directory", "other users can add or replace keys in"
                " it", "chmod 700", hint)


def check_key_file(path: Path, st: os.stat_result, *, hint: str = _OVERRIDE) -> None:
    """Raise :class:`KeyStoreError` unless ``path`` is a regular file owned by this user or
    root whose mode grants the group and others nothing: a private key that others can read
    is disclosed, one they can write lets them sign tokens."""
    if not stat.S_ISREG(st.st_mode):
        raise KeyStoreError(f"{path}: not a regular file")
    _check_owner(path, st, "the private key", hint)
    _check_mode(path, st, 0o077, "the private key", "other users can read or change it",
                "chmod 600", hint)


def _check_mode(path: Path, st: os.stat_result, forbidden: int, what: str, risk: str,
                fix: str, hint: str) -> None:
    mode = stat.S_IMODE(st.st_mode)
    if mode & forbidden:
        raise KeyStoreError(f"{path}: {what} has mode {mode:04o}: {risk}; run {fix} {path}{hint}")


class KeyStore:
    """The signing keys of one issuer, kept in its state store: the active key per
    algorithm, rotation, retirement, and the JWKS. ``generate_missing`` creates a key the
    first time an algorithm is asked for (ephemeral keys)."""

    def __init__(self, store: StateStore | None = None, *,
                 generate_missing: bool = False) -> None:
        self.store = store if store is not None else MemoryStore()
        self._generate_missing = generate_missing
        self._lock = threading.Lock()  # one generated key per algorithm, not one per thread
        # (the keys, the JWKS made of them): one pair, replaced whole, so that a reader never
        # pairs a new key tuple with an old JWKS.
        self._jwks: tuple[tuple[SigningKey, ...], dict[str, Any]] | None = None
        # (the keys, the active key per algorithm and every key per kid): the token path's
        # lookups cost a dict read however many keys rotations have left in the store.
        self._index: tuple[tuple[SigningKey, ...], dict[str, SigningKey],
                           dict[str, SigningKey]] | None = None

    # -- construction -----------------------------------------------------------------

    @classmethod
    def from_directory(cls, path: Path, *, trusted: bool = False,
                       check_permissions: bool = True) -> KeyStore:
        """A store of the keys in ``path`` (see :func:`load_signing_keys`)."""
        return cls(MemoryStore(keys=load_signing_keys(
            path, trusted=trusted, check_permissions=check_permissions)))

    @classmethod
    def shipped(cls) -> KeyStore:
        """The public test keys in m2mauth's ``keys/`` directory."""
        # Not permission-checked: they are public anyway, and their modes are whatever the
        # installer (pip, a distribution package, a read-only image) gave them.
        return cls.from_directory(shipped_keys_dir(), trusted=True, check_permissions=False)

    @classmethod
    def ephemeral(cls, algorithms: Iterable[str]) -> KeyStore:
        """Fresh in-memory keys for ``algorithms``; keys for other algorithms appear on demand."""
        return cls(MemoryStore(keys=[generate_signing_key(alg) for alg in algorithms]),
                   generate_missing=True)

    # -- queries ----------------------------------------------------------------------

    def _indexed(self) -> tuple[dict[str, SigningKey], dict[str, SigningKey]]:
        keys = self.store.signing_keys()
        index = self._index
        if index is None or index[0] is not keys:  # a new tuple on every change
            active: dict[str, SigningKey] = {}
            by_kid: dict[str, SigningKey] = {}
            for key in keys:
                if key.status == ACTIVE:
                    active.setdefault(key.alg, key)  # the first, as the scan found it
                by_kid.setdefault(key.kid, key)
            index = self._index = (keys, active, by_kid)
        return index[1], index[2]

    def active(self, alg: str) -> SigningKey:
        """The key that signs new ``alg`` tokens."""
        found = self._indexed()[0].get(alg)
        if found is not None:
            return found
        if self._generate_missing and alg in ALGORITHMS:
            with self._lock:
                for key in self.store.signing_keys():
                    if key.alg == alg and key.status == ACTIVE:
                        return key
                return self.rotate(alg)
        raise KeyStoreError(f"no active {alg} signing key (the key directory has no {alg} key)")

    def get(self, kid: str) -> SigningKey:
        found = self._indexed()[1].get(kid)
        if found is None:
            raise KeyStoreError(f"no key with kid {kid!r}")
        return found

    def all_keys(self) -> list[SigningKey]:
        return list(self.store.signing_keys())

    def algorithms(self) -> list[str]:
        """Algorithms with an active key, in ALGORITHMS order."""
        have = {k.alg for k in self.store.signing_keys() if k.status == ACTIVE}
        return [a for a in ALGORITHMS if a in have]

    def jwks(self) -> dict[str, Any]:
        """The public JWKS: active and published keys, never retired ones."""
        keys = self.store.signing_keys()
        cached = self._jwks
        if cached is None or cached[0] is not keys:  # a new tuple on every change
            cached = self._jwks = (
                keys, {"keys": [k.public_jwk() for k in keys if k.status != RETIRED]})
        return cached[1]

    # -- changes ----------------------------------------------------------------------

    def rotate(self, alg: str, key: Key | None = None) -> SigningKey:
        """Make ``key`` (or a newly generated key) the active ``alg`` key; the previous active
        key stays published."""
        if alg not in ALGORITHMS:
            raise KeyStoreError(_unsupported(alg))
        new = SigningKey(alg, key) if key is not None else generate_signing_key(alg)
        self.store.add_signing_key(new)
        return self.get(new.kid)

    def retire(self, kid: str) -> SigningKey:
        """Remove a non-active key from the JWKS; tokens it signed stop validating."""
        key = self.get(kid)
        if key.status == ACTIVE:
            raise KeyStoreError(f"key {kid!r} is active; rotate {key.alg} before retiring it")
        retired = self.store.set_key_status(kid, RETIRED)
        assert retired is not None
        return retired


def _write_atomically(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically (a reader sees the old file or the new one,
    never half of one), with ``mode`` from the start: 0600, readable by the owner only, unless
    told otherwise (a certificate is 0644)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _make_private_directory(directory: Path) -> None:
    """Create ``directory`` and any missing parents with mode 0700, whatever the umask
    (mkdir's mode is filtered by it: under umask 000, Path.mkdir makes 0777 parents)."""
    missing = []
    current = directory
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue  # made meanwhile by someone else: the check below decides
        os.chmod(path, 0o700)


def generate_key_files(
    directory: Path, algorithms: Iterable[str] = ALGORITHMS, *, overwrite: bool = False
) -> list[SigningKey]:
    """Generate one key per algorithm into ``directory`` as ``<alg>.pem`` (mode 0600).
    Missing directories are made 0700; an existing one must pass
    :func:`check_key_directory` (owned by this user or root, writable by nobody else)."""
    directory = Path(directory)
    try:
        _make_private_directory(directory)
    except OSError as exc:
        raise KeyStoreError(f"{directory}: cannot create the key directory: {exc}") from None
    if not directory.is_dir():
        raise KeyStoreError(f"{directory}: not a directory")
    check_key_directory(directory, hint="")
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
        _write_atomically(directory / KEY_FILES[alg], key.pem())
        created.append(key)
    return created
