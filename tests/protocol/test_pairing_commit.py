"""Pairing over time: step timeouts, no split brain (2PC) and resolving a pairing in doubt.

The initiator is the coordinator: once the joiner voted (PairDone) only the
initiator's decision, heard directly or asked for again with PairResolve,
turns its pending record into a confirmed one or deletes it.
"""

from __future__ import annotations

import pytest

from quicpair.protocol.codebook import Codebook, CodeState
from quicpair.protocol.codes import PairingCode
from quicpair.protocol.errors import ErrorCode
from quicpair.protocol.framing import encode_frame
from quicpair.protocol.messages import PairCommit, PairDone, PairReject
from quicpair.protocol.pairing import (
    InitiatorState,
    JoinerState,
    PairingFailed,
    PairingInDoubt,
    PairingResolved,
    PairingSucceeded,
    ResolveAnswered,
)
from support.pairing_harness import (
    INITIATOR_OPEN,
    JOINER_OPEN,
    NOW,
    STEP,
    FakeRegistry,
    Side,
    assert_stays_failed,
    attempts,
    decode_all,
    drop,
    exchange,
    fresh_code,
    initiator,
    initiator_at,
    joiner,
    joiner_at,
    resolver,
    resolving_initiator,
    transfer,
)
from support.pairing_harness import book_fixture as book_fixture  # the ``book`` fixture
from support.pairing_harness import code_fixture as code_fixture  # the ``code`` fixture

# -- time ------------------------------------------------------------------------------------

INITIATOR_TIMEOUT_REJECT = {
    InitiatorState.S0_await_request: ErrorCode.TIMEOUT,
    InitiatorState.S1_challenge_sent: ErrorCode.TIMEOUT,
    InitiatorState.S2_storing_pending: ErrorCode.TIMEOUT,
    InitiatorState.S3_complete_sent: ErrorCode.ABORTED,
    InitiatorState.S4_committing: None,
}


@pytest.mark.parametrize("state", INITIATOR_OPEN, ids=lambda s: s.name)
def test_every_initiator_step_times_out(book: Codebook, code: PairingCode, state: InitiatorState) -> None:
    alice, _ = initiator_at(state, book, code)
    deadline = alice.machine.next_deadline()
    assert deadline == NOW + STEP
    alice.machine.handle_timer(deadline - 0.001)
    alice.pump(deadline)
    assert alice.machine.state is state and not any(isinstance(e, PairingFailed) for e in alice.events)
    alice.machine.handle_timer(deadline)
    alice.pump(deadline)
    failed = alice.failure()
    assert failed.code is ErrorCode.TIMEOUT and not failed.remote
    sent = decode_all(alice.machine.data_to_send())
    expected = INITIATOR_TIMEOUT_REJECT[state]
    if expected is None:
        assert sent == [] and alice.machine.failure_code is None
    else:
        assert [(type(m), m.code) for m in sent] == [(PairReject, expected)]  # type: ignore[union-attr]
    if state is not InitiatorState.S0_await_request:
        assert attempts(book, code)[:2] == (1, 0)
    assert_stays_failed(alice)


@pytest.mark.parametrize("state", JOINER_OPEN, ids=lambda s: s.name)
def test_every_joiner_step_times_out(book: Codebook, code: PairingCode, state: JoinerState) -> None:
    _, bob = joiner_at(state, book, code)
    deadline = bob.machine.next_deadline()
    assert deadline == NOW + STEP
    bob.machine.handle_timer(deadline - 0.001)
    assert bob.machine.next_event() is None
    bob.machine.handle_timer(deadline)
    bob.pump(deadline)
    sent = decode_all(bob.machine.data_to_send())
    if state in (JoinerState.S3_done_sent, JoinerState.S4_committing):
        assert bob.outcome() is PairingInDoubt and sent == []
        assert bob.registry.states == ["PENDING"]
    else:
        assert bob.failure().code is ErrorCode.TIMEOUT
        assert [(type(m), m.code) for m in sent] == [(PairReject, ErrorCode.TIMEOUT)]  # type: ignore[union-attr]
        assert bob.registry.records == {}
    assert_stays_failed(bob)


def test_resolve_steps_time_out(book: Codebook) -> None:
    alice, bob = resolving_initiator(book)
    alice.machine.handle_timer(NOW + STEP)
    alice.pump(NOW + STEP)
    assert alice.failure().code is ErrorCode.TIMEOUT
    bob.machine.handle_timer(NOW + STEP)
    bob.pump(NOW + STEP)
    assert bob.events == [PairingInDoubt(pairing_id=bytes(32))]


def test_a_step_deadline_restarts_on_each_step(book: Codebook, code: PairingCode) -> None:
    alice, bob = initiator(book), joiner(code)
    transfer(bob, alice, now=NOW + 5)
    assert alice.machine.next_deadline() == NOW + 5 + STEP
    transfer(alice, bob, now=NOW + 9)
    assert bob.machine.next_deadline() == NOW + 9 + STEP


# -- no split brain ---------------------------------------------------------------------------


def test_pair_done_lost_initiator_aborts_and_joiner_deletes(book: Codebook, code: PairingCode) -> None:
    alice, bob = initiator_at(InitiatorState.S3_complete_sent, book, code)
    assert [type(m) for m in drop(bob)] == [PairDone]
    later = NOW + STEP
    alice.machine.handle_timer(later)
    alice.pump(later)
    transfer(alice, bob, now=later)
    assert alice.failure().code is ErrorCode.TIMEOUT and alice.failure().pending_must_be_deleted
    assert bob.failure() == PairingFailed(
        ErrorCode.ABORTED, remote=True, pending_must_be_deleted=True, detail=bob.failure().detail
    )
    assert alice.registry.records == {} and bob.registry.records == {}  # neither
    assert attempts(book, code) == (1, 0, CodeState.OPEN)


def commit_lost(book: Codebook, code: PairingCode, *, initiator_commits: bool) -> tuple[Side, Side]:
    """Bob voted, Alice decided (or failed to), the PairCommit never arrived, Bob is in doubt."""
    alice, bob = initiator_at(InitiatorState.S4_committing, book, code)
    if initiator_commits:
        alice.commit(NOW)
        assert [type(m) for m in drop(alice)] == [PairCommit]
        assert alice.outcome() is PairingSucceeded
    else:
        alice.machine.handle_timer(NOW + STEP)  # the durable write never completed
        alice.pump(NOW + STEP)
        assert alice.failure().pending_must_be_deleted and alice.machine.failure_code is None
        assert alice.machine.data_to_send() == b""  # never "aborted" once committing
    bob.machine.handle_timer(NOW + STEP)
    bob.pump(NOW + STEP)
    assert bob.outcome() is PairingInDoubt and bob.registry.states == ["PENDING"]
    return alice, bob


def resolve(alice_registry: FakeRegistry, bob: Side, now: float) -> tuple[Side, Side]:
    """Bob's actor dials Alice again and asks; Alice's actor answers from its registry."""
    assert bob.pairing_id is not None
    _, _, secret = bob.registry.records[bob.pairing_id]
    asking = resolver(bob.pairing_id, secret, registry=bob.registry, now=now)
    answering = initiator(Codebook(), now=now)
    answering.registry = alice_registry
    exchange(asking, answering, now=now)
    return answering, asking


def test_commit_lost_resolves_to_committed_on_both(book: Codebook, code: PairingCode) -> None:
    alice, bob = commit_lost(book, code, initiator_commits=True)
    answering, resolver = resolve(alice.registry, bob, NOW + 60)
    assert answering.events[-1] == ResolveAnswered(
        bob.pairing_id or b"", committed=True, pending_must_be_deleted=False
    )
    assert resolver.events == [PairingResolved(bob.pairing_id or b"", committed=True)]
    assert alice.registry.states == ["CONFIRMED"] and bob.registry.states == ["CONFIRMED"]  # both


def test_commit_lost_resolves_to_aborted_on_both(book: Codebook, code: PairingCode) -> None:
    alice, bob = commit_lost(book, code, initiator_commits=False)
    assert alice.registry.records == {}
    _, resolver = resolve(alice.registry, bob, NOW + 60)
    assert resolver.events == [PairingResolved(bob.pairing_id or b"", committed=False)]
    assert alice.registry.records == {} and bob.registry.records == {}  # neither


def test_resolve_deletes_a_pending_record_left_on_the_initiator(book: Codebook, code: PairingCode) -> None:
    alice, bob = initiator_at(InitiatorState.S4_committing, book, code)
    bob.machine.handle_timer(NOW + STEP)  # alice's actor is stuck; bob gives up waiting
    bob.pump(NOW + STEP)
    assert alice.registry.states == ["PENDING"]
    answering, resolver = resolve(alice.registry, bob, NOW + 60)
    assert answering.events[-1] == ResolveAnswered(
        bob.pairing_id or b"", committed=False, pending_must_be_deleted=True
    )
    assert resolver.events == [PairingResolved(bob.pairing_id or b"", committed=False)]
    assert alice.registry.records == {} and bob.registry.records == {}


def test_a_resolve_without_the_secret_learns_nothing_and_deletes_nothing(
    book: Codebook, code: PairingCode
) -> None:
    alice, bob = commit_lost(book, code, initiator_commits=True)
    assert bob.pairing_id is not None
    impostor = resolver(bob.pairing_id, bytes(32))
    answering = initiator(Codebook())
    answering.registry = alice.registry
    exchange(impostor, answering)
    assert answering.failure().code is ErrorCode.WRONG_CODE
    assert impostor.events == [PairingInDoubt(bob.pairing_id)]
    assert alice.registry.states == ["CONFIRMED"]


def test_after_the_vote_only_an_explicit_reject_aborts_the_joiner(book: Codebook, code: PairingCode) -> None:
    _, bob = joiner_at(JoinerState.S3_done_sent, book, code)
    bob.machine.peer_closed(NOW, ErrorCode.INTERNAL_ERROR)
    bob.pump(NOW)
    assert bob.outcome() is PairingInDoubt and bob.registry.states == ["PENDING"]
    _, carol = joiner_at(JoinerState.S3_done_sent, *fresh_code(2))
    carol.machine.receive_data(encode_frame(PairReject(code=ErrorCode.ABORTED, reason="")), NOW)
    carol.pump(NOW)
    assert carol.failure().pending_must_be_deleted and carol.registry.records == {}


def test_a_refused_commit_is_an_abort_the_joiner_hears_at_once(book: Codebook, code: PairingCode) -> None:
    alice, bob = initiator_at(InitiatorState.S4_committing, book, code)
    alice.machine.commit_refused(NOW)  # type: ignore[attr-defined]  # e.g. a resolve deleted the record
    alice.pump(NOW)
    transfer(alice, bob)
    assert alice.failure().code is ErrorCode.ABORTED and alice.registry.records == {}
    assert bob.failure().code is ErrorCode.ABORTED and bob.failure().pending_must_be_deleted
    assert bob.registry.records == {}  # neither


def test_a_closed_stream_does_not_stop_a_committing_initiator(book: Codebook, code: PairingCode) -> None:
    alice, _ = initiator_at(InitiatorState.S4_committing, book, code)
    alice.machine.peer_closed(NOW, None)
    alice.commit(NOW)
    assert alice.outcome() is PairingSucceeded and alice.registry.states == ["CONFIRMED"]


@pytest.mark.parametrize(
    "state", [InitiatorState.S1_challenge_sent, InitiatorState.S3_complete_sent], ids=str
)
def test_a_closed_stream_before_the_decision_fails_the_initiator(
    book: Codebook, code: PairingCode, state: InitiatorState
) -> None:
    alice, _ = initiator_at(state, book, code)
    alice.machine.peer_closed(NOW, None)
    alice.pump(NOW)
    assert alice.failure().code is ErrorCode.ABORTED and alice.failure().remote
    assert alice.registry.records == {} and attempts(book, code)[2] is CodeState.OPEN


def test_local_abort_tells_the_peer_until_the_decision(book: Codebook, code: PairingCode) -> None:
    alice, bob = initiator_at(InitiatorState.S2_storing_pending, book, code)
    alice.machine.abort(ErrorCode.GOING_AWAY, NOW)
    alice.pump(NOW)
    transfer(alice, bob)
    assert alice.failure().code is ErrorCode.GOING_AWAY and alice.registry.records == {}
    assert bob.failure().code is ErrorCode.GOING_AWAY and bob.failure().remote
    _, bob2 = joiner_at(JoinerState.S3_done_sent, *fresh_code(4))
    bob2.machine.abort(ErrorCode.GOING_AWAY, NOW)
    bob2.pump(NOW)
    assert bob2.outcome() is PairingInDoubt and bob2.machine.data_to_send() == b""


def test_a_durable_write_that_finishes_after_a_timeout_is_ignored(book: Codebook, code: PairingCode) -> None:
    alice, _ = initiator_at(InitiatorState.S2_storing_pending, book, code)
    alice.machine.handle_timer(NOW + STEP)
    alice.pump(NOW + STEP)
    assert alice.failure().pending_must_be_deleted and alice.registry.records == {}
    assert [type(m) for m in decode_all(alice.machine.data_to_send())] == [PairReject]
    alice.machine.pending_stored(NOW + STEP)  # type: ignore[attr-defined]  # the write raced the timer
    assert alice.machine.state is InitiatorState.S_failed and alice.machine.data_to_send() == b""
    assert alice.machine.next_event() is None


def test_an_initiator_shutting_down_while_the_actor_looks_up_tells_the_resolver(book: Codebook) -> None:
    alice, bob = resolving_initiator(book)
    alice.machine.abort(ErrorCode.GOING_AWAY, NOW)
    alice.pump(NOW)
    transfer(alice, bob)
    assert alice.failure().code is ErrorCode.GOING_AWAY
    assert bob.events == [PairingInDoubt(bytes(32))]  # not an answer: ask again later


def test_a_reject_with_a_code_from_a_later_version_reads_as_aborted(
    book: Codebook, code: PairingCode
) -> None:
    _, bob = joiner_at(JoinerState.S0_request_sent, book, code)
    bob.machine.receive_data(encode_frame(PairReject(code=0x7777, reason="new")), NOW)
    bob.pump(NOW)
    assert bob.failure().code is ErrorCode.ABORTED and bob.failure().remote


def test_a_resolver_does_not_take_an_unknown_reject_code_as_aborted() -> None:
    bob = resolver()
    bob.machine.receive_data(encode_frame(PairReject(code=0x7777, reason="new")), NOW)
    bob.pump(NOW)
    assert bob.events == [PairingInDoubt(bytes(32))]
