"""SPAKE2 behind a small typed interface: the only way a pairing code becomes a key.

The PAKE is SPAKE2 over Ed25519 exactly as the ``spake2`` package 0.9 computes
it (the implementation magic-wormhole uses; docs/PROTOCOL.md, "Key schedule"),
with every point operation done by libsodium through PyNaCl: ~0.5 ms a side
instead of 15-24 ms of pure Python. The initiator is side A and the joiner side
B; the identities are the two NodeIds *as each side saw them in the TLS
handshake*, so a relay presenting its own NodeId on either side makes the two
keys differ and key confirmation fails. ``spake2`` stays the reference the
tests hold this module to, byte for byte (tests/protocol/test_pake.py).

Someone who does not know the code learns nothing from the messages: they
cannot test guesses offline, only by running the protocol, once per guess,
against a node that counts the attempt (``protocol.codebook``).

Where the two libraries differ, and what this module does about it:

* ``spake2`` reads its scalars (the password hash, the random draw) as
  big-endian integers; libsodium's scalars are little-endian bytes. The bytes
  are reversed before libsodium reduces them mod L.
* ``spake2`` maps a zero scalar to the identity element; libsodium refuses to
  produce the identity (``crypto_scalarmult_ed25519_noclamp`` fails). A zero
  scalar, and a difference that is the identity, are handled here, giving the
  identity's encoding exactly as ``spake2`` does.
* ``M`` and ``N`` are ``spake2``'s encoded constants, taken as bytes, not
  derived again (the derivation is in PROTOCOL.md 8.1 and checked by the
  vector tests).
* A peer's message is held to a stricter form than ``spake2`` alone: exactly
  33 bytes, the other side's byte, and 32 bytes that
  ``crypto_core_ed25519_is_valid_point`` accepts -- a canonical encoding of a
  point on the curve, in the prime-order subgroup, not of small order (so
  never the identity, in any spelling). ``spake2`` 0.9 truncates longer
  messages and accepts a non-canonical encoding of the identity; the check is
  libsodium's, in C. A message equal to our own is refused (reflection).

libsodium's errors are converted at this boundary; nothing from ``nacl``
escapes.

States of one :class:`Spake2` (one transition table, :data:`_TRANSITIONS`)::

    S0_created --start--> S1_started --finish--> S2_finished
                                      \\--bad peer message--> S_failed
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable
from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl import bindings as sodium
from nacl.exceptions import CryptoError

from .errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from .identity import NodeId
from .keys import Role
from .messages import PAKE_MESSAGE_SIZE

__all__ = ["PAKE_KEY_SIZE", "M", "N", "Pake", "Spake2", "spake2_for"]

#: The SPAKE2 key K: SHA-256 of the SPAKE2 transcript.
PAKE_KEY_SIZE = 32

#: ``spake2`` 0.9's ``arbitrary_element(b"M")`` and ``(b"N")``, encoded (PROTOCOL.md 8.1).
M = bytes.fromhex("15cfd18e385952982b6a8f8c7854963b58e34388c8e6dae891db756481a02312")
N = bytes.fromhex("f04f2e7eb734b2a8f8b472eaf9c3c632576ac64aea650b496a8a20ff00e583c3")

#: The identity element (0, 1), RFC 8032 5.1.2 encoding.
_IDENTITY = b"\x01" + bytes(31)
_ZERO_SCALAR = bytes(32)
#: ``spake2``'s password scalar: HKDF-SHA256 to 32 + 16 bytes (bias below 2^-128), mod L.
_PW_HASH_SIZE = 48
#: ``spake2``'s ephemeral scalar: 64 bytes of ``rand``, mod L.
_RAND_SIZE = 64

_SIDE_BYTE = {Role.INITIATOR: b"A", Role.JOINER: b"B"}
_BLINDING = {Role.INITIATOR: M, Role.JOINER: N}


def _scalar_from_big_endian(data: bytes) -> bytes:
    """``int_be(data) mod L`` as libsodium's 32 little-endian bytes (``data`` up to 64 bytes)."""
    return sodium.crypto_core_ed25519_scalar_reduce(data[::-1].ljust(64, b"\x00"))


def _mul(scalar: bytes, point: bytes) -> bytes:
    """``scalar * point`` for a prime-order ``point``; the identity for a zero scalar (as spake2)."""
    if scalar == _ZERO_SCALAR:
        return _IDENTITY
    return sodium.crypto_scalarmult_ed25519_noclamp(scalar, point)


def _mul_base(scalar: bytes) -> bytes:
    if scalar == _ZERO_SCALAR:
        return _IDENTITY
    return sodium.crypto_scalarmult_ed25519_base_noclamp(scalar)


def _password_scalar(password: bytes) -> bytes:
    """``w``: the password as a scalar, exactly as ``spake2`` 0.9 derives it (little-endian)."""
    oversized = HKDF(algorithm=hashes.SHA256(), length=_PW_HASH_SIZE, salt=b"", info=b"SPAKE2 pw").derive(
        password
    )
    return _scalar_from_big_endian(oversized)


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

    __slots__ = ("_ids", "_outbound", "_password", "_rand", "_role", "_state", "_w", "_xy")

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
        self._role = role
        self._state = _State.S0_created
        self._password = password
        self._ids = (initiator.raw, joiner.raw)
        self._rand = rand
        self._w = b""
        self._xy = b""
        self._outbound = b""

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
        entropy = self._rand(_RAND_SIZE)
        if not isinstance(entropy, bytes) or len(entropy) != _RAND_SIZE:
            raise LocalProtocolError(ErrorCode.INTERNAL_ERROR, f"rand must return {_RAND_SIZE} bytes")
        self._w = _password_scalar(self._password)
        self._xy = _scalar_from_big_endian(entropy)
        # X = x*B + w*M (initiator), Y = y*B + w*N (joiner). Both terms are prime-order
        # points or the identity, so libsodium accepts them; the sum may not be rechecked.
        own = sodium.crypto_core_ed25519_add(_mul_base(self._xy), _mul(self._w, _BLINDING[self._role]))
        self._outbound = own
        return _SIDE_BYTE[self._role] + own

    def finish(self, peer_message: bytes) -> bytes:
        self._move(_Event.FINISH)
        try:
            point = self._check_peer_message(peer_message)
        except RemoteProtocolError:
            self._state = _State.S_failed
            raise
        unblinding = _BLINDING[self._role.peer]
        # Z = x*(Y - w*N) (initiator), y*(X - w*M) (joiner). Y is a prime-order point (checked),
        # so the difference is one too, or the identity: then Z is the identity, as in spake2.
        try:
            difference = sodium.crypto_core_ed25519_sub(point, _mul(self._w, unblinding))
            shared = _IDENTITY if difference == _IDENTITY else _mul(self._xy, difference)
        except CryptoError as exc:  # nacl.exceptions.RuntimeError included
            # Cannot happen for a point that passed the check; never let it escape.
            why = f"libsodium refused a SPAKE2 step: {exc}"
            raise LocalProtocolError(ErrorCode.INTERNAL_ERROR, why) from exc
        initiator_msg, joiner_msg = (
            (self._outbound, point) if self._role is Role.INITIATOR else (point, self._outbound)
        )
        id_a, id_b = self._ids
        digests = [hashlib.sha256(v).digest() for v in (self._password, id_a, id_b)]
        return hashlib.sha256(b"".join([*digests, initiator_msg, joiner_msg, shared])).digest()

    def _check_peer_message(self, message: bytes) -> bytes:
        """The peer's point, once the message has passed every check (PROTOCOL.md 8.1 step 4)."""
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
        # In C: canonical encoding, on the curve, in the prime-order subgroup, not of small order.
        if not sodium.crypto_core_ed25519_is_valid_point(point):
            raise _peer_protocol_error(
                self._role,
                "peer message is not the canonical encoding of a point of the prime-order subgroup "
                "(not on the curve, of small order, outside the subgroup, or non-canonical)",
            )
        if point == self._outbound:
            raise _peer_protocol_error(self._role, "peer message is our own, reflected (ReflectionThwarted)")
        return point


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
