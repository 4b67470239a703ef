"""Pairing: malformed frames at every state, and fuzzed bytes at any state.

Whatever arrives, a machine only ever ends the pairing: it never raises, never
commits on bad input and says why in a PairReject when it may.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quicpair.protocol.codebook import Codebook, CodeState
from quicpair.protocol.codes import PairingCode
from quicpair.protocol.errors import ErrorCode
from quicpair.protocol.framing import encode_frame
from quicpair.protocol.messages import (
    PairChallenge,
    PairCommit,
    PairComplete,
    PairDone,
    PairReject,
    PairRequest,
    PairResolve,
    PairResponse,
    PairSasConfirmed,
)
from quicpair.protocol.pairing import (
    InitiatorState,
    JoinerState,
    PairingFailed,
    PairingInDoubt,
    PairingResolved,
    PairingSucceeded,
    ResolveAnswered,
    ResolveRequested,
    ResolverState,
)
from support.pairing_harness import (
    INITIATOR_OPEN,
    JOINER_OPEN,
    NOW,
    Side,
    assert_stays_failed,
    attempts,
    decode_all,
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
        st.builds(PairChallenge, pake=pake, confirm=b32, flags=st.integers(0, 3)),
        st.builds(PairResponse, confirm=b32, sealed=st.binary(max_size=80), flags=st.integers(0, 3)),
        st.builds(PairSasConfirmed, mac=b32),
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
