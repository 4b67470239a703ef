"""The pairing test harness: an initiator and a joiner joined by bytes only.

Each side is a sans-I/O machine plus a tiny stand-in for its session actor
(:class:`Side`): it drains the events, records what it would write to the
registry (:class:`FakeRegistry`) and calls the machine back the way the real
actor does. ``transfer(a, b)`` moves whatever ``a`` wants to send into ``b``.
Time is a number we choose; randomness is seeded.

Shared by the ``test_pairing*.py`` modules, which import the fixtures
explicitly::

    from support.pairing_harness import book_fixture as book_fixture  # the ``book`` fixture
    from support.pairing_harness import code_fixture as code_fixture  # the ``code`` fixture

Besides the stand-ins it holds the state drivers (:func:`initiator_at`,
:func:`joiner_at`, :func:`resolving_initiator`) that put one side in any open
state, and :func:`assert_stays_failed`, the check that an ended machine stays ended.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from quicpair.protocol.codebook import Codebook, CodeState
from quicpair.protocol.codes import PairingCode
from quicpair.protocol.errors import ErrorCode
from quicpair.protocol.framing import FrameDecoder, encode_frame
from quicpair.protocol.identity import NodeId
from quicpair.protocol.messages import DeviceInfo, Message, PairDone
from quicpair.protocol.pairing import (
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
)

__all__ = [
    "ALICE",
    "ALICE_INFO",
    "BOB",
    "BOB_INFO",
    "INITIATOR_OPEN",
    "JOINER_OPEN",
    "MALLORY",
    "NOW",
    "STEP",
    "FakeRegistry",
    "Side",
    "assert_stays_failed",
    "attempts",
    "book_fixture",
    "code_fixture",
    "decode_all",
    "drop",
    "exchange",
    "fresh_code",
    "initiator",
    "initiator_at",
    "joiner",
    "joiner_at",
    "resolver",
    "resolving_initiator",
    "seeded",
    "transfer",
    "wrong_words",
]

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


def initiator(
    book: Codebook, *, peer: NodeId = BOB, local: NodeId = ALICE, now: float = NOW, verify: bool = False
) -> Side:
    machine = Initiator(
        local=local,
        peer=peer,
        codebook=book,
        device_info=ALICE_INFO,
        now=now,
        rand=seeded(11),
        verify=lambda _nameplate: verify,
    )
    return Side(machine, FakeRegistry(), peer=BOB)


def joiner(
    code: PairingCode,
    *,
    peer: NodeId = ALICE,
    local: NodeId = BOB,
    now: float = NOW,
    registry: FakeRegistry | None = None,
    verify: bool = False,
) -> Side:
    machine = Joiner(
        local=local, peer=peer, code=code, device_info=BOB_INFO, now=now, rand=seeded(22), verify=verify
    )
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


@pytest.fixture(name="book")
def book_fixture() -> Codebook:
    return Codebook()


@pytest.fixture(name="code")
def code_fixture(book: Codebook) -> PairingCode:
    return book.open(NOW, seeded(1))


def attempts(book: Codebook, code: PairingCode) -> tuple[int, int, CodeState]:
    status = book.describe(code.nameplate, NOW)
    assert status is not None
    return status.attempts, status.wrong_attempts, status.state


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


#: The open states of a pairing without SAS verification (tests/protocol/test_pairing_sas.py
#: drives the SAS states).
INITIATOR_OPEN = [
    s for s in InitiatorState if s.name[:2] in {"S0", "S1", "S2", "S3", "S4"} and "_sas_" not in s.name
]
JOINER_OPEN = [
    s for s in JoinerState if s.name[:2] in {"S0", "S1", "S2", "S3", "S4"} and "_sas_" not in s.name
]


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
