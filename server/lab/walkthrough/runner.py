"""Running the walkthrough: the issuer (one started in this process, or a running
``m2mauth serve``), the checks that it can be walked at all (bad input: one line, exit 2),
then the steps and lessons in order, a pause between them, and the verdict."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import time
from collections.abc import Callable, Iterator
from typing import Any

import click
import requests

from m2mauth.client.errors import OAuthError, root_cause

from ...settings import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET
from ..admin import ADMIN_PREFIX
from ..lessons import LESSONS, STEPS
from .checks import Misbehaved
from .context import METADATA_PATH, Walk
from .lessons import LESSON_RUNS, WRONG_SECRET
from .output import Output
from .steps import STEP_RUNS
from .wire import Wire

__all__ = ["NAMES", "WalkthroughError", "run"]

#: Every step and lesson, in the order they run (``--only`` takes one of them).
NAMES: tuple[str, ...] = tuple(s["name"] for s in STEPS) + tuple(x["name"] for x in LESSONS)
#: Steps that need the token step's token (``--only`` gets one first, quietly).
_NEED_TOKEN = frozenset({"inspect", "call"})


class WalkthroughError(Exception):
    """The walkthrough cannot start: the issuer is unreachable, not m2mauth, or has no lab."""


@contextlib.contextmanager
def in_process_issuer() -> Iterator[str]:
    """An issuer on a free loopback port, built-in defaults and the lab on, answering from a
    thread of this process until the block ends; yields its URL."""
    from ... import create_app
    from ...serving import BackgroundServer, bind_app
    from ...settings import ServerSettings

    # Defaults as such, not the M2MAUTH_* environment: the walkthrough teaches those.
    settings = ServerSettings(host="127.0.0.1", port=0, lab=True)
    server, app = bind_app("127.0.0.1", 0, lambda port: create_app(
        dataclasses.replace(settings, port=port)))
    with BackgroundServer(server):
        yield app.extensions["m2mauth"].issuer


def run(issuer: str | None = None, *, admin_token: str | None = None,
        only: str | None = None, pause: bool = True, register: bool = False,
        client_id: str | None = None, client_secret: str | None = None,
        out: Output | None = None, sleep: Callable[[float], None] = time.sleep,
        timeout: float = 10.0) -> int:
    """Walk the steps and lessons (or ``only`` one) against ``issuer`` (None: one started
    here), as ``client_id`` (default demo-client) with ``client_secret`` (default: the demo
    secret, for demo-client only; never printed when given) or as a client registered in the
    client step (``register``). Returns the exit code: 0 when every one behaved as taught,
    1 otherwise; :class:`WalkthroughError` when it cannot start."""
    if only is not None and only not in NAMES:
        raise WalkthroughError(f"no step or lesson {only!r} (choose from {', '.join(NAMES)})")
    out = out or Output()
    client = _Client(client_id or DEMO_CLIENT_ID, client_secret)
    if issuer is None:
        with in_process_issuer() as url:
            return _run(url, None, only, pause, register, client, out, sleep, timeout)
    return _run(issuer.rstrip("/"), admin_token, only, pause, register, client, out, sleep,
                timeout)


@dataclasses.dataclass(frozen=True)
class _Client:
    client_id: str
    #: As given; None: the demo secret for demo-client, none for another.
    secret: str | None

    @property
    def demo_default(self) -> bool:
        return self.secret is None and self.client_id == DEMO_CLIENT_ID


def _run(issuer: str, admin_token: str | None, only: str | None, pause: bool,
         register: bool, client: _Client, out: Output, sleep: Callable[[float], None],
         timeout: float) -> int:
    # Only the published demo secret, used by default, and the lesson's made-up one are shown.
    public = {WRONG_SECRET} | ({DEMO_CLIENT_SECRET} if client.demo_default else set())
    wire = Wire(out, public_secrets=public, admin_token=admin_token,
                admin_prefix=issuer + ADMIN_PREFIX, timeout=timeout)
    walk = Walk(out, wire, issuer, client_id=client.client_id,
                client_secret=DEMO_CLIENT_SECRET if client.demo_default else client.secret,
                register=register, sleep=sleep)
    with wire:
        _preflight(walk, admin_token)
        out.line(f"m2mauth walkthrough against {issuer}", bold=True)
        out.line("Every request and response below is real HTTP to that server.", dim=True)
        failures: list[str] = []
        try:
            _walk(walk, only, pause, failures)
        finally:
            for cleanup in reversed(walk.cleanups):
                with contextlib.suppress(Misbehaved, requests.RequestException), \
                        wire.printing("brief"):
                    cleanup()
    out.line()
    if failures:
        for failure in failures:
            click.echo(f"walkthrough: {failure}", err=True)
        return 1
    ran = [only] if only else NAMES
    out.line(f"All {len(ran)} behaved as taught: "
             f"{', '.join(ran)}.", fg="green", bold=True)
    return 0


def _walk(walk: Walk, only: str | None, pause: bool, failures: list[str]) -> None:
    out = walk.out
    first = True
    for kind, texts, runs in (("step", STEPS, STEP_RUNS), ("lesson", LESSONS, LESSON_RUNS)):
        for number, text in enumerate(texts, 1):
            name = text["name"]
            if only is not None and name != only:
                continue
            if pause and not first:
                # click.pause does nothing unless stdin and stdout are terminals.
                click.pause(click.style("(press any key for the next one, Ctrl+C to stop)",
                                        dim=True) if out.colour else
                            "(press any key for the next one, Ctrl+C to stop)")
            first = False
            if only is not None and _after_client(name) and not walk.client_settled:
                problem = _settle_client(walk)
                if problem is not None:
                    out.failed(f"step client: {problem}")
                    failures.append(f"step client did not behave as taught: {problem}")
                    return
            out.heading(kind, number, len(texts), name, text["title"])
            _teach_before(out, text)
            problem = _attempt(walk, name, runs[name], only)
            _teach_after(out, text)
            if problem is None:
                out.ok(f"{kind} {name} behaved as taught")
            else:
                out.failed(f"{kind} {name}: {problem}")
                failures.append(f"{kind} {name} did not behave as taught: {problem}")
                if name == "client":
                    out.line("(the rest needs a client: not run)", dim=True)
                    return


def _after_client(name: str) -> bool:
    return NAMES.index(name) > NAMES.index("client")


def _settle_client(walk: Walk) -> str | None:
    """``--only`` a later one: the client step first, not printed (it settles the client, and
    registers one with --register-client)."""
    walk.out.detail("  (first the client, as in step client)")
    out = walk.out
    walk.out = Output(io.StringIO(), colour=False)
    try:
        with walk.wire.printing("quiet"):
            return _attempt(walk, "client", STEP_RUNS["client"], None)
    finally:
        walk.out = out


def _attempt(walk: Walk, name: str, step: Callable[[Walk], None],
             only: str | None) -> str | None:
    """Run one step or lesson; None when it behaved as taught, else what went wrong."""
    try:
        if only is not None and name in _NEED_TOKEN and walk.token is None:
            walk.out.detail("  (first a token from the token endpoint, as in step token)")
            with walk.wire.printing("quiet"):
                walk.token = walk.get_token()
        step(walk)
    except Misbehaved as exc:
        return str(exc)
    except requests.RequestException as exc:
        return f"no answer from the server: {root_cause(exc)}"
    except OAuthError as exc:  # m2mauth.client's TokenProvider, refused
        return f"the token endpoint refused m2mauth.client's TokenProvider: {exc}"
    return None


def _teach_before(out: Output, text: dict[str, str]) -> None:
    if "text" in text:
        out.prose(text["text"])
    else:
        out.prose(text["does"], "does")


def _teach_after(out: Output, text: dict[str, str]) -> None:
    if "shows" not in text:
        return
    out.line()
    for label in ("shows", "why", "fix"):
        out.prose(text[label], label)


# -- can it be walked at all? ------------------------------------------------------------------

def _preflight(walk: Walk, admin_token: str | None) -> None:
    """The metadata, the admin API and the demo API are there, or one clear sentence."""
    issuer, wire = walk.issuer, walk.wire
    with wire.printing("quiet"):
        metadata = _get_json(wire, issuer + METADATA_PATH, "its RFC 8414 metadata")
        named = metadata.get("issuer")
        if named != issuer:
            raise WalkthroughError(f"{issuer}{METADATA_PATH} names the issuer {named!r}: "
                                   f"give exactly that as --issuer")
        for field in ("token_endpoint", "jwks_uri"):
            if not isinstance(metadata.get(field), str):
                raise WalkthroughError(f"the metadata of {issuer} has no {field}")
        walk.metadata = metadata
        admin = _get(wire, walk.admin_url, "its admin API")
        if admin.status_code == 404:
            raise WalkthroughError(f"{issuer} has no admin API ({ADMIN_PREFIX} answers 404): "
                                   "the walkthrough needs the lab (m2mauth serve without "
                                   "--no-lab)")
        if admin.status_code == 401:
            raise WalkthroughError(
                f"the admin API of {issuer} " + ("refused the admin token given"
                                                 if admin_token else
                                                 "needs its admin token: --admin-token"))
        if admin.status_code != 200:
            raise WalkthroughError(f"the admin API of {issuer} answered HTTP "
                                   f"{admin.status_code}: {_description(admin)}")
        demo = _get(wire, walk.demo_url, "its demo API")
        if demo.status_code == 404:
            raise WalkthroughError(f"{issuer} serves no demo API at {walk.demo_url}")


def _get(wire: Wire, url: str, what: str) -> requests.Response:
    try:
        return wire.get(url)
    except requests.RequestException as exc:
        raise WalkthroughError(f"cannot reach {what} at {url}: {root_cause(exc)}") from None


def _get_json(wire: Wire, url: str, what: str) -> dict[str, Any]:
    response = _get(wire, url, what)
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200 or not isinstance(body, dict):
        raise WalkthroughError(f"{url} answered HTTP {response.status_code}, not {what}: "
                               "is it an m2mauth issuer?")
    return body


def _description(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.reason or "no reason given"
    text = body.get("error_description") if isinstance(body, dict) else None
    return text if isinstance(text, str) else response.reason or "no reason given"
