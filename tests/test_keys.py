"""Key store: shipped test keys, key directories, ephemeral keys, rotation and retirement."""

import stat

import jwt
import pytest

from m2mauth.server import KeyStoreError, ServerSettings, create_app
from m2mauth.server.keys import KEY_FILES, KeyStore, generate_key_files, shipped_keys_dir


def test_shipped_keys_one_per_algorithm_with_stable_kids():
    first, second = KeyStore.shipped(), KeyStore.shipped()
    assert first.algorithms() == ["RS256", "PS256", "ES256", "EdDSA"]
    assert first.jwks() == second.jwks()
    for jwk in first.jwks()["keys"]:
        assert set(jwk) >= {"kty", "kid", "alg", "use"}
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk)  # public parts only
    assert (shipped_keys_dir() / "README.md").read_text().startswith("# keys/ — PUBLIC")


def test_generate_writes_0600_files_that_load(tmp_path):
    created = generate_key_files(tmp_path / "k", ["ES256", "EdDSA"])
    for key in created:
        path = tmp_path / "k" / KEY_FILES[key.alg]
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    store = KeyStore.from_directory(tmp_path / "k")
    assert [k.kid for k in store.all_keys()] == [k.kid for k in created]
    assert not list((tmp_path / "k").glob(".*tmp"))  # no temporary files left behind


def test_generate_refuses_to_overwrite_without_force(tmp_path):
    generate_key_files(tmp_path, ["ES256"])
    before = (tmp_path / "es256.pem").read_bytes()
    with pytest.raises(KeyStoreError, match="exists"):
        generate_key_files(tmp_path, ["ES256"])
    assert (tmp_path / "es256.pem").read_bytes() == before
    generate_key_files(tmp_path, ["ES256"], overwrite=True)
    assert (tmp_path / "es256.pem").read_bytes() != before


def test_bad_key_files_are_clear_errors(tmp_path):
    with pytest.raises(KeyStoreError, match="no signing keys found"):
        KeyStore.from_directory(tmp_path)
    (tmp_path / "rs256.pem").write_text("not a key")
    with pytest.raises(KeyStoreError, match=r"rs256\.pem: cannot load private key"):
        KeyStore.from_directory(tmp_path)
    (tmp_path / "rs256.pem").write_bytes((shipped_keys_dir() / "es256.pem").read_bytes())
    with pytest.raises(KeyStoreError, match="not a key for RS256"):
        KeyStore.from_directory(tmp_path)


def test_server_refuses_to_start_without_a_key_for_its_algorithm(tmp_path):
    generate_key_files(tmp_path, ["ES256"])
    with pytest.raises(KeyStoreError, match="no active RS256 signing key"):
        create_app(ServerSettings(keys_dir=tmp_path))
    create_app(ServerSettings(keys_dir=tmp_path, algorithm="ES256"))


def test_ephemeral_keys_are_generated_per_algorithm_in_use():
    store = KeyStore.ephemeral(["ES256"])
    assert store.algorithms() == ["ES256"]
    store.active("EdDSA")  # generated on demand
    assert store.algorithms() == ["ES256", "EdDSA"]
    assert KeyStore.ephemeral(["ES256"]).jwks() != store.jwks()


def test_rotation_keeps_the_old_key_published_until_retired():
    store = KeyStore.ephemeral(["ES256"])
    old = store.active("ES256")
    new = store.rotate("ES256")
    assert store.active("ES256") is new
    assert {k["kid"] for k in store.jwks()["keys"]} == {old.kid, new.kid}
    assert store.active("ES256").kid == new.kid
    with pytest.raises(KeyStoreError, match="is active"):
        store.retire(new.kid)
    store.retire(old.kid)
    assert [k["kid"] for k in store.jwks()["keys"]] == [new.kid]
    with pytest.raises(KeyStoreError, match="no key with kid"):
        store.retire("nope")


def test_token_from_rotated_key_verifies_with_the_published_jwks():
    app = create_app(ServerSettings(ephemeral_keys=True, algorithm="ES256"))
    state = app.extensions["m2mauth"]
    client = app.test_client()

    def token() -> str:
        r = client.post("/token", data={"grant_type": "client_credentials"},
                        headers={"Authorization": "Basic ZGVtby1jbGllbnQ6ZGVtby1zZWNyZXQ="})
        return r.get_json()["access_token"]

    before = token()
    state.keys.rotate("ES256")
    after = token()
    keys = {k["kid"]: jwt.PyJWK(k) for k in client.get("/jwks.json").get_json()["keys"]}
    for tok in (before, after):
        kid = jwt.get_unverified_header(tok)["kid"]
        jwt.decode(tok, keys[kid], algorithms=["ES256"], audience="api://default")
    assert jwt.get_unverified_header(before)["kid"] != jwt.get_unverified_header(after)["kid"]


def test_signing_key_repr_has_no_private_material():
    key = KeyStore.shipped().active("RS256")
    assert "PRIVATE" not in repr(key) and key.kid in repr(key)
