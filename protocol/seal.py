"""Sealed boxes: ChaCha20-Poly1305 (RFC 8439) with an implicit, strictly increasing sequence.

One :class:`Sealer` per direction seals, one :class:`Opener` per direction
opens; both count the same sequence ``0, 1, 2, ...`` (docs/PROTOCOL.md,
"Sealing")::

    nonce = 4 zero bytes || seq (8 bytes, big-endian)     RFC 8439 2.8: 96-bit nonce
    AAD   = context || seq (8 bytes, big-endian)

The key is never used with the same nonce twice because a key lives for one
pairing or one link connection and ``seq`` only grows. The context label
keeps a box made for the pairing (``quicpair/1 pair``) from opening on a link
(``quicpair/1 link``), even under a key that would match.

The receiver accepts exactly the next sequence number. QUIC streams are
reliable and ordered, so a gap or a repeat is never the network: it is a
replay or a reordering by someone in the path, and it ends the connection
(:class:`~protocol.errors.SealError` with code ``REPLAYED``). A box that does
not authenticate ends it too (``DECRYPT_FAILED``). Either way the
:class:`Opener` stays failed: once an attacker's input has been seen, no later
box on that connection is trusted.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .errors import ErrorCode, LocalProtocolError, SealError

__all__ = [
    "CONTEXT_LINK",
    "CONTEXT_PAIR",
    "SEAL_KEY_SIZE",
    "SEAL_OVERHEAD",
    "SEQ_LIMIT",
    "Opener",
    "Sealer",
]

#: Context of the DeviceInfo boxes in PairResponse and PairComplete (seq 0 each way).
CONTEXT_PAIR = b"quicpair/1 pair"
#: Context of every LinkSealed box.
CONTEXT_LINK = b"quicpair/1 link"
#: RFC 8439 2.8: a 256-bit key.
SEAL_KEY_SIZE = 32
#: The Poly1305 tag appended to every box (RFC 8439 2.8).
SEAL_OVERHEAD = 16
#: The first sequence number that is never used: the counter refuses to reach
#: the all-ones value rather than wrap back to a nonce already used.
SEQ_LIMIT = 2**64 - 1

_NONCE_PAD = bytes(4)


def _nonce(seq: int) -> bytes:
    return _NONCE_PAD + seq.to_bytes(8, "big")


def _aead(key: bytes) -> ChaCha20Poly1305:
    if not isinstance(key, bytes) or len(key) != SEAL_KEY_SIZE:
        raise ValueError(f"a sealing key is {SEAL_KEY_SIZE} bytes")
    return ChaCha20Poly1305(key)


def _check_context(context: bytes) -> bytes:
    if not isinstance(context, bytes) or not context:
        raise ValueError("a sealing context is a non-empty label such as CONTEXT_LINK")
    return context


class Sealer:
    """Seals plaintexts for one direction of one connection: seq 0, 1, 2, ..."""

    __slots__ = ("_aead", "_context", "_next_seq")

    def __init__(self, key: bytes, context: bytes) -> None:
        self._aead = _aead(key)
        self._context = _check_context(context)
        self._next_seq = 0

    def __repr__(self) -> str:
        return f"Sealer({self._context.decode('ascii', 'replace')}, next_seq={self._next_seq})"

    @property
    def next_seq(self) -> int:
        """The sequence number the next :meth:`seal` will use."""
        return self._next_seq

    def seal(self, plaintext: bytes) -> tuple[int, bytes]:
        """``(seq, box)``: the box is the ciphertext followed by the 16-byte tag.

        Raises LocalProtocolError once the sequence space is used up; the
        connection must then be replaced (new nonces, new keys).
        """
        seq = self._next_seq
        if seq >= SEQ_LIMIT:
            raise LocalProtocolError(
                ErrorCode.REPLAYED,
                "sealer: sequence numbers exhausted; a new connection (new keys) is needed",
            )
        box = self._aead.encrypt(_nonce(seq), plaintext, self._context + seq.to_bytes(8, "big"))
        self._next_seq = seq + 1
        return seq, box


class Opener:
    """Opens the peer's boxes for one direction of one connection, strictly in order."""

    __slots__ = ("_aead", "_context", "_expected_seq", "_failure")

    def __init__(self, key: bytes, context: bytes) -> None:
        self._aead = _aead(key)
        self._context = _check_context(context)
        self._expected_seq = 0
        self._failure: SealError | None = None

    def __repr__(self) -> str:
        state = "failed" if self._failure is not None else f"expected_seq={self._expected_seq}"
        return f"Opener({self._context.decode('ascii', 'replace')}, {state})"

    @property
    def expected_seq(self) -> int:
        """The only sequence number :meth:`open` accepts next."""
        return self._expected_seq

    @property
    def failed(self) -> bool:
        """True once a box was refused; the opener then refuses everything."""
        return self._failure is not None

    def open(self, seq: int, box: bytes) -> bytes:
        """The plaintext of ``box``, sealed by the peer with sequence ``seq``.

        SealError(REPLAYED) if ``seq`` is not the next one expected,
        SealError(DECRYPT_FAILED) if the box does not authenticate; after
        either, every call raises SealError with the same code.
        """
        if self._failure is not None:
            raise SealError(self._failure.code, f"opener failed earlier ({self._failure.args[0]})")
        if seq != self._expected_seq:
            raise self._fail(
                ErrorCode.REPLAYED,
                f"sealed message with seq {seq} where {self._expected_seq} was expected",
            )
        try:
            plaintext = self._aead.decrypt(_nonce(seq), box, self._context + seq.to_bytes(8, "big"))
        except InvalidTag as exc:
            raise self._fail(
                ErrorCode.DECRYPT_FAILED,
                f"sealed message with seq {seq} failed authentication (tampered, or wrong key)",
            ) from exc
        self._expected_seq = seq + 1
        return plaintext

    def _fail(self, code: ErrorCode, message: str) -> SealError:
        self._failure = SealError(code, message)
        return self._failure
