"""The lab: what only a test or a learner needs, attached to the core as a Flask extension
(:class:`Lab`) – clock controls, fault injection, the request log, :class:`Controls`, the
``/admin`` API, :class:`IdentityProvider` and the pytest plugin. The core never imports it.

Names are imported on first use: the pytest plugin (a submodule) must not import Flask.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .clock import LabClock
    from .controls import ControlError, Controls, DPoPToken, RegisteredClient
    from .dpop import DPOP_DEFECTS, DPoPKey, MintedProof
    from .extension import Lab, LabState
    from .faults import Fault
    from .idp import IdentityProvider
    from .requestlog import JwksRequest, LoggedTokenRequest

_EXPORTS = {
    "LabClock": "clock",
    "ControlError": "controls",
    "Controls": "controls",
    "RegisteredClient": "controls",
    "DPoPToken": "controls",
    "DPOP_DEFECTS": "dpop",
    "DPoPKey": "dpop",
    "MintedProof": "dpop",
    "Lab": "extension",
    "LabState": "extension",
    "Fault": "faults",
    "IdentityProvider": "idp",
    "JwksRequest": "requestlog",
    "LoggedTokenRequest": "requestlog",
}

__all__ = [
    "DPOP_DEFECTS",
    "ControlError",
    "Controls",
    "DPoPKey",
    "DPoPToken",
    "Fault",
    "IdentityProvider",
    "JwksRequest",
    "Lab",
    "LabClock",
    "LabState",
    "LoggedTokenRequest",
    "MintedProof",
    "RegisteredClient",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
