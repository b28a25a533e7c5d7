"""``m2mauth walkthrough``: the five steps of the client-credentials flow and the nine
lessons in the terminal, each as real HTTP exchanges printed in full, each checked against
what it teaches. The texts are :mod:`m2mauth.server.lab.lessons`, shared with the
playground page.

``output`` prints, ``wire`` is the printing HTTP session, ``context`` what steps and lessons
share, ``checks`` how they check, ``steps`` and ``lessons`` the exchanges, ``runner`` the
order, the pauses and the verdict."""

from __future__ import annotations

from .runner import NAMES, WalkthroughError, in_process_issuer, run

__all__ = ["NAMES", "WalkthroughError", "in_process_issuer", "run"]
