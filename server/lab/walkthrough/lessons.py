"""The nine lessons, each its real exchanges, as :data:`m2mauth.server.lab.lessons.LESSONS`
describes them; each checks that the outcome is the one taught and leaves the issuer's clock
and faults as it found them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jwt
import requests

from m2mauth.client import RequestsBearerAuth, TokenProvider

from ..lessons import DEMO_LEEWAY, DEMO_SCOPE, SKEW_BEYOND_LIFETIME
from .checks import Misbehaved, bearer_challenge, check, expect, oauth_error
from .context import Walk, token_answer

__all__ = ["LESSON_RUNS", "WRONG_SECRET"]

#: The secret the wrong-secret lesson sends: made up, so it may be printed.
WRONG_SECRET = "not-the-secret"
OTHER_AUDIENCE = "https://other.example"
#: The longest Retry-After the rate-limit lesson waits out (it teaches 1 s).
MAX_RETRY_AFTER = 5


def wrong_secret(walk: Walk) -> None:
    out = walk.out
    response = walk.request_token(client_id=walk.client_id, secret=WRONG_SECRET)
    check(out, "HTTP", 401, response.status_code)
    check(out, "error", "invalid_client", oauth_error(response))
    challenge = response.headers.get("WWW-Authenticate", "")
    expect(out, challenge.lower().startswith("basic"), "WWW-Authenticate: Basic ...",
           repr(challenge))


def bad_scope(walk: Walk) -> None:
    out = walk.out
    response = walk.request_token(scope="admin")
    check(out, "HTTP", 400, response.status_code)
    check(out, "error", "invalid_scope", oauth_error(response))


def bad_audience(walk: Walk) -> None:
    out = walk.out
    response = walk.request_token(resource=OTHER_AUDIENCE)
    check(out, "token endpoint: HTTP", 400, response.status_code)
    check(out, "error", "invalid_target", oauth_error(response))
    # The server will not issue one; the admin API mints it, as another issuer's client
    # registration for that API would.
    minted = walk.admin("POST", "/tokens", {"client_id": walk.client_id, "scope": DEMO_SCOPE,
                                            "audience": OTHER_AUDIENCE})
    token = minted.get("access_token")
    if not isinstance(token, str):
        raise Misbehaved("POST /admin/tokens answered no access_token")
    _invalid_token(walk, walk.call_api(token), "a token for another audience")


def expired(walk: Walk) -> None:
    out = walk.out
    token = walk.get_token()
    exp = _claims(token).get("exp")
    if not isinstance(exp, (int, float)):
        raise Misbehaved("the token has no exp")
    with walk.clock_kept():
        # Just past exp plus the API's leeway: the API reads this same clock.
        seconds = round(exp - walk.server_now()) + DEMO_LEEWAY + 1
        out.detail(f"  moving the server's clock {seconds} s on: past exp and the {DEMO_LEEWAY}"
                   " s leeway")
        walk.admin("POST", "/clock", {"advance": seconds})
        response = walk.call_api(token)
    challenge = _invalid_token(walk, response, "the expired token")
    description = challenge.params.get("error_description", "")
    expect(out, "expired" in description, "\"expired\" in the error_description",
           repr(description))


#: (server's clock against the API's, seconds; the API's answer as taught). None: behind by
#: more than the token's lifetime (expires_in, from the server) plus the leeway plus
#: SKEW_BEYOND_LIFETIME, so that it passes whatever lifetime the server gives its tokens.
SKEWS: tuple[tuple[int | None, int], ...] = ((20, 200), (120, 401), (-20, 200), (None, 401))


def skew(walk: Walk) -> None:
    out = walk.out
    lifetime: int | None = None
    for wanted, taught in SKEWS:
        offset = wanted if wanted is not None else _far_behind(lifetime)
        out.line()
        where = f"{offset} s ahead of" if offset > 0 else f"{-offset} s behind"
        out.line(f"  the server {where} the API", bold=True)
        if wanted is None:
            out.detail(f"  (the token lives {lifetime} s, expires_in; + the {DEMO_LEEWAY} s "
                       f"leeway + {SKEW_BEYOND_LIFETIME} s)")
        # The demo API reads the server's clock: a token issued while the server's clock is
        # offset, then presented after the offset is undone, meets an API whose clock differs
        # from the issuer's by exactly that offset.
        with walk.clock_kept():
            with walk.wire.printing("brief"):
                base = walk.admin("GET", "/clock").get("offset", 0)
                walk.admin("POST", "/clock", {"offset": base + offset})
            answer = walk.token_response()
        expires_in = answer.get("expires_in")
        if isinstance(expires_in, int) and not isinstance(expires_in, bool):
            lifetime = expires_in
        response = walk.call_api(answer["access_token"])
        check(out, f"server {where} the API (leeway {DEMO_LEEWAY} s): HTTP", taught,
              response.status_code)


def _far_behind(lifetime: int | None) -> int:
    if lifetime is None:
        raise Misbehaved("the token responses gave no expires_in (seconds the token lives)")
    return -(lifetime + DEMO_LEEWAY + SKEW_BEYOND_LIFETIME)


def rotation(walk: Walk) -> None:
    out = walk.out
    old = walk.get_token()
    old_kid = jwt.get_unverified_header(old).get("kid")
    alg = jwt.get_unverified_header(old).get("alg")
    rotated = walk.admin("POST", "/keys/rotate", {"alg": alg}, expected=201)
    walk.admin("POST", f"/keys/{old_kid}/retire")
    out.line()
    out.detail(f"  key {old_kid} retired; the new active key is {rotated.get('kid')}")
    with walk.wire.printing("quiet"):
        fetches = len(walk.admin("GET", "/requests/jwks").get("requests") or [])
    new = walk.get_token()
    new_kid = jwt.get_unverified_header(new).get("kid")
    expect(out, new_kid != old_kid, f"the new token has a new kid ({new_kid})", str(new_kid))
    # The demo API refetches its JWKS for a kid it does not know (no cooldown: the lab's
    # API, so that the lesson can run again at once).
    check(out, "the new token at the API: HTTP", 200, walk.call_api(new).status_code)
    with walk.wire.printing("brief"):
        after = len(walk.admin("GET", "/requests/jwks").get("requests") or [])
    expect(out, after > fetches, "the API refetched the JWKS for the kid it did not know",
           f"{after - fetches} fetches")
    _invalid_token(walk, walk.call_api(old), f"the old token (kid {old_kid}, retired)")
    out.detail("  The new key stays active: a rotation is not undone (POST /admin/reset would "
               "bring the old key back, and undo everything else too).")


def rate_limit(walk: Walk) -> None:
    out = walk.out
    try:
        walk.admin("POST", "/faults", {"endpoint": "token", "status": 429, "retry_after": 1},
                   expected=201)
        busy = walk.request_token()
        check(out, "HTTP", 429, busy.status_code)
        check(out, "error", "temporarily_unavailable", oauth_error(busy))
        retry_after = busy.headers.get("Retry-After", "")
        expect(out, retry_after.isdigit(), "a Retry-After in seconds", repr(retry_after))
        wait = int(retry_after)
        if wait > MAX_RETRY_AFTER:
            raise Misbehaved(f"Retry-After {wait} s: longer than this lesson waits "
                             f"({MAX_RETRY_AFTER} s)")
        out.detail(f"  waiting {wait} s, as Retry-After asks")
        walk.sleep(wait)
        check(out, "after the wait: HTTP", 200, walk.request_token().status_code)
    finally:
        with walk.wire.printing("brief"):
            walk.admin("DELETE", "/faults")


#: Calls each client makes in the caching lesson.
CALLS = 5


class TutorialTokenProvider:
    """The tutorial's provider, bug and all: its cache check reads ``self.token_data``, which
    nothing ever sets, so the check never passes and every call fetches a new token."""

    def __init__(self, walk: Walk) -> None:
        self.walk = walk
        self.token: dict[str, Any] | None = None  # what it stores ...

    def get_token(self) -> str:
        data = getattr(self, "token_data", None)  # ... and what it reads (never set)
        if data is not None:
            return str(data["access_token"])
        # (Its answer is checked, unlike the tutorial's: a refusal fails the lesson.)
        self.token = token_answer(self.walk.request_token())
        return str(self.token["access_token"])


def caching(walk: Walk) -> None:
    out = walk.out
    tutorial = TutorialTokenProvider(walk)
    # m2mauth.client's own provider, over the printing session, so its requests show too.
    provider = TokenProvider(walk.token_endpoint, walk.client_id, walk.client_secret or "",
                             DEMO_SCOPE, session=walk.wire)
    counts = []
    for label, make_call in (
        ("the tutorial's cache", lambda: walk.call_api(tutorial.get_token())),
        ("TokenProvider", lambda: walk.wire.get(walk.demo_url,
                                                auth=RequestsBearerAuth(provider))),
    ):
        out.line()
        out.line(f"  {CALLS} calls with {label}:", bold=True)
        before = _token_requests(walk)
        with walk.wire.printing("brief"):
            statuses = [make_call().status_code for _ in range(CALLS)]
        expect(out, statuses == [200] * CALLS, f"{CALLS} answers 200", str(statuses))
        counts.append(_token_requests(walk) - before)
    out.line()
    check(out, "token requests (the tutorial's cache, TokenProvider):", (CALLS, 1),
          tuple(counts))


def _token_requests(walk: Walk) -> int:
    """How many token requests the server's request log holds."""
    with walk.wire.printing("quiet"):
        return len(walk.admin("GET", "/requests/token").get("requests") or [])


def insufficient_scope(walk: Walk) -> None:
    out = walk.out
    response = walk.call_api(walk.get_token(scope="write"))
    check(out, "HTTP", 403, response.status_code)
    challenge = bearer_challenge(response)
    params = challenge.params if challenge else {}
    check(out, "error", "insufficient_scope", params.get("error"))
    check(out, "scope needed (in WWW-Authenticate)", DEMO_SCOPE, params.get("scope"))


def _invalid_token(walk: Walk, response: requests.Response, what: str) -> Any:
    """The API refused ``what`` as RFC 6750 says: 401 with error="invalid_token"."""
    check(walk.out, f"{what} at the API: HTTP", 401, response.status_code)
    challenge = bearer_challenge(response)
    check(walk.out, "error", "invalid_token", challenge.params.get("error") if challenge else None)
    return challenge


def _claims(token: str) -> dict[str, Any]:
    try:
        return jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise Misbehaved(f"the access token is not a JWT: {exc}") from None


LESSON_RUNS: dict[str, Callable[[Walk], None]] = {
    "wrong-secret": wrong_secret, "bad-scope": bad_scope, "bad-audience": bad_audience,
    "expired": expired, "skew": skew, "rotation": rotation, "rate-limit": rate_limit,
    "caching": caching, "insufficient-scope": insufficient_scope,
}
