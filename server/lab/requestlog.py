"""What the token, JWKS, introspection and revocation endpoints received, in order, kept in
the issuer's state store: for tests to assert on. The token endpoint's records come from the
core's ``token_request_handled`` signal, introspection and revocation from
``endpoint_request_handled``; JWKS fetches and fault-answered requests from the lab's request
hooks."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..store import StateStore
from ..token_request import EndpointRequest, TokenRequest

__all__ = ["INTROSPECTION_LOG", "JWKS_LOG", "REVOCATION_LOG", "TOKEN_LOG", "JwksRequest",
           "LoggedEndpointRequest", "LoggedTokenRequest", "append", "append_logged", "logged",
           "read"]

TOKEN_LOG = "token"
JWKS_LOG = "jwks"
INTROSPECTION_LOG = "introspection"
REVOCATION_LOG = "revocation"


@dataclass(frozen=True)
class LoggedTokenRequest(TokenRequest):
    """A token request as the lab logs it: the core's record, and the injected fault that
    answered or changed it, if any (see faults.KINDS)."""

    fault: str | None = None


@dataclass(frozen=True)
class LoggedEndpointRequest(EndpointRequest):
    """An introspection or revocation request as the lab logs it, with its fault if any."""

    fault: str | None = None


def logged(record: TokenRequest | EndpointRequest, fault: str | None,
           ) -> LoggedTokenRequest | LoggedEndpointRequest:
    if isinstance(record, EndpointRequest):
        return LoggedEndpointRequest(**vars(record), fault=fault)
    return LoggedTokenRequest(**vars(record), fault=fault)


@dataclass(frozen=True)
class JwksRequest:
    """One JWKS fetch: when, the answer's status, and the injected fault if any."""

    time: float
    status: int
    fault: str | None = None


_TYPES: dict[str, type] = {TOKEN_LOG: LoggedTokenRequest, JWKS_LOG: JwksRequest,
                           INTROSPECTION_LOG: LoggedEndpointRequest,
                           REVOCATION_LOG: LoggedEndpointRequest}


def append(store: StateStore,
           record: LoggedTokenRequest | LoggedEndpointRequest | JwksRequest) -> None:
    if isinstance(record, LoggedEndpointRequest):
        log = record.endpoint
    else:
        log = TOKEN_LOG if isinstance(record, LoggedTokenRequest) else JWKS_LOG
    store.append_record(log, dict(vars(record)))  # shallow: every field is immutable


def append_logged(store: StateStore, record: TokenRequest | EndpointRequest,
                  fault: str | None) -> None:
    """``append(store, logged(record, fault))`` without building the logged dataclass: the
    same dict (the record's fields, then ``fault``) straight to the store, once per request."""
    log = record.endpoint if isinstance(record, EndpointRequest) else TOKEN_LOG
    store.append_record(log, {**vars(record), "fault": fault})


def read(store: StateStore, log: str) -> list[Any]:
    """The records of ``log`` as their dataclass (lists back to tuples: a shared store keeps
    JSON)."""
    cls = _TYPES[log]
    tuples = {f.name for f in fields(cls) if str(f.type).startswith("tuple")}
    return [cls(**{k: tuple(v) if k in tuples else v for k, v in r.items()})
            for r in store.records(log)]
