"""The README's compose snippet, without a container engine (none exists on these machines):
each service's command, environment and health check, read from the README itself, run as
local processes – ``idp`` and ``api`` become loopback addresses on free ports, ``--host
0.0.0.0`` becomes ``127.0.0.1`` – and the caller's output is the demo API's answer."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

README = Path(__file__).resolve().parent.parent / "README.md"
INSTALL = "pip install -q /src/m2mauth && "


def _compose() -> dict:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(x-python:.*?)```", text, re.S)
    assert block, "the README has no compose snippet"
    return yaml.safe_load(block.group(1))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def local():
    """``local(text)``: compose names and ports made loopback ones; ``local.env`` the base
    environment (this venv first on PATH, no M2MAUTH_* of the caller's)."""
    ports = {"idp": _free_port(), "api": _free_port()}

    def localize(text: str) -> str:
        text = text.replace("$$", "$").replace("--host 0.0.0.0", "--host 127.0.0.1")
        text = text.replace("http://idp:8000", f"http://127.0.0.1:{ports['idp']}")
        text = text.replace("http://api:9000", f"http://127.0.0.1:{ports['api']}")
        text = text.replace("127.0.0.1:8000", f"127.0.0.1:{ports['idp']}")
        text = text.replace("--port 8000", f"--port {ports['idp']}")
        return text.replace("--port 9000", f"--port {ports['api']}")

    localize.ports = ports  # type: ignore[attr-defined]
    env = {k: v for k, v in os.environ.items() if not k.startswith("M2MAUTH_")}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    localize.env = env  # type: ignore[attr-defined]
    return localize


def _command(service: dict, local) -> list[str]:
    command = service["command"]
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    assert argv[:2] == ["sh", "-c"] and argv[2].startswith(INSTALL), argv
    # The install is the container's; here the package is this checkout, installed already.
    return ["sh", "-c", local(argv[2].removeprefix(INSTALL))]


def _environment(service: dict, local) -> dict[str, str]:
    return {**local.env, **{k: local(str(v)) for k, v in service.get("environment", {}).items()}}


def _started(process: subprocess.Popen, what: str, max_lines: int = 40) -> None:
    """Wait until ``process`` says it serves: both commands end their start-up with "Press
    Ctrl+C to stop." on stderr, once the port is bound (bounded by lines read)."""
    for _ in range(max_lines):
        line = process.stderr.readline().decode()
        if not line:
            break
        if line.startswith("Press Ctrl+C"):
            return
    pytest.fail(f"{what} never said it serves (exit status {process.poll()})")


def test_the_compose_snippet_runs(local):
    services = _compose()["services"]
    assert set(services) == {"idp", "api", "caller"}
    started: list[subprocess.Popen] = []
    try:
        idp = services["idp"]
        started.append(subprocess.Popen(_command(idp, local), env=_environment(idp, local),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        _started(started[0], "the idp")
        health = [local(part) for part in idp["healthcheck"]["test"]]
        assert health[0] == "CMD"
        checked = subprocess.run(health[1:], env=local.env, capture_output=True, timeout=10)
        assert checked.returncode == 0, checked.stderr

        api = services["api"]
        started.append(subprocess.Popen(_command(api, local), env=_environment(api, local),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        _started(started[1], "the api")

        caller = services["caller"]
        done = subprocess.run(_command(caller, local), env=_environment(caller, local),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert answer["message"] == "hello, orders-service"
        assert "orders-secret" not in done.stdout + done.stderr
    finally:
        for process in started:
            process.terminate()
        for process in started:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
