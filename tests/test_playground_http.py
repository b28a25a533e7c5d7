"""The playground over plain HTTP: the page, its files and texts, its security headers, the
banner line, and the admin guard letting exactly the page's own requests through."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace

import pytest
import requests

from m2mauth.server import ServerSettings, create_app
from m2mauth.server.lab import lessons
from m2mauth.server.serving import BackgroundServer, bind_app

FILES = ("playground.js", "exchange.js", "flow.js", "jwt.js", "lessons.js", "playground.css")


@pytest.fixture
def client():
    return create_app(ServerSettings(host="127.0.0.1")).test_client()


def test_page_is_served_with_strict_headers(client):
    response = client.get("/playground")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    html = response.get_data(as_text=True)
    # No inline script and no inline handlers: every <script> names a file of this origin.
    assert re.findall(r"<script\b[^>]*>", html) == [
        '<script type="module" src="/playground/static/playground.js">']
    assert not re.search(r"\son[a-z]+=", html)
    assert "http://" not in html and "https://" not in html  # nothing from elsewhere
    assert client.get("/playground/").status_code == 200


@pytest.mark.parametrize("name", FILES)
def test_static_files_are_served_from_the_package(client, name):
    response = client.get(f"/playground/static/{name}")
    assert response.status_code == 200, name
    kind = "text/css" if name.endswith(".css") else "text/javascript"
    assert response.mimetype == kind
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    body = response.get_data(as_text=True)
    # Modules import only each other (the browser test checks every request stays on origin).
    assert all(src.startswith("./") for src in re.findall(r'^import .* from "([^"]+)"', body,
                                                            re.M)), name
    assert "eval(" not in body and "innerHTML" not in body


def test_lessons_json_is_lessons_py(client):
    response = client.get("/playground/lessons.json")
    assert response.status_code == 200
    assert response.get_json() == lessons.as_json()
    names = [lesson["name"] for lesson in response.get_json()["lessons"]]
    assert names == ["wrong-secret", "bad-scope", "bad-audience", "expired", "skew", "rotation",
                     "rate-limit", "caching", "insufficient-scope"]
    assert [s["name"] for s in response.get_json()["steps"]] == [
        "discover", "client", "token", "inspect", "call"]


def test_every_lesson_has_a_runner_in_the_page(client):
    script = client.get("/playground/static/lessons.js").get_data(as_text=True)
    table = script[script.index("export const LESSONS"):]
    for lesson in lessons.LESSONS:
        assert re.search(rf'(^|\s)"?{re.escape(lesson["name"])}"?[:,]', table, re.M), lesson


def test_no_playground_without_the_lab():
    client = create_app(ServerSettings(lab=False)).test_client()
    assert client.get("/playground").status_code == 404
    assert client.get("/playground/lessons.json").status_code == 404


def test_banner_names_the_playground(capsys):
    from m2mauth.server.cli import _banner

    _banner(create_app(ServerSettings(port=8000)))
    assert "playground http://127.0.0.1:8000/playground" in capsys.readouterr().out
    _banner(create_app(ServerSettings(port=8000, lab=False)))
    assert "playground" not in capsys.readouterr().out


# -- the admin guard: the page's own requests pass, other pages' do not --------------------

PAGE = {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}


def test_the_pages_same_origin_requests_pass(client):
    assert client.post("/admin/faults", json={"n": 1}, headers=PAGE).status_code == 201
    assert client.delete("/admin/faults", headers=PAGE).status_code == 200
    assert client.get("/admin/clock", headers={"Sec-Fetch-Site": "same-origin"}).status_code == 200
    on_port = {"Host": "127.0.0.1:8000", "Origin": "http://127.0.0.1:8000",
               "Sec-Fetch-Site": "same-origin"}
    assert client.post("/admin/reset", headers=on_port).status_code == 200


def test_the_issuer_host_passes_too():
    client = create_app(ServerSettings(host="127.0.0.1",
                                       issuer="http://idp.test:8000")).test_client()
    headers = {"Host": "idp.test:8000", "Origin": "http://idp.test:8000",
               "Sec-Fetch-Site": "same-origin"}
    assert client.post("/admin/reset", headers=headers).status_code == 200


@pytest.mark.parametrize("headers", [
    # Another site's page.
    {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
    # Another site's page claiming same-origin (a browser never does, but the Origin decides).
    {"Origin": "https://evil.example", "Sec-Fetch-Site": "same-origin"},
    # Another port of this host is another origin (same-site, not same-origin).
    {"Origin": "http://localhost:3000", "Sec-Fetch-Site": "same-site"},
    {"Origin": "http://localhost:3000", "Sec-Fetch-Site": "same-origin"},
    # Our origin but another scheme.
    {"Origin": "https://localhost", "Sec-Fetch-Site": "same-origin"},
    # Our origin without the browser's own verdict.
    {"Origin": "http://localhost"},
    {"Origin": "http://localhost", "Sec-Fetch-Site": "cross-site"},
    {"Origin": "null", "Sec-Fetch-Site": "same-origin"},
    # DNS rebinding: origin and Host agree, and both are the attacker's name.
    {"Host": "evil.example:8000", "Origin": "http://evil.example:8000",
     "Sec-Fetch-Site": "same-origin"},
    {"Host": "evil.example", "Sec-Fetch-Site": "same-origin"},
])
def test_other_pages_stay_refused(client, headers):
    app_state = client.application.extensions["m2mauth_lab"].controls
    keys_before = app_state.keys()
    for method, path in (("post", "/admin/faults"), ("post", "/admin/keys/rotate"),
                         ("post", "/admin/clock"), ("get", "/admin/clients")):
        response = getattr(client, method)(path, json={} if method == "post" else None,
                                           headers=headers)
        assert response.status_code == 403, (path, headers)
        assert response.get_json()["error"] == "access_denied"
    assert app_state.faults() == []
    assert app_state.keys() == keys_before


@pytest.fixture
def served() -> Iterator[str]:
    server, _ = bind_app("127.0.0.1", 0, lambda port: create_app(
        replace(ServerSettings(), port=port)))
    with BackgroundServer(server) as running:
        yield running.url


def test_guard_over_real_http(served):
    page = {"Origin": served, "Sec-Fetch-Site": "same-origin"}
    ok = requests.post(served + "/admin/clock", json={"advance": 0}, headers=page, timeout=5)
    assert ok.status_code == 200, ok.text
    rebound = requests.post(served + "/admin/clock", json={"advance": 0}, timeout=5, headers={
        "Host": "rebound.example", "Origin": "http://rebound.example",
        "Sec-Fetch-Site": "same-origin"})
    assert rebound.status_code == 403
    elsewhere = requests.post(served + "/admin/clock", json={"advance": 0}, timeout=5,
                              headers={"Origin": "http://127.0.0.1:1", "Sec-Fetch-Site":
                                       "same-site"})
    assert elsewhere.status_code == 403
    page_ = requests.get(served + "/playground", timeout=5)
    assert page_.status_code == 200 and "data-step=\"discover\"" in page_.text
