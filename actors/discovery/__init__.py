"""mDNS discovery: the node's advertisement and lookups on the local network.

Owns the zeroconf instance and its multicast sockets: advertising, resolving
NodeIds and nameplates, watching announcements (``mdns``), and the actor that
runs it for a node and passes announcements of paired peers on as hints
(``actor``). The TXT record itself is pure and lives in protocol/advert.py.

May import: quicpair.actors.kernel, quicpair.actors.context, quicpair.protocol
"""

__all__: list[str] = []
