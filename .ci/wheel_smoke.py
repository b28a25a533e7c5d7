"""Smoke test of an installed wheel: `m2mauth serve` on a free port issues a token that
verifies against its JWKS and serves the lab's admin API; the shipped keys, the lab and its
pytest plugin are inside the installed package."""

import base64
import importlib.util
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

cli = sys.argv[1]
import m2mauth.server  # noqa: E402  (the installed package, not a source tree)

# The pytest11 entry point's module (not imported: this venv has no pytest).
assert importlib.util.find_spec("m2mauth.server.lab.pytest_plugin"), "no pytest plugin"

installed = Path(m2mauth.server.__file__).resolve()
assert "site-packages" in str(installed), f"not testing the wheel: {installed}"
keys = Path(m2mauth.server.__file__).parent.parent / "_keys"
assert sorted(p.name for p in keys.glob("*.pem")) == [
    "eddsa.pem", "es256.pem", "ps256.pem", "rs256.pem"
], list(keys.iterdir())

env = {**os.environ, "PYTHONUNBUFFERED": "1"}
proc = subprocess.Popen([cli, "serve", "--port", "0"], stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True, env=env)
try:
    token_url = signing = None
    for _ in range(50):  # bounded: the banner is a dozen lines
        line = proc.stdout.readline()
        if not line:
            break
        if line.strip().startswith("token "):
            token_url = line.split()[-1]
        if line.strip().startswith("signing "):
            signing = line.strip()
        if line.strip().startswith("curl "):
            break
    assert token_url, "serve printed no token endpoint"
    # The banner names where the keys really are: the installed package, not a keys/ tree.
    assert signing and str(keys.resolve()) in signing, signing
    req = urllib.request.Request(
        token_url, data=b"grant_type=client_credentials",
        headers={"Authorization": "Basic " + base64.b64encode(b"demo-client:demo-secret").decode(),
                 "Content-Type": "application/x-www-form-urlencoded"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        body = json.load(resp)
    import jwt

    jwks_url = token_url.rsplit("/", 1)[0] + "/jwks.json"
    key = jwt.PyJWKClient(jwks_url).get_signing_key_from_jwt(body["access_token"])
    claims = jwt.decode(body["access_token"], key, algorithms=["RS256"],
                        audience="api://default")
    with urllib.request.urlopen(token_url.rsplit("/", 1)[0] + "/admin", timeout=10) as resp:
        assert resp.status == 200 and json.load(resp)["operations"], "no admin API"
    # The playground's files come from the installed package (package data), not a tree.
    base = token_url.rsplit("/", 1)[0]
    assert (Path(m2mauth.server.__file__).parent / "lab" / "web" / "playground.js").is_file()
    with urllib.request.urlopen(base + "/playground", timeout=10) as resp:
        page = resp.read().decode()
        assert resp.status == 200 and 'data-step="discover"' in page, "no playground page"
        assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    for name in ("playground.js", "exchange.js", "flow.js", "jwt.js", "lessons.js",
                 "playground.css"):
        with urllib.request.urlopen(f"{base}/playground/static/{name}", timeout=10) as resp:
            assert resp.status == 200 and resp.read(), name
    with urllib.request.urlopen(base + "/playground/lessons.json", timeout=10) as resp:
        assert len(json.load(resp)["lessons"]) == 9
    print(f"wheel smoke test: token for {claims['sub']} with scope {claims['scope']!r}, "
          "admin API and playground OK")
finally:
    proc.terminate()
    proc.wait(timeout=10)
