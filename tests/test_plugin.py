"""The pytest plugin as a user gets it: pytest runs in a subprocess in an empty directory
(pytester), finds the plugin through the ``pytest11`` entry point, and this repo's conftest.py
is not there to help. Each run is about a second, so every run checks several things."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    """``run(*args)``: pytest in a subprocess in ``pytester.path``, as a user would start it."""
    for name in ("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTEST_PLUGINS", "PYTEST_XDIST_WORKER",
                 "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)

    def run(*args: str) -> pytest.RunResult:
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)

    return run


def write(pytester: pytest.Pytester, **files: str) -> None:
    for name, text in files.items():
        (pytester.path / f"{name}.py").write_text(textwrap.dedent(text))


@pytest.mark.parametrize(("example", "tests"), [("client_service", 7), ("resource_server", 17)])
def test_examples_pass_as_a_user_runs_them(pytester, run, example, tests):
    shutil.copytree(EXAMPLES / example, pytester.path, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))

    result = run()

    result.assert_outcomes(passed=tests)


def test_idp_resets_overrides_apply_and_idp_factory(pytester, run):
    """One run: m2mauth_algorithm and m2mauth_clients overridden in conftest.py; everything a
    test changes is gone for the next test, whether the test passed or failed; idp_factory;
    a project with ``filterwarnings = error`` still gets EdDSA tokens."""
    pytester.makeini("[pytest]\nfilterwarnings = error\n")
    write(pytester, conftest="""
        import pytest

        from m2mauth.server import ClientSettings


        @pytest.fixture(scope="session")
        def m2mauth_algorithm():
            return "PS256"


        @pytest.fixture(scope="session")
        def m2mauth_clients():
            return [ClientSettings("session-client", "session-secret", scopes=("read",))]
        """, test_reset="""
        import jwt
        import pytest
        import requests

        AT_START = {}


        def token_response(idp, client_id="session-client", secret="session-secret"):
            return requests.post(idp.token_endpoint, data={"grant_type": "client_credentials"},
                                 auth=(client_id, secret), timeout=10)


        def state(idp):
            return {"clients": [c.client_id for c in idp.clients()], "keys": idp.keys(),
                    "offset": idp.clock.offset, "frozen": idp.clock.frozen,
                    "faults": idp.faults(), "token_requests": idp.token_requests,
                    "jwks_requests": idp.jwks_requests}


        def test_overrides_configure_the_server(idp):
            AT_START.update(state(idp))
            assert AT_START["clients"] == ["session-client"]  # m2mauth_clients
            response = token_response(idp)
            assert response.status_code == 200
            header = jwt.get_unverified_header(response.json()["access_token"])
            assert header["alg"] == "PS256"  # m2mauth_algorithm


        def change_everything(idp):
            added = idp.add_client("added-in-test", scopes=["read"])
            idp.clock.freeze()
            idp.clock.advance(3600)
            old_kids = {k["kid"] for k in idp.keys()}
            idp.rotate_key()
            idp.fail_next(2, status=503)
            idp.fail_next(1, kind="malformed", endpoint="jwks")
            assert token_response(idp, "added-in-test", added.client_secret).status_code == 503
            requests.get(idp.jwks_uri, timeout=10)
            assert {k["kid"] for k in idp.keys()} > old_kids
            assert idp.faults() and idp.token_requests and idp.jwks_requests


        def assert_nothing_left(idp):
            assert state(idp) == AT_START
            assert token_response(idp).status_code == 200  # no fault queued
            assert token_response(idp, "added-in-test", "x").status_code == 401
            assert requests.get(idp.jwks_uri, timeout=10).json() == idp.jwks


        def test_changes_everything_and_passes(idp):
            change_everything(idp)


        def test_sees_nothing_of_the_passed_test(idp):
            assert_nothing_left(idp)


        def test_changes_everything_and_fails(idp):
            change_everything(idp)
            pytest.fail("deliberately")


        def test_sees_nothing_of_the_failed_test(idp):
            assert_nothing_left(idp)
        """, test_factory="""
        import requests


        def test_idp_factory_gives_separate_issuers(idp, idp_factory):
            one, two = idp_factory(), idp_factory()

            assert len({idp.issuer, one.issuer, two.issuer}) == 3
            kids = [{k["kid"] for k in server.jwks["keys"]} for server in (idp, one, two)]
            assert kids[1] and kids[2]
            assert kids[1].isdisjoint(kids[2]) and kids[0].isdisjoint(kids[1] | kids[2])
            for server in (one, two):
                assert requests.get(server.jwks_uri, timeout=10).json() == server.jwks
            added = one.add_client("only-on-one", scopes=["read"])
            answers = [requests.post(server.token_endpoint, timeout=10,
                                     data={"grant_type": "client_credentials"},
                                     auth=("only-on-one", added.client_secret))
                       for server in (one, two)]
            assert [a.status_code for a in answers] == [200, 401]


        def test_idp_factory_serves_several_issuers_on_one_port(idp_factory):
            server = idp_factory(issuers={"a": {}, "b": {"algorithm": "ES256"}})
            a, b = server.issuers["a"], server.issuers["b"]
            assert (a.issuer, b.issuer) == (server.issuer + "/a", server.issuer + "/b")
            assert a.url == b.url == server.url
            c = server.add_issuer("c", algorithm="ES256")
            for handle in (a, b, c):
                answer = requests.post(handle.token_endpoint, timeout=10, auth=("demo-client",
                                       "demo-secret"), data={"grant_type": "client_credentials"})
                assert answer.status_code == 200, answer.text
            a.fail_next(status=503)
            assert requests.post(b.token_endpoint, timeout=10, auth=("demo-client",
                                 "demo-secret"), data={"grant_type": "client_credentials"}
                                 ).status_code == 200
            server.reset()
            assert sorted(server.issuers) == ["a", "b"] and a.faults() == []
        """, test_warnings="""
        import jwt
        import requests


        def test_eddsa_tokens_under_filterwarnings_error(idp):
            # joserfc warns on every EdDSA signature, in the server's thread: without the
            # plugin's filter, "error" turned that into a 500.
            client = idp.add_client(scopes=["read"], algorithm="EdDSA")
            response = requests.post(idp.token_endpoint, timeout=10,
                                     data={"grant_type": "client_credentials"},
                                     auth=(client.client_id, client.client_secret))
            assert response.status_code == 200, response.text
            header = jwt.get_unverified_header(response.json()["access_token"])
            assert header["alg"] == "EdDSA"
        """)

    result = run("-v")

    result.assert_outcomes(passed=7, failed=1)
    result.stdout.fnmatch_lines(["*test_changes_everything_and_fails FAILED*"])


def test_xdist_workers_get_their_own_server_with_overridden_settings(pytester, run):
    """``-p xdist -n 2``: each worker starts its own server from the user's m2mauth_settings."""
    write(pytester, conftest="""
        import pytest

        from m2mauth.server import ClientSettings, ServerSettings


        @pytest.fixture(scope="session")
        def m2mauth_settings():
            return ServerSettings(
                algorithm="ES256", token_lifetime=90, default_audience="https://api.test",
                clients=[ClientSettings("xdist-client", "xdist-secret", scopes=("read",))])
        """, test_workers="""
        import os
        from pathlib import Path

        import jwt
        import pytest
        import requests


        @pytest.mark.parametrize("n", range(6))
        def test_uses_idp(idp, n):
            idp.add_client(f"per-test-{n}", scopes=["read"])  # no clash across tests
            response = requests.post(idp.token_endpoint, timeout=10,
                                     data={"grant_type": "client_credentials"},
                                     auth=("xdist-client", "xdist-secret"))
            body = response.json()
            assert body["expires_in"] == 90
            assert jwt.get_unverified_header(body["access_token"])["alg"] == "ES256"
            claims = jwt.decode(body["access_token"], options={"verify_signature": False})
            assert claims["aud"] == "https://api.test" and claims["iss"] == idp.issuer
            assert idp.issuer.startswith("http://127.0.0.1:")
            assert len(idp.token_requests) == 1
            seen = Path(__file__).parent / "seen"
            seen.mkdir(exist_ok=True)
            worker = os.environ["PYTEST_XDIST_WORKER"]
            (seen / f"{n}").write_text(f"{worker} {idp.issuer}")
        """)

    result = run("-p", "xdist", "-n", "2", "-v")

    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(["*2 workers [[]6 items[]]*"])
    seen = {tuple(p.read_text().split()) for p in (pytester.path / "seen").iterdir()}
    assert sorted(worker for worker, _ in seen) == ["gw0", "gw1"]  # one issuer per worker
    assert len({issuer for _, issuer in seen}) == 2  # and a server (port) of its own each


def test_unused_plugin_imports_nothing_heavy(pytester, run):
    write(pytester, test_light="""
        import sys


        def test_plugin_loaded_but_flask_and_authlib_not(pytestconfig):
            assert pytestconfig.pluginmanager.has_plugin("m2mauth")  # the pytest11 entry point
            assert "m2mauth.server.lab.pytest_plugin" in sys.modules
            loaded = {name.partition(".")[0] for name in sys.modules}
            assert not loaded & {"flask", "authlib", "werkzeug", "joserfc"}
        """)

    result = run()

    result.assert_outcomes(passed=1)
