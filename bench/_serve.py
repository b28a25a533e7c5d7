"""What the benchmarks that run `m2mauth serve` share: starting it on a free port in a process
of its own (without the caller's M2MAUTH_* variables), and reading that process's RSS."""

from __future__ import annotations

import os
import subprocess
import sys


def start_serve(*args: str) -> tuple[subprocess.Popen, str]:
    """`m2mauth serve --port 0 ARGS`, and the issuer URL its banner prints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("M2MAUTH_")}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "m2mauth.server.cli", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )
    for _ in range(30):  # bounded: the banner is a dozen lines
        line = proc.stdout.readline()
        if line.strip().startswith("issuer"):
            return proc, line.split()[-1]
    proc.kill()
    raise RuntimeError("m2mauth serve printed no issuer")


def rss_mb(pid: int) -> float:
    """The resident set size of process ``pid``, in MB (Linux /proc)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")
