"""What the learning pages teach, written once: the five steps of the client-credentials flow,
what each metadata field, header member and claim means, and the nine lessons – what each
shows, why it happens, and what a correct client does. The playground (served as JSON at
``/playground/lessons.json``) and ``m2mauth walkthrough`` both read it; each runs the HTTP
exchanges itself."""

from __future__ import annotations

from typing import Any

__all__ = ["CLAIMS", "CLIENT_FIELDS", "HEADER", "LESSONS", "METADATA_FIELDS", "STEPS",
           "as_json"]

#: The demo resource the steps and lessons call (mounted by create_app with the lab on).
DEMO_RESOURCE = "/demo/hello"
DEMO_SCOPE = "read"
#: Seconds of clock skew the demo resource tolerates (its TokenValidator's leeway).
DEMO_LEEWAY = 30
#: The skew lesson's far-behind case: the server behind the API by the token's lifetime plus
#: the leeway plus this many seconds (the lifetime is the server's: read it from expires_in).
SKEW_BEYOND_LIFETIME = 70

STEPS: list[dict[str, str]] = [
    {"name": "discover", "title": "Discover the server",
     "text": "A client needs only the issuer URL. RFC 8414 metadata at "
             "/.well-known/oauth-authorization-server names the token endpoint, the key set "
             "and what the server supports, so nothing else is configured by hand."},
    {"name": "client", "title": "Have a client",
     "text": "The server knows each client in advance: an id, a way to authenticate "
             "(a secret sent with HTTP Basic or in the body, or a signed assertion), the "
             "scopes it may ask for and the audiences (APIs) it may get tokens for."},
    {"name": "token", "title": "Ask for a token",
     "text": "The client POSTs grant_type=client_credentials to the token endpoint and "
             "authenticates. The server checks the credentials, the scope and the resource, "
             "then answers with a signed JWT access token and how long it lives."},
    {"name": "inspect", "title": "Look inside the token",
     "text": "An RFC 9068 access token is a JWT: a header (which key signed it), claims (who, "
             "for which API, with which scopes, until when) and a signature a resource "
             "server checks against the issuer's JWKS, matching the header's kid."},
    {"name": "call", "title": "Call the API",
     "text": "The client sends Authorization: Bearer <token>. The API checks signature, "
             "issuer, audience, times and scope itself, without asking the server, and "
             "answers 200, or 401/403 with an RFC 6750 WWW-Authenticate challenge."},
]

METADATA_FIELDS: dict[str, str] = {
    "issuer": "The server's identifier: tokens carry it as iss, and validators compare it "
              "exactly.",
    "token_endpoint": "Where clients POST to get tokens.",
    "jwks_uri": "The public keys that verify token signatures (a JWK Set); validators cache "
                "it and refetch it for a kid they do not know.",
    "grant_types_supported": "client_credentials: a service acting as itself, no user.",
    "token_endpoint_auth_methods_supported": "How clients may authenticate: a secret in the "
        "Basic header or the body, or a JWT assertion signed with a shared secret or a "
        "private key (RFC 7523).",
    "token_endpoint_auth_signing_alg_values_supported": "Algorithms accepted for client "
        "assertions (EdDSA and Ed25519 are two names of one signature, RFC 9864).",
    "subject_types_supported": "public: a token's sub is the client id, the same for every "
        "API (an OpenID Connect Discovery field).",
    "scopes_supported": "Scopes the server knows; each client may ask for a subset.",
}

HEADER: dict[str, str] = {
    "alg": "The signature algorithm. A validator keeps an allow-list and never trusts "
           "'none'.",
    "typ": "at+jwt: an access token (RFC 9068), not an ID token or another JWT.",
    "kid": "Which key of the JWKS signed it; a new kid makes a validator refetch the JWKS.",
}

CLAIMS: dict[str, str] = {
    "iss": "The issuer; must equal the one the API trusts.",
    "sub": "Who the token is about: for client credentials, the client itself.",
    "client_id": "The client the token was issued to.",
    "aud": "The API (resource) the token is meant for; an API refuses other audiences.",
    "scope": "What the token allows, space-separated; the API checks the scope it needs.",
    "iat": "Issued at (seconds since 1970, by the server's clock).",
    "nbf": "Not valid before this time.",
    "exp": "Not valid after this time; clients get a new token before it.",
    "jti": "A unique id of this token.",
}

CLIENT_FIELDS: dict[str, str] = {
    "client_id": "What the client calls itself: the user name of HTTP Basic, and sub and "
                 "client_id in its tokens.",
    "auth_methods": "How it may authenticate at the token endpoint (client_secret_basic: "
                    "the secret in an HTTP Basic header).",
    "scopes": "What it may ask for.",
    "audiences": "The APIs it may get tokens for; without a resource, the first.",
}

LESSONS: list[dict[str, str]] = [
    {"name": "wrong-secret", "title": "A wrong secret",
     "does": "Asks for a token with the client's id (demo-client's, unless another is "
             "used) and a wrong secret.",
     "shows": "401 invalid_client with WWW-Authenticate: Basic – the same answer for an "
              "unknown client, a wrong secret or a bad assertion.",
     "why": "The server never says which part was wrong, so client ids cannot be probed.",
     "fix": "Do not retry: the credentials will not become right. Fix the configuration "
            "(secret store, environment) and alert."},
    {"name": "bad-scope", "title": "A scope the client may not have",
     "does": "Asks for scope admin, which the client is not registered for.",
     "shows": "400 invalid_scope; the server never silently narrows the scope.",
     "why": "Each client is registered with the scopes it may ask for.",
     "fix": "Ask only for registered scopes (or register the scope); do not retry."},
    {"name": "bad-audience", "title": "A token for another API",
     "does": "Asks for resource=https://other.example, then calls the demo API with a "
             "token minted for that other audience.",
     "shows": "400 invalid_target at the token endpoint; 401 invalid_token at the API.",
     "why": "aud says which API a token is for; an API that accepted other audiences would "
            "accept tokens stolen from, or replayed by, any other service.",
     "fix": "Ask for a token per API (resource), and have every API check aud."},
    {"name": "expired", "title": "An expired token",
     "does": "Gets a token, then moves the server's clock past its exp (and the API's "
             "30 s leeway); the demo API reads the server's clock.",
     "shows": "401 invalid_token, \"expired\", in WWW-Authenticate.",
     "why": "Tokens are short-lived so that a leaked one stops working on its own.",
     "fix": "Keep the token with its expiry and get a new one a little before it "
            "(TokenProvider refreshes early); on a 401 invalid_token, get a new token once "
            "and retry once."},
    {"name": "skew", "title": "Clocks that disagree",
     "does": "Issues tokens while the server's clock is 20 s and 120 s ahead of the API's, "
             "then 20 s behind it and further behind than the token's lifetime plus the "
             "leeway (70 s more), and calls the API with each.",
     "shows": "Within the 30 s leeway both ways: 200. 120 s ahead: 401 (iat/nbf in the "
              "future). Behind by more than the lifetime plus the leeway: 401 (the token "
              "arrives already expired).",
     "why": "The API judges iat, nbf and exp by its own clock; hosts drift.",
     "fix": "Run NTP everywhere; validators allow a small leeway (30–60 s), never minutes."},
    {"name": "rotation", "title": "The server rotates its key",
     "does": "Gets a token, rotates the signing key, retires the old one, and calls the "
             "API with the old token and with a new one.",
     "shows": "The new token has a new kid: the API refetches the JWKS and accepts it. The "
              "old token's kid is gone from the JWKS: 401 invalid_token.",
     "why": "Keys are rotated; a retired key's tokens must stop working.",
     "fix": "Validators cache the JWKS and refetch it for an unknown kid (rate-limited); "
            "clients get a new token on a 401 invalid_token."},
    {"name": "rate-limit", "title": "The server is busy",
     "does": "Makes the next token request answer 429 with Retry-After: 1, then asks again "
             "after waiting that long.",
     "shows": "429 temporarily_unavailable with Retry-After; after the wait, 200.",
     "why": "Servers shed load; a client that retries at once makes it worse.",
     "fix": "Honour Retry-After; otherwise back off exponentially with jitter, and keep "
            "using a still-valid cached token meanwhile."},
    {"name": "caching", "title": "Cache the token",
     "does": "Calls the API five times with a client that gets a new token for every call "
             "(the tutorial's cache that never hit: it read token_data, never defined) and "
             "five times with a cache that keeps the token until shortly before exp; counts "
             "the token requests in the server's request log.",
     "shows": "5 token requests against 1.",
     "why": "A token is good for its whole lifetime; a new one per call multiplies the load "
            "on the server and the latency of every call.",
     "fix": "Cache per (client, scope, audience) and refresh shortly before exp – "
            "TokenProvider does, with one refresh at a time under concurrency."},
    {"name": "insufficient-scope", "title": "A token without the needed scope",
     "does": "Gets a token with scope write only and calls /demo/hello, which needs read.",
     "shows": "403 insufficient_scope with scope=\"read\" in WWW-Authenticate.",
     "why": "403, not 401: the token is valid, it just does not allow this.",
     "fix": "Ask for the scope the API needs; do not retry with the same token."},
]


def as_json() -> dict[str, Any]:
    """All of it, for the playground page."""
    return {"steps": STEPS, "metadata_fields": METADATA_FIELDS, "header": HEADER,
            "claims": CLAIMS, "lessons": LESSONS, "demo_resource": DEMO_RESOURCE,
            "demo_scope": DEMO_SCOPE, "demo_leeway": DEMO_LEEWAY,
            "client_fields": CLIENT_FIELDS, "skew_beyond_lifetime": SKEW_BEYOND_LIFETIME}
