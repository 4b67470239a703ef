"""The QUIC transport: endpoints, identities pinned in TLS, and the one link-to-actor adapter.

Owns every UDP socket and QUIC connection: dialing (``dial``), the listening
port and its flood defences (``listener``), the socket both use (``udp``),
mutual TLS pinned to Ed25519 NodeIds through aioquic's private hooks
(``tls``), one verified connection (``quic_link.QuicLink``), and the adapter
that turns a QuicLink's events into messages to the actor that owns it
(``events``), used by pairing sessions and link workers alike.
It knows nothing of pairing, links or the registry.

May import: quicpair.actors.kernel, quicpair.protocol
"""

__all__: list[str] = []
