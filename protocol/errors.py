"""The one error tree of quicpair, and the wire codes it is built on.

Every error quicpair raises derives from :class:`QuicpairError`. Errors that
cross the wire carry an :class:`ErrorCode`, so a rejection, a stream reset or
a connection close is built straight from the exception, and the peer's
code is turned back into the same exception class on the other side::

    QuicpairError
    ├── ProtocolError                 (has .code: ErrorCode)
    │   ├── LocalProtocolError        we were asked to do something the protocol forbids
    │   └── RemoteProtocolError       the peer sent something the protocol forbids
    │       ├── FrameError            bytes that are not a valid frame or message
    │       └── SealError             a sealed message that fails to open (tampered, replayed)
    ├── PairingFailed                 a pairing ended without a device (has .code)
    ├── CodeFormatError               a code or pairing URI a person typed is not valid
    ├── UsageError                    a request that cannot work as given (own address, nothing to dial)
    ├── IdentityError                 an identity key file is missing, unreadable or unsafe
    ├── RegistryError                 the device registry cannot be used (corrupt, newer schema)
    ├── PeerUnreachable               no address of a peer answered
    │   ├── NotTransmitted            a send never left: dropped, never sent later
    │   └── NotAcknowledged           a send left but was not acknowledged: it may have arrived
    └── ConfigError                   a settings file or value is invalid
        └── AddressInUse              the UDP port is taken by another program

Docstrings of the classes are written for the person who reads them in the
command line's output.
"""

from __future__ import annotations

import enum

__all__ = [
    "AddressInUse",
    "CodeFormatError",
    "ConfigError",
    "ErrorCode",
    "FrameError",
    "IdentityError",
    "LocalProtocolError",
    "NotAcknowledged",
    "NotTransmitted",
    "PairingFailed",
    "PeerUnreachable",
    "ProtocolError",
    "QuicpairError",
    "RegistryError",
    "RemoteProtocolError",
    "SealError",
    "UsageError",
    "describe_code",
]


class ErrorCode(enum.IntEnum):
    """Application error codes: in PairReject, QUIC RESET_STREAM and CONNECTION_CLOSE.

    The values are QUIC varints (RFC 9000 20.2 leaves application codes to
    the application). Codes below 0x10 are not faults.
    """

    NO_ERROR = 0x00
    #: The sender is shutting down or leaving on purpose; not a fault, do not back off hard.
    GOING_AWAY = 0x01
    #: The loser of two simultaneous connections between the same pair; not a fault.
    DUPLICATE_CONNECTION = 0x02
    #: The peer unpaired us; the link will not come back.
    UNPAIRED = 0x03
    #: The peer lost the connection's state: it answered with a QUIC stateless reset (RFC 9000
    #: 10.3), because it restarted. Never sent on the wire (a reset carries no code); reported
    #: locally, and not a fault: redial at once.
    PEER_RESTARTED = 0x04

    #: Something went wrong inside the sender (for example its session actor crashed).
    INTERNAL_ERROR = 0x10
    #: A message that is valid on its own arrived where the protocol does not allow it.
    PROTOCOL_VIOLATION = 0x11
    #: A frame announced a length above the hard maximum.
    FRAME_TOO_LARGE = 0x12
    #: A frame body is not a well-formed message (bad msgpack, wrong or missing field, trailing bytes).
    MALFORMED_MESSAGE = 0x13
    #: A frame carries a message type this version does not know.
    UNKNOWN_MESSAGE = 0x14
    #: The frame or request is of a protocol version the receiver does not speak.
    UNSUPPORTED_VERSION = 0x15
    #: A step of the exchange did not happen within its time bound.
    TIMEOUT = 0x16
    #: The pairing was abandoned before both sides committed; neither side keeps it.
    ABORTED = 0x17
    #: The sender could not store what the step needs (its disk is full or failing); nothing was kept.
    STORAGE_ERROR = 0x18

    #: Key confirmation failed: the code was wrong, or someone is in the middle.
    WRONG_CODE = 0x20
    #: The code's lifetime has passed.
    CODE_EXPIRED = 0x21
    #: The code was already used, or burned after too many wrong attempts.
    CODE_USED_UP = 0x22
    #: No open code has this nameplate on the node that was reached.
    NO_SUCH_CODE = 0x23
    #: The node is at its limit of concurrent pairings, or this code is being tried right now.
    BUSY = 0x24
    #: A person said the SAS words on the two devices differ: someone may be in the middle.
    SAS_REFUSED = 0x25
    #: The code was closed on the device that showed it (cancelled, or its `pair` stopped).
    CODE_CANCELLED = 0x26

    #: The peer's NodeId is not a paired device here.
    UNKNOWN_PEER = 0x30
    #: The peer presented a different identity than the one that was pinned.
    IDENTITY_MISMATCH = 0x31
    #: A sealed message failed authentication (tampered, or wrong key).
    DECRYPT_FAILED = 0x32
    #: A sealed message arrived twice or out of order.
    REPLAYED = 0x33
    #: The two sides link with different pairings (a re-pair whose outcome one side has not
    #: learned yet): the side in doubt resolves it (PairResolve) and the link comes back.
    PAIRING_MISMATCH = 0x34

    @property
    def is_fault(self) -> bool:
        """True when a close with this code should be treated as a failure."""
        return self >= 0x10


_DESCRIPTIONS: dict[ErrorCode, str] = {
    ErrorCode.NO_ERROR: "no error",
    ErrorCode.GOING_AWAY: "the peer is going away",
    ErrorCode.DUPLICATE_CONNECTION: "duplicate connection closed",
    ErrorCode.UNPAIRED: "the peer unpaired this device",
    ErrorCode.PEER_RESTARTED: "the peer restarted (stateless reset)",
    ErrorCode.INTERNAL_ERROR: "internal error on the peer",
    ErrorCode.PROTOCOL_VIOLATION: "protocol violation",
    ErrorCode.FRAME_TOO_LARGE: "frame too large",
    ErrorCode.MALFORMED_MESSAGE: "malformed message",
    ErrorCode.UNKNOWN_MESSAGE: "unknown message type",
    ErrorCode.UNSUPPORTED_VERSION: "unsupported protocol version",
    ErrorCode.TIMEOUT: "timed out",
    ErrorCode.ABORTED: "pairing aborted; nothing was stored",
    ErrorCode.STORAGE_ERROR: "could not store the pairing (the disk may be full); nothing was kept",
    ErrorCode.WRONG_CODE: "wrong code (or someone in the middle)",
    ErrorCode.CODE_EXPIRED: "the code has expired",
    ErrorCode.CODE_USED_UP: "the code is used up (already used, or burned after too many failed attempts)",
    ErrorCode.NO_SUCH_CODE: "no such code on that device",
    ErrorCode.BUSY: "busy, try again",
    ErrorCode.SAS_REFUSED: "the SAS words were refused: they differ, someone may be in the middle",
    ErrorCode.CODE_CANCELLED: "the code was cancelled on the device that showed it",
    ErrorCode.UNKNOWN_PEER: "not a paired device",
    ErrorCode.IDENTITY_MISMATCH: "the peer is not the device that was expected",
    ErrorCode.DECRYPT_FAILED: "a sealed message failed authentication",
    ErrorCode.REPLAYED: "a sealed message was replayed or reordered",
    ErrorCode.PAIRING_MISMATCH: "the two devices hold different pairings (a re-pair is being resolved)",
}


def describe_code(code: int) -> str:
    """A short human text for any code, including ones this version does not know."""
    try:
        return _DESCRIPTIONS[ErrorCode(code)]
    except ValueError:
        return f"unknown error code 0x{code:x}"


class QuicpairError(Exception):
    """Something quicpair could not do; the message says what and why."""


class ProtocolError(QuicpairError):
    """A protocol rule was broken; ``code`` is what goes on the wire."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __str__(self) -> str:
        return f"{self.args[0]} [{self.code.name}]"


class LocalProtocolError(ProtocolError):
    """This node was asked to do something the protocol forbids (a bug in the caller)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids; the stream or connection is closed."""


class FrameError(RemoteProtocolError):
    """Bytes received from the peer are not a valid quicpair frame or message."""


class SealError(RemoteProtocolError):
    """A sealed message from the peer was tampered with, replayed or reordered."""


class PairingFailed(QuicpairError):
    """The pairing did not complete; nothing was stored on this device.

    ``code`` says why (wrong code, expired, used up, busy, timeout...), and
    ``remote`` whether the peer reported it or we decided it.
    """

    def __init__(self, code: ErrorCode, message: str | None = None, *, remote: bool = False) -> None:
        super().__init__(message or describe_code(code))
        self.code = code
        self.remote = remote

    def __str__(self) -> str:
        return f"pairing failed: {self.args[0]} [{self.code.name}]"


class CodeFormatError(QuicpairError, ValueError):
    """The pairing code or URI is not valid; check it and type it again."""


class UsageError(QuicpairError, ValueError):
    """The request cannot work as given; the message says what to give instead."""


class IdentityError(QuicpairError):
    """The node's identity key cannot be used (missing, unreadable, or readable by others)."""


class RegistryError(QuicpairError):
    """The device registry cannot be used; it was left untouched."""


class PeerUnreachable(QuicpairError):
    """No address of the peer answered in time.

    ``refused``: the peer's host answered that nothing listens there (ICMP port
    unreachable), which is worth moving on at once rather than waiting.
    """

    def __init__(self, message: str = "", *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


class NotTransmitted(PeerUnreachable):
    """The message was never sent: the link did not come up in time; it was dropped, never sent later."""


class NotAcknowledged(PeerUnreachable):
    """The message was sent but the other device did not confirm it in time: it may have arrived.

    It will not be sent again.
    """


class ConfigError(QuicpairError, ValueError):
    """A setting is invalid; the message names the setting and what is allowed."""


class AddressInUse(ConfigError):
    """Another program already uses this UDP port; stop it, or listen on another port."""
