"""The ``m2mauth`` command line: ``serve``, ``keys generate``, ``token``, ``introspect``,
``revoke``, ``decode``, ``demo-api`` and ``walkthrough``."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

import click

from .algorithms import ALGORITHMS
from .errors import ConfigError, KeyStoreError, StoreUnavailableError
from .settings import (
    AUTH_METHODS,
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    ServerSettings,
    env_name,
    server_settings,
)

__all__ = ["main"]


class _Group(click.Group):
    """Turns the library's typed errors into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (ConfigError, KeyStoreError, StoreUnavailableError) as exc:
            raise click.UsageError(str(exc)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="m2mauth")
def main() -> None:
    """m2mauth: an OAuth 2.0 client-credentials lab (authorization server, client, validator)."""


def _setting_options(command):
    """``m2mauth serve``'s options, one per setting declared with a flag (settings.py): the
    option's name, type, help and the variable it also reads come from the declaration."""
    for setting in reversed(list(server_settings())):
        if not setting.flag:
            continue
        name = "--" + setting.name.replace("_", "-")
        shown = {True: "on", False: None}.get(setting.default, setting.default) \
            if setting.kind is bool else setting.default
        help_text = setting.help if "[default:" in setting.help or shown is None \
            else f"{setting.help}  [default: {shown}]"
        help_text += f"  (also {env_name(setting.name)})" if setting.env else ""
        kwargs: dict[str, Any] = {"default": None, "help": help_text}
        if setting.kind is bool:
            names = [f"{name}/--no-{name[2:]}"] if setting.default else [name]
            kwargs["is_flag"] = True
        else:
            names = [name]
            # Path settings named *_dir are directories (keys_dir, tls_dir); others are files.
            directory = setting.name.endswith("_dir")
            kwargs["type"] = (click.Choice(setting.choices) if setting.choices else
                              click.Path(file_okay=not directory, dir_okay=directory,
                                         path_type=Path)
                              if setting.kind is Path else setting.kind)
        command = click.option(*names, setting.name, **kwargs)(command)
    return command


@main.command()
@_setting_options
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Config file: TOML (.toml) or JSON (.json)  (also M2MAUTH_CONFIG).")
@click.option("-v", "--verbose", is_flag=True, help="Also log every HTTP request.")
def serve(config_file: Path | None, verbose: bool, **overrides: Any) -> None:
    """Run the authorization server (defaults: 127.0.0.1:8000, RS256, demo-client)."""
    from . import create_app
    from .serving import ServingLimits, bind_app
    from .settings import load_settings

    settings = load_settings(config_file, overrides=overrides)
    _configure_logging(verbose)
    tls = None
    if settings.tls_enabled:
        from .tls import load_server_tls

        tls = load_server_tls(settings)
    if settings.workers > 1:
        return _serve_workers(settings, tls)
    server, app = _bind_or_exit(settings.host, settings.port, lambda port: create_app(
        dataclasses.replace(settings, port=port)), functools.partial(
            bind_app, limits=ServingLimits.of(settings), tls=tls and tls.context))
    _warn_issuer_mismatch(settings, server.port)
    _banner(app, tls)
    _serve_until_interrupted(server)


def _serve_workers(settings: ServerSettings, tls) -> None:
    """``serve --workers N``: bind and build the app here, once, then fork the workers
    (workers.py). With the memory store, the workers share a temporary SQLite file instead,
    in a private directory removed when the server exits."""
    import os
    import shutil
    import tempfile

    from . import create_app
    from .serving import ServingLimits, listen_app
    from .store import parse_store_url
    from .workers import WorkerOptions, serve_workers

    temporary = None
    if parse_store_url(settings.store)[0] == "memory":
        try:
            temporary = Path(tempfile.mkdtemp(prefix="m2mauth-workers-"))  # mode 0700
        except OSError as exc:
            raise click.UsageError(
                f"--workers {settings.workers}: cannot make a directory for the temporary "
                f"store in {tempfile.gettempdir()}: {exc.strerror} (name a store with "
                "--store sqlite:PATH)") from None
        settings = dataclasses.replace(settings, store=f"sqlite:{temporary / 'state.db'}")
    master = os.getpid()
    try:
        sock, app = _bind_or_exit(settings.host, settings.port, lambda port: create_app(
            dataclasses.replace(settings, port=port)), listen_app)
        port = sock.getsockname()[1]
        _warn_issuer_mismatch(settings, port)
        _banner(app, tls, workers=settings.workers, temporary_store=temporary is not None)
        serve_workers(WorkerOptions(app, sock, settings.workers, ServingLimits.of(settings),
                                    tls and tls.context, worker_header=settings.lab))
    finally:
        # A worker leaves through here too (its SystemExit unwinds the stack it was forked
        # with): only the master removes the directory.
        if temporary is not None and os.getpid() == master:
            shutil.rmtree(temporary, ignore_errors=True)


def _warn_issuer_mismatch(settings: ServerSettings, bound_port: int) -> None:
    """One line on stderr when the configured issuer seems to send clients elsewhere than
    this server (bind_check.py says when); an issuer left unset follows the bound port."""
    from .bind_check import issuer_bind_mismatch

    if settings.issuer is None or settings.trust_proxy:  # the proxy names the origin then
        return
    problem = issuer_bind_mismatch(settings.issuer, settings.host, settings.port, bound_port,
                                   tls=settings.tls_enabled)
    if problem is not None:
        click.echo(f"Warning: {problem}", err=True)


def _configure_logging(verbose: bool) -> None:
    from .logs import configure_logging

    configure_logging()  # INFO lines written off the request thread (logs.py)
    # joserfc prefers RFC 9864's "Ed25519" and warns on each "EdDSA" signature; m2mauth signs
    # "EdDSA" on purpose (what PyJWT and today's validators know), so the notice is noise here.
    warnings.filterwarnings("ignore", message="EdDSA is deprecated via RFC 9864")
    if verbose:
        logging.getLogger("m2mauth.access").setLevel(logging.DEBUG)


def _bind_or_exit(host: str, port: int, make_app, bind_app):
    """Listen and build the app, or one line on stderr and exit 2 (port taken, bad host)."""
    from .serving import PortInUseError

    try:
        return bind_app(host, port, make_app)
    except PortInUseError as exc:
        click.echo(f"Error: {exc} (choose another with --port, or 0 for any free port)", err=True)
        sys.exit(2)
    except OSError as exc:
        click.echo(f"Error: cannot listen on {host}:{port}: {exc.strerror}", err=True)
        sys.exit(2)


def _serve_until_interrupted(server) -> None:
    """Serve until SIGTERM or Ctrl+C, then stop accepting, answer the requests already
    received (up to 10 s) and return, so the process exits 0; a second signal stops at once.
    Container runtimes and CI stop services with SIGTERM."""
    import signal
    import threading

    def stop(signum: int, frame: object) -> None:
        if server.stopping:
            raise KeyboardInterrupt
        server.stop_gracefully()

    if threading.current_thread() is not threading.main_thread():  # signals need the main one
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
        return
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _banner(app, tls=None, *, workers: int = 1, temporary_store: bool = False) -> None:
    from .issuers import router_of

    issuer = app.extensions["m2mauth"]
    settings: ServerSettings = issuer.settings
    echo = click.echo
    echo(f"m2mauth authorization server listening on {settings.host}:{settings.port}")
    if workers > 1:
        echo(f"  workers   {workers} processes, one issuer: every piece of state in the "
             f"{issuer.store.kind} store")
    echo(f"  issuer    {issuer.issuer}")
    echo(f"  token     {issuer.token_endpoint}")
    echo(f"  jwks      {issuer.jwks_uri}")
    echo(f"  metadata  {_metadata_url(issuer)}")
    _tls_banner(tls)
    if settings.trust_proxy:
        echo("  proxy     --trust-proxy: each request's issuer takes its scheme, host and port "
             "from Forwarded / X-Forwarded-*")
    origin = issuer.issuer.removesuffix(issuer.mount)
    if not settings.lab:
        echo("  lab       off (--no-lab): no /admin, no faults, no request log, real time")
    else:
        if settings.admin_enabled:
            guard = "admin token required" if settings.admin_token else "open on loopback"
            echo(f"  admin     {issuer.issuer}/admin  (test controls, {guard})")
        echo(f"  demo API  {origin}/demo/hello  (needs scope read; a resource server "
             "to call with the token)")
        echo(f"  playground {issuer.issuer}/playground  (the flow and its failures, step by "
             "step, in your browser)")
    algs = ", ".join(sorted({c.settings.algorithm or settings.algorithm for c in issuer.clients}))
    echo(f"  signing   {algs} ({_keys_source(issuer)})")
    if temporary_store:
        echo(f"  store     {issuer.store.kind} {issuer.store.location}  (temporary for "
             f"--workers {workers}, removed at exit; --store to keep it)")
    elif issuer.store.kind != "memory":
        held = "new: seeded with these settings' clients and keys" if issuer.seeded_store \
            else "kept: the clients and keys it holds from an earlier start"
        echo(f"  store     {issuer.store.kind} {issuer.store.location}  ({held})")
    router = router_of(app)
    for name in router.names() if router is not None else ():
        other = router.get(name).extensions["m2mauth"]
        other_algs = ", ".join(other.settings.algorithms_in_use())
        echo(f"  + issuer  {other.issuer}  ({other_algs}, {_keys_source(other)}; "
             f"clients {', '.join(c.client_id for c in other.clients)})")
    demo = issuer.clients.get(DEMO_CLIENT_ID)
    if demo is not None and demo.secret == DEMO_CLIENT_SECRET.encode():
        echo(f"  client    {DEMO_CLIENT_ID} / {DEMO_CLIENT_SECRET}  scopes: "
             f"{' '.join(demo.scopes)}  audience: {' '.join(demo.audiences)}")
        echo("")
        cacert = f"--cacert {_quote(tls.ca_bundle)} " if tls and tls.ca_bundle else ""
        echo(f"  curl {cacert}-s -u {DEMO_CLIENT_ID}:{DEMO_CLIENT_SECRET} "
             f"-d grant_type=client_credentials {issuer.token_endpoint}")
    else:
        echo(f"  clients   {', '.join(c.client_id for c in issuer.clients)}")
    # Any issuer on the server, not the root's alone: "ephemeral_keys = false" in an
    # [issuers.NAME] table signs that issuer's tokens with the public keys too.
    public = [i.issuer for i in (issuer, *(router.get(n).extensions["m2mauth"] for n in (
        router.names() if router is not None else ()))) if i.settings.uses_shipped_keys]
    if public:
        echo("  note      the shipped keys are PUBLIC test keys: never trust these tokens"
             " outside a test")
        if not settings.binds_loopback:
            whose = "" if public == [issuer.issuer] else f" (for {', '.join(public)})"
            click.secho(
                f"WARNING: listening on {settings.host}, a non-loopback address, while signing "
                f"with m2mauth's PUBLIC test keys{whose}. Anyone can forge these tokens. Use "
                "--keys-dir or --ephemeral-keys (ephemeral_keys or keys_dir in an issuer's "
                "table) for anything reachable from another machine.",
                err=True, fg="red", bold=True,
            )
    echo("Press Ctrl+C to stop.", err=True)


def _metadata_url(issuer) -> str:
    """RFC 8414 section 3.1's location: the well-known segment before the issuer's path."""
    origin = issuer.issuer.removesuffix(issuer.mount)
    return f"{origin}/.well-known/oauth-authorization-server{issuer.mount}"


#: What each variable that names a CA bundle is read by.
_TRUST_VARIABLES = (("REQUESTS_CA_BUNDLE", "Python requests"),
                    ("SSL_CERT_FILE", "httpx, Python's ssl, OpenSSL"),
                    ("NODE_EXTRA_CA_CERTS", "Node.js"))


def _quote(path: object) -> str:
    import shlex

    return shlex.quote(str(path))


def _tls_banner(tls) -> None:
    """The TLS lines: the certificate, the CA bundle and how to trust it. (An https issuer
    on a plain server is bind_check.py's to warn about.)"""
    echo = click.echo
    if tls is None:
        return
    until = f"valid until {tls.not_after:%Y-%m-%d}" if tls.not_after else ""
    if tls.ca_bundle is None:
        echo(f"  tls       certificate {tls.cert_file}, key {tls.key_file} ({until})")
        if tls.names:
            echo(f"  names     {', '.join(tls.names)}")
        echo("  trust     the CA that signed it: name its PEM file in "
             f"{', '.join(v for v, _ in _TRUST_VARIABLES)}")
        return
    made = "made now, kept for later starts" if tls.ca_created else "made before, reused"
    echo(f"  tls       a new certificate for {', '.join(tls.names)} ({until}), from the "
         f"local CA ({made})")
    echo(f"  ca        {tls.ca_bundle}")
    echo("  trust     in each client's shell (the first two replace the CAs it trusts, the "
         "third adds to them):")
    for variable, who in _TRUST_VARIABLES:
        echo(f"    export {variable}={_quote(tls.ca_bundle)}  # {who}")


def _keys_source(issuer) -> str:
    settings: ServerSettings = issuer.settings
    if issuer.store.kind != "memory" and not issuer.seeded_store:
        return f"the keys the {issuer.store.kind} store holds"
    if settings.ephemeral_keys:
        if issuer.store.kind != "memory":
            return f"ephemeral keys made at this start, kept in the {issuer.store.kind} store"
        return "ephemeral in-memory keys"
    if settings.keys_dir is not None:
        return f"keys from {settings.keys_dir}"
    # Where they really are: the installed package's directory (m2mauth/_keys in
    # site-packages from a wheel), the checkout's keys/ only in an editable install.
    from .keys import shipped_keys_dir

    return f"shipped PUBLIC test keys from {shipped_keys_dir()}"


@main.group()
def keys() -> None:
    """Manage signing keys."""


@keys.command("generate")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--alg", "algorithms", multiple=True, type=click.Choice(ALGORITHMS),
              help="Algorithm to generate a key for (repeatable).  [default: all]")
@click.option("--force", is_flag=True, help="Replace existing key files.")
def keys_generate(directory: Path, algorithms: tuple[str, ...], force: bool) -> None:
    """Write new private signing keys (<alg>.pem, mode 0600) into DIRECTORY."""
    from .keys import KEY_FILES, generate_key_files

    created = generate_key_files(directory, algorithms or ALGORITHMS, overwrite=force)
    for key in created:
        click.echo(f"{directory / KEY_FILES[key.alg]}  {key.alg}  kid={key.kid}")
    click.echo(f"Serve with: m2mauth serve --keys-dir {directory}")


# -- client side: get, introspect, revoke and inspect a token ----------------------------------

#: Longer input is refused before any parsing (a token is a few hundred bytes to a few KiB).
_MAX_TOKEN_CHARS = 64 * 1024


def _fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr and exit ``code`` (1): the CLI's answer to a failed request or bad
    token."""
    if "CERTIFICATE_VERIFY_FAILED" in message:
        message += " (trust the issuer's CA with --ca-bundle FILE or REQUESTS_CA_BUNDLE)"
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def _ca_bundle_option(command):
    return click.option(
        "--ca-bundle", type=click.Path(dir_okay=False, path_type=Path),
        help="PEM file of the CA to verify an https issuer with (`m2mauth serve --tls` prints "
             "its own), in place of what requests trusts (REQUESTS_CA_BUNDLE, else certifi)."
    )(command)


def _session(ca_bundle: Path | None):
    """The requests session of ``token`` and ``decode``: with ``--ca-bundle``, one that
    verifies https with that file only (checked here: one line when it is not a bundle)."""
    if ca_bundle is None:
        return None
    import ssl

    from .tls import verifying_session

    try:
        ssl.create_default_context(cafile=str(ca_bundle))
    except ssl.SSLError:
        raise click.UsageError(f"--ca-bundle {ca_bundle}: not a PEM certificate bundle") \
            from None
    except OSError as exc:
        raise click.UsageError(f"--ca-bundle {ca_bundle}: {exc.strerror or exc}") from None
    return verifying_session(ca_bundle)


def _client_options(url_option: str, url_name: str, url_help: str):
    """The options of every command that authenticates as a client (``token``,
    ``introspect``, ``revoke``), declared once: where the endpoint is (``--issuer`` or
    ``url_option``, passed as ``url_name``), the credentials and auth method, the timeout
    and the CA bundle."""
    options = [
        click.option("--issuer", help="Issuer URL; the endpoint is discovered (RFC 8414)."),
        click.option(url_option, url_name, help=url_help),
        click.option("--client-id", required=True, envvar="M2MAUTH_CLIENT_ID",
                     help="Client id (also M2MAUTH_CLIENT_ID)."),
        click.option("--client-secret", envvar="M2MAUTH_CLIENT_SECRET",
                     help="Client secret; prefer M2MAUTH_CLIENT_SECRET, which keeps it out of "
                          "the shell history and the process list."),
        click.option("--auth-method", type=click.Choice(AUTH_METHODS),
                     help="Client authentication.  [default: private_key_jwt with "
                          "--private-key, else client_secret_basic]"),
        click.option("--private-key", type=click.Path(exists=True, dir_okay=False,
                                                      path_type=Path),
                     help="PEM private key FILE for private_key_jwt (RSA, EC P-256 or "
                          "Ed25519)."),
        click.option("--kid", help="Key id to put in the private_key_jwt assertion header."),
        click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0,
                     show_default=True, help="Seconds to wait for the server."),
        _ca_bundle_option,
    ]

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def _credentials(issuer, url, url_option: str, client_secret, auth_method, private_key,
                 fail_code: int = 1) -> dict[str, Any]:
    """The client options as keyword arguments of ``fetch_token``/``introspect_token``/
    ``revoke_token`` (without the endpoint): usage errors exit 2, an unreadable key
    ``fail_code``."""
    from m2mauth.client import load_private_key

    if (issuer is None) == (url is None):
        raise click.UsageError(f"Give exactly one of --issuer and {url_option}.")
    method = auth_method or ("private_key_jwt" if private_key else "client_secret_basic")
    key = None
    if method == "private_key_jwt":
        if private_key is None:
            raise click.UsageError("private_key_jwt needs --private-key FILE.")
        try:
            key = load_private_key(private_key.read_bytes())
        except (OSError, ValueError) as exc:
            _fail(f"--private-key {private_key}: {getattr(exc, 'strerror', None) or exc}",
                  fail_code)
    elif not client_secret:
        raise click.UsageError(
            f"{method} needs --client-secret (or the M2MAUTH_CLIENT_SECRET variable)."
        )
    return {"client_secret": client_secret if method != "private_key_jwt" else None,
            "private_key": key, "auth_method": method}


def _client_call(call, fail_code: int = 1):
    """``call()``'s result; its OAuthError as one line and exit ``fail_code``, its ValueError
    as a usage error (exit 2); PyJWT's short-HMAC-key warning as one line."""
    import warnings

    from m2mauth.client import OAuthError

    error: Exception | None = None
    result = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = call()
        except (OAuthError, ValueError) as exc:
            error = exc
    _report_warnings(caught)
    if isinstance(error, OAuthError):
        _fail(str(error), fail_code)
    if error is not None:
        raise click.UsageError(str(error))
    return result


@main.command("token")
@_client_options("--token-url", "token_url", "Token endpoint URL (instead of --issuer).")
@click.option("--scope", "scopes", multiple=True,
              help="Scope to request (repeatable, or several space-separated).")
@click.option("--resource", "resources", multiple=True,
              help="RFC 8707 resource indicator, becomes the token's aud (repeatable).")
@click.option("--audience", "audiences", multiple=True,
              help="Audience, sent as audience= (repeatable).")
@click.option("--decode", "decode_token", is_flag=True,
              help="Also print the token's header and claims.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the whole token response as JSON instead of the bare token.")
def token_command(issuer, token_url, client_id, client_secret, scopes, resources, audiences,
                  auth_method, private_key, kid, timeout, decode_token, as_json,
                  ca_bundle) -> None:
    """Get an access token with the client-credentials grant and print it."""
    import json

    from m2mauth.client import fetch_token

    credentials = _credentials(issuer, token_url, "--token-url", client_secret, auth_method,
                               private_key)
    token = _client_call(lambda: fetch_token(
        token_url, issuer=issuer, client_id=client_id, kid=kid, scope=list(scopes),
        resource=list(resources), timeout=timeout,
        extra_params={"audience": list(audiences)} if audiences else None,
        session=_session(ca_bundle), **credentials))
    if as_json:
        click.echo(json.dumps(token.raw, indent=2))
    else:
        click.echo(token.access_token)
    if decode_token:
        try:
            header, claims = _parse_jwt(token.access_token)
        except ValueError as exc:
            click.echo(f"(not decoded: {exc})", err=True)
        else:
            _print_jwt(header, claims)


def _read_token(token: str, fail_code: int = 1) -> str:
    """TOKEN, or the token on stdin for ``-`` (which keeps it out of the process list),
    stripped and at most ``_MAX_TOKEN_CHARS`` long."""
    if token == "-":
        token = sys.stdin.read(_MAX_TOKEN_CHARS + 1)
    token = token.strip()
    if not token:
        _fail("the token is empty", fail_code)
    if len(token) > _MAX_TOKEN_CHARS:
        _fail(f"the token is longer than {_MAX_TOKEN_CHARS} characters", fail_code)
    return token


class _TokenCommand(click.Command):
    """A command whose TOKEN argument may start with ``-``, as one opaque token in 64 does
    (base64url): an argument of one dash and a non-dash that is neither an option of the
    command nor an option's value is moved behind ``--`` before click parses, instead of
    being taken for a cluster of short options."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        names: set[str] = set()
        valued: set[str] = set()
        for param in self.get_params(ctx):
            if isinstance(param, click.Option):
                for name in (*param.opts, *param.secondary_opts):
                    names.add(name)
                    if not param.is_flag:
                        valued.add(name)
        kept: list[str] = []
        tokens: list[str] = []
        value_next = False
        for index, arg in enumerate(args):
            if arg == "--" and not value_next:
                kept += args[index:]
                break
            if value_next:
                kept.append(arg)
                value_next = False
            elif len(arg) > 1 and arg[0] == "-" and arg[1] != "-" and arg not in names:
                tokens.append(arg)
            else:
                kept.append(arg)
                value_next = arg in valued
        if tokens:
            kept += tokens if "--" in kept else ["--", *tokens]
        try:
            return super().parse_args(ctx, kept)
        except click.NoSuchOption as exc:
            exc.message += (" (if that is the token: put it after --, or give - and send it on "
                            "stdin)")
            raise


#: ``m2mauth introspect``'s exit codes, like grep's: found active, not active, could not ask.
_ACTIVE, _INACTIVE, _CANNOT_ASK = 0, 1, 2


@main.command("introspect", cls=_TokenCommand)
@click.argument("token")
@_client_options("--introspection-url", "introspection_url",
                 "Introspection endpoint URL (instead of --issuer).")
@click.option("--token-type-hint", help="Sent as token_type_hint (e.g. access_token).")
def introspect_command(token, issuer, introspection_url, client_id, client_secret,
                       auth_method, private_key, kid, timeout, ca_bundle,
                       token_type_hint) -> None:
    """Ask the issuer whether TOKEN (or - to read it from stdin) is active (RFC 7662), as a
    client allowed to introspect, and print its JSON answer. Exit code 0: active; 1: not
    active; 2: no answer (bad options, unreachable, refused)."""
    import json

    from m2mauth.client import introspect_token

    token = _read_token(token, _CANNOT_ASK)
    credentials = _credentials(issuer, introspection_url, "--introspection-url",
                               client_secret, auth_method, private_key, _CANNOT_ASK)
    answer = _client_call(lambda: introspect_token(
        token, introspection_endpoint=introspection_url, issuer=issuer, client_id=client_id,
        kid=kid, token_type_hint=token_type_hint, timeout=timeout,
        session=_session(ca_bundle), **credentials), _CANNOT_ASK)
    click.echo(json.dumps(answer, indent=2))
    sys.exit(_ACTIVE if answer.get("active") is True else _INACTIVE)


@main.command("revoke", cls=_TokenCommand)
@click.argument("token")
@_client_options("--revocation-url", "revocation_url",
                 "Revocation endpoint URL (instead of --issuer).")
@click.option("--token-type-hint", help="Sent as token_type_hint (e.g. access_token).")
def revoke_command(token, issuer, revocation_url, client_id, client_secret, auth_method,
                   private_key, kid, timeout, ca_bundle, token_type_hint) -> None:
    """Revoke TOKEN (or - to read it from stdin), one of this client's own (RFC 7009).
    Prints nothing and exits 0 when the server accepted it – which it also does for a token
    it does not know (RFC 7009 section 2.2); an error is one line and exit code 1."""
    from m2mauth.client import revoke_token

    token = _read_token(token)
    credentials = _credentials(issuer, revocation_url, "--revocation-url", client_secret,
                               auth_method, private_key)
    _client_call(lambda: revoke_token(
        token, revocation_endpoint=revocation_url, issuer=issuer, client_id=client_id,
        kid=kid, token_type_hint=token_type_hint, timeout=timeout,
        session=_session(ca_bundle), **credentials))


def _report_warnings(caught: list) -> None:
    """PyJWT's short-HMAC-key warning becomes one line; other warnings go on as they were."""
    import warnings

    for item in caught:
        if item.category.__name__ == "InsecureKeyLengthWarning":
            click.echo(f"Warning: client_secret_jwt: {item.message}", err=True)
        else:
            warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)


def _parse_jwt(token: str) -> tuple[dict, dict]:
    """(header, claims) of a compact JWS, unverified; ValueError with a short reason."""
    from m2mauth.client._jwt import unverified_jwt

    return unverified_jwt(token, _MAX_TOKEN_CHARS)


def _print_jwt(header: dict, claims: dict, now: float | None = None) -> None:
    import json
    import time
    from datetime import datetime, timezone

    now = time.time() if now is None else now
    click.echo("header:")
    click.echo(json.dumps(header, indent=2))
    click.echo("claims:")
    click.echo(json.dumps(claims, indent=2))
    for name in ("iat", "nbf", "exp"):
        value = claims.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            click.echo(f"{name}: {value!r} (not a NumericDate)")
            continue
        try:
            when = datetime.fromtimestamp(value, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        except (OverflowError, OSError, ValueError):
            when = "out of range"
        line = f"{name}: {when} ({value})"
        if name == "exp":
            delta = round(value - now)
            line += f", expires in {delta} s" if delta > 0 else f", expired {-delta} s ago"
        click.echo(line)


def _fetch_jwks(url: str, timeout: float, session=None) -> dict:
    import requests

    from m2mauth.client.errors import root_cause

    try:
        response = (session or requests).get(url, timeout=timeout,
                                             headers={"Accept": "application/json"})
    except requests.RequestException as exc:
        _fail(f"cannot fetch the JWKS from {url}: {root_cause(exc)}")
    try:
        jwks = response.json()
    except ValueError:
        jwks = None
    if response.status_code != 200 or not isinstance(jwks, dict) \
            or not isinstance(jwks.get("keys"), list):
        _fail(f"{url} did not answer a JWKS (HTTP {response.status_code})")
    return jwks


def _verify_signature(token: str, header: dict, jwks: dict) -> tuple[bool, str]:
    """(valid, what to print) for ``token`` against the keys in ``jwks``; only the allowed
    asymmetric algorithms, only keys from the JWKS (never jwk/jku/x5u/x5c from the token)."""
    import jwt

    # Never "none" or HMAC (RFC 8725 section 3.1): the validator's asymmetric allow-list.
    from m2mauth.client.validator import DEFAULT_ALGORITHMS

    alg = header.get("alg")
    if alg not in DEFAULT_ALGORITHMS:
        return False, f"algorithm {alg!r} not allowed (accepted: {', '.join(DEFAULT_ALGORITHMS)})"
    kid = header.get("kid")
    keys = [k for k in jwks["keys"] if isinstance(k, dict)]
    if kid is not None:
        keys = [k for k in keys if k.get("kid") == kid]
        if not keys:
            return False, f"no key with kid {kid!r} in the JWKS"
    elif len(keys) != 1:
        return False, "the token has no kid and the JWKS has more than one key"
    jwk = keys[0]
    if jwk.get("alg") not in (None, alg):
        return False, f"key {jwk.get('kid')!r} is for {jwk.get('alg')}, the token says {alg}"
    if jwk.get("use") not in (None, "sig"):
        return False, f"key {jwk.get('kid')!r} is not a signing key (use={jwk.get('use')!r})"
    if alg == "ES256" and jwk.get("crv") != "P-256":
        return False, f"ES256 needs a P-256 key, key {jwk.get('kid')!r} is {jwk.get('crv')!r}"
    try:
        key = jwt.PyJWK(jwk, algorithm=alg).key
        jwt.PyJWS(algorithms=[alg]).decode(token, key=key, algorithms=[alg])
    except jwt.InvalidSignatureError:
        return False, "signature verification failed"
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        return False, str(exc) or type(exc).__name__
    return True, f"kid {jwk.get('kid')}, alg {alg}"


@main.command("decode")
@click.argument("token")
@click.option("--issuer", help="Issuer URL: verify with its JWKS (discovered) and check iss.")
@click.option("--jwks-url", help="JWKS URL to verify the signature with.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True, help="Seconds to wait for the server.")
@_ca_bundle_option
def decode_command(token: str, issuer: str | None, jwks_url: str | None, timeout: float,
                   ca_bundle: Path | None) -> None:
    """Print a JWT's header and claims (TOKEN, or - to read it from stdin); with --issuer or
    --jwks-url also verify its signature (exit code 1 when invalid)."""
    from m2mauth.client import OAuthError, discover

    if token == "-":
        token = sys.stdin.read(_MAX_TOKEN_CHARS + 1)
    token = token.strip()
    try:
        header, claims = _parse_jwt(token)
    except ValueError as exc:
        _fail(f"malformed token: {exc}")
    _print_jwt(header, claims)
    if issuer is None and jwks_url is None:
        return
    session = _session(ca_bundle)
    if jwks_url is None:
        try:
            metadata = discover(issuer, timeout=timeout, session=session)
        except OAuthError as exc:
            _fail(str(exc))
        jwks_url = metadata.get("jwks_uri")
        if not isinstance(jwks_url, str):
            _fail(f"the metadata of {issuer} has no jwks_uri")
    valid, detail = _verify_signature(token, header, _fetch_jwks(jwks_url, timeout, session))
    click.echo(f"signature: {'valid' if valid else 'INVALID'} ({detail})")
    ok = valid
    if issuer is not None:
        if claims.get("iss") == issuer:
            click.echo(f"iss: matches {issuer}")
        else:
            click.echo(f"iss: MISMATCH (token says {claims.get('iss')!r}, expected {issuer!r})")
            ok = False
    if not ok:
        sys.exit(1)



# -- the API side: a demo resource server -----------------------------------------------------


@main.command("demo-api")
@click.option("--issuer", required=True, help="Issuer URL whose tokens the API accepts; its "
              "JWKS is discovered from its metadata (RFC 8414).")
@click.option("--audience", required=True, help="This API's identifier: tokens must have it "
              "in aud.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8001, show_default=True,
              help="Port to listen on; 0 picks a free one.")
@click.option("--leeway", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds of clock skew tolerated for exp, nbf and iat.")
@click.option("-v", "--verbose", is_flag=True, help="Also log every HTTP request.")
def demo_api_command(issuer: str, audience: str, host: str, port: int, leeway: float,
                     verbose: bool) -> None:
    """Run a demo API: GET /hello needs scope read, GET /admin needs scope admin."""
    import shlex

    from m2mauth.client.demo_api import ENDPOINTS, create_demo_api

    from .serving import bind_app

    _configure_logging(verbose)
    try:
        server, _ = _bind_or_exit(host, port, lambda _port: create_demo_api(
            issuer, audience, leeway=leeway), bind_app)
    except ValueError as exc:  # the validator's own checks (an empty issuer or audience)
        raise click.UsageError(str(exc)) from None
    bound = server.port
    shown_host = f"[{host}]" if ":" in host else host
    base = f"http://{shown_host}:{bound}"
    echo = click.echo
    echo(f"m2mauth demo API listening on {host}:{bound}")
    echo(f"  issuer    {issuer}  (signing keys from its JWKS)")
    echo(f"  audience  {audience}")
    for path, scope in ENDPOINTS.items():
        echo(f"  GET       {base}{path}  needs scope {scope}")
    echo("")
    echo(f"  TOKEN=$(m2mauth token --issuer {shlex.quote(issuer)} --client-id "
         f"{DEMO_CLIENT_ID} --client-secret {DEMO_CLIENT_SECRET} --scope read "
         f"--resource {shlex.quote(audience)})")
    echo(f'  curl -s -H "Authorization: Bearer $TOKEN" {shlex.quote(base + "/hello")}')
    echo("Press Ctrl+C to stop.", err=True)
    _serve_until_interrupted(server)


# -- learning: the flow and its failures, step by step ----------------------------------------


def _walkthrough_names() -> list[str]:
    from .lab.walkthrough import NAMES

    return list(NAMES)


class _LazyChoice(click.Choice):
    """The step and lesson names, read only when the command runs (``m2mauth -h`` and the
    other commands do not import the walkthrough)."""

    def __init__(self) -> None:
        super().__init__([])

    def convert(self, value, param, ctx):
        self.choices = _walkthrough_names()
        return super().convert(value, param, ctx)

    def get_metavar(self, param, ctx=None) -> str:
        return "NAME"


@main.command("walkthrough")
@click.option("--issuer", help="A running m2mauth server (its lab on) to walk through; "
              "everything else is discovered from its metadata.  [default: start one in this "
              "process on a free loopback port]")
@click.option("--admin-token", envvar="M2MAUTH_ADMIN_TOKEN",
              help="The admin token of --issuer's admin API, if it has one (also "
                   "M2MAUTH_ADMIN_TOKEN); never printed.")
@click.option("--only", type=_LazyChoice(), help="Run one step or lesson: discover, client, "
              "token, inspect, call, wrong-secret, bad-scope, bad-audience, expired, skew, "
              "rotation, rate-limit, caching, insufficient-scope.")
@click.option("--client-id", help="The registered client to walk through as.  [default: "
              "demo-client]")
@click.option("--client-secret", envvar="M2MAUTH_CLIENT_SECRET",
              help="Its secret (also M2MAUTH_CLIENT_SECRET, which keeps it out of the shell "
                   "history); never printed.  [default: demo-client's public demo secret]")
@click.option("--register-client", is_flag=True, help="Register a new client through the "
              "admin API in the client step (removed at the end) instead: with the scopes "
              "and audiences of --client-id's client if it is registered, else read and "
              "write for the default audience.")
@click.option("--pause/--no-pause", default=True, show_default=True,
              help="Wait for a key between steps (never when stdin or stdout is not a "
                   "terminal).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True, help="Seconds to wait for each answer.")
def walkthrough_command(issuer: str | None, admin_token: str | None, only: str | None,
                        client_id: str | None, client_secret: str | None,
                        register_client: bool, pause: bool, timeout: float) -> None:
    """Learn the client-credentials flow in the terminal: the five steps (discover, client,
    token, inspect, call) and nine lessons (what goes wrong, why, and what a correct client
    does), every HTTP exchange printed. Exits 0 when each behaved as taught, 1 naming the
    ones that did not."""
    from .lab.walkthrough import WalkthroughError, run

    if admin_token and issuer is None:
        raise click.UsageError("--admin-token needs --issuer (the server started here has "
                               "none).")
    try:
        code = run(issuer, admin_token=admin_token, only=only, pause=pause,
                   register=register_client, client_id=client_id,
                   client_secret=client_secret or None, timeout=timeout)
    except WalkthroughError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("\nwalkthrough: stopped", err=True)
        sys.exit(130)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
