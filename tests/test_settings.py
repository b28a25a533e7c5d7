"""Configuration: TOML file, M2MAUTH_* environment and flags, in that order; every mistake
is a ConfigError naming the source, the key and the problem."""

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
