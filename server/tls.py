"""The local CA and server certificate of ``m2mauth serve --tls``, and the server's TLS context.

A CA is made once in ``tls_dir`` (``ca.pem`` to trust, ``ca-key.pem`` mode 0600) and reused
by every later start, so a user trusts it once; each start issues a fresh server certificate
from it, held in memory, for the bound host, the issuer's host, 127.0.0.1, ::1 and localhost.
``tls_cert`` and ``tls_key`` serve given files instead. Certificates are made with trustme
(a small layer over cryptography, which builds exactly these: a CA and leaf certificates with
the right extensions); the context is the standard library's, TLS 1.2 at least.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .errors import ConfigError, KeyStoreError

if TYPE_CHECKING:
    import requests
    import trustme

    from .settings import ServerSettings

__all__ = ["CA_FILE", "CA_KEY_FILE", "ServerTLS", "ca_bundle_path", "certificate_names",
           "client_context", "default_tls_dir", "load_server_tls", "verifying_session"]

#: The local CA's certificate (what clients trust) and private key, in ``tls_dir``.
CA_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
#: Names every generated server certificate covers, whatever the bound host.
LOOPBACK_NAMES = ("127.0.0.1", "::1", "localhost")
#: Days a generated server certificate is valid: under the 398 that browsers and Apple's TLS
#: stack accept. A new one is made at each start.
SERVER_CERT_DAYS = 397
_CA_NAME = "m2mauth local development CA"


@dataclass(frozen=True)
class ServerTLS:
    """What a TLS server serves with, and what its clients should trust."""

    #: The server side context: certificate loaded, TLS 1.2 at least, ALPN http/1.1.
    context: ssl.SSLContext = field(repr=False)
    #: The CA bundle clients trust: the local CA's certificate. None with given files, whose
    #: CA m2mauth does not know.
    ca_bundle: Path | None
    #: The names (DNS names and IP addresses) the served certificate covers.
    names: tuple[str, ...]
    #: The given certificate and key files (``tls_cert``, ``tls_key``), if any.
    cert_file: Path | None = None
    key_file: Path | None = None
    #: Whether this start made the local CA (False: one made before was reused).
    ca_created: bool = False
    #: When the served certificate expires.
    not_after: datetime.datetime | None = None


def default_tls_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the local CA lives without ``tls_dir``: ``$XDG_DATA_HOME/m2mauth/tls``, else
    ``~/.local/share/m2mauth/tls`` (mkcert keeps its CA the same way): one CA per user,
    trusted once, found again by every later start from any directory."""
    env = os.environ if env is None else env
    data = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "m2mauth" / "tls"


def ca_bundle_path(settings: ServerSettings) -> Path | None:
    """The file clients trust for a server with these settings: the local CA's certificate;
    None without TLS or with given certificate files."""
    if not settings.tls_enabled or settings.tls_cert is not None:
        return None
    return Path(settings.tls_dir or default_tls_dir()) / CA_FILE


def certificate_names(settings: ServerSettings) -> tuple[str, ...]:
    """What a generated server certificate covers: the loopback names, the bound host (not
    the all-interfaces address, which no client connects to by name) and the issuer's host,
    so that clients reaching the issuer URL verify it (``--issuer https://idp:8443``)."""
    names = list(LOOPBACK_NAMES)
    candidates = [settings.host.strip("[]")]
    if settings.issuer is not None:
        candidates.append(urlsplit(settings.issuer).hostname or "")
    for name in candidates:
        if name and name not in ("0.0.0.0", "::") and name.lower() not in names:  # noqa: S104
            names.append(name.lower())
    return tuple(names)


def _server_context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Clients that offer h2 (curl, browsers) settle on what the server speaks.
    context.set_alpn_protocols(["http/1.1"])
    return context


def client_context(ca_bundle: Path | str | None = None) -> ssl.SSLContext:
    """A client context that verifies the server (certificate and host name) against
    ``ca_bundle``, or the system's trust store without it."""
    context = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def verifying_session(ca_bundle: Path | str) -> requests.Session:
    """A ``requests.Session`` that verifies https servers against ``ca_bundle`` only.

    ``session.verify`` would not do: requests lets ``REQUESTS_CA_BUNDLE`` override it
    (psf/requests#3829), so an adapter sets ``verify`` on every request instead."""
    import requests
    from requests.adapters import HTTPAdapter

    path = str(ca_bundle)

    class _VerifyWith(HTTPAdapter):
        def send(self, request: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            kwargs["verify"] = path
            return super().send(request, **kwargs)

    session = requests.Session()
    session.mount("https://", _VerifyWith())
    return session


def load_server_tls(settings: ServerSettings, *,
                    now: datetime.datetime | None = None) -> ServerTLS:
    """The TLS a server with these settings serves: the given ``tls_cert``/``tls_key``, or a
    new certificate from the local CA in ``tls_dir`` (made there on first use). Every
    problem is a :class:`ConfigError` naming the setting and the file."""
    if settings.tls_cert is not None and settings.tls_key is not None:
        return _given_files(settings, Path(settings.tls_cert), Path(settings.tls_key))
    now = now or datetime.datetime.now(datetime.timezone.utc)
    directory = Path(settings.tls_dir or default_tls_dir())
    ca, created = _local_ca(settings, directory)
    names = certificate_names(settings)
    not_after = now + datetime.timedelta(days=SERVER_CERT_DAYS)
    try:
        leaf = ca.issue_cert(*names, organization_name="m2mauth",
                             organization_unit_name="m2mauth serve --tls",
                             not_before=now - datetime.timedelta(hours=1), not_after=not_after)
    except ValueError as exc:  # a name that is neither a DNS name nor an address (idna)
        key = "issuer" if settings.issuer is not None else "host"
        raise ConfigError(*settings.where(key), f"cannot be named in a certificate: {exc}") \
            from None
    context = _server_context()
    # load_cert_chain reads files only: a 0600 temporary file in the CA's own directory,
    # deleted at once.
    with leaf.private_key_and_cert_chain_pem.tempfile(dir=str(directory)) as path:
        context.load_cert_chain(path)
    return ServerTLS(context, directory / CA_FILE, names, ca_created=created,
                     not_after=not_after)


def _spki(public_key: Any) -> bytes:
    """A public key's DER SubjectPublicKeyInfo: what "the same key" means for a certificate."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return bytes(public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))


# -- given files -----------------------------------------------------------------------------




def _read(settings: ServerSettings, key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(*settings.where(key), f"cannot read {path}: {exc.strerror or exc}") \
            from None


def _given_files(settings: ServerSettings, cert_file: Path, key_file: Path) -> ServerTLS:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    def fail(key: str, why: str) -> ConfigError:
        return ConfigError(*settings.where(key), why)

    try:
        chain = x509.load_pem_x509_certificates(_read(settings, "tls_cert", cert_file))
    except ValueError:
        raise fail("tls_cert", f"{cert_file} is not a PEM certificate") from None
    try:
        key = load_pem_private_key(_read(settings, "tls_key", key_file), password=None)
    except TypeError:  # cryptography: "Password was not given but private key is encrypted"
        raise fail("tls_key", f"{key_file} is encrypted; give an unencrypted PEM key") from None
    except ValueError:
        raise fail("tls_key", f"{key_file} is not a PEM private key") from None
    if _spki(chain[0].public_key()) != _spki(key.public_key()):
        raise fail("tls_key", f"{key_file} is not the key of the certificate in {cert_file}")
    context = _server_context()
    try:
        context.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError) as exc:
        raise fail("tls_cert", f"{cert_file} cannot be served: "
                   f"{getattr(exc, 'reason', None) or exc}") from None
    try:
        san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(str(n) for n in san.get_values_for_type(x509.DNSName)) + tuple(
            str(a) for a in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        names = ()
    return ServerTLS(context, None, names, cert_file=cert_file, key_file=key_file,
                     not_after=chain[0].not_valid_after_utc)


# -- the local CA ----------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One process at a time makes or reads the CA: two first starts at once must end up
    with one CA, not each overwrite the other's."""
    import fcntl

    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _local_ca(settings: ServerSettings, directory: Path) -> tuple[trustme.CA, bool]:
    """The CA in ``directory``, made there first if it holds none; (CA, whether made now)."""
    from .keys import _make_private_directory, check_key_directory

    def fail(why: str) -> ConfigError:
        return ConfigError(*settings.where("tls_dir"), why)

    check = not settings.unsafe_key_permissions
    try:
        _make_private_directory(directory)
        if not directory.is_dir():
            raise fail(f"{directory} is not a directory")
        if check:
            check_key_directory(directory)
        with _locked(directory):
            if (directory / CA_FILE).exists():
                return _load_ca(directory, check, fail), False
            return _create_ca(directory), True
    except KeyStoreError as exc:  # unsafe modes or owners, as for signing keys
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot use {directory} for the local CA: {exc.strerror or exc}") from None


def _load_ca(directory: Path, check: bool, fail: Any) -> trustme.CA:
    import trustme
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from .keys import check_key_file

    cert_file, key_file = directory / CA_FILE, directory / CA_KEY_FILE
    if not key_file.exists():
        raise fail(f"{cert_file} has no private key beside it ({CA_KEY_FILE}): restore it, "
                   f"or remove {cert_file} to make a new CA (and trust that one instead)")
    with open(key_file, "rb") as fh:  # checked on the open file: the file checked is the one read
        if check:
            check_key_file(key_file, os.fstat(fh.fileno()))
        key_pem = fh.read()
    cert_pem = cert_file.read_bytes()
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise fail(f"{directory}: the local CA does not load ({exc}); remove {cert_file} and "
                   f"{key_file} to make a new one") from None
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca or _spki(cert.public_key()) != _spki(key.public_key()):
        raise fail(f"{cert_file} and {key_file} are not one CA certificate and its key; remove"
                   " both to make a new CA")
    return trustme.CA.from_pem(cert_pem, key_pem)


def _create_ca(directory: Path) -> trustme.CA:
    import trustme

    from .keys import _write_atomically

    ca = trustme.CA(organization_name="m2mauth", organization_unit_name=_CA_NAME)
    # The key first: a start interrupted between the two leaves no certificate, and the next
    # start makes a new pair (a certificate without its key is refused, see _load_ca).
    _write_atomically(directory / CA_KEY_FILE, ca.private_key_pem.bytes())
    _write_atomically(directory / CA_FILE, ca.cert_pem.bytes(), mode=0o644)  # a certificate
    return ca
