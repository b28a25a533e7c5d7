"""Configuration: TOML file, M2MAUTH_* environment and flags, in that order; every mistake
is a ConfigError naming the source, the key and the problem."""

from dataclasses import replace
from pathlib import Path

import pytest

from m2mauth.server import ConfigError, ServerSettings, create_app, load_settings
from m2mauth.server.settings import ClientSettings


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m2mauth.toml"
    path.write_text(text)
    return path


def test_defaults_are_the_demo_server():
    settings = load_settings(env={})
    assert settings.issuer_url == "http://127.0.0.1:8000"
    assert settings.algorithm == "RS256"
    assert settings.token_lifetime == 300
    [demo] = settings.clients
    assert (demo.client_id, demo.client_secret) == ("demo-client", "demo-secret")
    assert demo.scopes == ("read", "write")
    assert settings.uses_shipped_keys


def test_file_sets_issuer_algorithm_lifetimes_and_clients(tmp_path):
    jwks = tmp_path / "orders.jwks.json"
    jwks.write_text('{"keys": [{"kty": "OKP", "crv": "Ed25519", '
                    '"x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}')
    path = _write(tmp_path, """
issuer = "https://idp.test"
algorithm = "ES256"
token_lifetime = 120

[[clients]]
client_id = "orders"
client_secret = "orders-secret"
auth_methods = ["client_secret_post"]
scopes = ["orders:read", "orders:write"]
default_scopes = ["orders:read"]
audiences = ["https://orders.test"]
claims = { tenant = "acme", tier = 2 }
token_lifetime = 60
algorithm = "EdDSA"

[[clients]]
client_id = "signer"
jwks_file = "orders.jwks.json"
scopes = ["x"]
""")
    settings = load_settings(path, env={})
    assert settings.issuer_url == "https://idp.test"
    assert (settings.algorithm, settings.token_lifetime) == ("ES256", 120)
    orders, signer = settings.clients
    assert orders.allowed_auth_methods() == ("client_secret_post",)
    assert orders.default_scopes == ("orders:read",)
    assert orders.claims == {"tenant": "acme", "tier": 2}
    assert (orders.token_lifetime, orders.algorithm) == (60, "EdDSA")
    assert signer.allowed_auth_methods() == ("private_key_jwt",)
    assert signer.jwks["keys"][0]["crv"] == "Ed25519"
    assert settings.algorithms_in_use() == ("ES256", "EdDSA")


def test_precedence_file_then_environment_then_flags(tmp_path):
    path = _write(tmp_path, 'issuer = "http://file.test"\nport = 9001\ntoken_lifetime = 100\n')
    env = {"M2MAUTH_ISSUER": "http://env.test", "M2MAUTH_TOKEN_LIFETIME": "200"}
    settings = load_settings(path, env=env, overrides={"issuer": "http://flag.test",
                                                       "port": None})
    assert settings.issuer_url == "http://flag.test"
    assert settings.token_lifetime == 200
    assert settings.port == 9001


def test_config_file_from_environment(tmp_path):
    path = _write(tmp_path, "token_lifetime = 42\n")
    assert load_settings(env={"M2MAUTH_CONFIG": str(path)}).token_lifetime == 42


def test_issuer_follows_host_and_port_when_not_given():
    settings = load_settings(env={"M2MAUTH_PORT": "9100"}, overrides={"host": "::1"})
    assert settings.issuer_url == "http://[::1]:9100"
    assert load_settings(env={}, overrides={"host": "0.0.0.0"}).issuer_url == (
        "http://127.0.0.1:8000"
    )


def test_clients_in_file_replace_the_demo_client(tmp_path):
    path = _write(tmp_path, '[[clients]]\nclient_id = "a"\nclient_secret = "b"\n')
    assert [c.client_id for c in load_settings(path, env={}).clients] == ["a"]


@pytest.mark.parametrize(
    ("text", "key", "why"),
    [
        ("issuer = 5", "issuer", "must be a string"),
        ('issuer = "ftp://x"', "issuer", "not an http(s) URL"),
        ('issuer = "http://x/"', "issuer", "must not end with '/'"),
        ('algorithm = "HS256"', "algorithm", "not one of RS256, PS256, ES256, EdDSA"),
        ("token_lifetime = -1", "token_lifetime", "positive integer"),
        ("port = true", "port", "must be an integer"),
        ("port = 70000", "port", "between 0 and 65535"),
        ("colour = 1", "colour", "unknown key"),
        ("issuer = ", "(syntax)", "Invalid value"),
        ('[[clients]]\nclient_secret = "x"', "clients[0].client_id", "is required"),
        ('[[clients]]\nclient_id = "a"', "clients[0]", "no credentials"),
        ('[[clients]]\nclient_id = "a"\nclient_secret = "s"\nsecret = "s"',
         "clients[0].secret", "unknown key"),
        ('[[clients]]\nclient_id = "a"\nclient_secret = "s"\nauth_methods = ["magic"]',
         "clients[0].auth_methods", "'magic' is not one of"),
        ('[[clients]]\nclient_id = "a"\nclient_secret = "s"\nauth_methods = ["private_key_jwt"]',
         "clients[0].auth_methods", "private_key_jwt needs jwks"),
        ('[[clients]]\nclient_id = "a"\nclient_secret = "s"\nscopes = ["a\\"b"]',
         "clients[0].scopes", "not a valid scope token"),
        ('[[clients]]\nclient_id = "a"\nclient_secret = "s"\nscopes = ["r"]\n'
         'default_scopes = ["w"]', "clients[0].default_scopes", "not in the client's scopes"),
        ('[[clients]]\nclient_id = "a"\nclient_secret = "s"\naudiences = ["x"]\n'
         'default_audience = "y"', "clients[0].default_audience", "not in the client's audiences"),
        ('[[clients]]\nclient_id = "a"\nclient_secret = "s"\n'
         '[[clients]]\nclient_id = "a"\nclient_secret = "t"', "clients[1].client_id", "duplicate"),
        ('[[clients]]\nclient_id = "a"\njwks_file = "missing.json"', "clients[0].jwks_file",
         "cannot read"),
        ('[[clients]]\nclient_id = "a"\njwks = { keys = [ { kty = "oct", k = "x", d = "y" } ] }',
         "clients[0].jwks", "private key"),
    ],
)
def test_bad_file_names_file_key_and_problem(tmp_path, text, key, why):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    err = info.value
    assert err.source == str(path)
    assert err.key == key
    assert why in err.why
    assert str(err).startswith(f"{path}: {key}: ")


def test_secret_never_in_a_config_error(tmp_path):
    path = _write(tmp_path, '[[clients]]\nclient_id = "a"\nclient_secret = "hunter2-secret"\n'
                            'scopes = ["bad\\\\scope"]')
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert "hunter2" not in str(info.value)


def test_mistyped_secret_is_not_echoed(tmp_path):
    path = _write(tmp_path, '[[clients]]\nclient_id = "a"\nclient_secret = 8675309123\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert info.value.key == "clients[0].client_secret"
    assert info.value.why == "must be a string, got an integer"
    assert "8675309123" not in str(info.value)


def test_bad_environment_names_the_variable():
    with pytest.raises(ConfigError) as info:
        load_settings(env={"M2MAUTH_PORT": "eighty"})
    assert (info.value.source, info.value.key) == ("environment", "M2MAUTH_PORT")
    with pytest.raises(ConfigError) as info:
        load_settings(env={"M2MAUTH_EPHEMERAL_KEYS": "maybe"})
    assert info.value.key == "M2MAUTH_EPHEMERAL_KEYS"


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "nope.toml", env={})
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'issuer = "http://caf\xe9"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(bad, env={})


def test_client_settings_repr_masks_the_secret():
    client = ClientSettings("a", "hunter2-secret")
    assert "hunter2" not in repr(client)
    assert "hunter2" not in repr(ServerSettings(clients=[client]))


def test_pem_public_key_as_client_jwks(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "pub.pem").write_bytes(pem)
    path = _write(tmp_path, '[[clients]]\nclient_id = "a"\njwks_file = "pub.pem"\n')
    [client] = load_settings(path, env={}).clients
    assert client.jwks["keys"][0]["kty"] == "EC"
    create_app(ServerSettings(clients=[client]))  # the registry accepts it


def test_admin_api_off_when_config_file_host_is_not_loopback(tmp_path):
    config = tmp_path / "m2mauth.toml"
    config.write_text('host = "0.0.0.0"\n')
    settings = load_settings(config_file=config)
    assert not settings.binds_loopback
    assert not settings.admin_enabled


@pytest.mark.parametrize(("resolved", "loopback"), [
    (["127.0.0.1"], True), (["::1", "127.0.0.1"], True),
    (["192.0.2.7"], False), (["127.0.0.1", "192.0.2.7"], False), ([], False),
])
def test_localhost_counts_as_loopback_only_when_it_resolves_to_loopback(
        monkeypatch, resolved, loopback):
    # /etc/hosts (or a container's resolver) may point "localhost" anywhere; the server binds
    # what getaddrinfo says, so that is what decides whether the tokenless admin API is on.
    import socket

    def fake_getaddrinfo(host, *args, **kwargs):
        assert host == "localhost"
        if not resolved:
            raise socket.gaierror(socket.EAI_NONAME, "no such host")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, 0)) for a in resolved]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    settings = ServerSettings(host="localhost")
    assert settings.binds_loopback is loopback
    assert settings.admin_enabled is loopback


def _nested(depth: int) -> dict:
    claims: dict = {}
    inner = claims
    for _ in range(depth - 1):
        inner["n"] = {}
        inner = inner["n"]
    return claims


@pytest.mark.parametrize(("claims", "why"), [
    (_nested(33), "nest more than 32 levels deep"),
    ({"list": [[[[1]]]] * 1, "deep": {"n": [_nested(31)]}}, "nest more than 32"),
    ({"big": "x" * 17_000}, "bytes as JSON; at most 16384"),
    ({"n": {1: "a"}}, "names must be strings"),
    ({"n": float("nan")}, "NaN or infinity"),
    ({"n": {"s": {1, 2}}}, "JSON values only, not set"),
])
def test_client_claims_are_bounded_json(claims, why):
    """Issue 9 item 7: checked when the client is registered (file or admin API), so that a
    RecursionError or an unserialisable value can never come up at token time."""
    with pytest.raises(ConfigError) as caught:
        ClientSettings("c", "secret", claims=claims).validate("add_client", "client")
    assert caught.value.key == "client.claims" and why in caught.value.why


def test_client_claims_within_the_bounds_pass():
    ClientSettings("c", "secret", claims={"tenant": "acme", "n": _nested(31),
                                          "list": [1, 2.5, None, True, "x"]}).validate("t", "c")


def test_deep_claims_in_the_config_file_name_the_key(tmp_path):
    deep = "{ n = " * 40 + "1" + " }" * 40
    path = _write(tmp_path, f'[[clients]]\nclient_id = "a"\nclient_secret = "s"\nclaims = {deep}\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    assert str(caught.value) == f"{path}: clients[0].claims: nest more than 32 levels deep"


# -- JSON config files, chosen by extension ----------------------------------------------------

_ED25519_JWKS = ('{"keys": [{"kty": "OKP", "crv": "Ed25519", '
                 '"x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}')


def _write_as(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_a_json_file_sets_what_the_same_toml_file_sets(tmp_path, monkeypatch):
    """Whatever keys TOML takes, JSON takes, with the same meaning: relative paths
    (jwks_file, keys_dir) are relative to the file, not to the current directory."""
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "signer.jwks.json").write_text(_ED25519_JWKS)
    monkeypatch.chdir(tmp_path)  # not the file's directory
    json_path = _write_as(conf, "m2mauth.json", """{
      "issuer": "https://idp.test", "port": 9001, "algorithm": "ES256", "lab": false,
      "keys_dir": "keys",
      "clients": [
        {"client_id": "orders", "client_secret": "orders-secret",
         "auth_methods": ["client_secret_post"], "scopes": ["orders:read", "orders:write"],
         "default_scopes": ["orders:read"], "audiences": ["https://orders.test"],
         "default_audience": "https://orders.test",
         "claims": {"tenant": "acme", "tier": 2, "none": null}, "token_lifetime": 60,
         "algorithm": "EdDSA"},
        {"client_id": "signer", "jwks_file": "signer.jwks.json", "scopes": ["x", "y"]}
      ]
    }""")
    toml_path = _write_as(conf, "m2mauth.toml", """
issuer = "https://idp.test"
port = 9001
algorithm = "ES256"
lab = false
keys_dir = "keys"

[[clients]]
client_id = "orders"
client_secret = "orders-secret"
auth_methods = ["client_secret_post"]
scopes = ["orders:read", "orders:write"]
default_scopes = ["orders:read"]
audiences = ["https://orders.test"]
default_audience = "https://orders.test"
claims = { tenant = "acme", tier = 2 }
token_lifetime = 60
algorithm = "EdDSA"

[[clients]]
client_id = "signer"
jwks_file = "signer.jwks.json"
scopes = ["x", "y"]
""")
    from_json = load_settings(json_path, env={})
    from_toml = load_settings(toml_path, env={})
    orders, signer = from_json.clients
    assert orders.claims == {"tenant": "acme", "tier": 2, "none": None}  # null: a JSON claim
    orders.claims.pop("none")
    assert replace(from_json, config_file=None) == replace(from_toml, config_file=None)
    assert from_json.keys_dir == conf / "keys"
    assert signer.jwks["keys"][0]["crv"] == "Ed25519"
    assert signer.scopes == ("x", "y")
    assert from_json.config_file == json_path


@pytest.mark.parametrize("name", ["m2mauth.JSON", "m2mauth.Toml"])
def test_the_extension_is_read_whatever_its_case(tmp_path, name):
    text = '{"token_lifetime": 42}' if name.lower().endswith(".json") else "token_lifetime = 42"
    assert load_settings(_write_as(tmp_path, name, text), env={}).token_lifetime == 42


def test_a_json_file_from_m2mauth_config(tmp_path):
    path = _write_as(tmp_path, "c.json", '{"token_lifetime": 42}')
    assert load_settings(env={"M2MAUTH_CONFIG": str(path)}).token_lifetime == 42


@pytest.mark.parametrize(("name", "why"), [
    ("m2mauth.yaml", "unknown config format '.yaml'; use a .toml or .json file"),
    ("m2mauth.yml", "unknown config format '.yml'; use a .toml or .json file"),
    ("m2mauth.conf", "unknown config format '.conf'; use a .toml or .json file"),
    ("m2mauth", "unknown config format (the name has no extension); use a .toml or .json file"),
])
def test_an_unknown_extension_names_the_formats(tmp_path, name, why):
    path = _write_as(tmp_path, name, "issuer: http://127.0.0.1:8000\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert str(info.value) == f"{path}: (file): {why}"


def test_an_unknown_extension_is_named_before_the_file_is_read(tmp_path):
    path = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match=r"unknown config format '\.yaml'"):
        load_settings(path, env={})


_DEEP_JSON = '{"clients": [{"client_id": "a", "client_secret": "s", "claims": ' + \
    '{"n": ' * 100_000 + "1" + "}" * 100_000 + "}]}"


@pytest.mark.parametrize(("name", "text", "key", "why"), [
    # syntax: which format was expected, where, and a hint when the text is the other one
    ("c.json", "", "(syntax)", "not valid JSON: Expecting value (at line 1, column 1)"),
    ("c.json", 'issuer = "http://127.0.0.1:8000"\n', "(syntax)",
     "not valid JSON: Expecting value (at line 1, column 1); this looks like TOML: name the "
     "file .toml"),
    ("c.json", '# m2mauth\n[[clients]]\nclient_id = "a"\n', "(syntax)",
     "not valid JSON: Expecting value (at line 1, column 1); this looks like TOML: name the "
     "file .toml"),
    ("c.json", '{"issuer": "http://127.0.0.1:8000",\n "port": 8000,\n}', "(syntax)",
     "not valid JSON: Expecting property name enclosed in double quotes (at line 3, "
     "column 1)"),
    ("c.toml", '{"issuer": "http://127.0.0.1:8000"}', "(syntax)",
     "not valid TOML: Invalid statement (at line 1, column 1); this looks like JSON: name the "
     "file .json"),
    ("c.toml", "issuer = ", "(syntax)", "not valid TOML: Invalid value (at end of document)"),
    ("c.json", '{"issuer": "http://a.test", "issuer": "http://b.test"}', "(syntax)",
     "not valid JSON: duplicate key 'issuer' in an object"),
    ("c.json", '{"clients": [{"client_id": "a", "client_id": "b"}]}', "(syntax)",
     "not valid JSON: duplicate key 'client_id' in an object"),
    ("c.json", '{"token_lifetime": NaN}', "(syntax)", "not valid JSON: NaN is not a JSON value"),
    ("c.json", '{"token_lifetime": -Infinity}', "(syntax)",
     "not valid JSON: -Infinity is not a JSON value"),
    ("c.json", _DEEP_JSON, "(syntax)", "not valid JSON: nests too deeply"),
    # the top level
    ("c.json", '[{"client_id": "a"}]', "(file)",
     'must be a JSON object of settings ({"issuer": ...}), got a list'),
    ("c.json", '"http://127.0.0.1:8000"', "(file)",
     'must be a JSON object of settings ({"issuer": ...}), got a string'),
    # the same checks as TOML's, keys named alike
    ("c.json", '{"colour": 1}', "colour", "unknown key (known: issuer, host, port,"),
    ("c.json", '{"issuer": null}', "issuer", "must be a string, got null"),
    ("c.json", '{"keys_dir": null}', "keys_dir", "must be a string, got null"),
    ("c.json", '{"port": 8000.0}', "port", "must be an integer, got 8000.0"),
    ("c.json", '{"port": true}', "port", "must be an integer, got True"),
    ("c.json", '{"ephemeral_keys": 1}', "ephemeral_keys", "must be true or false, got 1"),
    ("c.json", '{"port": 70000}', "port", "must be between 0 and 65535"),
    ("c.json", '{"algorithm": "HS256"}', "algorithm", "'HS256' is not one of RS256, PS256,"),
    ("c.json", '{"clients": [5]}', "clients[0]",
     "must be a client table ([[clients]] in TOML, an object in JSON), got an integer"),
    ("c.json", '{"clients": [{"client_secret": "x"}]}', "clients[0].client_id", "is required"),
    ("c.json", '{"clients": [{"client_id": "a", "client_secret": "s", "scopes": 5}]}',
     "clients[0].scopes", "must be a list, got 5"),
    ("c.json", '{"clients": [{"client_id": "a", "client_secret": "s", "token_lifetime": null}]}',
     "clients[0].token_lifetime", "must be an integer, got null"),
    ("c.json", '{"clients": [{"client_id": "a"}]}', "clients[0]", "has no credentials"),
    ("c.json", '{"clients": [{"client_id": "a", "jwks_file": "missing.json"}]}',
     "clients[0].jwks_file", "cannot read"),
    ("c.json", '{"clients": [{"client_id": "a", "client_secret": "s"}, '
               '{"client_id": "a", "client_secret": "t"}]}', "clients[1].client_id", "duplicate"),
])
def test_a_bad_json_or_toml_file_names_the_file_the_key_and_the_problem(tmp_path, name, text,
                                                                        key, why):
    path = _write_as(tmp_path, name, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert (info.value.source, info.value.key) == (str(path), key)
    assert info.value.why.startswith(why), info.value.why


def test_a_json_file_must_be_utf8(tmp_path):
    path = _write_as(tmp_path, "c.json", b'{"issuer": "http://caf\xe9.test"}')
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert str(info.value) == f"{path}: (file): is not UTF-8 text"


# -- M2MAUTH_CLIENTS: the clients as a JSON array ------------------------------------------------

_TWO_CLIENTS = """[
  {"client_id": "orders", "client_secret": "orders-secret", "scopes": ["orders:read"],
   "audiences": ["https://orders.test"], "claims": {"tenant": "acme"}},
  {"client_id": "signer", "jwks_file": "keys/signer.jwks.json", "scopes": ["x"]}
]"""


def test_m2mauth_clients_replaces_the_files_clients(tmp_path, monkeypatch):
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "signer.jwks.json").write_text(_ED25519_JWKS)
    monkeypatch.chdir(tmp_path)  # jwks_file is relative to the current directory
    conf = tmp_path / "conf"
    conf.mkdir()
    path = _write_as(conf, "m2mauth.toml", 'token_lifetime = 42\n[[clients]]\n'
                                           'client_id = "from-file"\nclient_secret = "f"\n')
    settings = load_settings(path, env={"M2MAUTH_CLIENTS": _TWO_CLIENTS})
    orders, signer = settings.clients
    assert settings.token_lifetime == 42  # the rest of the file still counts
    assert (orders.client_id, orders.client_secret, orders.scopes) == (
        "orders", "orders-secret", ("orders:read",))
    assert orders.claims == {"tenant": "acme"}
    assert signer.allowed_auth_methods() == ("private_key_jwt",)
    assert signer.jwks["keys"][0]["crv"] == "Ed25519"
    assert [c.client_id for c in load_settings(env={"M2MAUTH_CLIENTS": _TWO_CLIENTS}).clients] \
        == ["orders", "signer"]  # and the demo client, without a file


def test_an_empty_m2mauth_clients_array_registers_no_client():
    assert load_settings(env={"M2MAUTH_CLIENTS": "[]"}).clients == []


_SECRET = "hunter2-secret"


@pytest.mark.parametrize(("value", "message"), [
    ("", "M2MAUTH_CLIENTS: is not valid JSON: Expecting value (at line 1, column 1)"),
    (f'[{{"client_id": "a", "client_secret": "{_SECRET}"', "M2MAUTH_CLIENTS: is not valid JSON: "
     "Expecting ',' delimiter (at line 1, column 54)"),
    (f"[{{'client_id': 'a', 'client_secret': '{_SECRET}'}}]",
     "M2MAUTH_CLIENTS: is not valid JSON: Expecting property name enclosed in double quotes "
     "(at line 1, column 3)"),
    (f'[{{"client_id": "a",\n  "client_secret": "{_SECRET}",\n}}]', "M2MAUTH_CLIENTS: is not "
     "valid JSON: Expecting property name enclosed in double quotes (at line 3, column 1)"),
    (f'[{{"client_id": "a", "client_secret": "{_SECRET}", "client_secret": "x"}}]',
     "M2MAUTH_CLIENTS: is not valid JSON: duplicate key 'client_secret' in an object"),
    (f'{{"client_id": "a", "client_secret": "{_SECRET}"}}',
     "M2MAUTH_CLIENTS: must be a JSON array, got an object"),
    (f'"{_SECRET}"', "M2MAUTH_CLIENTS: must be a JSON array, got a string"),
    ("null", "M2MAUTH_CLIENTS: must be a JSON array, got null"),
    (f'["{_SECRET}"]', "M2MAUTH_CLIENTS[0]: must be a client table ([[clients]] in TOML, an "
     "object in JSON), got a string"),
    (f'[[{{"client_id": "a", "client_secret": "{_SECRET}"}}]]', "M2MAUTH_CLIENTS[0]: must be "
     "a client table ([[clients]] in TOML, an object in JSON), got a list"),
    (f'[{{"client_secret": "{_SECRET}"}}]', "M2MAUTH_CLIENTS[0].client_id: is required"),
    (f'[{{"client_id": "a", "secret": "{_SECRET}"}}]',
     "M2MAUTH_CLIENTS[0].secret: unknown key (known: client_id, client_secret, jwks, "),
    ('[{"client_id": "a", "client_secret": 8675309}]',
     "M2MAUTH_CLIENTS[0].client_secret: must be a string, got an integer"),
    (f'[{{"client_id": "a", "client_secret": ["{_SECRET}"]}}]',
     "M2MAUTH_CLIENTS[0].client_secret: must be a string, got a list"),
    ('[{"client_id": "a", "client_secret": null}]',
     "M2MAUTH_CLIENTS[0].client_secret: must be a string, got null"),
    (f'[{{"client_id": "a", "client_secret": "{_SECRET}", "scopes": {{"{_SECRET}": 1}}}}]',
     "M2MAUTH_CLIENTS[0].scopes: must be a list, got a table"),
    ('[{"client_id": "a"}]', "M2MAUTH_CLIENTS[0]: has no credentials: set client_secret or jwks"),
    (f'[{{"client_id": "a", "client_secret": "{_SECRET}", "scopes": ["a\\\\b"]}}]',
     "M2MAUTH_CLIENTS[0].scopes: 'a\\\\b' is not a valid scope token (RFC 6749 §3.3)"),
    (f'[{{"client_id": "a", "client_secret": "{_SECRET}", "auth_methods": ["private_key_jwt"]}}]',
     "M2MAUTH_CLIENTS[0].auth_methods: private_key_jwt needs jwks"),
    (f'[{{"client_id": "a", "client_secret": "{_SECRET}", "token_lifetime": 0}}]',
     "M2MAUTH_CLIENTS[0].token_lifetime: must be a positive integer"),
    (f'[{{"client_id": "a", "client_secret": "{_SECRET}"}}, '
     f'{{"client_id": "a", "client_secret": "{_SECRET}"}}]',
     "M2MAUTH_CLIENTS[1].client_id: duplicate id 'a'"),
])
def test_a_bad_m2mauth_clients_names_the_variable_and_never_the_secret(value, message):
    with pytest.raises(ConfigError) as info:
        load_settings(env={"M2MAUTH_CLIENTS": value})
    assert info.value.source == "environment"
    assert str(info.value).startswith(f"environment: {message}"), str(info.value)
    assert _SECRET not in str(info.value)


def test_a_missing_jwks_file_in_m2mauth_clients_names_the_current_directory(tmp_path,
                                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_settings(env={"M2MAUTH_CLIENTS": '[{"client_id": "a", "jwks_file": "k.json"}]'})
    assert str(info.value) == (f"environment: M2MAUTH_CLIENTS[0].jwks_file: cannot read "
                               f"{tmp_path / 'k.json'}: No such file or directory")


@pytest.mark.parametrize("text", [
    # a mistyped clients value holding a secret: named by its type, its contents never shown
    f'clients = {{ client_id = "a", client_secret = "{_SECRET}" }}',
    f'clients = "{_SECRET}"',
    f"clients = '[{{\"client_id\": \"a\", \"client_secret\": \"{_SECRET}\"}}]'",
    f'[[clients]]\nclient_id = "a"\njwks = "{_SECRET}"',
])
def test_secrets_in_a_mistyped_toml_value_are_not_echoed(tmp_path, text):
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, text), env={})
    assert _SECRET not in str(info.value)


def test_a_mistyped_admin_token_is_not_echoed(tmp_path):
    path = _write_as(tmp_path, "c.json", '{"admin_token": ["0123456789abcdef-token"]}')
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert str(info.value) == f"{path}: admin_token: must be a string, got a list"


# -- every setting from the environment ----------------------------------------------------------

#: Settings no M2MAUTH_* variable sets, each with the reason. None today: a container is
#: configured from its environment alone.
NOT_FROM_THE_ENVIRONMENT: dict[str, str] = {}

#: What the test sets each setting to through its variable, when the kind's sample below
#: would not pass its check: (the variable's text, the value it must give).
_SAMPLES = {
    "issuer": ("http://env.test:9000", "http://env.test:9000"),
    "host": ("::1", "::1"),
    "algorithm": ("ES256", "ES256"),
    "admin_token": ("an-admin-token-from-env", "an-admin-token-from-env"),
    "clients": ('[{"client_id": "env-client", "client_secret": "s"}]', None),
    "issuers": ('{"orders": {"algorithm": "ES256"}}', {"orders": {"algorithm": "ES256"}}),
    "store": ("redis://127.0.0.1:6379/2", "redis://127.0.0.1:6379/2"),
}


def test_every_setting_can_be_set_from_its_variable():
    from m2mauth.server.settings import env_name, server_settings

    for setting in server_settings():
        if setting.name in NOT_FROM_THE_ENVIRONMENT:
            assert not setting.env
            continue
        assert setting.env, f"{setting.name}: no variable, and no reason in the list above"
        if setting.name in _SAMPLES:
            raw, expected = _SAMPLES[setting.name]
        elif setting.kind is bool:
            raw, expected = ("false", False) if setting.default else ("true", True)
        elif setting.kind is int:
            expected = (setting.default or 0) + 7
            raw = str(expected)
        elif setting.kind is Path:
            raw, expected = "/srv/m2mauth/keys", Path("/srv/m2mauth/keys")
        elif setting.choices:
            raw = expected = next(c for c in setting.choices if c != setting.default)
        else:
            raw = expected = "from-the-environment"
        env = {env_name(setting.name): raw}
        partner = {"tls_cert": "tls_key", "tls_key": "tls_cert"}.get(setting.name)
        if partner is not None:  # a certificate needs its key, and a key its certificate
            env[env_name(partner)] = raw
        settings = load_settings(env=env)
        value = getattr(settings, setting.name)
        if setting.name == "clients":
            assert [c.client_id for c in value] == ["env-client"]
        else:
            assert value == expected != setting.default, setting.name


def test_a_check_that_fails_on_a_variable_names_the_variable():
    for env, key, why in (
        ({"M2MAUTH_PORT": "70000"}, "M2MAUTH_PORT", "must be between 0 and 65535"),
        ({"M2MAUTH_ISSUER": "http://127.0.0.1:8000/"}, "M2MAUTH_ISSUER", "must not end with '/'"),
        ({"M2MAUTH_ADMIN_TOKEN": "short"}, "M2MAUTH_ADMIN_TOKEN",
         "must be at least 16 characters"),
    ):
        with pytest.raises(ConfigError) as info:
            load_settings(env=env)
        assert (info.value.source, info.value.key) == ("environment", key)
        assert info.value.why.startswith(why)


@pytest.mark.parametrize(("issuer", "why"), [
    ("http://127.0.0.1:99999", "has a port that is not a number from 0 to 65535"),
    ("http://127.0.0.1:port", "has a port that is not a number from 0 to 65535"),
    ("http://:8000", "names no host"),
])
def test_an_issuer_with_a_bad_port_or_no_host_is_refused(issuer, why):
    with pytest.raises(ConfigError) as info:
        load_settings(env={}, overrides={"issuer": issuer})
    assert info.value.why == f"{issuer!r} {why}"


# -- further issuers, in JSON and from M2MAUTH_ISSUERS ------------------------------------------

_ISSUERS_JSON = """{
  "orders": {"algorithm": "ES256", "token_lifetime": 120,
             "clients": [{"client_id": "orders-client", "client_secret": "orders-secret-01",
                          "scopes": ["orders:read"]},
                         {"client_id": "orders-jwt", "jwks_file": "orders.jwks.json"}]},
  "billing": {}
}"""


def test_issuers_in_a_json_file_are_the_issuers_tables_of_toml(tmp_path, monkeypatch):
    (tmp_path / "orders.jwks.json").write_text(_ED25519_JWKS)
    monkeypatch.chdir(tmp_path.parent)  # relative to the file, not the current directory
    from_json = load_settings(_write_as(tmp_path, "c.json", f'{{"issuers": {_ISSUERS_JSON}}}'),
                              env={})
    from_toml = load_settings(_write_as(tmp_path, "c.toml", """
[issuers.orders]
algorithm = "ES256"
token_lifetime = 120

[[issuers.orders.clients]]
client_id = "orders-client"
client_secret = "orders-secret-01"
scopes = ["orders:read"]

[[issuers.orders.clients]]
client_id = "orders-jwt"
jwks_file = "orders.jwks.json"

[issuers.billing]
"""), env={})
    assert from_json.issuers == from_toml.issuers
    orders = from_json.issuer_settings("orders")
    assert orders.issuer_url == "http://127.0.0.1:8000/orders"
    assert orders.clients[1].jwks["keys"][0]["crv"] == "Ed25519"


def test_m2mauth_issuers_sets_the_further_issuers(tmp_path, monkeypatch):
    (tmp_path / "orders.jwks.json").write_text(_ED25519_JWKS)
    monkeypatch.chdir(tmp_path)  # its jwks_file is relative to the current directory
    settings = load_settings(env={"M2MAUTH_ISSUERS": _ISSUERS_JSON})
    assert sorted(settings.issuers) == ["billing", "orders"]
    orders = settings.issuer_settings("orders")
    assert (orders.algorithm, orders.token_lifetime) == ("ES256", 120)
    assert [c.client_id for c in orders.clients] == ["orders-client", "orders-jwt"]
    assert "orders-secret-01" not in repr(settings)


@pytest.mark.parametrize(("value", "message"), [
    ("[]", "M2MAUTH_ISSUERS: must be a JSON object, got an array"),
    ('{"orders": 3}', "M2MAUTH_ISSUERS.orders: must be a table ([issuers.NAME])"),
    ('{"orders": {"port": 1}}', "M2MAUTH_ISSUERS.orders.port: unknown key"),
    ('{"orders": {"token_lifetime": "x"}}',
     "M2MAUTH_ISSUERS.orders.token_lifetime: must be an integer, got 'x'"),
    ('{"orders": {"token_lifetime": -5}}',
     "M2MAUTH_ISSUERS.orders.token_lifetime: must be a positive integer"),
    ('{"admin": {}}', "M2MAUTH_ISSUERS.admin: is taken by the root issuer's /admin"),
    (f'{{"orders": {{"clients": [{{"client_id": "x", "client_secret": "{_SECRET}", '
     '"scopes": 1}]}}', "M2MAUTH_ISSUERS.orders.clients[0].scopes: must be a list, got 1"),
    ('{"orders": {"clients": [{"client_id": "x"}]}}',
     "M2MAUTH_ISSUERS.orders.clients[0]: has no credentials"),
    (f'{{"orders": {{"admin_token": ["{_SECRET}"]}}}}',
     "M2MAUTH_ISSUERS.orders.admin_token: must be a string, got a list"),
])
def test_a_bad_m2mauth_issuers_names_the_variable_and_the_key(value, message):
    with pytest.raises(ConfigError) as info:
        load_settings(env={"M2MAUTH_ISSUERS": value})
    assert str(info.value).startswith(f"environment: {message}"), str(info.value)
    assert _SECRET not in str(info.value)
