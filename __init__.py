"""quicpair: pair two devices with a short code, then keep an authenticated QUIC link between them.

The public API, importable from here::

    from quicpair import Node, load_settings

    settings = load_settings(node={"listen_host": "127.0.0.1", "listen_port": 0})
    with Node("/tmp/alice", settings) as alice, Node("/tmp/bob", settings) as bob:
        offer = alice.pair()
        device = bob.join(offer.uri)

Installed, the repository's directories are this package's sub-packages
(setup.cfg maps them): ``quicpair.protocol`` (sans-I/O), ``quicpair.config``,
``quicpair.actors`` (the runtime) and ``quicpair.tools`` (command line, daemon,
demo). The names below are loaded on first use, so ``import quicpair`` (and the
command line's client commands) costs no QUIC or crypto import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from quicpair.actors.node import Node
    from quicpair.actors.pairing.device import Device, PairingOffer
    from quicpair.config.settings import Settings, load_settings
    from quicpair.protocol.errors import (
        AddressInUse,
        CodeFormatError,
        ConfigError,
        ErrorCode,
        FrameError,
        IdentityError,
        LocalProtocolError,
        NotAcknowledged,
        NotTransmitted,
        PairingFailed,
        PeerUnreachable,
        ProtocolError,
        QuicpairError,
        RegistryError,
        RemoteProtocolError,
        SealError,
        UsageError,
    )
    from quicpair.protocol.identity import NodeId

__all__ = [
    "AddressInUse",
    "CodeFormatError",
    "ConfigError",
    "Device",
    "ErrorCode",
    "FrameError",
    "IdentityError",
    "LocalProtocolError",
    "Node",
    "NodeId",
    "NotAcknowledged",
    "NotTransmitted",
    "PairingFailed",
    "PairingOffer",
    "PeerUnreachable",
    "ProtocolError",
    "QuicpairError",
    "RegistryError",
    "RemoteProtocolError",
    "SealError",
    "Settings",
    "UsageError",
    "__version__",
    "load_settings",
]

#: Where each public name is defined (imported on first access, PEP 562).
_HOMES = {
    "Node": "quicpair.actors.node",
    "Device": "quicpair.actors.pairing.device",
    "PairingOffer": "quicpair.actors.pairing.device",
    "Settings": "quicpair.config.settings",
    "load_settings": "quicpair.config.settings",
    "NodeId": "quicpair.protocol.identity",
    **{
        name: "quicpair.protocol.errors"
        for name in __all__
        if name.endswith("Error")
        or name in ("AddressInUse", "ErrorCode", "PairingFailed", "PeerUnreachable")
        or name in ("NotAcknowledged", "NotTransmitted")
    },
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import version

        value: Any = version("quicpair")
    elif name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
    else:
        raise AttributeError(f"module 'quicpair' has no attribute {name!r}")
    globals()[name] = value  # once loaded, a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
