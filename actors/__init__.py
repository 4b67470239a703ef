"""quicpair's runtime: the actors that own every socket, file and timer of a node.

The public entry point is :class:`Node`::

    from actors import Node
    with Node("/var/lib/quicpair") as node:
        offer = node.pair()
"""

from .device import Device, PairingOffer
from .node import Node

__all__ = ["Device", "Node", "PairingOffer"]
