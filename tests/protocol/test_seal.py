"""Sealed boxes: round trip, strict order, tamper detection, and failure that sticks."""

from __future__ import annotations

import random

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from quicpair.protocol.errors import ErrorCode, LocalProtocolError, SealError
from quicpair.protocol.seal import CONTEXT_LINK, CONTEXT_PAIR, SEAL_OVERHEAD, SEQ_LIMIT, Opener, Sealer

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def pair(key: bytes = KEY, context: bytes = CONTEXT_LINK) -> tuple[Sealer, Opener]:
    return Sealer(key, context), Opener(key, context)


def test_round_trip_in_order() -> None:
    sealer, opener = pair()
    for i, text in enumerate([b"", b"hello", bytes(1000), b"\xff" * 70_000]):
        seq, box = sealer.seal(text)
        assert seq == i
        assert len(box) == len(text) + SEAL_OVERHEAD
        assert opener.open(seq, box) == text
    assert sealer.next_seq == opener.expected_seq == 4


def test_wire_format_matches_the_spec() -> None:
    # nonce = 4 zero bytes || seq BE64; AAD = context || seq BE64 (docs/PROTOCOL.md).
    sealer = Sealer(KEY, CONTEXT_PAIR)
    sealer.seal(b"first")
    seq, box = sealer.seal(b"second")
    expected = ChaCha20Poly1305(KEY).encrypt(
        bytes(4) + (1).to_bytes(8, "big"), b"second", CONTEXT_PAIR + (1).to_bytes(8, "big")
    )
    assert (seq, box) == (1, expected)


def test_same_plaintext_gives_different_boxes() -> None:
    sealer, _ = pair()
    assert sealer.seal(b"x")[1] != sealer.seal(b"x")[1]


def test_replay_is_refused() -> None:
    sealer, opener = pair()
    seq, box = sealer.seal(b"pay 10")
    opener.open(seq, box)
    with pytest.raises(SealError) as info:
        opener.open(seq, box)
    assert info.value.code is ErrorCode.REPLAYED


def test_reorder_is_refused() -> None:
    sealer, opener = pair()
    first = sealer.seal(b"one")
    second = sealer.seal(b"two")
    with pytest.raises(SealError) as info:
        opener.open(*second)
    assert info.value.code is ErrorCode.REPLAYED
    # The opener failed: even the right next box is refused now.
    with pytest.raises(SealError) as again:
        opener.open(*first)
    assert again.value.code is ErrorCode.REPLAYED
    assert opener.failed


def test_a_box_under_a_claimed_other_seq_does_not_open() -> None:
    sealer, opener = pair()
    sealer.seal(b"zero")
    _, box_of_1 = sealer.seal(b"one")
    with pytest.raises(SealError) as info:
        opener.open(0, box_of_1)  # relabelled: the nonce and AAD differ
    assert info.value.code is ErrorCode.DECRYPT_FAILED


def test_every_sampled_byte_and_bit_of_a_box_is_protected() -> None:
    sealer = Sealer(KEY, CONTEXT_LINK)
    seq, box = sealer.seal(b"an application payload of some length")
    rng = random.Random(8439)
    positions = sorted({0, len(box) - 1, len(box) - SEAL_OVERHEAD, *rng.sample(range(len(box)), 16)})
    for pos in positions:
        for bit in (0x01, 0x80):
            tampered = bytearray(box)
            tampered[pos] ^= bit
            opener = Opener(KEY, CONTEXT_LINK)
            with pytest.raises(SealError) as info:
                opener.open(seq, bytes(tampered))
            assert info.value.code is ErrorCode.DECRYPT_FAILED, pos


def test_truncated_and_extended_boxes_are_refused() -> None:
    seq, box = Sealer(KEY, CONTEXT_LINK).seal(b"payload")
    for bad in (b"", box[: SEAL_OVERHEAD - 1], box[:-1], box + b"\x00"):
        with pytest.raises(SealError) as info:
            Opener(KEY, CONTEXT_LINK).open(seq, bad)
        assert info.value.code is ErrorCode.DECRYPT_FAILED


def test_wrong_key_is_refused() -> None:
    seq, box = Sealer(KEY, CONTEXT_LINK).seal(b"secret")
    with pytest.raises(SealError) as info:
        Opener(OTHER_KEY, CONTEXT_LINK).open(seq, box)
    assert info.value.code is ErrorCode.DECRYPT_FAILED


def test_a_pairing_box_does_not_open_on_a_link() -> None:
    seq, box = Sealer(KEY, CONTEXT_PAIR).seal(b"device info")
    with pytest.raises(SealError) as info:
        Opener(KEY, CONTEXT_LINK).open(seq, box)
    assert info.value.code is ErrorCode.DECRYPT_FAILED


def test_failed_opener_stays_failed_with_its_code() -> None:
    sealer, opener = pair()
    seq, box = sealer.seal(b"good")
    with pytest.raises(SealError):
        opener.open(seq, box[:-1] + bytes([box[-1] ^ 1]))
    assert opener.failed
    for _ in range(2):
        with pytest.raises(SealError) as info:
            opener.open(seq, box)  # the genuine box, too late
        assert info.value.code is ErrorCode.DECRYPT_FAILED
    assert opener.expected_seq == 0


def test_sequence_refuses_to_wrap() -> None:
    sealer, opener = pair()
    sealer._next_seq = SEQ_LIMIT - 1  # as if 2**64 - 2 boxes had been sealed
    opener._expected_seq = SEQ_LIMIT - 1
    seq, box = sealer.seal(b"last one")
    assert seq == 2**64 - 2
    assert opener.open(seq, box) == b"last one"
    with pytest.raises(LocalProtocolError):
        sealer.seal(b"one too many")
    with pytest.raises(LocalProtocolError):
        sealer.seal(b"still refused")
    assert sealer.next_seq == SEQ_LIMIT


@pytest.mark.parametrize("key", [b"", bytes(16), bytes(33)])
def test_keys_must_be_32_bytes(key: bytes) -> None:
    with pytest.raises(ValueError):
        Sealer(key, CONTEXT_LINK)
    with pytest.raises(ValueError):
        Opener(key, CONTEXT_LINK)


def test_repr_shows_no_key() -> None:
    sealer, opener = pair()
    assert KEY.hex() not in repr(sealer) + repr(opener)
    assert "quicpair/1 link" in repr(sealer)
