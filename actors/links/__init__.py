"""Paired links: the reconnection supervisor, one worker per paired device, and their parts.

Owns every link connection after pairing: the supervisor that admits peers
and runs one worker each (``supervisor``), the worker (``worker``), one
connection and its channel (``conn``), which of two is kept (``choice``),
dial rounds (``dial``), sends waiting for a link (``outbox``), delivered
messages (``inbox``) and the messages between them (``messages``). Links never
import pairing; discovery reaches them through the node context.

May import: quicpair.actors.kernel, quicpair.actors.transport, quicpair.actors.registry,
quicpair.actors.context, quicpair.config, quicpair.protocol
"""

__all__: list[str] = []
