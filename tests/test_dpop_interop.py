"""DPoP with a third-party client: npm's openid-client 6 (over node) gets a DPoP-bound token
from m2mauth's server (``create_app`` with the lab: the demo API is at ``/demo``) and calls
``/demo/hello`` with it, on loopback. openid-client comes from the ``openid_client`` fixture
(conftest.py: installed once per session, skipped saying why without node 20+ and npm)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _dpop_support import serving_m2mauth

NODE_TIMEOUT = 60

#: ES modules resolve packages from a node_modules above the script, so it lives next to it.
SCRIPT = """\
import * as client from 'openid-client';
import * as jose from 'jose';

const [issuer, clientId, clientSecret, api] = process.argv.slice(2);
const config = await client.discovery(new URL(issuer), clientId, clientSecret, undefined,
                                      { execute: [client.allowInsecureRequests] });
const keyPair = await client.randomDPoPKeyPair();
const DPoP = client.getDPoPHandle(config, keyPair);
const tokens = await client.clientCredentialsGrant(config, { scope: 'read' }, { DPoP });
const response = await client.fetchProtectedResource(
  config, tokens.access_token, new URL(api), 'GET', undefined, undefined, { DPoP });
const payload = jose.decodeJwt(tokens.access_token);
// The token itself is not printed: only what the test checks.
console.log(JSON.stringify({
  token_type: tokens.token_type,
  cnf: payload.cnf ?? null,
  thumbprint: await jose.calculateJwkThumbprint(await jose.exportJWK(keyPair.publicKey)),
  status: response.status,
  body: await response.json(),
}));
"""


@pytest.fixture
def served() -> Iterator[tuple[str, Any]]:
    """``m2mauth serve``'s app (the lab on, the demo API at /demo) on a free loopback port."""
    with serving_m2mauth() as served:
        yield served


def run_node(openid_client: Path, *args: str) -> dict[str, Any]:
    script = openid_client / "dpop-interop.mjs"
    script.write_text(SCRIPT)
    try:
        done = subprocess.run(["node", str(script), *args], cwd=openid_client, capture_output=True,
                              text=True, timeout=NODE_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the node client did not finish within {NODE_TIMEOUT} s")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("nonces", [False, True], ids=["no-nonce", "server-nonce"])
def test_openid_client_gets_a_dpop_token_and_calls_the_demo_api(openid_client, served, nonces):
    url, controls = served
    if nonces:
        controls.require_dpop_nonce()
    client = controls.add_client("node-dpop-client", scopes=["read"])
    result = run_node(openid_client, url, client.client_id, client.client_secret,
                      url + "/demo/hello")
    assert result["token_type"].lower() == "dpop"
    assert result["cnf"] == {"jkt": result["thumbprint"]}
    assert result["status"] == 200, result["body"]
    assert result["body"]["jkt"] == result["thumbprint"]
    assert result["body"]["client_id"] == "node-dpop-client"
    outcomes = [r.outcome for r in controls.token_requests]
    assert outcomes == (["use_dpop_nonce", "issued"] if nonces else ["issued"])
    assert controls.token_requests[-1].dpop_jkt == result["thumbprint"]
