"""Pairing: the node's UDP port actor, one session actor per pairing, and what the API hands out.

Owns the listener actor (the port; connections routed by ALPN: pairing ones
to a new initiator session, link ones to whoever owns links), the initiator
and joiner session actors (ONE connection, ONE stream each, running the
protocol/pairing machines), and ``Device``/``PairingOffer``. Pairing never
imports links: it reaches them only through the node context.

May import: quicpair.actors.kernel, quicpair.actors.transport, quicpair.actors.registry,
quicpair.actors.context, quicpair.config, quicpair.protocol
"""

__all__: list[str] = []
