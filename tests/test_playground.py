"""The playground in a real browser: headless Chromium (Debian's ``chromium``, driven by
Playwright through ``executable_path``; never ``playwright install``) against the real server
on a loopback port. Clicks through the five steps and the nine lessons and checks what the
page shows; every wait is a bounded Playwright timeout."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace

import pytest

from m2mauth.server import create_app
from m2mauth.server.serving import BackgroundServer, bind_app
from m2mauth.server.settings import ClientSettings, ServerSettings

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                "(apt-get install -y chromium; .ci/run installs it)")

STEPS = ("discover", "client", "token", "inspect", "call")
#: lesson -> what its outcome line must say
LESSONS = {
    "wrong-secret": ["401 invalid_client", "WWW-Authenticate: Basic"],
    "bad-scope": ["400 invalid_scope"],
    "bad-audience": ["token endpoint 400 invalid_target", "the API 401 invalid_token"],
    "expired": ["200 at first", "401", "expired", "with a new token 200"],
    "skew": ["20 s ahead of: 200", "120 s ahead of: 401", "20 s behind: 200",
             "400 s behind: 401"],
    "rotation": [": 200; old kid", ": 401 invalid_token"],
    "rate-limit": ["429 temporarily_unavailable with Retry-After: 1", "after 1 s: 200"],
    "caching": ["without a cache: 5 token requests; with a cache: 1"],
    "insufficient-scope": ["403 insufficient_scope", 'scope="read"'],
}
TIMEOUT = 15_000  # ms, for one step or lesson (rate-limit waits its Retry-After of 1 s)


def _serve(settings: ServerSettings) -> tuple[BackgroundServer, object]:
    server, app = bind_app("127.0.0.1", 0, lambda port: create_app(replace(settings, port=port)))
    return BackgroundServer(server), app


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, object]]:
    running, app = _serve(ServerSettings())
    with running:
        yield running.url, app.extensions["m2mauth_lab"].controls


class Page:
    """One tab on the playground, recording console messages, page errors and requests."""

    def __init__(self, browser, url: str, **context) -> None:
        self.url = url
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT)
        self.console: list[tuple[str, str, str]] = []
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.console.append((m.type, m.text,
                                                               m.location.get("url", ""))))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(url + "/playground")
        self.page.wait_for_selector("body[data-ready=true]")

    def step(self, name: str):
        box = self.page.locator(f'[data-step="{name}"]')
        box.locator("button.run").click()
        self.page.wait_for_selector(f'[data-step="{name}"]:is([data-state="done"], '
                                    '[data-state="failed"])')
        return box

    def lesson(self, name: str):
        box = self.page.locator(f'[data-lesson="{name}"]')
        box.locator("button.run").click()
        self.page.wait_for_selector(f'[data-lesson="{name}"]:is([data-outcome="as-taught"], '
                                    '[data-outcome="unexpected"], [data-outcome="error"])')
        return box

    def check_clean(self) -> None:
        """No script errors, nothing logged but the browser's own note on each deliberate
        refusal (a 4xx the lessons cause at the token endpoint or the API), and no request
        leaving this server."""
        assert self.errors == []
        noise = [m for m in self.console if m[0] in ("error", "warning") and not (
            m[1].startswith("Failed to load resource: the server responded with a status of 4")
            and m[2].split("?")[0] in (self.url + "/token", self.url + "/demo/hello"))]
        assert noise == []
        assert all(r.startswith(self.url + "/") or r.startswith("data:")
                   for r in self.requests), self.requests

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def page(browser, server) -> Iterator[Page]:
    tab = Page(browser, server[0])
    yield tab
    tab.close()


def _exchanges(box) -> list[str]:
    return [e.text_content() for e in box.locator("[data-exchange]").all()]


def test_the_five_steps(page, tmp_path):
    url = page.url
    discover = page.step("discover")
    assert discover.get_attribute("data-state") == "done"
    assert f"issuer {url}" in discover.locator(".outcome").inner_text()
    [metadata] = _exchanges(discover)
    assert "GET " + url + "/.well-known/oauth-authorization-server" in metadata
    assert "HTTP 200" in metadata and '"token_endpoint"' in metadata
    assert "Where clients POST to get tokens." in discover.locator("table").inner_text()
    discover.screenshot(path=tmp_path / "discover.png")

    client = page.step("client")
    assert "client demo-client (client_secret_basic" in client.locator(".outcome").inner_text()
    client.screenshot(path=tmp_path / "client.png")

    token = page.step("token")
    assert "200: a Bearer token, scope read, expires in 300 s" in token.locator(
        ".outcome").inner_text()
    [exchange] = _exchanges(token)
    assert "POST " + url + "/token" in exchange
    assert "Authorization: Basic ZGVtby1jbGllbnQ6ZGVtby1zZWNyZXQ=" in exchange
    assert 'base64 of "demo-client:demo-secret"' in exchange
    assert "grant_type=client_credentials&scope=read" in exchange
    assert "HTTP 200" in exchange and "cache-control: no-store" in exchange
    token.screenshot(path=tmp_path / "token.png")

    inspect = page.step("inspect")
    assert inspect.get_attribute("data-state") == "done"
    assert "signature verified" in inspect.locator(".outcome").inner_text()
    assert inspect.locator(".signature").get_attribute("data-verified") == "true"
    assert "matches key" in inspect.locator(".kid-match").inner_text()
    claims = inspect.locator("table").nth(1)
    assert claims.locator('tr[data-name="sub"] td.value').inner_text() == "demo-client"
    assert claims.locator('tr[data-name="aud"] td.value').inner_text() == "api://default"
    assert claims.locator('tr[data-name="scope"] td.value').inner_text() == "read"
    assert "by the server's clock" in claims.locator('tr[data-name="exp"]').inner_text()
    assert re.search(r"\(in (2\d\d|300) s by", claims.locator('tr[data-name="exp"]').inner_text())
    assert "at+jwt" in inspect.locator("table").nth(0).inner_text()
    inspect.screenshot(path=tmp_path / "inspect.png")

    call = page.step("call")
    assert call.locator(".outcome").inner_text() == (
        "200 with the token; 401 Bearer without one; 401 invalid_token with a bad one")
    ok, none, bad = _exchanges(call)
    assert "HTTP 200" in ok and "hello, demo-client" in ok
    assert "HTTP 401" in none and "www-authenticate: Bearer" in none
    assert 'error="invalid_token"' in bad
    call.screenshot(path=tmp_path / "call.png")
    page.check_clean()


@pytest.mark.parametrize("lesson", list(LESSONS))
def test_each_lesson(page, server, lesson):
    controls = server[1]
    keys_before = controls.keys()
    box = page.lesson(lesson)
    outcome = box.locator(".outcome").inner_text()
    assert box.get_attribute("data-outcome") == "as-taught", outcome
    for expected in LESSONS[lesson]:
        assert expected in outcome, (expected, outcome)
    assert box.locator(".why").inner_text() and box.locator(".fix").inner_text()
    exchanges = _exchanges(box)
    assert exchanges and all("HTTP " in e for e in exchanges)
    # Left as found: the clock back at real time, no fault queued, the keys as they were.
    assert controls.clock.offset == 0 and not controls.clock.frozen
    assert controls.faults() == []
    assert controls.keys() == keys_before
    page.check_clean()


def test_reset_and_a_registered_client(page, server):
    box = page.page.locator('[data-step="client"]')
    box.locator('input[value="register"]').check()
    page.page.fill("#new-client-id", "pg-client")
    page.page.select_option("#new-auth-method", "client_secret_post")
    page.page.fill("#new-scopes", "read")
    page.step("client")
    assert "client pg-client (client_secret_post; scopes read" in box.locator(
        ".outcome").inner_text()
    assert "pg-client" in [c.client_id for c in server[1].clients()]
    token = page.step("token")
    [exchange] = _exchanges(token)
    assert "client_id=pg-client&client_secret=" in exchange and "Authorization" not in exchange
    assert page.step("call").get_attribute("data-state") == "done"
    page.page.click("#reset")
    page.page.wait_for_selector("#reset-status:has-text('back as it started')")
    assert "pg-client" not in [c.client_id for c in server[1].clients()]
    page.check_clean()


def test_copy_as_curl_and_python_run(browser, server, tmp_path):
    tab = Page(browser, server[0], permissions=["clipboard-read", "clipboard-write"])
    try:
        token = tab.step("token")
        exchange = token.locator("[data-exchange]").first
        exchange.locator("button.copy-curl").click()
        tab.page.wait_for_selector("[data-step=token] .copy-status:has-text('copied')")
        curl = tab.page.evaluate("navigator.clipboard.readText()")
        assert curl.startswith("curl -i \\\n  -X POST") and "-u 'demo-client:demo-secret'" in curl
        if shutil.which("curl"):
            out = subprocess.run(["bash", "-c", curl], capture_output=True, text=True,
                                 timeout=20, check=True).stdout
            assert "HTTP/1.1 200" in out and '"access_token"' in out
        exchange.locator("button.copy-python").click()
        python = tab.page.evaluate("navigator.clipboard.readText()")
        assert "from m2mauth.client import OAuthError, fetch_token" in python
        out = subprocess.run([sys.executable, "-c", python], capture_output=True, text=True,
                             timeout=30, check=True).stdout
        assert out.split()[1] == "300"  # access_token expires_in scope
        call = tab.step("call")
        snippet = call.locator("[data-exchange] [data-python]").first.text_content()
        assert "RequestsBearerAuth(provider)" in snippet
        out = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True,
                             timeout=30, check=True).stdout
        assert out.startswith("200 ")
        tab.check_clean()
    finally:
        tab.close()


@pytest.mark.parametrize("alg", ["PS256", "ES256", "EdDSA"])
def test_signature_verified_for_every_algorithm(browser, alg, tmp_path):
    running, _ = _serve(ServerSettings(algorithm=alg))
    with running:
        tab = Page(browser, running.url)
        try:
            inspect = tab.step("inspect")
            verdict = inspect.locator(".verdict").inner_text()
            # Chromium has Ed25519 in WebCrypto; a browser without it says so instead.
            assert verdict == f"{alg}: signature verified", verdict
            tab.check_clean()
        finally:
            tab.close()


def test_admin_token_is_asked_for_and_never_shown(browser):
    secret = "s3cret-admin-token-for-the-page"
    running, _ = _serve(ServerSettings(admin_token=secret))
    with running:
        tab = Page(browser, running.url)
        try:
            box = tab.page.locator('[data-lesson="expired"]')
            box.locator("button.run").click()
            tab.page.wait_for_selector('[data-lesson="expired"][data-outcome="error"]')
            assert "admin token" in box.locator(".outcome").inner_text()
            assert tab.page.locator("#admin-token").is_visible()
            tab.page.fill("#admin-token", secret)
            assert tab.lesson("expired").get_attribute("data-outcome") == "as-taught"
            text = tab.page.locator("body").text_content()
            assert secret not in text and "Bearer •••••• (the admin token)" in text
            assert "$M2MAUTH_ADMIN_TOKEN" in text
            assert secret not in json.dumps(tab.console)
        finally:
            tab.close()


def test_keyboard_and_labels(page):
    # Every control has an accessible name, and Tab reaches the first step's button.
    for control in page.page.locator("button, input, select").all():
        if control.is_visible():
            name = control.evaluate("e => e.labels && e.labels.length ? e.labels[0].textContent"
                                    " : (e.getAttribute('aria-label') || e.textContent)")
            assert name and name.strip(), control.evaluate("e => e.outerHTML")
    # From the Reset button, Tab reaches the first step's button; Enter runs it.
    page.page.locator("#reset").focus()
    for _ in range(5):
        page.page.keyboard.press("Tab")
        if page.page.evaluate("document.activeElement.matches('[data-step=discover] button.run')"):
            break
    else:
        pytest.fail("Tab never reached the discover step's button")
    page.page.keyboard.press("Enter")
    page.page.wait_for_selector('[data-step="discover"][data-state="done"]')
    # Lessons are buttons too: Enter on one runs it, and focus comes back to it.
    run = page.page.locator('[data-lesson="bad-scope"] button.run')
    run.focus()
    page.page.keyboard.press("Enter")
    page.page.wait_for_selector('[data-lesson="bad-scope"][data-outcome="as-taught"]')
    assert run.evaluate("e => e === document.activeElement")


# -- the lessons run with step 2's client, on any token lifetime, and leave the clock as found


def _demo_client(**changes) -> ClientSettings:
    return replace(ClientSettings(client_id="demo-client", client_secret="demo-secret",
                                  scopes=("read", "write"), audiences=("api://default",)),
                   **changes)


def _register(page: Page, client_id: str, method: str, scopes: str = "read write") -> None:
    box = page.page.locator('[data-step="client"]')
    box.locator('input[value="register"]').check()
    page.page.fill("#new-client-id", client_id)
    page.page.select_option("#new-auth-method", method)
    page.page.fill("#new-scopes", scopes)
    assert page.step("client").get_attribute("data-state") == "done"


@pytest.mark.parametrize("lesson", ["wrong-secret", "caching", "expired", "rate-limit",
                                    "insufficient-scope", "rotation"])
def test_lessons_use_the_client_of_step_2(browser, lesson):
    running, _ = _serve(ServerSettings())
    with running:
        tab = Page(browser, running.url)
        try:
            _register(tab, "pg-lessons", "client_secret_post")
            box = tab.lesson(lesson)
            outcome = box.locator(".outcome").inner_text()
            assert box.get_attribute("data-outcome") == "as-taught", outcome
            tokens = [e for e in _exchanges(box) if "POST " + running.url + "/token" in e]
            assert tokens and all("client_id=pg-lessons&client_secret=" in e for e in tokens)
            assert not any("demo-client" in e for e in tokens)
            if lesson == "caching":
                assert "without a cache: 5 token requests; with a cache: 1" in outcome
            tab.check_clean()
        finally:
            tab.close()


def test_without_the_demo_client_step_2_and_the_lessons_say_so(browser):
    other = replace(_demo_client(), client_id="other-client", client_secret="other-secret")
    running, _ = _serve(ServerSettings(clients=[other]))
    with running:
        tab = Page(browser, running.url)
        try:
            client = tab.step("client")
            outcome = client.locator(".outcome").inner_text()
            assert client.get_attribute("data-state") == "failed", outcome
            assert "not as taught" in outcome and "demo-client" in outcome
            assert "other-client" in outcome
            for lesson in ("caching", "expired", "skew", "bad-audience", "wrong-secret"):
                box = tab.lesson(lesson)
                text = box.locator(".outcome").inner_text()
                assert box.get_attribute("data-outcome") == "error", text
                assert "no usable client" in text and "demo-client" in text, text
                assert "undefined" not in box.text_content()
                assert "Cannot read" not in text
            token = tab.step("token")
            assert "no usable client" in token.locator(".outcome").inner_text()
            tab.check_clean()
        finally:
            tab.close()


def test_a_client_that_cannot_get_tokens_is_named_not_undefined(browser):
    # demo-client listed, but without scope read: the lessons stop at the first token.
    running, _ = _serve(ServerSettings(clients=[_demo_client(scopes=("write",))]))
    with running:
        tab = Page(browser, running.url)
        try:
            box = tab.lesson("caching")
            text = box.locator(".outcome").inner_text()
            assert box.get_attribute("data-outcome") == "error", text
            assert "needs a token for client demo-client with scope read" in text
            assert "invalid_scope" in text
            assert "Bearer undefined" not in box.text_content()
            assert "undefined" not in text
        finally:
            tab.close()


def test_caching_is_not_success_when_the_api_refuses(browser):
    # Tokens for another API: issued (200) but every call answers 401.
    running, _ = _serve(ServerSettings(clients=[_demo_client(audiences=("api://other",))]))
    with running:
        tab = Page(browser, running.url)
        try:
            box = tab.lesson("caching")
            text = box.locator(".outcome").inner_text()
            assert box.get_attribute("data-outcome") == "unexpected", text
            assert "401" in text
        finally:
            tab.close()


@pytest.mark.parametrize("lifetime", [60, 900])
def test_lessons_follow_the_token_lifetime(browser, lifetime):
    running, _ = _serve(ServerSettings(token_lifetime=lifetime))
    with running:
        tab = Page(browser, running.url)
        try:
            far = lifetime + 30 + 70
            for lesson, expected in (("skew", f"{far} s behind: 401"),
                                     ("caching", "without a cache: 5 token requests; "
                                                 "with a cache: 1"),
                                     ("expired", "with a new token 200")):
                box = tab.lesson(lesson)
                text = box.locator(".outcome").inner_text()
                assert box.get_attribute("data-outcome") == "as-taught", text
                assert expected in text, text
            tab.check_clean()
        finally:
            tab.close()


def test_rotation_runs_twice_in_a_row(page, server):
    for _ in range(2):
        box = page.lesson("rotation")
        text = box.locator(".outcome").inner_text()
        assert box.get_attribute("data-outcome") == "as-taught", text
    # No clock move past the JWKS cache's max-age: the API looks a new kid up at once.
    assert not any('"advance"' in e for e in _exchanges(box))
    page.check_clean()


@pytest.mark.parametrize("lesson", ["expired", "skew", "rotation"])
def test_a_frozen_clock_stays_frozen(browser, lesson):
    running, app = _serve(ServerSettings())
    controls = app.extensions["m2mauth_lab"].controls
    with running:
        at = controls.set_clock(freeze=True)["now"] - 1000
        controls.set_clock(at=at)
        tab = Page(browser, running.url)
        try:
            box = tab.lesson(lesson)
            text = box.locator(".outcome").inner_text()
            assert box.get_attribute("data-outcome") == "as-taught", text
            assert controls.clock.frozen
            assert controls.clock_status()["now"] == at
        finally:
            tab.close()


def test_claims_named_like_object_members(browser):
    claims = {"constructor": "c", "toString": "t", "__proto__": "p", "hasOwnProperty": "h",
              "nested": {"a": [1, 2]}, "tags": ["x", {"y": True}]}
    running, _ = _serve(ServerSettings(clients=[_demo_client(claims=claims)]))
    with running:
        tab = Page(browser, running.url)
        try:
            inspect = tab.step("inspect")
            assert inspect.get_attribute("data-state") == "done"
            table = inspect.locator("table").nth(1)
            for name, value in (("constructor", "c"), ("toString", "t"), ("__proto__", "p"),
                                ("hasOwnProperty", "h"), ("nested", '{"a":[1,2]}'),
                                ("tags", '["x",{"y":true}]')):
                row = table.locator(f'tr[data-name="{name}"]')
                assert row.locator("td.value").inner_text() == value, name
                assert row.locator("td.meaning").inner_text() == "", name
            text = inspect.text_content()
            assert "native code" not in text and "[object Object]" not in text
            tab.check_clean()
        finally:
            tab.close()


def test_under_an_issuer_with_a_path(browser):
    """``--issuer http://host:port/default``: the page lives under the path, discovers the
    metadata at RFC 8414's path-inserted location, and drives that issuer's admin API."""
    def make(port: int):
        return create_app(ServerSettings(port=port, issuer=f"http://127.0.0.1:{port}/default"))

    server, _ = bind_app("127.0.0.1", 0, make)
    with BackgroundServer(server) as running:
        issuer = running.url + "/default"
        tab = Page(browser, issuer)
        try:
            discover = tab.step("discover")
            assert discover.get_attribute("data-state") == "done"
            [metadata] = _exchanges(discover)
            assert ("GET " + running.url + "/.well-known/oauth-authorization-server/default"
                    in metadata)
            assert f"issuer {issuer}" in discover.locator(".outcome").inner_text()
            assert tab.step("token").get_attribute("data-state") == "done"
            assert tab.step("inspect").get_attribute("data-state") == "done"
            call = tab.step("call")
            assert "HTTP 200" in _exchanges(call)[0]
            expired = tab.lesson("expired")
            assert expired.get_attribute("data-outcome") == "as-taught"
            assert any("POST " + issuer + "/admin/clock" in e for e in _exchanges(expired))
            assert tab.errors == []
            assert all(r.startswith(running.url + "/") for r in tab.requests), tab.requests
            assert not [r for r in tab.requests if r.startswith(running.url + "/admin")]
        finally:
            tab.close()
