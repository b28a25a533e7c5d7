"""`m2mauth walkthrough`: real subprocesses against an issuer started in-process and against
a `m2mauth serve` subprocess; what each run prints, what it checks, and how it fails."""

import io
import os
import re
import socket
import subprocess
import sys

import pytest
import requests

from m2mauth.server.lab import lessons
from m2mauth.server.lab.walkthrough import NAMES, WalkthroughError, run
from m2mauth.server.lab.walkthrough.lessons import LESSON_RUNS
from m2mauth.server.lab.walkthrough.output import Output, wants_colour
from m2mauth.server.lab.walkthrough.steps import STEP_RUNS

#: A whole JWT (three base64url segments): never to be printed.
_WHOLE_JWT = re.compile(r"eyJ[\w-]{10,}\.[\w-]{10,}\.[\w-]{10,}")
_ANSI = "\x1b["


def _walkthrough(*args: str, env: dict[str, str] | None = None,
                 timeout: float = 120) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("M2MAUTH_")}
    clean.pop("NO_COLOR", None)
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "m2mauth.server.cli", "walkthrough", *args],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, env=clean)


def _admin(issuer: str, method: str, path: str, body=None, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = requests.request(method, f"{issuer}/admin{path}", json=body, headers=headers,
                                timeout=5)
    assert response.ok, response.text
    return response.json()


def _assert_names_everything(text: str) -> None:
    for number, step in enumerate(lessons.STEPS, 1):
        assert f"step {number}/5: {step['name']} - {step['title']}" in text
        assert f"[ok] step {step['name']} behaved as taught" in text
    for number, lesson in enumerate(lessons.LESSONS, 1):
        assert f"lesson {number}/9: {lesson['name']} - {lesson['title']}" in text
        assert f"[ok] lesson {lesson['name']} behaved as taught" in text


def test_every_step_and_lesson_of_lessons_py_is_walked():
    assert set(STEP_RUNS) == {s["name"] for s in lessons.STEPS}
    assert set(LESSON_RUNS) == {x["name"] for x in lessons.LESSONS}
    in_order = [s["name"] for s in lessons.STEPS] + [x["name"] for x in lessons.LESSONS]
    assert list(NAMES) == in_order


def test_in_process_walkthrough_exits_0_names_everything_plain_and_masked():
    done = _walkthrough("--no-pause")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    text = done.stdout
    _assert_names_everything(text)
    assert "All 14 behaved as taught" in text
    assert _ANSI not in text and _ANSI not in done.stderr  # not a terminal: plain
    assert "Traceback" not in done.stderr
    # Each exchange in full: method and URL, request headers and body, status, headers, body.
    assert re.search(r"> POST http://127\.0\.0\.1:\d+/token\n", text)
    assert "> Authorization: Basic ZGVtby1jbGllbnQ6ZGVtby1zZWNyZXQ=" in text
    assert '(base64 of "demo-client:demo-secret"' in text
    assert "> grant_type=client_credentials&scope=read" in text
    assert "< Cache-Control: no-store" in text
    assert 'error="insufficient_scope"' in text and 'scope="read"' in text
    # The lessons' texts, from lessons.py.
    for lesson in lessons.LESSONS:
        assert lesson["fix"].split()[0] in text
    assert "token requests (the tutorial's cache, TokenProvider): (5, 1)" in text
    # Tokens are credentials: shown shortened, never whole.
    assert "not shown in full" in text
    assert not _WHOLE_JWT.search(text)


def test_against_a_serve_subprocess_with_a_registered_client(cli_process):
    server = cli_process("serve", "--port", "0")
    issuer = server.field("issuer")
    before = _admin(issuer, "GET", "/clients")["clients"]
    # No --no-pause: stdin is not a terminal, so it must not wait.
    done = _walkthrough("--issuer", issuer, "--register-client")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    text = done.stdout
    _assert_names_everything(text)
    assert f"m2mauth walkthrough against {issuer}" in text
    assert "press any key" not in text
    registered = re.search(r"registered (client-[0-9a-f]+)", text).group(1)
    assert '"client_secret": "<not shown>"' in text
    assert f'(base64 of "{registered}:<secret, not shown>")' in text
    assert not _WHOLE_JWT.search(text)
    # The issuer as it was: the client removed, no faults, the clock back.
    assert _admin(issuer, "GET", "/clients")["clients"] == before
    assert _admin(issuer, "GET", "/faults")["faults"] == []
    clock = _admin(issuer, "GET", "/clock")
    assert clock["offset"] == 0 and clock["frozen"] is False


def test_a_fault_makes_the_token_step_fail_by_name(cli_process):
    issuer = cli_process("serve", "--port", "0").field("issuer")
    # Two: the client step tries the secret first (a 503 does not refuse it).
    _admin(issuer, "POST", "/faults", {"endpoint": "token", "status": 503, "n": 2})
    done = _walkthrough("--issuer", issuer, "--only", "token")
    assert done.returncode == 1
    assert "walkthrough: step token did not behave as taught: expected HTTP 200, got 503" \
        in done.stderr
    assert "[FAILED] step token" in done.stdout
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("lifetime", ["60", "900"])
def test_the_skew_lesson_follows_the_servers_token_lifetime(cli_process, lifetime):
    issuer = cli_process("serve", "--port", "0", "--token-lifetime", lifetime).field("issuer")
    done = _walkthrough("--issuer", issuer, "--only", "skew")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    far = int(lifetime) + lessons.DEMO_LEEWAY + lessons.SKEW_BEYOND_LIFETIME
    assert f"server {far} s behind the API (leeway 30 s): HTTP 401" in done.stdout
    assert _admin(issuer, "GET", "/clock")["offset"] == 0


def test_a_jwks_fault_makes_the_skew_lesson_fail_by_name_and_the_clock_is_restored(
        cli_process):
    issuer = cli_process("serve", "--port", "0").field("issuer")
    # The demo API cannot get the keys: the first token, 20 s ahead, is refused.
    _admin(issuer, "POST", "/faults", {"endpoint": "jwks", "status": 503, "n": 50})
    done = _walkthrough("--issuer", issuer, "--only", "skew")
    assert done.returncode == 1
    assert "lesson skew did not behave as taught: expected server 20 s ahead of the API " \
        "(leeway 30 s): HTTP 200, got" in done.stderr
    assert "Traceback" not in done.stderr
    assert _admin(issuer, "GET", "/clock")["offset"] == 0  # restored even so


def test_rotation_reruns_at_once_then_the_whole_walkthrough(cli_process):
    issuer = cli_process("serve", "--port", "0").field("issuer")
    for _ in range(2):
        done = _walkthrough("--issuer", issuer, "--only", "rotation")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr
        assert "moving the server's clock" not in done.stdout
    done = _walkthrough("--issuer", issuer, "--no-pause")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    assert _admin(issuer, "GET", "/clock")["offset"] == 0


_OTHER_SECRET = "svc-secret-0123456789abcdef"


def _serve_with(cli_process, tmp_path, client_id: str):
    config = tmp_path / "m2mauth.toml"
    config.write_text(f"""[[clients]]
client_id = "{client_id}"
client_secret = "{_OTHER_SECRET}"
scopes = ["read", "write"]
""", encoding="utf-8")
    # The banner names the clients (it shows a client and curl only for the demo secret).
    return cli_process("serve", "--port", "0", "--config", str(config),
                       until="clients").field("issuer")


_WHAT_TO_PASS = ("pass --client-id and --client-secret (or M2MAUTH_CLIENT_SECRET) of a "
                 "registered client, or --register-client")


@pytest.mark.parametrize("only", [None, "token", "caching", "rotation"])
def test_no_demo_client_is_one_line_naming_step_client(cli_process, tmp_path, only):
    issuer = _serve_with(cli_process, tmp_path, "svc")
    done = _walkthrough("--issuer", issuer, *(["--only", only] if only else ["--no-pause"]))
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr
    assert done.stderr.strip().splitlines() == [
        "walkthrough: step client did not behave as taught: no client demo-client is "
        f"registered at {issuer}: {_WHAT_TO_PASS}"]
    assert "Traceback" not in done.stdout


def test_no_demo_client_another_client_by_option_or_registered(cli_process, tmp_path):
    issuer = _serve_with(cli_process, tmp_path, "svc")
    given = _walkthrough("--issuer", issuer, "--no-pause", "--client-id", "svc",
                         env={"M2MAUTH_CLIENT_SECRET": _OTHER_SECRET})
    assert given.returncode == 0, given.stdout[-3000:] + given.stderr
    _assert_names_everything(given.stdout)
    assert "sub svc" in given.stdout
    assert '(base64 of "svc:<secret, not shown>")' in given.stdout
    assert _OTHER_SECRET not in given.stdout + given.stderr
    nosecret = _walkthrough("--issuer", issuer, "--only", "caching", "--client-id", "svc")
    assert nosecret.returncode == 1
    assert nosecret.stderr.strip().splitlines() == [
        "walkthrough: step client did not behave as taught: no secret for svc: pass "
        "--client-secret (or M2MAUTH_CLIENT_SECRET), or --register-client"]
    for only in (["--only", "caching"], ["--no-pause"]):
        registered = _walkthrough("--issuer", issuer, "--register-client", *only)
        assert registered.returncode == 0, registered.stdout[-3000:] + registered.stderr
        assert re.search(r"sub client-[0-9a-f]+|\[ok\] lesson caching", registered.stdout)
    assert [c["client_id"] for c in _admin(issuer, "GET", "/clients")["clients"]] == ["svc"]


def test_demo_client_with_another_secret(cli_process, tmp_path):
    issuer = _serve_with(cli_process, tmp_path, "demo-client")
    for only in (["--no-pause"], ["--only", "caching"]):
        done = _walkthrough("--issuer", issuer, *only)
        assert done.returncode == 1, done.stdout[-3000:] + done.stderr
        assert done.stderr.strip().splitlines() == [
            "walkthrough: step client did not behave as taught: the server refused the "
            "secret given for demo-client (HTTP 401 invalid_client): pass its --client-secret "
            "(or M2MAUTH_CLIENT_SECRET), or --register-client"]
    done = _walkthrough("--issuer", issuer, "--no-pause", "--client-secret", _OTHER_SECRET)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    _assert_names_everything(done.stdout)
    assert _OTHER_SECRET not in done.stdout + done.stderr
    assert "demo-secret" not in done.stdout


def test_the_tutorial_provider_checks_its_answer():
    from m2mauth.server.lab.walkthrough.checks import Misbehaved
    from m2mauth.server.lab.walkthrough.lessons import TutorialTokenProvider

    refused = requests.Response()
    refused.status_code = 401
    refused._content = b'{"error": "invalid_client"}'
    refused.request = requests.Request("POST", "http://127.0.0.1/token").prepare()

    class _Walk:
        def request_token(self):
            return refused

    with pytest.raises(Misbehaved, match=r"expected a token .* got HTTP 401 invalid_client"):
        TutorialTokenProvider(_Walk()).get_token()


def test_the_lab_off_is_one_line_and_exit_2(cli_process):
    issuer = cli_process("serve", "--port", "0", "--no-lab").field("issuer")
    done = _walkthrough("--issuer", issuer, "--no-pause")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"Error: {issuer} has no admin API (/admin answers 404): the walkthrough needs the "
        "lab (m2mauth serve without --no-lab)"]


def test_an_unreachable_issuer_is_one_line_and_exit_2():
    with socket.socket() as sock:  # a loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = _walkthrough("--issuer", f"http://127.0.0.1:{port}", "--timeout", "5")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"Error: cannot reach its RFC 8414 metadata at http://127.0.0.1:{port}/.well-known/")


def test_an_admin_token_is_needed_used_and_never_printed(cli_process):
    token = "walkthrough-admin-token-0123456789"
    issuer = cli_process("serve", "--port", "0", "--admin-token", token).field("issuer")
    refused = _walkthrough("--issuer", issuer)
    assert refused.returncode == 2
    assert "needs its admin token: --admin-token" in refused.stderr
    done = _walkthrough("--issuer", issuer, "--only", "expired", env={
        "M2MAUTH_ADMIN_TOKEN": token})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Bearer (the admin token, not shown)" in done.stdout
    assert token not in done.stdout + done.stderr


def test_only_takes_the_names_and_a_wrong_one_is_a_usage_error():
    from click.testing import CliRunner

    from m2mauth.server.cli import main

    shown = " ".join(CliRunner().invoke(main, ["walkthrough", "-h"]).output.split())
    assert all(name in shown for name in NAMES)
    done = _walkthrough("--only", "nope")
    assert done.returncode == 2
    assert "Invalid value for '--only'" in done.stderr
    with pytest.raises(WalkthroughError, match="no step or lesson 'nope'"):
        run(only="nope")


def test_only_a_later_step_gets_its_token_first():
    out = io.StringIO()
    assert run(only="call", pause=False, out=Output(out)) == 0
    text = out.getvalue()
    assert "(first a token from the token endpoint, as in step token)" in text
    assert "[ok] step call behaved as taught" in text and "step 1/5" not in text


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_on_a_terminal_unless_no_color(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert wants_colour(_Terminal()) and not wants_colour(io.StringIO())
    out = _Terminal()
    assert run(only="bad-scope", pause=False, out=Output(out)) == 0
    assert _ANSI in out.getvalue()
    monkeypatch.setenv("NO_COLOR", "1")
    assert not wants_colour(_Terminal())
    plain = _Terminal()
    assert run(only="bad-scope", pause=False, out=Output(plain)) == 0
    assert _ANSI not in plain.getvalue() and "[ok] lesson bad-scope" in plain.getvalue()


def test_only_the_walkthrough_of_the_lab_imports_the_client_side():
    import ast
    from pathlib import Path

    lab = Path(lessons.__file__).parent
    importers = set()
    for path in lab.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "m2mauth.client" or n.startswith("m2mauth.client.") for n in names):
                importers.add(path.relative_to(lab).parts[0])
    assert importers == {"walkthrough"}
