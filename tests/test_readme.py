"""The README's complete test files run as a user would run them (pytester subprocess, only
the installed m2mauth and its plugin), so the front door stays true to the code."""

from __future__ import annotations

import re
from pathlib import Path

pytest_plugins = ["pytester"]

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"```python\n# (test_[a-z_]+\.py)\n(.*?)```", re.S)


def _files() -> dict[str, str]:
    return {name: body for name, body in _BLOCK.findall(README.read_text(encoding="utf-8"))}


def test_the_readme_has_both_example_files():
    assert set(_files()) == {"test_client_service.py", "test_resource_server.py"}


def test_the_readme_examples_pass(pytester):
    for name, body in _files().items():
        pytester.makepyfile(**{name[:-3]: body})
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=8)
