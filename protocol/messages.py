"""Every message quicpair puts on the wire, as frozen, slotted dataclasses.

Each class has a fixed integer ``TAG``. The encoding (docs/PROTOCOL.md,
"Frames") is a msgpack array ``[version, tag, {field: value}]`` behind a
4-byte length; :mod:`protocol.framing` encodes and strictly decodes it.

Field limits are declared next to the field (``meta(...)``) so the decoder,
the encoder and the spec all read them from one place:

* ``size``: the exact length of a bytes field;
* ``max``:  the maximum length of a bytes/str field, or of a list;
* ``item_max``: the maximum length of each string in a list.

Pairing messages travel on the one stream of a pairing connection (ALPN
``quicpair/pair/1``); link messages on the one stream of a link connection
(ALPN ``quicpair/link/1``). Sealed payloads (``DeviceInfo`` and the ``Link*``
inner messages) are encoded with the same codec, then sealed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = [
    "ALPN_LINK",
    "ALPN_PAIR",
    "FLAG_VERIFY_SAS",
    "KEY_ID_SIZE",
    "MAC_SIZE",
    "MAX_ADDRESSES",
    "MAX_ADDRESS_LEN",
    "MAX_APP_PAYLOAD",
    "MAX_NAME_LEN",
    "MESSAGE_TYPES",
    "NONCE_SIZE",
    "PAKE_MESSAGE_SIZE",
    "PROTOCOL_VERSION",
    "DeviceInfo",
    "LinkAck",
    "LinkAddresses",
    "LinkAppData",
    "LinkHello",
    "LinkInner",
    "LinkSealed",
    "LinkUnpair",
    "Message",
    "PairChallenge",
    "PairCommit",
    "PairComplete",
    "PairDone",
    "PairReject",
    "PairRequest",
    "PairResolve",
    "PairResponse",
    "PairSasConfirmed",
    "PairingMessage",
    "meta",
]

#: The version in every frame; also the ``/1`` of the ALPNs.
PROTOCOL_VERSION = 1
#: ALPN of a pairing connection (one stream, the SPAKE2 exchange).
ALPN_PAIR = f"quicpair/pair/{PROTOCOL_VERSION}"
#: ALPN of the long-lived link between two paired nodes.
ALPN_LINK = f"quicpair/link/{PROTOCOL_VERSION}"
#: A SPAKE2 message over Ed25519: one side byte and a 32-byte group element.
PAKE_MESSAGE_SIZE = 33
#: HMAC-SHA256 output.
MAC_SIZE = 32
#: Fresh randomness in a link hello.
NONCE_SIZE = 32
#: A pairing's key id in a link hello: which pairing (hence which secret) a side links with.
KEY_ID_SIZE = 8
MAX_ADDRESSES = 16
#: ``[ipv6%scope]:port`` fits in 64 characters.
MAX_ADDRESS_LEN = 64
MAX_NAME_LEN = 128
#: Leaves room for the frame, seal and msgpack overhead under the 64 KiB frame limit.
MAX_APP_PAYLOAD = 60_000
_MAX_SEALED = 65_000
#: ``flags`` bit of PairChallenge and PairResponse: the sender's person will compare the
#: SAS words before anything is stored, so both sides confirm them (PairSasConfirmed).
FLAG_VERIFY_SAS = 0x1


def meta(*, size: int | None = None, max: int | None = None, item_max: int | None = None) -> Any:
    """Declare a field's limits (see the module docstring)."""
    info: dict[str, int] = {}
    if size is not None:
        info["size"] = size
    if max is not None:
        info["max"] = max
    if item_max is not None:
        info["item_max"] = item_max
    return field(metadata=info)


# -- pairing (ALPN quicpair/pair/1) -------------------------------------------


@dataclass(frozen=True, slots=True)
class PairRequest:
    """Joiner -> initiator, first message: which code, and the joiner's PAKE message."""

    TAG: ClassVar[int] = 1
    #: The public part of the code, naming which open code the joiner holds.
    nameplate: int
    #: The joiner's SPAKE2 message (side B).
    pake: bytes = meta(size=PAKE_MESSAGE_SIZE)


@dataclass(frozen=True, slots=True)
class PairChallenge:
    """Initiator -> joiner: the initiator's PAKE message and key confirmation."""

    TAG: ClassVar[int] = 2
    #: The initiator's SPAKE2 message (side A).
    pake: bytes = meta(size=PAKE_MESSAGE_SIZE)
    #: HMAC proving the initiator derived the same key (label ``confirm initiator``).
    confirm: bytes = meta(size=MAC_SIZE)
    #: Bit 0 (FLAG_VERIFY_SAS): the initiator asks that both people confirm the SAS.
    #: Unknown bits are ignored.
    flags: int = meta()


@dataclass(frozen=True, slots=True)
class PairResponse:
    """Joiner -> initiator: the joiner's key confirmation and its sealed DeviceInfo."""

    TAG: ClassVar[int] = 3
    #: HMAC proving the joiner derived the same key (label ``confirm joiner``).
    confirm: bytes = meta(size=MAC_SIZE)
    #: DeviceInfo sealed with the joiner's send key, sequence 0.
    sealed: bytes = meta(max=_MAX_SEALED)
    #: Bit 0 (FLAG_VERIFY_SAS): the joiner asks that both people confirm the SAS.
    flags: int = meta()


@dataclass(frozen=True, slots=True)
class PairSasConfirmed:
    """Either way, only when a side asked for it: the person here confirmed the SAS words.

    Sent after key confirmation and before anything is stored; each side stores
    the pairing only once its own person and the peer's have confirmed.
    """

    TAG: ClassVar[int] = 10
    #: HMAC over the transcript (label ``sas confirmed initiator`` or ``... joiner``).
    mac: bytes = meta(size=MAC_SIZE)


@dataclass(frozen=True, slots=True)
class PairComplete:
    """Initiator -> joiner: the initiator's sealed DeviceInfo.

    Sent once the initiator has stored the joiner as pending.
    """

    TAG: ClassVar[int] = 4
    #: DeviceInfo sealed with the initiator's send key, sequence 0.
    sealed: bytes = meta(max=_MAX_SEALED)


@dataclass(frozen=True, slots=True)
class PairDone:
    """Joiner -> initiator: the joiner has durably stored the initiator as pending (it votes commit)."""

    TAG: ClassVar[int] = 5
    #: HMAC over the transcript (label ``done``).
    mac: bytes = meta(size=MAC_SIZE)


@dataclass(frozen=True, slots=True)
class PairCommit:
    """Initiator -> joiner: the initiator has durably committed; the joiner commits too."""

    TAG: ClassVar[int] = 6
    #: HMAC over the transcript (label ``commit``).
    mac: bytes = meta(size=MAC_SIZE)


@dataclass(frozen=True, slots=True)
class PairReject:
    """Either way: the pairing ends here, with a code; the sender stores nothing."""

    TAG: ClassVar[int] = 7
    #: An ErrorCode value.
    code: int
    #: A short human explanation; never trusted for decisions.
    reason: str = meta(max=256)


@dataclass(frozen=True, slots=True)
class PairResolve:
    """Joiner -> initiator, on a new pairing connection: "did you commit pairing X?".

    Sent only by a joiner left in doubt (it voted with PairDone but never
    received PairCommit). Answered with PairCommit or PairReject(ABORTED).
    """

    TAG: ClassVar[int] = 9
    #: The pairing's id (its transcript hash).
    pairing_id: bytes = meta(size=MAC_SIZE)
    #: The same proof as in PairDone: the joiner holds the pairing secret.
    mac: bytes = meta(size=MAC_SIZE)


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What a device tells its new peer about itself (sealed inside Response/Complete)."""

    TAG: ClassVar[int] = 8
    #: A human name, e.g. "alice-laptop".
    name: str = meta(max=MAX_NAME_LEN)
    #: Direct addresses ``host:port`` (IPv6 as ``[addr]:port``) where it listens.
    addresses: list[str] = meta(max=MAX_ADDRESSES, item_max=MAX_ADDRESS_LEN)


# -- link (ALPN quicpair/link/1) -----------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkHello:
    """First message each way on a link stream: fresh nonce, which pairing, current addresses."""

    TAG: ClassVar[int] = 16
    #: 32 fresh random bytes; both nonces feed the per-connection keys.
    nonce: bytes = meta(size=NONCE_SIZE)
    #: The key id of the pairing the sender links with (``protocol.keys.key_id``); two sides
    #: whose ids differ hold different pairings (a re-pair in doubt): no key could match.
    pairing: bytes = meta(size=KEY_ID_SIZE)
    #: The sender's current direct addresses.
    addresses: list[str] = meta(max=MAX_ADDRESSES, item_max=MAX_ADDRESS_LEN)


@dataclass(frozen=True, slots=True)
class LinkSealed:
    """Every link message after the hellos: one inner message, sealed."""

    TAG: ClassVar[int] = 17
    #: Sender's sequence number, 0, 1, 2... in this connection and direction.
    seq: int
    #: ChaCha20-Poly1305 ciphertext and tag of the encoded inner message.
    box: bytes = meta(max=_MAX_SEALED)


@dataclass(frozen=True, slots=True)
class LinkAppData:
    """Inner: an application payload for ``Node.send``, numbered for acknowledged delivery."""

    TAG: ClassVar[int] = 18
    #: The sender's delivery sequence number for this pairing and direction: increasing, never
    #: reused (across connections and restarts of the sender), with gaps allowed.
    seq: int
    #: The payload, exactly as the application passed it.
    data: bytes = meta(max=MAX_APP_PAYLOAD)


@dataclass(frozen=True, slots=True)
class LinkAddresses:
    """Inner: the sender's direct addresses changed."""

    TAG: ClassVar[int] = 19
    addresses: list[str] = meta(max=MAX_ADDRESSES, item_max=MAX_ADDRESS_LEN)


@dataclass(frozen=True, slots=True)
class LinkUnpair:
    """Inner: the sender removed this pairing; the receiver removes it too and closes."""

    TAG: ClassVar[int] = 20


@dataclass(frozen=True, slots=True)
class LinkAck:
    """Inner: cumulative acknowledgement of the peer's LinkAppData.

    Every payload with a sequence number at most ``upto`` has been received by the sender's
    node, which has durably recorded ``upto`` (so it never delivers those twice).
    """

    TAG: ClassVar[int] = 21
    #: The highest LinkAppData sequence number taken from the peer for this pairing.
    upto: int


PairingMessage = (
    PairRequest
    | PairChallenge
    | PairResponse
    | PairComplete
    | PairDone
    | PairCommit
    | PairReject
    | PairResolve
    | PairSasConfirmed
)
LinkInner = LinkAppData | LinkAddresses | LinkUnpair | LinkAck
Message = PairingMessage | DeviceInfo | LinkHello | LinkSealed | LinkInner

MESSAGE_TYPES: dict[int, type[Any]] = {
    cls.TAG: cls
    for cls in (
        PairRequest,
        PairChallenge,
        PairResponse,
        PairComplete,
        PairDone,
        PairCommit,
        PairReject,
        PairResolve,
        PairSasConfirmed,
        DeviceInfo,
        LinkHello,
        LinkSealed,
        LinkAppData,
        LinkAddresses,
        LinkUnpair,
        LinkAck,
    )
}
