"""Pairing scenarios: an initiator and a joiner joined by bytes only.

Each side is a sans-I/O machine plus a tiny stand-in for its session actor
(:class:`Side`): it drains the events, records what it would write to the
registry (:class:`FakeRegistry`) and calls the machine back the way the real
actor does. ``transfer(a, b)`` moves whatever ``a`` wants to send into ``b``.
Time is a number we choose; randomness is seeded.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.codebook import Codebook, CodeState
from protocol.codes import PairingCode
from protocol.errors import ErrorCode, LocalProtocolError
from protocol.framing import FrameDecoder, encode_frame
from protocol.identity import NodeId
from protocol.keys import Role
from protocol.messages import (
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
from protocol.pairing import (
    DEFAULT_STEP_TIMEOUT,
    CommitRequested,
    Initiator,
    InitiatorState,
    Joiner,
    JoinerState,
    PairingEvent,
    PairingFailed,
    PairingInDoubt,
    PairingMachine,
    PairingResolved,
    PairingSucceeded,
    PeerVerified,
    ResolveAnswered,
    Resolver,
    ResolveRequested,
    ResolverState,
)

NOW = 10_000.0
STEP = DEFAULT_STEP_TIMEOUT
ALICE = NodeId(bytes([0xA1]) * 32)  # the initiator: shows the code
BOB = NodeId(bytes([0xB0]) * 32)  # the joiner: types it
MALLORY = NodeId(bytes([0x66]) * 32)  # a relay in the middle
ALICE_INFO = DeviceInfo(name="alice-laptop", addresses=["192.0.2.1:4433", "[2001:db8::1]:4433"])
BOB_INFO = DeviceInfo(name="bob-phone", addresses=["198.51.100.7:4433"])


# -- the stand-ins for the session actor and the registry ---------------------------


@dataclass
class FakeRegistry:
    """Records every durable write; a record is (state, peer, secret) by pairing id."""

    calls: list[tuple[str, bytes]] = field(default_factory=list)
    records: dict[bytes, tuple[str, NodeId, bytes]] = field(default_factory=dict)

    def store_pending(self, peer: NodeId, pairing_id: bytes, secret: bytes) -> None:
        self.calls.append(("store_pending", pairing_id))
        self.records[pairing_id] = ("PENDING", peer, secret)

    def confirm(self, pairing_id: bytes) -> None:
        self.calls.append(("confirm", pairing_id))
        state, peer, secret = self.records[pairing_id]
        assert state == "PENDING"
        self.records[pairing_id] = ("CONFIRMED", peer, secret)

    def delete_pending(self, pairing_id: bytes) -> None:
        self.calls.append(("delete_pending", pairing_id))
        if pairing_id in self.records and self.records[pairing_id][0] == "PENDING":
            del self.records[pairing_id]

    def state_of(self, pairing_id: bytes | None) -> str | None:
        record = self.records.get(pairing_id) if pairing_id is not None else None
        return record[0] if record else None

    @property
    def states(self) -> list[str]:
        return [state for state, _peer, _secret in self.records.values()]


@dataclass
class Side:
    """One node's session actor, reduced to what the protocol needs from it."""

    machine: PairingMachine[Any]
    registry: FakeRegistry
    peer: NodeId
    #: Call pending_stored()/committed() right after the write (False: the test does it).
    auto_store: bool = True
    auto_commit: bool = True
    events: list[PairingEvent] = field(default_factory=list)
    sent: list[Message] = field(default_factory=list)
    pairing_id: bytes | None = None

    def pump(self, now: float) -> None:
        while (event := self.machine.next_event()) is not None:
            self.events.append(event)
            self.act(event, now)

    def act(self, event: PairingEvent, now: float) -> None:
        m = self.machine
        if isinstance(event, PeerVerified):
            self.pairing_id = event.keys.pairing_id
            self.registry.store_pending(self.peer, event.keys.pairing_id, event.keys.pairing_secret)
            if self.auto_store:
                m.pending_stored(now)  # type: ignore[attr-defined]
        elif isinstance(event, CommitRequested) and self.auto_commit:
            self.commit(now)
        elif isinstance(event, PairingFailed) and event.pending_must_be_deleted:
            assert self.pairing_id is not None
            self.registry.delete_pending(self.pairing_id)
        elif isinstance(event, PairingInDoubt):
            assert event.pairing_id == self.pairing_id
        elif isinstance(event, ResolveRequested):
            record = self.registry.records.get(event.pairing_id)
            self.pairing_id = event.pairing_id
            if record is None or record[1] != self.peer:
                m.answer_resolve(False, None, now)  # type: ignore[attr-defined]
            else:
                m.answer_resolve(record[0] == "CONFIRMED", record[2], now)  # type: ignore[attr-defined]
        elif isinstance(event, ResolveAnswered) and event.pending_must_be_deleted:
            self.registry.delete_pending(event.pairing_id)
        elif isinstance(event, PairingResolved):
            if event.committed:
                self.registry.confirm(event.pairing_id)
            else:
                self.registry.delete_pending(event.pairing_id)

    def commit(self, now: float) -> None:
        assert self.pairing_id is not None
        self.registry.confirm(self.pairing_id)
        self.machine.committed(now)  # type: ignore[attr-defined]
        self.pump(now)

    def store(self, now: float) -> None:
        self.machine.pending_stored(now)  # type: ignore[attr-defined]
        self.pump(now)

    def outcome(self) -> type | None:
        final = [e for e in self.events if isinstance(e, PairingSucceeded | PairingFailed | PairingInDoubt)]
        assert len(final) <= 1, f"more than one outcome: {final}"
        return type(final[0]) if final else None

    def failure(self) -> PairingFailed:
        failures = [e for e in self.events if isinstance(e, PairingFailed)]
        assert len(failures) == 1, f"expected one PairingFailed, got {self.events}"
        return failures[0]

    def success(self) -> PairingSucceeded:
        done = [e for e in self.events if isinstance(e, PairingSucceeded)]
        assert len(done) == 1, f"expected PairingSucceeded, got {self.events}"
        return done[0]


def decode_all(data: bytes) -> list[Message]:
    decoder = FrameDecoder()
    decoder.feed(data)
    return list(decoder)


def transfer(a: Side, b: Side, now: float = NOW) -> list[Message]:
    """Move everything ``a`` has to send into ``b``; return the messages that moved."""
    data = a.machine.data_to_send()
    messages = decode_all(data)
    a.sent.extend(messages)
    if data:
        b.machine.receive_data(data, now)
        b.pump(now)
    return messages


def drop(a: Side) -> list[Message]:
    """``a``'s bytes are lost on the way (the network, a crash)."""
    messages = decode_all(a.machine.data_to_send())
    a.sent.extend(messages)
    return messages


def exchange(joiner: Side, initiator: Side, now: float = NOW) -> None:
    """Pass bytes both ways until neither side has anything to send."""
    for _ in range(20):
        if not transfer(joiner, initiator, now) + transfer(initiator, joiner, now):
            return
    raise AssertionError("the exchange did not settle")


def seeded(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def wrong_words(code: PairingCode) -> PairingCode:
    first = "zoo" if code.words[0] != "zoo" else "abandon"
    return PairingCode(code.nameplate, (first, code.words[1], code.words[2]))


def initiator(book: Codebook, *, peer: NodeId = BOB, local: NodeId = ALICE, now: float = NOW) -> Side:
    machine = Initiator(
        local=local, peer=peer, codebook=book, device_info=ALICE_INFO, now=now, rand=seeded(11)
    )
    return Side(machine, FakeRegistry(), peer=BOB)


def joiner(
    code: PairingCode,
    *,
    peer: NodeId = ALICE,
    local: NodeId = BOB,
    now: float = NOW,
    registry: FakeRegistry | None = None,
) -> Side:
    machine = Joiner(local=local, peer=peer, code=code, device_info=BOB_INFO, now=now, rand=seeded(22))
    return Side(machine, registry or FakeRegistry(), peer=ALICE)


def resolver(
    pairing_id: bytes = bytes(32),
    secret: bytes = bytes(range(32)),
    *,
    registry: FakeRegistry | None = None,
    now: float = NOW,
) -> Side:
    """Bob's actor, dialing Alice again to ask about a pairing it is in doubt about."""
    machine = Resolver(local=BOB, peer=ALICE, pairing_id=pairing_id, pairing_secret=secret, now=now)
    return Side(machine, registry or FakeRegistry(), peer=ALICE, pairing_id=pairing_id)


def fresh_code(seed: int) -> tuple[Codebook, PairingCode]:
    """A second, independent initiator node's codebook and its one code."""
    book = Codebook()
    return book, book.open(NOW, seeded(seed))


@pytest.fixture
def book() -> Codebook:
    return Codebook()


@pytest.fixture
def code(book: Codebook) -> PairingCode:
    return book.open(NOW, seeded(1))


def attempts(book: Codebook, code: PairingCode) -> tuple[int, int, CodeState]:
    status = book.describe(code.nameplate, NOW)
    assert status is not None
    return status.attempts, status.wrong_attempts, status.state


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
    forged = PairResponse(confirm=bytes(32), sealed=b"\x00" * 40)
    alice.machine.receive_data(encode_frame(forged), NOW)
    alice.pump(NOW)
    assert alice.failure().code is ErrorCode.WRONG_CODE and not alice.failure().remote
    assert attempts(book, code) == (1, 1, CodeState.OPEN)
    assert alice.registry.calls == []


# -- the machines drive each side to every state --------------------------------------------


def initiator_at(state: InitiatorState, book: Codebook, code: PairingCode) -> tuple[Side, Side]:
    """An (alice, bob) pair with alice in ``state`` (and nothing left to send)."""
    alice, bob = initiator(book), joiner(code)
    alice.auto_store = alice.auto_commit = False
    steps = [
        InitiatorState.S0_await_request,
        InitiatorState.S1_challenge_sent,
        InitiatorState.S2_storing_pending,
        InitiatorState.S3_complete_sent,
        InitiatorState.S4_committing,
    ]
    actions: list[Callable[[], object]] = [
        lambda: transfer(bob, alice),
        lambda: (transfer(alice, bob), transfer(bob, alice)),
        lambda: alice.store(NOW),
        lambda: (transfer(alice, bob), transfer(bob, alice)),
    ]
    for step, action in zip(steps, actions, strict=False):
        if alice.machine.state is state:
            break
        assert alice.machine.state is step
        action()
    assert alice.machine.state is state
    transfer(alice, bob)
    return alice, bob


def joiner_at(state: JoinerState, book: Codebook, code: PairingCode) -> tuple[Side, Side]:
    """An (alice, bob) pair with bob in ``state``."""
    alice, bob = initiator(book), joiner(code)
    bob.auto_store = bob.auto_commit = False
    actions: list[Callable[[], object]] = [
        lambda: (transfer(bob, alice), transfer(alice, bob)),
        lambda: (transfer(bob, alice), transfer(alice, bob)),
        lambda: bob.store(NOW),
        lambda: (transfer(bob, alice), transfer(alice, bob)),
    ]
    for action in actions:
        if bob.machine.state is state:
            break
        action()
    assert bob.machine.state is state
    transfer(bob, alice)
    return alice, bob


def resolving_initiator(book: Codebook) -> tuple[Side, Side]:
    """alice (a fresh initiator) asked by a resolver; alice's actor has not answered yet."""
    alice, bob = initiator(book), resolver()
    alice.machine.receive_data(bob.machine.data_to_send(), NOW)
    alice.machine.next_event()  # the ResolveRequested; not answered
    return alice, bob


INITIATOR_OPEN = [s for s in InitiatorState if s.name[:2] in {"S0", "S1", "S2", "S3", "S4"}]
JOINER_OPEN = [s for s in JoinerState if s.name[:2] in {"S0", "S1", "S2", "S3", "S4"}]


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
    PairChallenge(pake=b"A" + bytes(32), confirm=bytes(32)),
    PairResponse(confirm=bytes(32), sealed=bytes(40)),
    PairComplete(sealed=bytes(40)),
    PairDone(mac=bytes(32)),
    PairCommit(mac=bytes(32)),
    PairResolve(pairing_id=bytes(32), mac=bytes(32)),
    DeviceInfo(name="x", addresses=[]),
    LinkHello(nonce=bytes(32), addresses=[]),
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


def assert_stays_failed(side: Side) -> None:
    """More bytes, timers and aborts change nothing once a machine has ended."""
    side.machine.data_to_send()
    state, count = side.machine.state, len(side.events)
    side.machine.receive_data(encode_frame(PairDone(mac=bytes(32))) + b"\xff" * 9, NOW + 1)
    side.machine.handle_timer(NOW + 1_000)
    side.machine.abort(ErrorCode.GOING_AWAY, NOW + 1_000)
    side.machine.peer_closed(NOW + 1_000)
    side.pump(NOW + 1_000)
    assert side.machine.state is state and len(side.events) == count
    assert side.machine.data_to_send() == b""
    assert side.machine.next_deadline() is None


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


# -- malformed frames at every state ---------------------------------------------------------


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


GARBAGE = [
    pytest.param(b"\x00\x00\x00\x00", ErrorCode.MALFORMED_MESSAGE, id="empty-frame"),
    pytest.param(b"\x00\x01\x00\x01", ErrorCode.FRAME_TOO_LARGE, id="too-large"),
    pytest.param(b"\x00\x00\x00\x03\xc1\xc1\xc1", ErrorCode.MALFORMED_MESSAGE, id="bad-msgpack"),
    pytest.param(frame(msgpack.packb([1, 99, {}])), ErrorCode.UNKNOWN_MESSAGE, id="unknown-tag"),
    pytest.param(frame(msgpack.packb([1, 5, {"mac": 7}])), ErrorCode.MALFORMED_MESSAGE, id="wrong-type"),
]


@pytest.mark.parametrize("state", INITIATOR_OPEN, ids=lambda s: s.name)
@pytest.mark.parametrize(("data", "expected"), GARBAGE)
def test_initiator_fails_on_malformed_frames(
    book: Codebook, code: PairingCode, state: InitiatorState, data: bytes, expected: ErrorCode
) -> None:
    alice, _ = initiator_at(state, book, code)
    alice.machine.receive_data(data, NOW)
    alice.pump(NOW)
    if state is InitiatorState.S4_committing:
        assert alice.machine.state is state
        return
    assert alice.failure().code is expected
    [reject] = decode_all(alice.machine.data_to_send())
    assert isinstance(reject, PairReject) and reject.code == expected
    assert_stays_failed(alice)


@pytest.mark.parametrize("state", JOINER_OPEN, ids=lambda s: s.name)
@pytest.mark.parametrize(("data", "expected"), GARBAGE)
def test_joiner_fails_or_doubts_on_malformed_frames(
    book: Codebook, code: PairingCode, state: JoinerState, data: bytes, expected: ErrorCode
) -> None:
    _, bob = joiner_at(state, book, code)
    bob.machine.receive_data(data, NOW)
    bob.pump(NOW)
    if state is JoinerState.S4_committing:
        assert bob.machine.state is state
        return
    if state is JoinerState.S3_done_sent:
        assert bob.outcome() is PairingInDoubt and bob.machine.failure_code is expected
        assert bob.machine.data_to_send() == b""
        return
    assert bob.failure().code is expected
    [reject] = decode_all(bob.machine.data_to_send())
    assert isinstance(reject, PairReject) and reject.code == expected


def test_valid_messages_before_a_bad_frame_are_still_handled(book: Codebook, code: PairingCode) -> None:
    alice, bob = initiator(book), joiner(code)
    request = bob.machine.data_to_send()
    alice.machine.receive_data(request + b"\x00\x00\x00\x00", NOW)
    alice.pump(NOW)
    sent = decode_all(alice.machine.data_to_send())
    assert [type(m) for m in sent] == [PairChallenge, PairReject]
    assert alice.failure().code is ErrorCode.MALFORMED_MESSAGE
    assert attempts(book, code) == (1, 0, CodeState.OPEN)  # the Challenge went out: counted


def test_bytes_may_arrive_one_at_a_time(book: Codebook, code: PairingCode) -> None:
    alice, bob = initiator(book), joiner(code)
    for _ in range(10):
        moved = False
        for src, dst in ((bob, alice), (alice, bob)):
            data = src.machine.data_to_send()
            for i in range(len(data)):
                dst.machine.receive_data(data[i : i + 1], NOW)
                dst.pump(NOW)
            moved = moved or bool(data)
        if not moved:
            break
    assert alice.outcome() is PairingSucceeded and bob.outcome() is PairingSucceeded


def test_a_box_that_does_not_open_is_refused(book: Codebook, code: PairingCode) -> None:
    alice, bob = joiner_at(JoinerState.S1_response_sent, book, code)
    bob.machine.receive_data(encode_frame(PairComplete(sealed=bytes(60))), NOW)
    bob.pump(NOW)
    assert bob.failure().code is ErrorCode.DECRYPT_FAILED and not bob.failure().pending_must_be_deleted
    transfer(bob, alice)
    assert alice.failure().code is ErrorCode.DECRYPT_FAILED and alice.failure().remote
    assert alice.registry.records == {}  # alice had stored bob as pending: deleted


def test_a_wrong_done_mac_aborts_before_any_commit(book: Codebook, code: PairingCode) -> None:
    alice, _ = initiator_at(InitiatorState.S3_complete_sent, book, code)
    alice.machine.receive_data(encode_frame(PairDone(mac=bytes(32))), NOW)
    alice.pump(NOW)
    assert alice.failure().code is ErrorCode.PROTOCOL_VIOLATION and alice.registry.records == {}
    assert attempts(book, code)[2] is CodeState.OPEN


def test_a_wrong_commit_mac_leaves_the_joiner_in_doubt(book: Codebook, code: PairingCode) -> None:
    _, bob = joiner_at(JoinerState.S3_done_sent, book, code)
    bob.machine.receive_data(encode_frame(PairCommit(mac=bytes(32))), NOW)
    bob.pump(NOW)
    assert bob.outcome() is PairingInDoubt and bob.registry.states == ["PENDING"]


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


# -- fuzz: garbage at any state ---------------------------------------------------------------

ALL_STATES: list[tuple[str, Any]] = (
    [("initiator", s) for s in INITIATOR_OPEN]
    + [("joiner", s) for s in JOINER_OPEN]
    + [("resolving", InitiatorState.R1_resolve_requested), ("resolver", ResolverState.R0_resolve_sent)]
)


FUZZ_NAMEPLATE = fresh_code(9)[1].nameplate


def side_in(kind: str, state: Any) -> Side:
    book, code = fresh_code(9)
    if kind == "initiator":
        return initiator_at(state, book, code)[0]
    if kind == "joiner":
        return joiner_at(state, book, code)[1]
    if kind == "resolving":
        return resolving_initiator(book)[0]
    bob = resolver()
    bob.machine.data_to_send()
    return bob


def valid_frames() -> st.SearchStrategy[bytes]:
    """Well-formed frames of any message, with random field values: deeper than pure noise."""
    b32 = st.binary(min_size=32, max_size=32)
    pake = st.builds(lambda side, rest: side + rest, st.sampled_from([b"A", b"B"]), b32)
    messages = st.one_of(
        st.builds(PairRequest, nameplate=st.just(FUZZ_NAMEPLATE) | st.integers(0, 10_000), pake=pake),
        st.builds(PairChallenge, pake=pake, confirm=b32),
        st.builds(PairResponse, confirm=b32, sealed=st.binary(max_size=80)),
        st.builds(PairComplete, sealed=st.binary(max_size=80)),
        st.builds(PairDone, mac=b32),
        st.builds(PairCommit, mac=b32),
        st.builds(PairResolve, pairing_id=b32, mac=b32),
        st.builds(PairReject, code=st.integers(0, 2**16), reason=st.text(max_size=20)),
    )
    return messages.map(encode_frame)


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    where=st.sampled_from(ALL_STATES),
    chunks=st.lists(st.one_of(st.binary(max_size=64), valid_frames()), min_size=1, max_size=4),
)
def test_garbage_at_any_state_only_ever_ends_the_pairing(where: tuple[str, Any], chunks: list[bytes]) -> None:
    side = side_in(*where)
    before = len(side.events)
    for chunk in chunks:
        side.machine.receive_data(chunk, NOW)  # never raises
        side.pump(NOW)
    new = side.events[before:]
    allowed = (PairingFailed, PairingInDoubt, PairingResolved, ResolveRequested, ResolveAnswered)
    assert all(isinstance(e, allowed) for e in new), new
    endings = PairingFailed | PairingInDoubt | PairingResolved | ResolveAnswered
    assert len([e for e in new if isinstance(e, endings)]) <= 1
    for message in decode_all(side.machine.data_to_send()):
        assert isinstance(message, PairReject | PairChallenge | PairCommit)
    assert side.registry.states.count("CONFIRMED") == 0
    if side.machine.is_finished:
        assert_stays_failed(side)
