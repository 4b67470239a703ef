"""The device registry: one SQLite file in the node's home, and the actor that owns it.

Owns the file and its only connection: the schema and safe opening
(``file``), the records and their transactions (``store``), and the
ThreadingActor that keeps every disk write off the event loop (``actor``).

May import: quicpair.actors.kernel, quicpair.protocol
"""

__all__: list[str] = []
