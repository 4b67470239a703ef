"""quicpair's runtime: the actors that own every socket, file and timer of a node.

``node.py`` is the one door (:class:`~quicpair.actors.node.Node`); ``context.py``
is what the node's actors share. The sub-packages own one resource each:

- ``kernel``: the event-loop thread, actors on it, supervision, backoff, counters, logs
- ``transport``: UDP sockets and QUIC connections, identities pinned in TLS
- ``registry``: the SQLite registry file and its actor
- ``discovery``: mDNS
- ``pairing``: the listener actor (the node's port) and the pairing sessions
- ``links``: the reconnection supervisor and one link worker per paired device

Each sub-package's docstring says what it may import; tests/test_layers.py
checks it. Modules directly here (``node``, ``context``) may import any of them.

May import: quicpair.actors, quicpair.config, quicpair.protocol
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from quicpair.actors.node import Node
    from quicpair.actors.pairing.device import Device, PairingOffer

__all__ = ["Device", "Node", "PairingOffer"]

_HOMES = {
    "Node": "quicpair.actors.node",
    "Device": "quicpair.actors.pairing.device",
    "PairingOffer": "quicpair.actors.pairing.device",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'quicpair.actors' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value
