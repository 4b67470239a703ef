"""The quicpair mDNS TXT record, pure: what a node says about itself (RFC 6763 6).

actors/discovery/mdns.py puts it on the wire; this module only encodes and
decodes it, so it can be tested (and fuzzed) without a network. The record
is a list of ``key=value`` strings::

    v=1                      the TXT format version
    id=<NodeId text>         who this is (52 base32 characters)
    b=<8 hex digits>         the boot id: random, drawn anew each time discovery starts
    np=<n>[,<n>...]          the nameplates of the pairing codes open right now

Nothing derived from a code's secret words is ever advertised: a nameplate
only says "this node has a code open", as on the code's own first field.
The boot id carries nothing secret either: 32 fresh random bits, derived from
no key, that only say "this is a new start of that node". A node SIGKILLed
and restarted at the same address and port publishes otherwise identical
records, so without it nobody could tell the restart from a refresh; with it
``Discovery.watch`` fires and the dialer reaches the restarted node at once
instead of after its QUIC idle timeout. An advert without ``b`` (an older
node) is still valid; its restarts are simply not visible.

Decoding is strict about what it knows and tolerant of what it does not:
unknown keys are ignored (later versions may add some), a malformed known
key rejects the whole advert.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from dataclasses import dataclass

from .errors import ErrorCode, RemoteProtocolError
from .identity import NodeId

__all__ = [
    "BOOT_ID_LENGTH",
    "MAX_NAMEPLATES",
    "SERVICE_TYPE",
    "TXT_VERSION",
    "Advert",
    "decode_txt",
    "encode_txt",
    "format_endpoint",
    "instance_name",
    "new_boot_id",
]

SERVICE_TYPE = "_quicpair._udp.local."
TXT_VERSION = "1"
#: One TXT string holds at most 255 bytes (RFC 6763 6.1): "np=" + 40 x "9999," fits (202).
MAX_NAMEPLATES = 40
_NAMEPLATE_MAX = 9999  # nameplates are 1..9999 (the pairing code's first field)
#: Hex digits of a boot id: 32 random bits make two starts of one node collide
#: with odds 2^-32, and a collision only costs the hint of that one restart.
BOOT_ID_LENGTH = 8
_HEX = frozenset(b"0123456789abcdef")


@dataclass(frozen=True, slots=True)
class Advert:
    """What a node's TXT record says about it."""

    #: The node that claims this advert (a hint: the handshake proves it).
    node_id: NodeId
    #: Nameplates of the pairing codes open on that node.
    nameplates: frozenset[int]
    #: The node's boot id (changes at each start), None from a node that sends none.
    boot: str | None = None


def instance_name(node_id: NodeId) -> str:
    """The DNS-SD instance label a node advertises under, e.g. ``quicpair-abcd-efgh``."""
    return f"quicpair-{node_id.fingerprint}"


def new_boot_id(rand: Callable[[int], bytes] = os.urandom) -> str:
    """A fresh boot id: :data:`BOOT_ID_LENGTH` lowercase hex digits of ``rand``."""
    return rand(BOOT_ID_LENGTH // 2).hex()


def _is_boot_id(raw: bytes) -> bool:
    return len(raw) == BOOT_ID_LENGTH and set(raw) <= _HEX


def encode_txt(node_id: NodeId, nameplates: Collection[int] = (), boot: str | None = None) -> bytes:
    """The TXT rdata for a node (RFC 6763 6.1 strings); ``np`` only while a code is open."""
    if boot is not None and not (boot.isascii() and _is_boot_id(boot.encode("ascii"))):
        raise ValueError(f"a boot id is {BOOT_ID_LENGTH} lowercase hex digits, not {boot!r}")
    plates = sorted(set(nameplates))
    if len(plates) > MAX_NAMEPLATES:
        raise ValueError(f"at most {MAX_NAMEPLATES} nameplates fit in one TXT string, got {len(plates)}")
    for plate in plates:
        if isinstance(plate, bool) or not isinstance(plate, int) or not 1 <= plate <= _NAMEPLATE_MAX:
            raise ValueError(f"a nameplate is an integer 1..{_NAMEPLATE_MAX}, not {plate!r}")
    items = [f"v={TXT_VERSION}", f"id={node_id.text}"]
    if boot is not None:
        items.append(f"b={boot}")
    if plates:
        items.append("np=" + ",".join(str(p) for p in plates))
    return b"".join(bytes([len(item)]) + item.encode("ascii") for item in items)


def _bad(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(ErrorCode.MALFORMED_MESSAGE, f"bad quicpair TXT record: {message}")


def decode_txt(rdata: bytes) -> Advert:
    """Parse TXT rdata from the network into an :class:`Advert`.

    Keys are case-insensitive and only a key's first occurrence counts (RFC
    6763 6.4); unknown keys are ignored so later versions can add some.
    Anything else that is wrong (truncated strings, missing or malformed
    ``v``/``id``, malformed ``b``/``np``) raises RemoteProtocolError:
    MALFORMED_MESSAGE, or UNSUPPORTED_VERSION for another ``v``. ``b`` and
    ``np`` are optional (an older node sends no ``b``).
    """
    fields: dict[str, bytes | None] = {}
    pos = 0
    while pos < len(rdata):
        end = pos + 1 + rdata[pos]
        if end > len(rdata):
            raise _bad("a string runs past the end of the record")
        key, sep, value = rdata[pos + 1 : end].partition(b"=")
        pos = end
        if key:
            fields.setdefault(key.decode("ascii", "replace").lower(), value if sep else None)
    version = fields.get("v")
    if version is None:
        raise _bad("no v=")
    if version != TXT_VERSION.encode():
        raise RemoteProtocolError(ErrorCode.UNSUPPORTED_VERSION, f"quicpair TXT version {version[:16]!r}")
    raw_id = fields.get("id")
    if raw_id is None:
        raise _bad("no id=")
    try:
        node_id = NodeId.from_text(raw_id.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad(f"id= is not a NodeId ({exc})") from exc
    boot: str | None = None
    if "b" in fields:
        raw_boot = fields["b"]
        if raw_boot is None or not _is_boot_id(raw_boot):
            shown = None if raw_boot is None else raw_boot[:16]
            raise _bad(f"b= is not {BOOT_ID_LENGTH} lowercase hex digits: {shown!r}")
        boot = raw_boot.decode("ascii")
    plates: frozenset[int] = _decode_nameplates(fields["np"]) if "np" in fields else frozenset()
    return Advert(node_id, plates, boot)


def _decode_nameplates(raw: bytes | None) -> frozenset[int]:
    if not raw:
        raise _bad("np= without a value")
    parts = raw.split(b",")
    if len(parts) > MAX_NAMEPLATES:
        raise _bad(f"more than {MAX_NAMEPLATES} nameplates")
    plates = set()
    for part in parts:
        # Canonical decimal only: no sign, blanks, leading zeros or non-ASCII digits.
        if not (part.isascii() and part.isdigit() and part[:1] != b"0" and len(part) <= 4):
            raise _bad(f"nameplate {part[:8]!r} is not 1..{_NAMEPLATE_MAX}")
        plates.add(int(part))
    return frozenset(plates)


def format_endpoint(host: str, port: int) -> str:
    """``host:port`` with IPv6 in brackets (``[fe80::1%2]:4433``), as dialers take it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
