"""The restart notice: one datagram by which a restarted node tells a paired peer "I am back".

The dial rule (protocol/dialrule.py) has only the lower NodeId dial. When the *other* node,
the one that waits, restarts, the dialer would otherwise learn of it only when its old
connection fails (a stateless reset at its next packet, at worst the dead-peer bound). So the
waiting node, as it starts, sends each peer it waits for one notice per known address of that
peer, from its own QUIC port (docs/PROTOCOL.md §11.6)::

    notice = 0x00 ‖ "qpRN" ‖ version (1 byte, 1) ‖ sender NodeId (32) ‖ boot (8) ‖ tag (16)
    tag    = HMAC(restart_notice_key(pairing_secret),
                  0x00 ‖ "qpRN" ‖ version ‖ sender ‖ receiver NodeId ‖ boot)[:16]

The first byte has the QUIC fixed bit (0x40) clear, so no QUIC packet is ever a notice and a
QUIC stack drops a notice (RFC 9000 17.2, 17.3); a node demultiplexes it on its port before
QUIC sees it. ``boot`` is random per start. The tag binds both NodeIds and needs the
pairing's secret: nobody else can make one. A replayed notice can make the dialer check its
connection (one PING) or dial once, never more than once per second per peer, and never
replace a connection that answers; that is all a notice can cause.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from .identity import NodeId
from .keys import hmac_sha256, restart_notice_key

__all__ = [
    "BOOT_SIZE",
    "MAGIC",
    "NOTICE_SIZE",
    "TAG_SIZE",
    "VERSION",
    "RestartNotice",
    "is_notice",
    "make_notice",
]

#: Leads every notice: a first byte with the QUIC fixed bit clear, then "qpRN".
MAGIC = b"\x00qpRN"
VERSION = 1
BOOT_SIZE = 8
TAG_SIZE = 16
_ID_SIZE = 32
NOTICE_SIZE = len(MAGIC) + 1 + _ID_SIZE + BOOT_SIZE + TAG_SIZE


def is_notice(datagram: bytes) -> bool:
    """True when ``datagram`` is shaped like a notice (size and magic): worth a table lookup."""
    return len(datagram) == NOTICE_SIZE and datagram.startswith(MAGIC)


def _signed(sender: NodeId, receiver: NodeId, boot: bytes) -> bytes:
    return MAGIC + bytes([VERSION]) + sender.raw + receiver.raw + boot


def make_notice(pairing_secret: bytes, sender: NodeId, receiver: NodeId, boot: bytes) -> bytes:
    """The notice ``sender`` sends ``receiver`` at the start whose random id is ``boot``."""
    if len(boot) != BOOT_SIZE:
        raise ValueError(f"boot is {BOOT_SIZE} bytes")
    tag = hmac_sha256(restart_notice_key(pairing_secret), _signed(sender, receiver, boot))[:TAG_SIZE]
    return MAGIC + bytes([VERSION]) + sender.raw + boot + tag


@dataclass(frozen=True, slots=True)
class RestartNotice:
    """A notice as received, before its tag is checked (:meth:`verify`)."""

    #: Who says it restarted (unproven until :meth:`verify`).
    sender: NodeId
    #: The sender's random id of its start.
    boot: bytes
    #: The tag as received.
    tag: bytes

    @classmethod
    def parse(cls, datagram: bytes) -> RestartNotice | None:
        """The notice in ``datagram``, or None if it is not one this version reads."""
        if not is_notice(datagram) or datagram[len(MAGIC)] != VERSION:
            return None
        at = len(MAGIC) + 1
        try:
            sender = NodeId(datagram[at : at + _ID_SIZE])
        except ValueError:
            return None
        boot = datagram[at + _ID_SIZE : at + _ID_SIZE + BOOT_SIZE]
        return cls(sender, boot, datagram[-TAG_SIZE:])

    def verify(self, pairing_secret: bytes, receiver: NodeId) -> bool:
        """True when the tag proves the sender holds the pairing with ``receiver`` (constant time)."""
        signed = _signed(self.sender, receiver, self.boot)
        expected = hmac_sha256(restart_notice_key(pairing_secret), signed)[:TAG_SIZE]
        return hmac.compare_digest(expected, self.tag)
