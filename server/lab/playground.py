"""The playground: a page at ``/playground`` (under the root issuer's path) that walks
through the client-credentials flow and the nine lessons in the browser, driving this
server's token endpoint, JWKS, demo API and admin API with real requests.

The page is plain HTML, CSS and JavaScript under ``web/`` (shipped in the wheel, nothing
fetched from elsewhere, so it works offline); its texts come from :mod:`.lessons`, served as
``/playground/lessons.json`` so the page and ``m2mauth walkthrough`` teach the same words.
"""

from __future__ import annotations

from flask import Blueprint, Response, send_from_directory

from ..issuer import current_issuer
from ..responses import json_response
from . import lessons

__all__ = ["PLAYGROUND_PREFIX", "SECURITY_HEADERS", "bp"]

PLAYGROUND_PREFIX = "/playground"

bp = Blueprint("m2mauth_playground", __name__, url_prefix=PLAYGROUND_PREFIX,
               static_folder="web", static_url_path="/static")

#: Every answer of the blueprint carries these. The page runs only its own script file and
#: talks only to this origin, so a strict policy costs nothing; no framing, because the
#: page holds buttons that change the issuer (clickjacking).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate CSP 2
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}


@bp.after_request
def _security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


@bp.get("")
@bp.get("/")
def page() -> Response:
    response = send_from_directory(bp.static_folder or "web", "playground.html",
                                   mimetype="text/html")
    mount = current_issuer().mount
    if mount:  # the page names its files by absolute path; an issuer's path comes first
        response.direct_passthrough = False
        html = response.get_data(as_text=True)
        response.set_data(html.replace('"/playground/', f'"{mount}/playground/'))
    # The page names its script and styles by path; a stale copy after an upgrade would run
    # old code against a new server.
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/lessons.json")
def lessons_json() -> Response:
    return json_response(lessons.as_json())
