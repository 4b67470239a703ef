"""SPAKE2 behind a small typed interface: the only way a pairing code becomes a key.

The PAKE is SPAKE2 over Ed25519 from the ``spake2`` package (the reference
implementation magic-wormhole uses). The initiator is side A and the joiner
side B; the identities are the two NodeIds *as each side saw them in the TLS
handshake*, so a relay presenting its own NodeId on either side makes the two
keys differ and key confirmation fails (docs/PROTOCOL.md, "Key schedule").

Someone who does not know the code learns nothing from the messages: they
cannot test guesses offline, only by running the protocol, once per guess,
against a node that counts the attempt (``protocol.codebook``).

``spake2`` is untyped and raises its own exceptions, ``ValueError`` and
``NotOnCurve`` on bad points; :class:`Spake2` converts all of them at this
boundary. A peer message is also held to the strict form before ``spake2``
sees it: exactly 33 bytes, the expected side byte, and a canonical encoding of
a group element other than the identity. (``spake2`` 0.9 truncates longer
messages and accepts a non-canonical encoding of the identity element, which
would hand the transcript a second spelling of a degenerate point.)

States of one :class:`Spake2` (one transition table, :data:`_TRANSITIONS`)::

    S0_created --start--> S1_started --finish--> S2_finished
                                      \\--bad peer message--> S_failed
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, Protocol

from spake2 import SPAKE2_A, SPAKE2_B, SPAKEError
from spake2.ed25519_basic import NotOnCurve
from spake2.ed25519_group import Ed25519Group

from .errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from .identity import NodeId
from .keys import Role
from .messages import PAKE_MESSAGE_SIZE

__all__ = ["PAKE_KEY_SIZE", "Pake", "Spake2", "spake2_for"]

#: The SPAKE2 key K: SHA-256 of the SPAKE2 transcript.
PAKE_KEY_SIZE = 32

_SIDE_BYTE = {Role.INITIATOR: b"A", Role.JOINER: b"B"}


class Pake(Protocol):
    """One side of a password-authenticated key exchange, used exactly once."""

    def start(self) -> bytes:
        """Our message to send to the peer (33 bytes)."""
        ...

    def finish(self, peer_message: bytes) -> bytes:
        """The shared 32-byte key K, from the peer's message.

        Equal on both sides only if both used the same password and the same
        two identities.
        """
        ...


class _State(enum.Enum):
    S0_created = "S0_created"
    S1_started = "S1_started"
    S2_finished = "S2_finished"
    S_failed = "S_failed"


class _Event(enum.Enum):
    START = "start"
    FINISH = "finish"


#: The only legal moves; anything else is a LocalProtocolError naming role, state and event.
#: ``finish`` on a bad peer message leads to S_failed instead of S2_finished.
_TRANSITIONS: dict[tuple[_State, _Event], _State] = {
    (_State.S0_created, _Event.START): _State.S1_started,
    (_State.S1_started, _Event.FINISH): _State.S2_finished,
}


def _peer_protocol_error(role: Role, why: str) -> RemoteProtocolError:
    return RemoteProtocolError(ErrorCode.PROTOCOL_VIOLATION, f"PAKE ({role.value}): {why}")


class Spake2:
    """SPAKE2 for one role; see :func:`spake2_for`."""

    __slots__ = ("_impl", "_role", "_state")

    def __init__(
        self,
        role: Role,
        password: bytes,
        initiator: NodeId,
        joiner: NodeId,
        rand: Callable[[int], bytes],
    ) -> None:
        if not isinstance(password, bytes) or not password:
            raise ValueError("the PAKE password is non-empty bytes (the code's canonical secret)")
        if initiator == joiner:
            raise ValueError("initiator and joiner must be different nodes")
        side = SPAKE2_A if role is Role.INITIATOR else SPAKE2_B
        self._role = role
        self._state = _State.S0_created
        self._impl: Any = side(password, idA=initiator.raw, idB=joiner.raw, entropy_f=rand)

    def __repr__(self) -> str:
        return f"Spake2({self._role.value}, {self._state.value})"

    @property
    def role(self) -> Role:
        return self._role

    def _move(self, event: _Event) -> None:
        try:
            self._state = _TRANSITIONS[(self._state, event)]
        except KeyError:
            raise LocalProtocolError(
                ErrorCode.PROTOCOL_VIOLATION,
                f"PAKE ({self._role.value}) in state {self._state.value}: cannot {event.value}"
                " (a SPAKE2 instance is used exactly once)",
            ) from None

    def start(self) -> bytes:
        self._move(_Event.START)
        message = self._impl.start()
        if not isinstance(message, bytes) or len(message) != PAKE_MESSAGE_SIZE:
            # Would mean an incompatible spake2 release; setup.cfg pins 0.9.
            raise LocalProtocolError(ErrorCode.INTERNAL_ERROR, "spake2 produced a message of unexpected size")
        return message

    def finish(self, peer_message: bytes) -> bytes:
        self._move(_Event.FINISH)
        try:
            self._check_peer_message(peer_message)
            key = self._impl.finish(peer_message)
        except RemoteProtocolError:
            self._state = _State.S_failed
            raise
        except (SPAKEError, NotOnCurve, ValueError, AssertionError) as exc:
            # spake2 reports reflection, wrong side and bad points with the
            # first three, and checks some input sizes with ``assert``.
            self._state = _State.S_failed
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            why = f"invalid peer message ({detail})"
            raise _peer_protocol_error(self._role, why) from exc
        if not isinstance(key, bytes) or len(key) != PAKE_KEY_SIZE:
            raise LocalProtocolError(ErrorCode.INTERNAL_ERROR, "spake2 produced a key of unexpected size")
        return key

    def _check_peer_message(self, message: bytes) -> None:
        if not isinstance(message, bytes) or len(message) != PAKE_MESSAGE_SIZE:
            size = len(message) if isinstance(message, bytes) else type(message).__name__
            why = f"peer message must be {PAKE_MESSAGE_SIZE} bytes, got {size}"
            raise _peer_protocol_error(self._role, why)
        expected_side = _SIDE_BYTE[self._role.peer]
        if message[:1] != expected_side:
            raise _peer_protocol_error(
                self._role, f"peer message has side byte {message[:1]!r}, expected {expected_side!r}"
            )
        point = message[1:]
        element = Ed25519Group.bytes_to_element(point)  # ValueError/NotOnCurve: converted by finish
        if element.to_bytes() != point:
            raise _peer_protocol_error(self._role, "peer message is not a canonical group element encoding")


def spake2_for(
    role: Role,
    password: bytes,
    initiator: NodeId,
    joiner: NodeId,
    rand: Callable[[int], bytes],
) -> Pake:
    """SPAKE2 for ``role``: side A for the initiator, side B for the joiner.

    ``password`` is the code's canonical secret; ``initiator`` and ``joiner``
    are the NodeIds from the TLS handshake; ``rand`` supplies the ephemeral
    scalar (64 bytes per start, reduced mod the group order).
    """
    return Spake2(role, password, initiator, joiner, rand)
