"""Test wiring for m2mauth's own suite. It uses the public pytest plugin like any user: the
session's server (``m2mauth_server``, here also called ``live_server``) gets clients for every
auth method and algorithm through the ``m2mauth_clients`` fixture, and ``idp`` resets it after
each test. (The server signs with the shipped public test keys; the client keys below are
generated per run.)"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc.jwk import ECKey, OKPKey, RSAKey

from m2mauth.server import ClientSettings

SECRET = "s3cret-for-tests"


@dataclass
class ClientKey:
    """A private key a test client signs private_key_jwt assertions with."""

    alg: str
    jwk: object  # joserfc key with kid

    def public_jwks(self) -> dict:
        return {"keys": [self.jwk.as_dict(private=False)]}

    def pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.jwk.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _client_key(alg: str) -> ClientKey:
    if alg in ("RS256", "PS256"):
        native = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key = RSAKey(native, native, {"alg": alg})
    elif alg == "ES256":
        native = ec.generate_private_key(ec.SECP256R1())
        key = ECKey(native, native, {"alg": alg})
    else:
        native = ed25519.Ed25519PrivateKey.generate()
        key = OKPKey(native, native, {"alg": alg})
    key.ensure_kid()
    return ClientKey(alg, key)


@pytest.fixture(scope="session")
def client_keys() -> dict[str, ClientKey]:
    """One private_key_jwt client key per algorithm."""
    return {alg: _client_key(alg) for alg in ("RS256", "ES256", "EdDSA")}


@pytest.fixture(scope="session")
def m2mauth_clients(client_keys) -> list[ClientSettings]:
    """Clients: ``secret-client`` (all secret methods), ``post-only``, ``basic-only``,
    ``jwt-<alg>`` (private_key_jwt), ``alg-<alg>`` (tokens signed with <alg>),
    ``aud-client`` (several audiences) and the demo client."""
    clients = [
        ClientSettings("demo-client", "demo-secret", scopes=("read", "write"),
                       audiences=("api://default",)),
        ClientSettings("secret-client", SECRET, scopes=("read", "write", "admin"),
                       default_scopes=("read",), audiences=("https://api.test",),
                       claims={"tenant": "acme"}),
        ClientSettings("basic-only", SECRET, auth_methods=("client_secret_basic",),
                       scopes=("read",)),
        ClientSettings("post-only", SECRET, auth_methods=("client_secret_post",),
                       scopes=("read",)),
        ClientSettings("hmac-jwt", SECRET, auth_methods=("client_secret_jwt",),
                       scopes=("read",)),
        ClientSettings("aud-client", SECRET, scopes=("read",),
                       audiences=("https://orders.test", "https://billing.test", "payments"),
                       default_audience=("https://orders.test",), token_lifetime=60),
    ]
    for alg, key in client_keys.items():
        clients.append(ClientSettings(f"jwt-{alg.lower()}", jwks=key.public_jwks(),
                                      scopes=("read",)))
    for alg in ("RS256", "PS256", "ES256", "EdDSA"):
        clients.append(ClientSettings(f"alg-{alg.lower()}", SECRET, scopes=("read",),
                                      algorithm=alg))
    return clients


@pytest.fixture
def frozen(idp):
    """The session's issuer with its clock frozen at ``T0`` (tests/_provider_support.py)."""
    from _provider_support import T0

    idp.clock.freeze(at=T0)
    return idp


@pytest.fixture(params=["threads", "asyncio"])
def kind(request):
    """Each kind of token provider in turn (tests/_provider_support.py's ``Kind``), for what
    the threaded and the asyncio provider must do alike."""
    from _provider_support import Kind

    return Kind(request.param)


@pytest.fixture
def live_server(idp):
    """The plugin's session server, reset after each test (the ``idp`` fixture)."""
    return idp


class CliProcess:
    """``m2mauth ARGS`` as a real process, its start-up banner read (bounded) up to the line
    that starts with ``until``."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, until: str = "curl ",
                 max_lines: int = 30, stderr_file=None) -> None:
        import os
        import subprocess
        import sys

        clean = {k: v for k, v in os.environ.items() if not k.startswith("M2MAUTH_")}
        clean.update(env or {}, PYTHONUNBUFFERED="1")
        # A server that answers many requests logs a line for each: into a file then, not a
        # pipe nobody reads until the end (a full pipe would stop the server).
        self.stderr_file = stderr_file
        err = subprocess.PIPE if stderr_file is None else open(stderr_file, "w")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(  # noqa: S603 - our own CLI, arguments from the test
                [sys.executable, "-m", "m2mauth.server.cli", *args],
                stdout=subprocess.PIPE, stderr=err, text=True, env=clean)
        finally:
            if stderr_file is not None:
                err.close()
        self.banner: list[str] = []
        for _ in range(max_lines):
            line = self.proc.stdout.readline()
            if not line:
                break
            self.banner.append(line)
            if line.lstrip().startswith(until):
                break
        self.text = "".join(self.banner)

    def field(self, name: str) -> str:
        """The last word of the banner line that starts with ``name``."""
        return next(li.split()[-1] for li in self.banner if li.strip().startswith(name))

    def stderr(self) -> str:
        """What it wrote to stderr so far (``stderr_file`` only)."""
        from pathlib import Path

        return Path(self.stderr_file).read_text()

    def stop(self) -> str:
        """Terminate; what it wrote to stderr."""
        if self.proc.poll() is None:
            self.proc.terminate()
        _, err = self.proc.communicate(timeout=30)
        return err if self.stderr_file is None else self.stderr()


def _cli_processes():
    started: list[CliProcess] = []

    def start(*args: str, **options) -> CliProcess:
        started.append(CliProcess(*args, **options))
        return started[-1]

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def cli_process():
    """``cli_process(*args, env=None, until="curl ", stderr_file=None)``: a
    :class:`CliProcess`, stopped when the test ends."""
    yield from _cli_processes()


@pytest.fixture(scope="module")
def module_cli_process():
    """``cli_process`` for a server the tests of one module share, stopped after them."""
    yield from _cli_processes()


@pytest.fixture(scope="session")
def openid_client(tmp_path_factory):
    """A directory with npm's openid-client 6 and jose installed (once per session), for an
    ES-module script a test writes into it (ES modules find packages in a node_modules above
    the script, not through NODE_PATH). Skipped without node 20+ and npm."""
    import shutil
    import subprocess

    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("needs node and npm on the PATH")
    version = subprocess.run([node, "--version"], capture_output=True, text=True,  # noqa: S603
                             timeout=30)
    if int(version.stdout.strip().lstrip("v").split(".")[0]) < 20:
        pytest.skip(f"openid-client 6 needs node 20 or later, found {version.stdout.strip()}")
    directory = tmp_path_factory.mktemp("openid-client")
    installed = subprocess.run(  # noqa: S603 - npm from the PATH, fixed arguments
        [npm, "install", "--no-audit", "--no-fund", "--loglevel=error", "openid-client@6",
         "jose@6"], cwd=directory, capture_output=True, text=True, timeout=300)
    if installed.returncode != 0:
        pytest.skip(f"npm install openid-client failed: {installed.stderr.strip()[-300:]}")
    return directory


@pytest.fixture(scope="session")
def redis_server():
    """A real ``redis-server`` for the session (per xdist worker) on a free loopback port, in
    memory only; stopped by its PID at the end. Tests keep apart by namespace (or database).
    Skipped, saying why, when ``redis-server`` is not installed."""
    import shutil

    from _store_support import REDIS_MISSING, RedisServer

    if shutil.which("redis-server") is None:
        pytest.skip(REDIS_MISSING)
    server = RedisServer().start()
    yield server
    server.stop()
