"""Key store: shipped test keys, key directories, ephemeral keys, rotation and retirement."""

import os
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
    (tmp_path / "rs256.pem").chmod(0o600)  # written under the umask; key files must be 0600
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


# -- permissions, as ssh checks them (issue 9 item 9) ----------------------------------------
# The tests run as root, which bypasses permission checks: they test the mode and owner logic,
# not access errors. uid 65534 (nobody) plays "another user".

OTHER_UID = 65534


def _key_dir(tmp_path, mode=0o700):
    directory = tmp_path / "k"
    generate_key_files(directory, ["ES256"])
    directory.chmod(mode)
    return directory, directory / "es256.pem"


@pytest.mark.parametrize("mode", [0o666, 0o644, 0o640, 0o604, 0o620, 0o602, 0o610])
def test_a_key_file_others_may_read_or_change_is_refused(tmp_path, mode):
    directory, key = _key_dir(tmp_path)
    key.chmod(mode)
    with pytest.raises(KeyStoreError) as caught:
        KeyStore.from_directory(directory)
    message = str(caught.value)
    assert message.startswith(f"{key}: the private key has mode {mode:04o}")
    assert f"run chmod 600 {key}" in message and "--unsafe-key-permissions" in message
    with pytest.raises(KeyStoreError, match="chmod 600"):
        create_app(ServerSettings(keys_dir=directory, algorithm="ES256"))


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_key_file_only_its_owner_may_use_is_loaded(tmp_path, mode):
    directory, key = _key_dir(tmp_path)
    key.chmod(mode)
    assert KeyStore.from_directory(directory).algorithms() == ["ES256"]


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757, 0o1777, 0o730, 0o703])
def test_a_key_directory_others_may_write_is_refused(tmp_path, mode):
    directory, _ = _key_dir(tmp_path, mode)
    with pytest.raises(KeyStoreError) as caught:
        KeyStore.from_directory(directory)
    assert str(caught.value).startswith(f"{directory}: the key directory has mode {mode:04o}")
    assert f"chmod 700 {directory}" in str(caught.value)


@pytest.mark.parametrize("mode", [0o700, 0o755, 0o711])
def test_a_key_directory_only_its_owner_may_write_is_used(tmp_path, mode):
    directory, _ = _key_dir(tmp_path, mode)
    assert KeyStore.from_directory(directory).algorithms() == ["ES256"]


def test_key_files_and_directories_of_another_user_are_refused(tmp_path):
    directory, key = _key_dir(tmp_path)
    os.chown(key, OTHER_UID, -1)
    with pytest.raises(KeyStoreError, match=f"the private key is owned by uid {OTHER_UID}"):
        KeyStore.from_directory(directory)
    os.chown(key, os.geteuid(), -1)
    os.chown(directory, OTHER_UID, -1)
    with pytest.raises(KeyStoreError, match=f"the key directory is owned by uid {OTHER_UID}"):
        KeyStore.from_directory(directory)
    os.chown(directory, 0, -1)  # root's are fine: root could change them anyway
    assert KeyStore.from_directory(directory).algorithms() == ["ES256"]


def test_unsafe_key_permissions_is_the_explicit_override(tmp_path):
    directory, key = _key_dir(tmp_path, 0o777)
    key.chmod(0o666)
    os.chown(key, OTHER_UID, -1)
    with pytest.raises(KeyStoreError):
        create_app(ServerSettings(keys_dir=directory, algorithm="ES256"))
    create_app(ServerSettings(keys_dir=directory, algorithm="ES256",
                              unsafe_key_permissions=True))
    from m2mauth.server.settings import load_settings

    settings = load_settings(env={"M2MAUTH_UNSAFE_KEY_PERMISSIONS": "1", "M2MAUTH_ALGORITHM":
                                  "ES256", "M2MAUTH_KEYS_DIR": str(directory)})
    assert settings.unsafe_key_permissions is True
    create_app(settings)


def test_generate_makes_0700_directories_whatever_the_umask(tmp_path):
    target = tmp_path / "a" / "b" / "keys"
    old = os.umask(0)
    try:
        generate_key_files(target, ["ES256"])
    finally:
        os.umask(old)
    for directory in (tmp_path / "a", tmp_path / "a" / "b", target):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert stat.S_IMODE((target / "es256.pem").stat().st_mode) == 0o600


def test_generate_refuses_a_directory_others_may_write_or_another_user_owns(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(KeyStoreError, match=f"{shared}: the key directory has mode 0777"):
        generate_key_files(shared, ["ES256"])
    shared.chmod(0o700)
    os.chown(shared, OTHER_UID, -1)
    with pytest.raises(KeyStoreError, match=f"owned by uid {OTHER_UID}") as caught:
        generate_key_files(shared, ["ES256"])
    assert "--unsafe-key-permissions" not in str(caught.value)  # generate has no override
    assert list(shared.iterdir()) == []


class _CountingKeys(tuple):
    """A key tuple that counts the walks over it."""

    walks = 0

    def __iter__(self):
        type(self).walks += 1
        return super().__iter__()


def test_key_lookups_do_not_walk_the_keys_on_every_call():
    """The token path's active() and get() cost a dict read, however many keys rotations
    left in the store: one walk per change of the keys, none per call."""
    from m2mauth.server.keys import generate_signing_key
    from m2mauth.server.store import MemoryStore

    keys = [generate_signing_key("EdDSA") for _ in range(3)]

    class Store(MemoryStore):
        def signing_keys(self):
            return held

    held = _CountingKeys(keys)
    store = KeyStore(Store())
    _CountingKeys.walks = 0
    for _ in range(100):
        assert store.active("EdDSA") is keys[0]  # the first active one, as a scan finds
        assert store.get(keys[2].kid) is keys[2]
    assert _CountingKeys.walks == 1
    held = _CountingKeys(keys[1:])  # a change: a new tuple, indexed again once
    assert store.active("EdDSA") is keys[1]
    assert _CountingKeys.walks == 2
