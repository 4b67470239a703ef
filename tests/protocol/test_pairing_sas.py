"""Pairing with SAS verification: both people confirm the words before anything is stored.

Either side asks (FLAG_VERIFY_SAS in PairChallenge or PairResponse); then both
machines emit SasCheckRequested after key confirmation, each sends
PairSasConfirmed once its person confirmed, and the initiator stores the joiner
as PENDING only when both have. A refusal fails both with SAS_REFUSED, and
neither registry ever saw the pairing.
"""

from __future__ import annotations

import pytest

from quicpair.protocol.codebook import Codebook
from quicpair.protocol.codes import PairingCode
from quicpair.protocol.errors import ErrorCode, LocalProtocolError
from quicpair.protocol.framing import encode_frame
from quicpair.protocol.messages import (
    FLAG_VERIFY_SAS,
    PairChallenge,
    PairComplete,
    PairReject,
    PairResponse,
    PairSasConfirmed,
)
from quicpair.protocol.pairing import (
    DEFAULT_VERIFY_TIMEOUT,
    InitiatorState,
    JoinerState,
    PairingSucceeded,
    PeerVerified,
    SasCheckRequested,
)
from support.pairing_harness import NOW, Side, assert_stays_failed, exchange, initiator, joiner, transfer
from support.pairing_harness import book_fixture as book_fixture  # the ``book`` fixture
from support.pairing_harness import code_fixture as code_fixture  # the ``code`` fixture


def checks(side: Side) -> list[SasCheckRequested]:
    return [e for e in side.events if isinstance(e, SasCheckRequested)]


def to_sas_check(
    book: Codebook, code: PairingCode, *, alice_asks: bool, bob_asks: bool
) -> tuple[Side, Side]:
    """Alice and Bob both waiting for their person, after both key confirmations."""
    alice, bob = initiator(book, verify=alice_asks), joiner(code, verify=bob_asks)
    exchange(bob, alice)
    assert alice.machine.state is InitiatorState.S1a_sas_check
    assert bob.machine.state is JoinerState.S1a_sas_check
    return alice, bob


@pytest.mark.parametrize(("alice_asks", "bob_asks"), [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("bob_first", [True, False])
def test_both_people_confirm_then_the_pairing_commits(
    book: Codebook, code: PairingCode, alice_asks: bool, bob_asks: bool, bob_first: bool
) -> None:
    alice, bob = to_sas_check(book, code, alice_asks=alice_asks, bob_asks=bob_asks)
    challenge = next(m for m in alice.sent if isinstance(m, PairChallenge))
    response = next(m for m in bob.sent if isinstance(m, PairResponse))
    assert (challenge.flags, response.flags) == (FLAG_VERIFY_SAS * alice_asks, FLAG_VERIFY_SAS * bob_asks)
    (a_check,), (b_check,) = checks(alice), checks(bob)
    assert a_check.sas == b_check.sas and len(a_check.sas) == 4
    assert a_check.peer_name == "bob-phone" and b_check.peer_name == ""
    # Nothing is stored while the people compare the words, and the deadline is a person's.
    assert alice.registry.records == {} == bob.registry.records
    assert alice.machine.next_deadline() == NOW + DEFAULT_VERIFY_TIMEOUT
    assert bob.machine.next_deadline() == NOW + DEFAULT_VERIFY_TIMEOUT

    first, second = (bob, alice) if bob_first else (alice, bob)
    first.machine.sas_confirmed(NOW)  # type: ignore[attr-defined]
    first.pump(NOW)
    assert first.machine.state.name == "S1b_sas_ok_here"
    transfer(first, second)
    assert second.machine.state.name == "S1c_sas_ok_there"
    assert not any(isinstance(e, PeerVerified) for e in alice.events)
    second.machine.sas_confirmed(NOW)  # type: ignore[attr-defined]
    second.pump(NOW)
    exchange(bob, alice)

    assert alice.success().keys.sas == bob.success().keys.sas == a_check.sas
    assert alice.registry.states == ["CONFIRMED"] == bob.registry.states
    # One PairSasConfirmed each way, the initiator's before its PairComplete.
    a_sent = [type(m) for m in alice.sent]
    assert [type(m) for m in bob.sent].count(PairSasConfirmed) == 1 == a_sent.count(PairSasConfirmed)
    assert a_sent.index(PairSasConfirmed) < a_sent.index(PairComplete)


@pytest.mark.parametrize("who_refuses", ["alice", "bob"])
@pytest.mark.parametrize("other_confirmed_first", [True, False])
def test_a_refusal_fails_both_sides_and_nothing_is_stored(
    book: Codebook, code: PairingCode, who_refuses: str, other_confirmed_first: bool
) -> None:
    alice, bob = to_sas_check(book, code, alice_asks=True, bob_asks=False)
    refuser, other = (alice, bob) if who_refuses == "alice" else (bob, alice)
    if other_confirmed_first:
        other.machine.sas_confirmed(NOW)  # type: ignore[attr-defined]
        other.pump(NOW)
        transfer(other, refuser)
    refuser.machine.sas_refused(NOW)  # type: ignore[attr-defined]
    refuser.pump(NOW)
    (reject,) = transfer(refuser, other)
    assert isinstance(reject, PairReject) and reject.code == ErrorCode.SAS_REFUSED
    mine, theirs = refuser.failure(), other.failure()
    assert (mine.code, mine.remote, theirs.code, theirs.remote) == (
        ErrorCode.SAS_REFUSED,
        False,
        ErrorCode.SAS_REFUSED,
        True,
    )
    assert not mine.pending_must_be_deleted and not theirs.pending_must_be_deleted
    assert alice.registry.records == {} == bob.registry.records
    assert not any(isinstance(e, PeerVerified) for e in alice.events + bob.events)
    for side in (alice, bob):
        assert_stays_failed(side)
        side.machine.sas_confirmed(NOW)  # type: ignore[attr-defined]  # too late: ignored
        assert side.machine.data_to_send() == b""


def test_nobody_answers_in_time(book: Codebook, code: PairingCode) -> None:
    alice, bob = to_sas_check(book, code, alice_asks=False, bob_asks=True)
    alice.machine.handle_timer(NOW + DEFAULT_VERIFY_TIMEOUT - 1)
    assert alice.machine.state is InitiatorState.S1a_sas_check
    alice.machine.handle_timer(NOW + DEFAULT_VERIFY_TIMEOUT)
    alice.pump(NOW + DEFAULT_VERIFY_TIMEOUT)
    transfer(alice, bob)
    assert alice.failure().code is ErrorCode.TIMEOUT and bob.failure().code is ErrorCode.TIMEOUT
    assert alice.registry.records == {} == bob.registry.records


def test_a_forged_confirmation_is_a_protocol_violation(book: Codebook, code: PairingCode) -> None:
    alice, _bob = to_sas_check(book, code, alice_asks=True, bob_asks=True)
    alice.machine.receive_data(encode_frame(PairSasConfirmed(mac=bytes(32))), NOW)
    alice.pump(NOW)
    assert alice.failure().code is ErrorCode.PROTOCOL_VIOLATION
    assert alice.registry.records == {}


def test_the_initiator_does_not_send_its_device_before_both_confirmed(
    book: Codebook, code: PairingCode
) -> None:
    alice, bob = to_sas_check(book, code, alice_asks=True, bob_asks=False)
    # A joiner that skips the check and waits for PairComplete gets nothing; one that
    # receives a PairComplete while its person is still looking refuses it.
    assert not any(isinstance(m, PairComplete) for m in alice.sent)
    bob.machine.receive_data(encode_frame(PairComplete(sealed=bytes(40))), NOW)
    bob.pump(NOW)
    assert bob.failure().code is ErrorCode.PROTOCOL_VIOLATION and bob.registry.records == {}


def test_answers_out_of_place_are_refused(book: Codebook, code: PairingCode) -> None:
    alice, bob = initiator(book), joiner(code)
    with pytest.raises(LocalProtocolError, match="sas_confirmed is not allowed here"):
        bob.machine.sas_confirmed(NOW)  # type: ignore[attr-defined]
    exchange(bob, alice)
    assert alice.outcome() is PairingSucceeded and not checks(alice) and not checks(bob)
    with pytest.raises(LocalProtocolError, match="sas_refused is not allowed here"):
        alice.machine.sas_refused(NOW)  # type: ignore[attr-defined]
