"""Pairing scenarios: success, the code (wrong, burned, expired, used, busy), a relay.

An initiator and a joiner joined by bytes only, through the stand-ins of
:mod:`pairing_harness`. The other pairing scenarios live beside this module:
``test_pairing_order.py`` (messages out of order, local misuse),
``test_pairing_malformed.py`` (malformed frames, fuzzing) and
``test_pairing_commit.py`` (timeouts, no split brain, resolution).
"""

from __future__ import annotations

import struct

import msgpack  # type: ignore[import-untyped]
import pytest

from quicpair.protocol.codebook import Codebook, CodeState
from quicpair.protocol.codes import PairingCode
from quicpair.protocol.errors import ErrorCode
from quicpair.protocol.framing import encode_frame
from quicpair.protocol.identity import NodeId
from quicpair.protocol.keys import Role
from quicpair.protocol.messages import (
    PairChallenge,
    PairCommit,
    PairComplete,
    PairDone,
    PairReject,
    PairRequest,
    PairResponse,
)
from quicpair.protocol.pairing import (
    CommitRequested,
    InitiatorState,
    JoinerState,
    PairingFailed,
    PairingSucceeded,
    PeerVerified,
)
from support.pairing_harness import (
    ALICE,
    ALICE_INFO,
    BOB,
    BOB_INFO,
    MALLORY,
    NOW,
    attempts,
    decode_all,
    exchange,
    initiator,
    joiner,
    transfer,
    wrong_words,
)
from support.pairing_harness import book_fixture as book_fixture  # the ``book`` fixture
from support.pairing_harness import code_fixture as code_fixture  # the ``code`` fixture

# -- success -------------------------------------------------------------------------------


def test_full_pairing_commits_on_both_sides(book: Codebook, code: PairingCode) -> None:
    alice, bob = initiator(book), joiner(code)
    exchange(bob, alice)

    a, b = alice.success(), bob.success()
    assert a.keys.pairing_id == b.keys.pairing_id
    assert a.keys.sas == b.keys.sas and len(a.keys.sas) == 4
    assert a.peer_info == BOB_INFO and b.peer_info == ALICE_INFO
    keys_a, keys_b = a.keys.for_role(Role.INITIATOR), b.keys.for_role(Role.JOINER)
    assert keys_a.send == keys_b.receive and keys_b.send == keys_a.receive
    assert keys_a.send != keys_a.receive
    assert a.keys.pairing_secret == b.keys.pairing_secret

    pid = a.keys.pairing_id
    for side in (alice, bob):
        assert side.registry.calls == [("store_pending", pid), ("confirm", pid)]
        assert side.registry.state_of(pid) == "CONFIRMED"
        assert side.machine.is_finished and side.machine.next_deadline() is None
        assert side.machine.failure_code is None
    assert [type(m) for m in bob.sent] == [PairRequest, PairResponse, PairDone]
    assert [type(m) for m in alice.sent] == [PairChallenge, PairComplete, PairCommit]
    assert [type(e) for e in alice.events] == [PeerVerified, CommitRequested, PairingSucceeded]
    assert [type(e) for e in bob.events] == [PeerVerified, CommitRequested, PairingSucceeded]
    assert (
        alice.machine.state is InitiatorState.S5_succeeded and bob.machine.state is JoinerState.S5_succeeded
    )
    assert attempts(book, code) == (1, 0, CodeState.CONSUMED)


def test_each_side_stores_pending_before_the_peer_hears_from_it(book: Codebook, code: PairingCode) -> None:
    alice, bob = initiator(book), joiner(code)
    alice.auto_store = bob.auto_store = False
    transfer(bob, alice)
    transfer(alice, bob)
    transfer(bob, alice)  # PairResponse: alice verified bob, must store before PairComplete
    assert alice.machine.data_to_send() == b"" and alice.registry.states == ["PENDING"]
    alice.store(NOW)
    transfer(alice, bob)
    assert bob.machine.data_to_send() == b"" and bob.registry.states == ["PENDING"]
    bob.store(NOW)
    exchange(bob, alice)
    assert alice.outcome() is PairingSucceeded and bob.outcome() is PairingSucceeded


# -- the code: wrong, burned, expired, used, busy ----------------------------------------


def test_wrong_code_fails_on_both_sides_and_counts_the_attempt(book: Codebook, code: PairingCode) -> None:
    alice, bob = initiator(book), joiner(wrong_words(code))
    exchange(bob, alice)
    assert bob.failure() == PairingFailed(
        ErrorCode.WRONG_CODE, remote=False, pending_must_be_deleted=False, detail=bob.failure().detail
    )
    assert alice.failure().code is ErrorCode.WRONG_CODE and alice.failure().remote
    assert isinstance(alice.sent[0], PairChallenge)
    assert isinstance(bob.sent[-1], PairReject) and bob.sent[-1].code == ErrorCode.WRONG_CODE
    assert alice.registry.calls == [] and bob.registry.calls == []
    assert attempts(book, code) == (1, 1, CodeState.OPEN)
    assert bob.machine.failure_code is ErrorCode.WRONG_CODE


def test_a_typo_may_be_retried(book: Codebook, code: PairingCode) -> None:
    exchange(joiner(wrong_words(code)), initiator(book))
    alice, bob = initiator(book), joiner(code)
    exchange(bob, alice)
    assert alice.outcome() is PairingSucceeded and bob.outcome() is PairingSucceeded


def test_the_third_wrong_attempt_burns_the_code(book: Codebook, code: PairingCode) -> None:
    for _ in range(3):
        exchange(joiner(wrong_words(code)), initiator(book))
    assert attempts(book, code) == (3, 3, CodeState.BURNED)
    alice, bob = initiator(book), joiner(code)
    exchange(bob, alice)
    assert bob.failure().code is ErrorCode.CODE_USED_UP and bob.failure().remote
    assert alice.failure().code is ErrorCode.CODE_USED_UP and not alice.failure().remote
    assert [type(m) for m in alice.sent] == [PairReject]  # no Challenge: no fourth guess


def test_an_expired_code_is_refused(book: Codebook, code: PairingCode) -> None:
    later = NOW + 300.0
    alice, bob = initiator(book, now=later), joiner(code, now=later)
    exchange(bob, alice, now=later)
    assert bob.failure().code is ErrorCode.CODE_EXPIRED
    assert alice.failure().code is ErrorCode.CODE_EXPIRED
    assert alice.registry.calls == [] and bob.registry.calls == []


def test_a_code_is_consumed_by_its_pairing(book: Codebook, code: PairingCode) -> None:
    exchange(joiner(code), initiator(book))
    carol = NodeId(bytes([0xC0]) * 32)
    alice, bob = initiator(book, peer=carol), joiner(code, local=carol)
    exchange(bob, alice)
    assert bob.failure().code is ErrorCode.CODE_USED_UP
    assert alice.registry.calls == []


def test_a_code_is_busy_while_a_session_holds_it(book: Codebook, code: PairingCode) -> None:
    first_alice, first_bob = initiator(book), joiner(code)
    transfer(first_bob, first_alice)  # the first session claimed the code
    carol = NodeId(bytes([0xC0]) * 32)
    second_alice, carol_side = initiator(book, peer=carol), joiner(code, local=carol)
    exchange(carol_side, second_alice)
    assert carol_side.failure().code is ErrorCode.BUSY and carol_side.failure().remote
    exchange(first_bob, first_alice)  # and the first one is unharmed
    assert first_alice.outcome() is PairingSucceeded and first_bob.outcome() is PairingSucceeded
    assert attempts(book, code) == (1, 0, CodeState.CONSUMED)


def test_no_such_code(book: Codebook, code: PairingCode) -> None:
    other = PairingCode(code.nameplate % 9999 + 1, code.words)
    alice, bob = initiator(book), joiner(other)
    exchange(bob, alice)
    assert bob.failure().code is ErrorCode.NO_SUCH_CODE
    assert attempts(book, code) == (0, 0, CodeState.OPEN)


def test_unsupported_version_is_refused_before_the_code_is_touched(book: Codebook, code: PairingCode) -> None:
    alice = initiator(book)
    body = msgpack.packb(
        [2, PairRequest.TAG, {"nameplate": code.nameplate, "pake": b"B" * 33}], use_bin_type=True
    )
    alice.machine.receive_data(struct.pack(">I", len(body)) + body, NOW)
    alice.pump(NOW)
    assert alice.failure().code is ErrorCode.UNSUPPORTED_VERSION and not alice.failure().remote
    [reject] = decode_all(alice.machine.data_to_send())
    assert isinstance(reject, PairReject) and reject.code == ErrorCode.UNSUPPORTED_VERSION
    assert attempts(book, code) == (0, 0, CodeState.OPEN)


# -- a relay in the middle ----------------------------------------------------------------


@pytest.mark.parametrize("fooled", ["joiner", "initiator"])
def test_a_relay_with_its_own_node_id_fails_confirmation(
    book: Codebook, code: PairingCode, fooled: str
) -> None:
    # The relay terminates TLS with its own identity: one side sees MALLORY
    # where its peer should be, and the transcript differs.
    if fooled == "joiner":
        alice, bob = initiator(book, peer=BOB), joiner(code, peer=MALLORY)
    else:
        alice, bob = initiator(book, peer=MALLORY), joiner(code, peer=ALICE)
    exchange(bob, alice)
    assert bob.failure().code is ErrorCode.WRONG_CODE and not bob.failure().remote
    assert alice.failure().code is ErrorCode.WRONG_CODE and alice.failure().remote
    assert alice.registry.calls == [] and bob.registry.calls == []
    assert not any(isinstance(e, PeerVerified) for e in alice.events + bob.events)


def test_a_joiner_that_skips_checking_confirmation_is_caught_by_the_initiator(
    book: Codebook, code: PairingCode
) -> None:
    alice, bob = initiator(book), joiner(wrong_words(code))
    transfer(bob, alice)
    forged = PairResponse(confirm=bytes(32), sealed=b"\x00" * 40, flags=0)
    alice.machine.receive_data(encode_frame(forged), NOW)
    alice.pump(NOW)
    assert alice.failure().code is ErrorCode.WRONG_CODE and not alice.failure().remote
    assert attempts(book, code) == (1, 1, CodeState.OPEN)
    assert alice.registry.calls == []
