"""The ``m2mauth`` command line: ``serve``, ``keys generate``, ``token`` and ``decode``."""

from __future__ import annotations

import ipaddress
import logging
import sys
from pathlib import Path

import click

from .errors import ConfigError, KeyStoreError
from .settings import ALGORITHMS, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, ServerSettings

__all__ = ["main"]


class _Group(click.Group):
    """Turns the library's typed errors into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (ConfigError, KeyStoreError) as exc:
            raise click.UsageError(str(exc)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="m2mauth")
def main() -> None:
    """m2mauth: an OAuth 2.0 client-credentials lab (authorization server, client, validator)."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@main.command()
@click.option("--host", help="Address to listen on.  [default: 127.0.0.1]")
@click.option("--port", type=int, help="Port to listen on; 0 picks a free one.  [default: 8000]")
@click.option("--issuer", help="Issuer URL put in tokens and metadata.  [default: http://HOST:PORT]")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML config file (also M2MAUTH_CONFIG).")
@click.option("--algorithm", type=click.Choice(ALGORITHMS), help="Default signing algorithm.")
@click.option("--token-lifetime", type=click.IntRange(min=1), help="Token lifetime in seconds.")
@click.option("--keys-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Directory of <alg>.pem signing keys.  [default: the shipped test keys]")
@click.option("--ephemeral-keys", is_flag=True, default=None,
              help="Generate fresh in-memory signing keys instead of loading any.")
@click.option("-v", "--verbose", is_flag=True, help="Also log every HTTP request.")
def serve(host, port, issuer, config_file, algorithm, token_lifetime, keys_dir, ephemeral_keys,
          verbose) -> None:
    """Run the authorization server (defaults: 127.0.0.1:8000, RS256, demo-client)."""
    from .serving import PortInUseError, bind
    from .settings import load_settings

    overrides = dict(host=host, port=port, issuer=issuer, algorithm=algorithm,
                     token_lifetime=token_lifetime, keys_dir=keys_dir,
                     ephemeral_keys=ephemeral_keys)
    settings = load_settings(config_file, overrides=overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if verbose:
        logging.getLogger("m2mauth.access").setLevel(logging.DEBUG)
    try:
        server, app = bind(settings)
    except PortInUseError as exc:
        click.echo(f"Error: {exc} (choose another with --port, or 0 for any free port)", err=True)
        sys.exit(2)
    except OSError as exc:
        click.echo(f"Error: cannot listen on {settings.host}:{settings.port}: {exc.strerror}",
                   err=True)
        sys.exit(2)
    _banner(app.extensions["m2mauth"].settings, app.extensions["m2mauth"])
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _banner(settings: ServerSettings, state) -> None:
    echo = click.echo
    echo(f"m2mauth authorization server listening on {settings.host}:{settings.port}")
    echo(f"  issuer    {state.issuer}")
    echo(f"  token     {state.token_endpoint}")
    echo(f"  jwks      {state.jwks_uri}")
    echo(f"  metadata  {state.issuer}/.well-known/oauth-authorization-server")
    algs = ", ".join(sorted({c.settings.algorithm or settings.algorithm for c in state.clients}))
    echo(f"  signing   {algs} ({_keys_source(settings)})")
    demo = state.clients.get(DEMO_CLIENT_ID)
    if demo is not None and demo.secret == DEMO_CLIENT_SECRET.encode():
        echo(f"  client    {DEMO_CLIENT_ID} / {DEMO_CLIENT_SECRET}  scopes: "
             f"{' '.join(demo.scopes)}  audience: {' '.join(demo.audiences)}")
        echo("")
        echo(f"  curl -s -u {DEMO_CLIENT_ID}:{DEMO_CLIENT_SECRET} "
             f"-d grant_type=client_credentials {state.token_endpoint}")
    else:
        echo(f"  clients   {', '.join(c.client_id for c in state.clients)}")
    if settings.uses_shipped_keys:
        echo("  note      the shipped keys in keys/ are PUBLIC test keys: never trust these tokens"
             " outside a test")
        if not _is_loopback(settings.host):
            click.secho(
                f"WARNING: listening on {settings.host}, a non-loopback address, while signing "
                "with m2mauth's PUBLIC test keys. Anyone can forge these tokens. Use --keys-dir "
                "or --ephemeral-keys for anything reachable from another machine.",
                err=True, fg="red", bold=True,
            )
    echo("Press Ctrl+C to stop.", err=True)


def _keys_source(settings: ServerSettings) -> str:
    if settings.ephemeral_keys:
        return "ephemeral in-memory keys"
    if settings.keys_dir is not None:
        return f"keys from {settings.keys_dir}"
    return "shipped PUBLIC test keys"


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


if __name__ == "__main__":  # pragma: no cover
    main()
