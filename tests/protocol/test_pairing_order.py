"""Pairing: every message out of order, repeated or unknown, and local calls out of order.

The state drivers of :mod:`pairing_harness` put one side in each open state;
each test then sends it what it does not expect there.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from quicpair.protocol.codebook import Codebook
from quicpair.protocol.codes import PairingCode
from quicpair.protocol.errors import ErrorCode, LocalProtocolError
from quicpair.protocol.framing import encode_frame
from quicpair.protocol.messages import (
    DeviceInfo,
    LinkHello,
    Message,
    PairChallenge,
    PairCommit,
    PairComplete,
    PairDone,
    PairReject,
    PairRequest,
    PairResolve,
    PairResponse,
)
from quicpair.protocol.pairing import (
    CommitRequested,
    InitiatorState,
    JoinerState,
    PairingFailed,
    PairingInDoubt,
    PairingSucceeded,
    ResolverState,
)
from support.pairing_harness import (
    INITIATOR_OPEN,
    JOINER_OPEN,
    NOW,
    STEP,
    assert_stays_failed,
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

# -- the machines drive each side to every state --------------------------------------------


def test_the_state_drivers_reach_every_open_state(book: Codebook, code: PairingCode) -> None:
    for state in INITIATOR_OPEN:
        alice, _ = initiator_at(state, *fresh_code(3))
        assert alice.machine.next_deadline() == NOW + STEP
    for jstate in JOINER_OPEN:
        _, bob = joiner_at(jstate, *fresh_code(3))
        assert bob.machine.next_deadline() == NOW + STEP
    alice, _ = resolving_initiator(book)
    assert alice.machine.state is InitiatorState.R1_resolve_requested


# -- out of order, repeated, unknown --------------------------------------------------------

SAMPLES: list[Message] = [
    PairRequest(nameplate=1, pake=b"B" + bytes(32)),
    PairChallenge(pake=b"A" + bytes(32), confirm=bytes(32), flags=0),
    PairResponse(confirm=bytes(32), sealed=bytes(40), flags=0),
    PairComplete(sealed=bytes(40)),
    PairDone(mac=bytes(32)),
    PairCommit(mac=bytes(32)),
    PairResolve(pairing_id=bytes(32), mac=bytes(32)),
    DeviceInfo(name="x", addresses=[]),
    LinkHello(nonce=bytes(32), pairing=bytes(8), addresses=[]),
]
INITIATOR_LEGAL: dict[InitiatorState, set[type[Any]]] = {
    InitiatorState.S0_await_request: {PairRequest, PairResolve},
    InitiatorState.S1_challenge_sent: {PairResponse},
    InitiatorState.S3_complete_sent: {PairDone},
}
JOINER_LEGAL: dict[JoinerState, set[type[Any]]] = {
    JoinerState.S0_request_sent: {PairChallenge},
    JoinerState.S1_response_sent: {PairComplete},
    JoinerState.S3_done_sent: {PairCommit},
}


def initiator_cases() -> Iterator[Any]:
    for state in INITIATOR_OPEN:
        for sample in SAMPLES:
            if type(sample) not in INITIATOR_LEGAL.get(state, set()):
                yield pytest.param(state, sample, id=f"{state.name}-{type(sample).__name__}")


def joiner_cases() -> Iterator[Any]:
    for state in JOINER_OPEN:
        for sample in SAMPLES:
            if type(sample) not in JOINER_LEGAL.get(state, set()):
                yield pytest.param(state, sample, id=f"{state.name}-{type(sample).__name__}")


@pytest.mark.parametrize(("state", "sample"), list(initiator_cases()))
def test_initiator_refuses_every_out_of_order_message(
    book: Codebook, code: PairingCode, state: InitiatorState, sample: Message
) -> None:
    alice, bob = initiator_at(state, book, code)
    alice.machine.receive_data(encode_frame(sample), NOW)
    alice.pump(NOW)
    if state is InitiatorState.S4_committing:
        # Bob voted; nothing he sends now can change the decision, so it is not read.
        assert alice.events[-1] == CommitRequested() and alice.machine.state is state
        alice.commit(NOW)
        assert alice.outcome() is PairingSucceeded
        return
    failed = alice.failure()
    assert failed.code is ErrorCode.PROTOCOL_VIOLATION and not failed.remote
    assert (
        "initiator" in failed.detail
        and state.name in failed.detail
        and type(sample).__name__ in failed.detail
    )
    assert failed.pending_must_be_deleted is (
        state in {InitiatorState.S2_storing_pending, InitiatorState.S3_complete_sent}
    )
    assert alice.machine.state is InitiatorState.S_failed
    assert alice.machine.failure_code is ErrorCode.PROTOCOL_VIOLATION
    transfer(alice, bob)
    assert isinstance(alice.sent[-1], PairReject) and alice.sent[-1].code == ErrorCode.PROTOCOL_VIOLATION
    assert alice.registry.records == {}
    assert_stays_failed(alice)


@pytest.mark.parametrize(("state", "sample"), list(joiner_cases()))
def test_joiner_refuses_every_out_of_order_message(
    book: Codebook, code: PairingCode, state: JoinerState, sample: Message
) -> None:
    alice, bob = joiner_at(state, book, code)
    bob.machine.receive_data(encode_frame(sample), NOW)
    bob.pump(NOW)
    if state is JoinerState.S4_committing:
        assert bob.machine.state is state
        bob.commit(NOW)
        assert bob.outcome() is PairingSucceeded
        return
    if state is JoinerState.S3_done_sent:
        # Bob voted: he may not abort alone. In doubt, record kept, nothing said.
        assert bob.outcome() is PairingInDoubt and bob.machine.state is JoinerState.S_in_doubt
        assert bob.registry.states == ["PENDING"] and bob.machine.data_to_send() == b""
        assert_stays_failed(bob)
        return
    failed = bob.failure()
    assert failed.code is ErrorCode.PROTOCOL_VIOLATION and not failed.remote
    assert "joiner" in failed.detail and state.name in failed.detail
    assert failed.pending_must_be_deleted is (state is JoinerState.S2_storing_pending)
    transfer(bob, alice)
    assert isinstance(bob.sent[-1], PairReject) and bob.sent[-1].code == ErrorCode.PROTOCOL_VIOLATION
    assert bob.registry.records == {}
    assert alice.outcome() is PairingFailed and alice.failure().remote
    assert alice.registry.records == {}
    assert_stays_failed(bob)


@pytest.mark.parametrize(
    "sample", [s for s in SAMPLES if not isinstance(s, PairCommit)], ids=lambda s: type(s).__name__
)
def test_resolver_stays_in_doubt_on_anything_but_an_answer(sample: Message) -> None:
    bob = resolver()
    bob.machine.data_to_send()
    bob.machine.receive_data(encode_frame(sample), NOW)
    bob.pump(NOW)
    assert bob.events == [PairingInDoubt(pairing_id=bytes(32))]
    assert bob.machine.state is ResolverState.R_in_doubt
    assert bob.machine.failure_code is ErrorCode.PROTOCOL_VIOLATION
    assert_stays_failed(bob)


def test_resolving_initiator_refuses_messages_while_the_actor_looks_up(book: Codebook) -> None:
    alice, _ = resolving_initiator(book)
    alice.machine.receive_data(encode_frame(PairDone(mac=bytes(32))), NOW)
    alice.pump(NOW)
    assert alice.failure().code is ErrorCode.PROTOCOL_VIOLATION
    # The lookup's answer arrives after the failure: ignored, the failure stands.
    alice.machine.answer_resolve(True, bytes(32), NOW)  # type: ignore[attr-defined]
    assert alice.machine.state is InitiatorState.S_failed
    assert_stays_failed(alice)


def test_a_local_call_out_of_order_raises_naming_role_state_and_call(
    book: Codebook, code: PairingCode
) -> None:
    alice, bob = initiator(book), joiner(code)
    with pytest.raises(LocalProtocolError, match=r"initiator in state S0_await_request: committed"):
        alice.machine.committed(NOW)  # type: ignore[attr-defined]
    with pytest.raises(LocalProtocolError, match=r"joiner in state S0_request_sent: pending_stored"):
        bob.machine.pending_stored(NOW)  # type: ignore[attr-defined]
    assert alice.machine.state is InitiatorState.S0_await_request  # nothing changed
    exchange(bob, alice)
    with pytest.raises(LocalProtocolError, match=r"S5_succeeded: committed"):
        alice.machine.committed(NOW)  # type: ignore[attr-defined]
    with pytest.raises(LocalProtocolError, match=r"answer_resolve"):
        alice.machine.answer_resolve(False, None, NOW)  # type: ignore[attr-defined]
