"""The soak (bench/soak.py), bounded to a few seconds: under load, with the key rotating every
2 s, the clock moving and clients coming and going, every valid request is answered 200 and
every token validates."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SOAK = Path(__file__).resolve().parent.parent / "bench" / "soak.py"


def test_a_short_soak_has_no_failed_request_and_no_invalid_token(monkeypatch):
    monkeypatch.syspath_prepend(str(SOAK.parent))  # for its bench/_serve.py
    spec = importlib.util.spec_from_file_location("m2mauth_soak", SOAK)
    soak = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = soak  # its dataclasses look their module up there
    spec.loader.exec_module(soak)
    result = soak.run(seconds=5.0, concurrency=2)  # stops by itself after 5 s
    assert result["requests"] > 0
    assert (result["non_200"], result["invalid"]) == (0, 0), result["problems"]
