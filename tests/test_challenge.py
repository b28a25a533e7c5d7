"""m2mauth.client.challenge: WWW-Authenticate parsing (RFC 9110 §11.6.1, RFC 6750 §3) and the
refetch decision of the bearer adapters."""

from __future__ import annotations

import random

import pytest

from m2mauth.client.challenge import Challenge, parse_challenges, should_refetch


def test_single_bearer_challenge_with_params():
    [c] = parse_challenges('Bearer realm="example", error="invalid_token", '
                           'error_description="The access token expired"')
    assert c.scheme == "bearer"
    assert c.params == {"realm": "example", "error": "invalid_token",
                        "error_description": "The access token expired"}
    assert c.token68 is None


def test_rfc9110_example_with_two_challenges_and_escaped_quotes():
    header = ('Newauth realm="apps", type=1, title="Login to \\"apps\\"", '
              'Basic realm="simple"')
    assert parse_challenges(header) == [
        Challenge("Newauth", {"realm": "apps", "type": "1", "title": 'Login to "apps"'}),
        Challenge("Basic", {"realm": "simple"}),
    ]


def test_scheme_and_param_names_are_case_insensitive():
    [c] = parse_challenges('BEARER Realm="x", ERROR=invalid_token')
    assert c.scheme == "bearer"
    assert c.params["error"] == c.params["Error"] == c.params["ERROR"] == "invalid_token"
    assert "rEaLm" in c.params
    assert Challenge("Bearer", {"Error": "x"}) == Challenge("bearer", {"error": "x"})
    assert hash(Challenge("Bearer", {"Error": "x"})) == hash(Challenge("bearer", {"error": "x"}))


def test_param_values_stay_case_sensitive_and_params_are_read_only():
    [c] = parse_challenges('Bearer scope="Orders:Read"')
    assert c.params["scope"] == "Orders:Read"
    with pytest.raises(TypeError):
        c.params["scope"] = "x"  # type: ignore[index]


def test_quoted_strings_keep_commas_equals_and_escaped_backslashes():
    [c, d] = parse_challenges(
        'Bearer error_description="a, b = c; \\\\d \\"e\\"", scope="x y", Basic')
    assert c.params == {"error_description": 'a, b = c; \\d "e"', "scope": "x y"}
    assert d == Challenge("basic")


def test_token68():
    assert parse_challenges("Negotiate YIIBhwYGKwYBBQUCoIIBezCC+/==") == [
        Challenge("negotiate", token68="YIIBhwYGKwYBBQUCoIIBezCC+/==")]
    # token68 then another challenge
    assert parse_challenges("Basic abc=, Bearer realm=x") == [
        Challenge("basic", token68="abc="), Challenge("bearer", {"realm": "x"})]
    # token68 never shown in a repr (it may be a credential for some schemes)
    assert "YIIB" not in repr(parse_challenges("Negotiate YIIBhw==")[0])


def test_schemes_without_params():
    assert parse_challenges("Bearer") == [Challenge("bearer")]
    assert parse_challenges("Basic, Bearer") == [Challenge("basic"), Challenge("bearer")]
    assert parse_challenges("Bearer ,Basic realm=x") == [
        Challenge("bearer"), Challenge("basic", {"realm": "x"})]


@pytest.mark.parametrize("header", [
    'Bearer realm="x",error="invalid_token"',
    'Bearer   realm = "x" ,  error =invalid_token  ',
    '  ,, Bearer realm="x", , error="invalid_token",',
    'Bearer\trealm="x",\terror="invalid_token"',
])
def test_odd_but_legal_spacing_and_empty_list_elements(header):
    assert parse_challenges(header) == [
        Challenge("bearer", {"realm": "x", "error": "invalid_token"})]


def test_several_challenges_of_the_same_scheme():
    header = 'Bearer realm="a", error="invalid_token", Bearer realm="b", DPoP algs="ES256"'
    assert parse_challenges(header) == [
        Challenge("bearer", {"realm": "a", "error": "invalid_token"}),
        Challenge("bearer", {"realm": "b"}),
        Challenge("dpop", {"algs": "ES256"}),
    ]


@pytest.mark.parametrize(("header", "expected"), [
    ("", []),
    ("   ", []),
    (",,,", []),
    ("=", []),
    ('"Bearer"', []),
    ('Bearer realm="unterminated', []),
    ('Bearer realm="x", error="bad', []),
    ("Bearer realm=", [Challenge("bearer", token68="realm=")]),  # a token68, legally
    ("Bearer realm=@", []),
    ('Bearer realm="x" error="y"', []),  # params need a comma between them
    ('Bearer realm="x", realm="y"', []),  # a name at most once per challenge
    ('Bearer realm="a\x01b"', []),  # control characters are not qdtext
    ('Bearer realm="x\\', []),  # a backslash escaping nothing
    ("Bearer\x00", []),
    ('Basic realm="ok", Bearer realm="x" junk', [Challenge("basic", {"realm": "ok"})]),
    ('Basic realm="ok", @@@', [Challenge("basic", {"realm": "ok"})]),
    ("Bearer abc def", []),
])
def test_garbage_returns_what_parsed_before_it(header, expected):
    assert parse_challenges(header) == expected


@pytest.mark.parametrize("value", [None, 42, b"Bearer", ["Bearer"]])
def test_non_strings_give_nothing(value):
    assert parse_challenges(value) == []  # type: ignore[arg-type]


def test_random_garbage_never_raises():
    rng = random.Random(4)
    alphabet = 'Bearer realm=",\\ \t=error_invalid\x00\x7f\xff\u2603abc/+'
    for _ in range(3000):
        header = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        for c in parse_challenges(header):
            assert isinstance(c, Challenge)


def test_long_header_is_parsed_in_linear_time():
    header = ", ".join(f'Bearer realm="r{i}", error="invalid_token"' for i in range(5000))
    assert len(parse_challenges(header)) == 5000


# --- should_refetch ---------------------------------------------------------------------


@pytest.mark.parametrize("values", [
    'Bearer realm="api", error="invalid_token", error_description="expired"',
    'Bearer realm="api"',
    "Bearer",
    None,
    [],
    "",
    "%%% not a challenge",
    ['Basic realm="api"', 'Bearer error="invalid_token"'],
    'Basic realm="api", Bearer error="invalid_token"',
])
def test_refetch_on_401_invalid_token_or_no_error(values):
    assert should_refetch(401, values) is True


@pytest.mark.parametrize("values", [
    'Bearer error="invalid_request"',
    'Bearer realm="api", error="insufficient_scope", scope="orders:write"',
    'Bearer error="something_else"',
    'Bearer error="INVALID_TOKEN"',  # error codes are case-sensitive
    'Basic realm="api"',  # the server does not take bearer tokens at all
    ['Bearer error="invalid_token"', 'Bearer error="invalid_request"'],
])
def test_no_refetch_for_other_errors_or_schemes(values):
    assert should_refetch(401, values) is False


@pytest.mark.parametrize("status", [200, 302, 400, 403, 404, 407, 500])
@pytest.mark.parametrize("values", [None, 'Bearer error="invalid_token"', "Bearer"])
def test_never_refetch_unless_401(status, values):
    assert should_refetch(status, values) is False
