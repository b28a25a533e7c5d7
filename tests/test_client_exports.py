"""The public surface of ``m2mauth.client``, pinned (as httpx pins its own): adding or removing
a name is a decision taken here, not a side effect of an import; the sync and async forms take
the same arguments."""

from __future__ import annotations

import inspect
import types

import pytest

import m2mauth.client

EXPORTED = {
    "AUTH_METHODS", "AsyncTokenProvider", "Challenge", "DPOP_PROOF_REASONS", "DPoPNonces",
    "DPoPPolicy", "DPoPProof", "DPoPProofChecker", "DPoPReplayCache", "DiscoveryError",
    "HttpxBearerAuth",
    "InvalidDPoPProofError", "UseDPoPNonceError", "jwk_thumbprint",
    "DPOP_KEY_ALGORITHMS", "DPoPKey", "DPoPNonceStore", "DPoPTokenTypeError",
    "dpop_nonce_requested",
    "INVALID_TOKEN_REASONS", "InsufficientScopeError", "IntrospectionError",
    "IntrospectionValidator", "InvalidClientError", "InvalidGrantError",
    "InvalidRequestError", "InvalidScopeError", "InvalidTargetError", "InvalidTokenError",
    "JWKSCache", "JWKSError", "MetadataCache", "OAuthError", "RequestsBearerAuth",
    "RetryPolicy", "ServerError", "TemporarilyUnavailableError", "Token", "TokenCache",
    "TokenProvider", "TokenValidator", "TransportError", "UnauthorizedClientError",
    "UnsupportedGrantTypeError", "ValidatedToken", "afetch_token",
    "client_secret_jwt_assertion", "discover", "error_class", "fetch_token",
    "introspect_token", "key_algorithm", "load_private_key", "metadata_urls",
    "parse_challenges", "private_key_jwt_assertion", "revoke_token", "should_refetch",
}


def test_the_exported_names_are_pinned():
    assert set(m2mauth.client.__all__) == EXPORTED
    assert len(set(m2mauth.client.__all__)) == len(m2mauth.client.__all__)


def test_every_exported_name_can_be_imported():
    for name in m2mauth.client.__all__:  # the asyncio ones through the lazy __getattr__
        assert getattr(m2mauth.client, name) is not None, name


def test_every_public_name_of_the_package_is_exported():
    public = {name for name, value in vars(m2mauth.client).items()
              if not name.startswith("_") and not isinstance(value, types.ModuleType)}
    assert public <= set(m2mauth.client.__all__)


def test_the_error_classes_are_exported_as_errors_lists_them():
    from m2mauth.client import errors

    assert set(errors.__all__) <= set(m2mauth.client.__all__)
    for name in errors.__all__:
        assert getattr(m2mauth.client, name) is getattr(errors, name)


def _parameters(callable_) -> dict:
    return {name: (p.kind, p.default)
            for name, p in inspect.signature(callable_).parameters.items()}


@pytest.mark.parametrize(("sync", "asyncio"), [
    ("fetch_token", "afetch_token"),
    ("TokenProvider", "AsyncTokenProvider"),
])
def test_the_sync_and_async_forms_take_the_same_arguments(sync, asyncio):
    """Declared once each: the two forms differ only in their HTTP client."""
    threaded = _parameters(getattr(m2mauth.client, sync))
    asynchronous = _parameters(getattr(m2mauth.client, asyncio))
    keyword_only = inspect.Parameter.KEYWORD_ONLY
    assert threaded.pop("session") == asynchronous.pop("client") == (keyword_only, None)
    assert threaded == asynchronous


def test_the_provider_takes_the_tutorials_arguments_in_order():
    positional = [name for name, (kind, _) in _parameters(m2mauth.client.TokenProvider).items()
                  if kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert positional == ["token_url", "client_id", "client_secret", "scope"]


def test_a_wrong_or_missing_argument_is_a_type_error_before_any_request():
    with pytest.raises(TypeError, match="sesion"):
        m2mauth.client.fetch_token("http://127.0.0.1:9/token", client_id="c",
                                   client_secret="s", sesion=None)
    with pytest.raises(TypeError, match="client_id"):
        m2mauth.client.fetch_token("http://127.0.0.1:9/token", client_secret="s")
    with pytest.raises(TypeError, match="sesion"):
        m2mauth.client.TokenProvider("http://127.0.0.1:9/token", "c", "s", sesion=None)
