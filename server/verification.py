"""joserfc's JWS registry for the signatures the server verifies (DPoP proofs, its own tokens
at introspection), without joserfc's warning on every use of ``EdDSA``."""

from __future__ import annotations

from joserfc.jws import JWSAlgModel, JWSRegistry

__all__ = ["QuietJWSRegistry"]


class QuietJWSRegistry(JWSRegistry):
    """A :class:`~joserfc.jws.JWSRegistry` whose ``get_alg`` does not warn for an allowed
    ``EdDSA``: m2mauth signs and accepts that name on purpose (RFC 9864's ``Ed25519`` too).
    Silencing it per call with ``warnings.catch_warnings`` is not thread-safe: concurrent
    requests restoring each other's filters can leave the whole process ignoring warnings."""

    def get_alg(self, name: str) -> JWSAlgModel:
        if name == "EdDSA" and self.allowed and name in self.allowed and name in self.algorithms:
            return self.algorithms[name]
        return super().get_alg(name)
