"""The restart notice: only the holder of the pairing can make one, and it is never a QUIC packet."""

from __future__ import annotations

import pytest

from quicpair.protocol.identity import NodeId
from quicpair.protocol.keys import key_id, stateless_reset_key, stateless_reset_token
from quicpair.protocol.notice import BOOT_SIZE, MAGIC, NOTICE_SIZE, RestartNotice, is_notice, make_notice

ALICE = NodeId(bytes([0x10]) * 32)
BOB = NodeId(bytes([0x20]) * 32)
SECRET = bytes(range(32))
BOOT = bytes(range(BOOT_SIZE))


def test_a_notice_round_trips_and_verifies_for_its_receiver_only() -> None:
    notice = make_notice(SECRET, BOB, ALICE, BOOT)
    assert len(notice) == NOTICE_SIZE and is_notice(notice)
    assert notice[0] & 0x40 == 0, "the QUIC fixed bit is clear: no QUIC packet is a notice"
    parsed = RestartNotice.parse(notice)
    assert parsed is not None and parsed.sender == BOB and parsed.boot == BOOT
    assert parsed.verify(SECRET, ALICE)
    assert not parsed.verify(SECRET, BOB)  # bound to the receiver
    assert not parsed.verify(bytes(32), ALICE)  # needs the pairing's secret


@pytest.mark.parametrize("flip", [0, len(MAGIC), len(MAGIC) + 1, len(MAGIC) + 33, NOTICE_SIZE - 1])
def test_any_changed_byte_is_refused(flip: int) -> None:
    notice = bytearray(make_notice(SECRET, BOB, ALICE, BOOT))
    notice[flip] ^= 0x01
    parsed = RestartNotice.parse(bytes(notice))
    assert parsed is None or not parsed.verify(SECRET, ALICE)


def test_other_datagrams_are_not_notices() -> None:
    notice = make_notice(SECRET, BOB, ALICE, BOOT)
    assert RestartNotice.parse(notice[:-1]) is None
    assert RestartNotice.parse(notice + b"\x00") is None
    assert RestartNotice.parse(b"\x40" + notice[1:]) is None  # a QUIC short header
    wrong_version = notice[: len(MAGIC)] + b"\x02" + notice[len(MAGIC) + 1 :]
    assert RestartNotice.parse(wrong_version) is None
    with pytest.raises(ValueError):
        make_notice(SECRET, BOB, ALICE, b"short")


def test_key_ids_name_pairings_and_reset_tokens_are_stable_per_cid() -> None:
    assert key_id(bytes(32)) != key_id(bytes([1]) * 32) and len(key_id(bytes(32))) == 8
    key = stateless_reset_key(bytes([7]) * 32)
    assert key == stateless_reset_key(bytes([7]) * 32)  # the same after a restart
    assert key != stateless_reset_key(bytes([8]) * 32)
    token = stateless_reset_token(key, b"\x01" * 8)
    assert len(token) == 16 and token == stateless_reset_token(key, b"\x01" * 8)
    assert token != stateless_reset_token(key, b"\x02" * 8)
