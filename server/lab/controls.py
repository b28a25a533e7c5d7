"""Test controls: one Python API over a running issuer's state – clients, minted tokens, the
clock, injected faults, the request logs and key rotation. The HTTP admin API (admin.py)
calls the same methods, so both validate alike and a bad request changes nothing. Every
change goes through the issuer's state store."""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import Key

from ..algorithms import ALGORITHMS, one_of
from ..clients import Client
from ..errors import ConfigError, KeyStoreError, TemporarilyUnavailableError
from ..introspection import Introspection, revocation_key
from ..issuer import Issuer
from ..keys import SigningKey, generate_signing_key
from ..settings import TOKEN_FORMATS, ClientSettings, ServerSettings
from ..syntax import is_error_text, strings
from ..tokens import ACTIVE_KEY, tampered
from . import requestlog
from .clock import LabClock
from .dpop import DPoPKey, MintedProof, dpop_key, mint_proof
from .faults import ENDPOINTS, KINDS, Fault
from .requestlog import JwksRequest, LoggedEndpointRequest, LoggedTokenRequest

__all__ = ["ControlError", "Controls", "DPoPToken", "RegisteredClient"]

_DEFAULT_ERROR = {400: "invalid_request", 401: "invalid_client", 403: "access_denied",
                  429: "temporarily_unavailable", 503: "temporarily_unavailable"}
_MAX_DELAY = 60.0
_MAX_COUNT = 100_000
#: Bound of clock values (seconds, ~3,000 years): sums of them stay far from float overflow.
_MAX_CLOCK = 1e11


class ControlError(ValueError):
    """A test-control call with a bad argument; names the field. Nothing was changed."""

    def __init__(self, field: str, why: str) -> None:
        self.field, self.why = field, why
        super().__init__(f"{field}: {why}")


@dataclass(frozen=True)
class RegisteredClient:
    """A client added through the controls, with the secret it was given (masked in repr)."""

    client_id: str
    client_secret: str | None = field(repr=False)
    scopes: tuple[str, ...]
    audiences: tuple[str, ...]
    auth_methods: tuple[str, ...]
    #: DPoP at the token endpoint: "optional" or "required".
    dpop: str = "optional"

    def as_dict(self) -> dict[str, Any]:
        return {"client_id": self.client_id, "client_secret": self.client_secret,
                "scopes": list(self.scopes), "audiences": list(self.audiences),
                "auth_methods": list(self.auth_methods), "dpop": self.dpop}


def _registered(client: Client) -> RegisteredClient:
    secret = client.settings.client_secret
    return RegisteredClient(client.client_id, secret, client.scopes, client.audiences,
                            client.auth_methods, client.settings.dpop)


def _int(name: str, value: object, *, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ControlError(name, f"must be an integer, got {type(value).__name__}")
    if low is not None and value < low:
        raise ControlError(name, f"must be at least {low}, got {value}")
    if high is not None and value > high:
        raise ControlError(name, f"must be at most {high}, got {value}")
    return value


def _number(name: str, value: object, limit: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ControlError(name, f"must be a number, got {type(value).__name__}")
    try:
        finite = math.isfinite(value)  # JSON bodies may carry Infinity/NaN; the clock must not
    except OverflowError:  # an integer no float holds (10**400)
        raise ControlError(name, "must be a finite number, got a huge integer") from None
    if not finite:
        raise ControlError(name, f"must be a finite number, got {value}")
    if limit is not None and not -limit <= value <= limit:
        raise ControlError(name, f"must be between {-limit:g} and {limit:g}")
    return float(value)


def _strings(name: str, value: object) -> list[str]:
    found = strings(value)
    if found is None:
        raise ControlError(name, "must be a string or a list of strings")
    return found


def _mapping(name: str, value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ControlError(name, "must be an object of names to values")
    return dict(value)


@dataclass(frozen=True)
class DPoPToken:
    """A DPoP-bound access token (``cnf.jkt``) and the key it is bound to."""

    access_token: str = field(repr=False)
    jkt: str
    key: DPoPKey
    token_type: str = "DPoP"

    def as_dict(self) -> dict[str, Any]:
        return {"access_token": self.access_token, "token_type": self.token_type,
                "jkt": self.jkt, "key": self.key.private_jwk, "alg": self.key.alg}


def _dpop_key(key: object, alg: object = None) -> DPoPKey:
    if isinstance(key, DPoPKey):
        return key
    if alg is not None and not isinstance(alg, str):
        raise ControlError("alg", "must be a string")
    try:
        return dpop_key(key, alg)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ControlError("key", str(exc)) from None


class Controls:
    """Drive one server's state from a test. Everything done here is undone by :meth:`reset`,
    which restores the clients and keys the server started with (on a shared store, those
    it was seeded with)."""

    def __init__(self, core: Issuer) -> None:
        #: The core issuer these controls drive.
        self.core = core
        self._store = core.store
        self._clients_at_start = core.store.clients()
        self._keys_at_start = core.store.signing_keys()
        self._unpublished: dict[str, SigningKey] = {}
        self._clock = LabClock(core.store)
        #: The jti of the last proof :meth:`dpop_proof` made (for a ``replayed_jti`` one).
        self._last_dpop_jti: str | None = None

    def _take_over(self, other: Controls) -> None:
        """Restore on :meth:`reset` what ``other`` would (the state at the server's start),
        when these controls replace it."""
        self._clients_at_start = other._clients_at_start
        self._keys_at_start = other._keys_at_start
        self._unpublished = other._unpublished

    @property
    def settings(self) -> ServerSettings:
        return self.core.settings

    # -- clock ------------------------------------------------------------------------

    @property
    def clock(self) -> LabClock:
        """The server's one clock: freeze, advance or offset it; tokens and checks follow."""
        return self._clock

    def set_clock(self, *, freeze: bool | None = None, at: float | None = None,
                  advance: float | None = None, offset: float | None = None,
                  reset: bool = False) -> dict[str, Any]:
        """Several clock changes at once, applied in the order reset, offset, freeze/at,
        advance (the admin API's form of the clock methods)."""
        if freeze is not None and not isinstance(freeze, bool):
            raise ControlError("freeze", "must be true or false")
        if not isinstance(reset, bool):
            raise ControlError("reset", "must be true or false")
        at = None if at is None else _number("at", at, _MAX_CLOCK)
        advance = None if advance is None else _number("advance", advance, _MAX_CLOCK)
        offset = None if offset is None else _number("offset", offset, _MAX_CLOCK)
        if at is not None and freeze is False:
            raise ControlError("at", "freezes the clock; do not combine it with freeze=false")
        clock = self._clock
        if reset:
            clock.reset()
        if offset is not None:
            clock.set_offset(offset)
        if at is not None or freeze:
            clock.freeze(at)
        elif freeze is False and clock.frozen:
            clock.unfreeze()
        if advance is not None:
            clock.advance(advance)
        return self.clock_status()

    def clock_status(self) -> dict[str, Any]:
        clock = self._clock
        return {"now": clock.now(), "offset": clock.offset, "frozen": clock.frozen}

    # -- clients ----------------------------------------------------------------------

    def add_client(
        self, client_id: str | None = None, *, client_secret: str | None = None,
        jwks: Mapping[str, Any] | None = None, scopes: str | Sequence[str] = (),
        audiences: str | Sequence[str] = (), default_scopes: str | Sequence[str] | None = None,
        default_audience: str | Sequence[str] | None = None,
        auth_methods: Sequence[str] | None = None, claims: Mapping[str, Any] | None = None,
        token_lifetime: int | None = None, algorithm: str | None = None,
        token_format: str | None = None, introspect: bool = False, dpop: str = "optional",
        dpop_nonce: bool = False,
    ) -> RegisteredClient:
        """Register a client; without ``client_secret`` or ``jwks`` it gets a generated secret.
        Returns it with the secret (the only place the secret is shown)."""
        if client_id is None:
            client_id = f"client-{secrets.token_hex(4)}"
        if jwks is None and client_secret is None:
            client_secret = secrets.token_urlsafe(24)
        settings = ClientSettings(
            client_id=client_id, client_secret=client_secret,
            jwks=None if jwks is None else _mapping("jwks", jwks),
            auth_methods=None if auth_methods is None else tuple(
                _strings("auth_methods", auth_methods)),
            scopes=tuple(_strings("scopes", scopes)),
            audiences=tuple(_strings("audiences", audiences)),
            default_scopes=None if default_scopes is None else tuple(
                _strings("default_scopes", default_scopes)),
            default_audience=None if default_audience is None else tuple(
                _strings("default_audience", default_audience)),
            claims={} if claims is None else _mapping("claims", claims),
            token_lifetime=token_lifetime, algorithm=algorithm, token_format=token_format,
            introspect=introspect, dpop=dpop, dpop_nonce=dpop_nonce,
        )
        try:
            settings.validate("add_client", "client")
        except ConfigError as exc:
            raise ControlError(exc.key.removeprefix("client."), exc.why) from None
        if self._store.client(client_id) is not None:
            raise ControlError("client_id", f"{client_id!r} is already registered")
        try:
            client = self.core.clients.build(settings)  # an unreadable JWKS fails here
            if settings.algorithm:
                self.core.keys.active(settings.algorithm)
        except (ValueError, JoseError, KeyStoreError) as exc:  # unreadable JWKS, missing key
            raise ControlError("jwks" if jwks is not None else "algorithm", str(exc)) from None
        if not self._store.add_client(settings):  # another caller registered the id meanwhile
            raise ControlError("client_id", f"{client_id!r} is already registered")
        return _registered(client)

    def remove_client(self, client_id: str) -> None:
        if not isinstance(client_id, str) or not self._store.remove_client(client_id):
            raise ControlError("client_id", f"no client {client_id!r}")

    def clients(self) -> list[RegisteredClient]:
        return [_registered(c) for c in self.core.clients]

    # -- tokens without HTTP ------------------------------------------------------------

    def issue_token(
        self, client_id: str, scope: str | Sequence[str] | None = None,
        audience: str | Sequence[str] | None = None, expires_in: int | None = None,
        claims: Mapping[str, Any] | None = None, headers: Mapping[str, Any] | None = None,
        *, alg: str | None = None, signing_key: str | Any = "active",
        token_format: str | None = None, jkt: str | None = None,
    ) -> str:
        """Mint an access token without HTTP, as the token endpoint would for ``client_id``
        (registered or not), nothing checked. ``claims`` and ``headers`` add or override
        entries (None removes one); ``alg="none"`` makes an unsigned token; ``signing_key``
        is ``"active"``, ``"unpublished"`` (a key the JWKS does not have) or a joserfc key.
        ``token_format="opaque"`` mints an opaque token the introspection endpoint knows.
        ``jkt`` binds the token to a DPoP key's thumbprint (``cnf.jkt``).
        """
        if jkt is not None and (not isinstance(jkt, str) or not jkt):
            raise ControlError("jkt", "must be a non-empty string")
        if token_format is not None and token_format not in TOKEN_FORMATS:
            raise ControlError("token_format", one_of(token_format, TOKEN_FORMATS))
        if not isinstance(client_id, str) or not client_id:
            raise ControlError("client_id", "must be a non-empty string")
        client = self.core.clients.get(client_id) or self.core.clients.build(
            ClientSettings(client_id))
        scopes = client.default_scopes if scope is None else _strings("scope", scope)
        audiences = client.default_audience if audience is None else _strings(
            "audience", audience)
        lifetime = None if expires_in is None else _int("expires_in", expires_in)
        claims = None if claims is None else _mapping("claims", claims)
        headers = None if headers is None else _mapping("headers", headers)
        if alg is not None and alg != "none" and alg not in ALGORITHMS:
            raise ControlError("alg", one_of(alg, ("none", *ALGORITHMS)))
        opaque = (token_format or client.settings.token_format
                  or self.core.token_issuer.token_format) == "opaque"
        if opaque and claims is not None and "exp" in claims:
            try:
                _number("claims", claims["exp"])
            except ControlError as exc:  # the store keeps an opaque token until its exp
                raise ControlError("claims", f"exp {exc.why} (an opaque token is kept "
                                   "until its exp)") from None
        alg = alg or client.settings.algorithm or self.settings.algorithm
        key: Any
        if alg == "none":
            key = None
        elif signing_key == "active":
            key = ACTIVE_KEY
        elif signing_key == "unpublished":
            key = self._unpublished_key(alg).key
        elif not isinstance(signing_key, Key):
            raise ControlError("signing_key", "must be 'active', 'unpublished' or a joserfc key")
        else:
            key = signing_key
        try:
            issued = self.core.token_issuer.issue(
                client, scope=list(scopes), audience=list(audiences), lifetime=lifetime,
                claims=claims, headers=headers, alg=alg, key=key, token_format=token_format,
                jkt=jkt,
            )
        except TemporarilyUnavailableError:
            raise ControlError("token_format", "the opaque token store is full "
                               "(max_opaque_tokens)") from None
        except (ValueError, TypeError, JoseError, KeyStoreError) as exc:  # joserfc refuses it
            raise ControlError("headers" if headers else "signing_key", str(exc)) from None
        return issued.access_token

    def _unpublished_key(self, alg: str) -> SigningKey:
        """A key of ``alg`` that is in no JWKS; one per algorithm, kept across tests."""
        key = self._unpublished.get(alg)
        if key is None:
            key = self._unpublished[alg] = generate_signing_key(alg)
        return key

    tampered = staticmethod(tampered)

    # -- faults -----------------------------------------------------------------------

    def fail_next(
        self, n: int = 1, *, status: int | None = None, error: str | None = None,
        error_description: str | None = None, retry_after: int | None = None,
        delay: float | None = None, kind: str | None = None, endpoint: str = "token",
    ) -> Fault:
        """Spoil the next ``n`` responses of ``endpoint`` ("token", "jwks", "introspection"
        or "revocation").

        ``kind``: "error" (default; ``status`` and RFC 6749 ``error``, optional
        ``Retry-After``), "delay" (wait ``delay`` seconds, then answer normally), "drop"
        (close the connection unanswered), "malformed" (a 200 with a broken JSON body) or
        "no_expires_in" (token endpoint: a real token without ``expires_in``).
        """
        _int("n", n, low=1, high=_MAX_COUNT)
        if not isinstance(endpoint, str) or endpoint not in ENDPOINTS:
            raise ControlError("endpoint", one_of(endpoint, tuple(ENDPOINTS)))
        if kind is None:
            kind = "delay" if delay is not None and status is None else "error"
        if kind not in KINDS:
            raise ControlError("kind", one_of(kind, KINDS))
        if kind == "no_expires_in" and endpoint != "token":
            raise ControlError("kind", "no_expires_in applies to the token endpoint only")
        if kind != "error":
            for name, value in (("status", status), ("error", error),
                                ("error_description", error_description),
                                ("retry_after", retry_after)):
                if value is not None:
                    raise ControlError(name, f"only applies to kind 'error', not {kind!r}")
        if kind != "delay" and delay is not None:
            raise ControlError("delay", f"only applies to kind 'delay', not {kind!r}")
        if kind == "delay":
            if delay is None:
                raise ControlError("delay", "is required for kind 'delay'")
            delay = _number("delay", delay)
            if not 0 < delay <= _MAX_DELAY:
                raise ControlError("delay", f"must be above 0 and at most {_MAX_DELAY:g} seconds")
            fault = Fault(endpoint, kind, status=200, error=None, delay=delay, remaining=n)
        elif kind == "error":
            status = 503 if status is None else _int("status", status, low=400, high=599)
            if error is None:
                error = _DEFAULT_ERROR.get(status, "server_error" if status >= 500
                                           else "invalid_request")
            for name, value in (("error", error), ("error_description", error_description)):
                if value is not None and not is_error_text(value):
                    raise ControlError(name, "must be printable ASCII without '\"' or '\\'"
                                       " (RFC 6749 section 5.2)")
            if retry_after is not None:
                _int("retry_after", retry_after, low=0)
            fault = Fault(endpoint, kind, status, error, error_description, retry_after,
                          remaining=n)
        else:
            fault = Fault(endpoint, kind, status=200, error=None, remaining=n)
        self._store.push_fault(endpoint, fault.as_dict())
        return fault

    def faults(self) -> list[Fault]:
        """Faults still queued, with the number of responses each will still spoil."""
        return [Fault(**f) for f in self._store.faults()]

    def take_fault(self, endpoint: str) -> Fault | None:
        """The fault for the response being made now, if any (consumes one use)."""
        fault = self._store.take_fault(endpoint)
        return Fault(**fault) if fault is not None else None

    def clear_faults(self) -> None:
        self._store.clear_faults()

    # -- request logs -------------------------------------------------------------------

    @property
    def token_requests(self) -> list[LoggedTokenRequest]:
        """What the token endpoint received, in order (client id, auth method, scope,
        resource, status, outcome, jti ...)."""
        return requestlog.read(self._store, requestlog.TOKEN_LOG)

    @property
    def jwks_requests(self) -> list[JwksRequest]:
        """Every JWKS fetch, in order: how often a service under test refreshed its keys."""
        return requestlog.read(self._store, requestlog.JWKS_LOG)

    @property
    def introspection_requests(self) -> list[LoggedEndpointRequest]:
        """What the introspection endpoint received, in order (caller, outcome, jti ...)."""
        return requestlog.read(self._store, requestlog.INTROSPECTION_LOG)

    @property
    def revocation_requests(self) -> list[LoggedEndpointRequest]:
        """What the revocation endpoint received, in order (caller, outcome, jti ...)."""
        return requestlog.read(self._store, requestlog.REVOCATION_LOG)

    def clear_requests(self) -> None:
        self._store.clear_records()

    # -- introspection and revocation without HTTP -------------------------------------

    def introspect(self, token: str) -> dict[str, Any]:
        """What ``POST /introspect`` answers for ``token`` (RFC 7662), asked by no client."""
        if not isinstance(token, str) or not token:
            raise ControlError("token", "must be a non-empty string")
        claims = self.core.tokens.find(token)
        return Introspection.answer(claims)

    def revoke(self, token: str) -> bool:
        """Revoke ``token`` as its own client would (RFC 7009): introspected inactive from
        now until its ``exp``. False when it was not active: unknown, expired (nothing
        changed) or revoked already (its entry then lasts until the later of the two exps)."""
        if not isinstance(token, str) or not token:
            raise ControlError("token", "must be a non-empty string")
        claims = self.core.tokens.find(token, revoked=True)
        if claims is None:
            return False
        key, now = revocation_key(claims), self.clock.now()
        was_revoked = self._store.is_revoked(key, now)
        if not self._store.revoke(key, float(claims["exp"]), now):  # again: the later exp
            raise ControlError("token", "the revocation list is full (max_revocations)")
        return not was_revoked

    # -- keys -------------------------------------------------------------------------

    def rotate_key(self, alg: str | None = None) -> str:
        """A new active signing key for ``alg`` (default: the server's algorithm); the old one
        stays published until :meth:`retire_key`. Returns the new kid."""
        alg = self.settings.algorithm if alg is None else alg
        if alg not in ALGORITHMS:
            raise ControlError("alg", one_of(alg))
        return self.core.keys.rotate(alg).kid

    def retire_key(self, kid: str) -> None:
        """Take a rotated-out key out of the JWKS: tokens it signed stop validating."""
        if not isinstance(kid, str):
            raise ControlError("kid", "must be a string")
        try:
            self.core.keys.retire(kid)
        except KeyStoreError as exc:
            raise ControlError("kid", str(exc)) from None

    def keys(self) -> list[dict[str, Any]]:
        return [{"kid": k.kid, "alg": k.alg, "status": k.status}
                for k in self.core.keys.all_keys()]

    @property
    def jwks(self) -> dict[str, Any]:
        return self.core.keys.jwks()

    # -- DPoP (RFC 9449) -------------------------------------------------------------------

    def require_dpop_nonce(self, required: bool | None = True) -> None:
        """Require a server nonce in DPoP proofs at the token endpoint (True), stop requiring
        one (False), or go back to the ``dpop_nonce`` setting (None); every process sharing
        the store follows. :meth:`reset` goes back to the setting."""
        if required is not None and not isinstance(required, bool):
            raise ControlError("required", "must be true, false or null")
        self.core.dpop.set_nonce_required(required)

    def dpop_nonce_required(self) -> bool:
        """Whether DPoP proofs need a nonce now."""
        return self.core.dpop.nonce_required()

    def dpop_nonce(self) -> str:
        """The current DPoP nonce (what the token endpoint's ``DPoP-Nonce`` header gives)."""
        return self.core.dpop.current_nonce()

    def dpop_nonce_status(self) -> dict[str, Any]:
        """Whether nonces are required, and the current one (the admin API's answer)."""
        return {"required": self.dpop_nonce_required(), "nonce": self.dpop_nonce()}

    def dpop_key(self, key: Any = None, alg: str | None = None) -> DPoPKey:
        """A DPoP key: ``key`` (a joserfc private key or a private JWK) or a new P-256 one;
        ``alg`` its algorithm (default ES256, EdDSA or RS256 by key type)."""
        return _dpop_key(key, alg)

    def dpop_proof(
        self, key: Any = None, *, method: str = "POST", url: str | None = None,
        token: str | None = None, nonce: str | None = None, defect: str | None = None,
        claims: Mapping[str, Any] | None = None, alg: str | None = None,
    ) -> MintedProof:
        """A DPoP proof for a ``method`` request to ``url`` (default: this issuer's token
        endpoint) at the issuer's clock, with ``ath`` for ``token`` and ``nonce`` when given.
        ``defect`` makes a proof the server must refuse, one of ``DPOP_DEFECTS``: wrong_htm,
        wrong_htu, stale_iat, future_iat, replayed_jti (the jti of the previous proof made
        here), wrong_ath, other_key (signed by another key than the header's jwk),
        private_key (the jwk has its private part), alg_none, hs256, wrong_typ. ``key``: a
        :class:`DPoPKey`, a joserfc private key or a private JWK; a new one when None (the
        answer's ``key``)."""
        dkey = _dpop_key(key, alg)
        for name, value in (("method", method), ("url", url), ("token", token),
                            ("nonce", nonce)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ControlError(name, "must be a non-empty string")
        if token is not None and not token.isascii():  # ath hashes the token's ASCII bytes
            raise ControlError("token", "must be an ASCII string (an access token)")
        try:
            minted = mint_proof(
                dkey, method=method, url=url or self.core.token_endpoint,
                now=int(self.core.clock.now()), token=token, nonce=nonce, defect=defect,
                previous_jti=self._last_dpop_jti,
                claims=None if claims is None else _mapping("claims", claims))
        except ValueError as exc:
            raise ControlError("defect", str(exc)) from None
        except (TypeError, JoseError) as exc:
            raise ControlError("claims", str(exc)) from None
        self._last_dpop_jti = minted.jti
        return minted

    def issue_dpop_token(
        self, client_id: str, key: Any = None, scope: str | Sequence[str] | None = None,
        audience: str | Sequence[str] | None = None, expires_in: int | None = None,
        claims: Mapping[str, Any] | None = None, *, alg: str | None = None,
        token_format: str | None = None,
    ) -> DPoPToken:
        """Mint a DPoP-bound access token for ``client_id`` and ``key`` (as
        :meth:`dpop_proof` takes it; a new P-256 key when None) without HTTP: what the token
        endpoint issues for a valid proof by that key. ``alg`` is the key's algorithm."""
        dkey = _dpop_key(key, alg)
        token = self.issue_token(client_id, scope, audience, expires_in, claims,
                                 token_format=token_format, jkt=dkey.jkt)
        return DPoPToken(token, dkey.jkt, dkey)

    # -- all of it ----------------------------------------------------------------------

    def reset(self) -> None:
        """Undo everything a test changed: clients, keys, clock, faults, logs, seen jtis.
        A shared store goes back to what it was seeded with, whichever process resets it;
        a store in this process to what this server started with."""
        if not self._store.restore_seed():
            self._store.restore(self._clients_at_start, self._keys_at_start)
