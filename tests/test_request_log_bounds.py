"""The request log is bounded in bytes, not only in entries: what a record keeps of caller
input is cut, and each log has a byte budget (issue 9 item 1: unauthenticated 64 KB bodies
of resource= values took the server from 43 MB to 3.5 GB)."""

from __future__ import annotations

import json
from dataclasses import asdict

import requests

from m2mauth.server.store import MemoryStore
from m2mauth.server.token_request import MAX_KEPT_CHARS, MAX_KEPT_RESOURCES

FORM = "application/x-www-form-urlencoded"


def _hostile_body(limit: int) -> str:
    """About ``limit`` bytes of resource= values and a long scope, no credentials."""
    body = "grant_type=client_credentials&scope=" + "s" * 2000
    while len(body) < limit - 1100:
        body += "&resource=https://x.test/" + "r" * 1000
    return body


def test_a_hostile_request_leaves_a_small_record(idp):
    body = _hostile_body(idp.settings.max_body_bytes)
    r = requests.post(idp.token_endpoint, data=body, headers={"Content-Type": FORM}, timeout=5)
    assert r.status_code in (400, 401)
    [entry] = idp.token_requests
    assert len(entry.resource) == MAX_KEPT_RESOURCES + 1  # the kept ones and a count
    assert entry.resource[-1].endswith("more)")
    assert all(len(v) <= MAX_KEPT_CHARS + 20 for v in entry.resource)
    assert entry.scope.startswith("s" * MAX_KEPT_CHARS) and entry.scope.endswith("(2000 chars)")
    assert len(json.dumps(asdict(entry))) < 6000  # from a 64 KiB request


def test_the_admin_view_of_the_log_stays_small(idp):
    body = _hostile_body(idp.settings.max_body_bytes)
    with requests.Session() as http:
        for _ in range(30):
            http.post(idp.token_endpoint, data=body, headers={"Content-Type": FORM}, timeout=5)
        listed = http.get(idp.admin_url + "/requests/token", timeout=5)
    assert len(listed.json()["requests"]) == 30
    assert len(listed.content) < 30 * 6000  # 30 requests of 64 KiB: under 180 KB, not 1.9 MB


def test_each_log_keeps_a_byte_budget():
    store = MemoryStore(max_records=1000, max_record_bytes=20_000)
    for i in range(100):
        store.append_record("token", {"n": i, "scope": "x" * 1000})
    kept = store.records("token")
    assert 15 <= len(kept) <= 20  # about 1 KB each in 20 KB
    assert kept[-1]["n"] == 99 and [r["n"] for r in kept] == sorted(r["n"] for r in kept)
    store.append_record("jwks", {"n": 0})  # another log has a budget of its own
    assert store.records("jwks") == [{"n": 0}] and len(store.records("token")) == len(kept)


def test_a_record_larger_than_the_budget_is_not_kept():
    store = MemoryStore(max_record_bytes=1000)
    store.append_record("token", {"scope": "x" * 5000})
    assert store.records("token") == []
