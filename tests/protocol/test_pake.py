"""SPAKE2 behind our interface: faithful to the reference package, strict with the peer."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from spake2 import SPAKE2_A, SPAKE2_B

from quicpair.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from quicpair.protocol.identity import NodeId
from quicpair.protocol.keys import Role
from quicpair.protocol.pake import PAKE_KEY_SIZE, Pake, spake2_for

INITIATOR = NodeId(bytes([1]) * 32)
JOINER = NodeId(bytes([2]) * 32)
PASSWORD = b"abandon-ability-able"

#: 2**255 - 19, the field prime of Ed25519.
_Q = 2**255 - 19


def seeded(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def pair(
    password_i: bytes = PASSWORD,
    password_j: bytes = PASSWORD,
    seed: int = 1,
) -> tuple[Pake, Pake]:
    alice = spake2_for(Role.INITIATOR, password_i, INITIATOR, JOINER, seeded(seed))
    bob = spake2_for(Role.JOINER, password_j, INITIATOR, JOINER, seeded(seed + 1000))
    return alice, bob


def run(alice: Pake, bob: Pake) -> tuple[bytes, bytes]:
    msg_a, msg_b = alice.start(), bob.start()
    return alice.finish(msg_b), bob.finish(msg_a)


def test_same_password_same_key() -> None:
    key_a, key_b = run(*pair())
    assert key_a == key_b
    assert len(key_a) == PAKE_KEY_SIZE


def test_messages_and_keys_equal_the_reference_package() -> None:
    ours_a, ours_b = pair(seed=7)
    ref_a: Any = SPAKE2_A(PASSWORD, idA=INITIATOR.raw, idB=JOINER.raw, entropy_f=seeded(7))
    ref_b: Any = SPAKE2_B(PASSWORD, idA=INITIATOR.raw, idB=JOINER.raw, entropy_f=seeded(1007))
    msg_a, msg_b = ours_a.start(), ours_b.start()
    assert msg_a == ref_a.start()
    assert msg_b == ref_b.start()
    assert msg_a[:1] == b"A" and msg_b[:1] == b"B" and len(msg_a) == len(msg_b) == 33
    key = ours_a.finish(msg_b)
    assert key == ref_a.finish(msg_b) == ours_b.finish(msg_a) == ref_b.finish(msg_a)


def test_rand_is_the_only_source_of_randomness() -> None:
    first, _ = pair(seed=3)
    again, _ = pair(seed=3)
    other, _ = pair(seed=4)
    m1, m2, m3 = first.start(), again.start(), other.start()
    assert m1 == m2 != m3


def test_wrong_password_gives_different_keys() -> None:
    key_a, key_b = run(*pair(password_j=b"abandon-ability-about"))
    assert key_a != key_b


def test_identities_are_bound() -> None:
    stranger = NodeId(bytes([3]) * 32)
    alice = spake2_for(Role.INITIATOR, PASSWORD, INITIATOR, JOINER, seeded(1))
    bob = spake2_for(Role.JOINER, PASSWORD, INITIATOR, stranger, seeded(2))
    key_a, key_b = run(alice, bob)
    assert key_a != key_b


def _point_bytes(y: int, sign: int = 0) -> bytes:
    return (y | (sign << 255)).to_bytes(32, "little")


MALFORMED: dict[str, bytes] = {
    "empty": b"",
    "side byte only": b"B",
    "32 bytes": b"B" + bytes(31),
    "34 bytes": b"B" + bytes(33),
    "unknown side": b"X" + _point_bytes(2),
    "symmetric side": b"S" + _point_bytes(2),
    "our own side": b"A" + _point_bytes(2),
    "not on the curve": b"B" + _point_bytes(2),
    "identity (canonical)": b"B" + _point_bytes(1),
    "identity (non-canonical sign bit)": b"B" + _point_bytes(1, sign=1),
    "all zero point": b"B" + bytes(32),
    "all ones point": b"B" + b"\xff" * 32,
    "y above the field prime": b"B" + _point_bytes(_Q + 1),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_peer_messages_are_remote_errors(name: str) -> None:
    alice, _ = pair()
    alice.start()
    with pytest.raises(RemoteProtocolError) as info:
        alice.finish(MALFORMED[name])
    assert info.value.code is ErrorCode.PROTOCOL_VIOLATION
    assert "initiator" in str(info.value)


def test_a_point_of_small_order_is_refused() -> None:
    # (0, -1) has order 2: it is on the curve but outside the prime-order subgroup.
    alice, _ = pair()
    alice.start()
    with pytest.raises(RemoteProtocolError):
        alice.finish(b"B" + _point_bytes(_Q - 1))


def test_reflection_is_refused() -> None:
    alice, _ = pair()
    own = alice.start()
    with pytest.raises(RemoteProtocolError) as info:
        alice.finish(b"B" + own[1:])
    assert info.value.code is ErrorCode.PROTOCOL_VIOLATION
    assert "ReflectionThwarted" in str(info.value)


def test_joiner_refuses_a_message_from_side_b() -> None:
    _, bob = pair()
    _, other_bob = pair(seed=50)
    bob_msg = bob.start()
    other_bob.start()
    with pytest.raises(RemoteProtocolError) as info:
        other_bob.finish(bob_msg)
    assert "joiner" in str(info.value)


def test_random_garbage_never_escapes_as_a_foreign_exception() -> None:
    rng = random.Random(25519)
    for _ in range(40):
        alice, _ = pair()
        alice.start()
        garbage = b"B" + rng.randbytes(32)
        try:
            key = alice.finish(garbage)
        except RemoteProtocolError:
            continue
        # A random valid element is accepted; it just yields a key no one else has.
        assert len(key) == PAKE_KEY_SIZE


def test_finish_before_start_is_a_local_error() -> None:
    alice, bob = pair()
    with pytest.raises(LocalProtocolError) as info:
        alice.finish(bob.start())
    assert "S0_created" in str(info.value) and "initiator" in str(info.value)


def test_start_twice_is_a_local_error() -> None:
    alice, _ = pair()
    alice.start()
    with pytest.raises(LocalProtocolError):
        alice.start()


def test_finish_twice_is_a_local_error() -> None:
    alice, bob = pair()
    msg_a, msg_b = alice.start(), bob.start()
    alice.finish(msg_b)
    with pytest.raises(LocalProtocolError) as info:
        alice.finish(msg_b)
    assert "S2_finished" in str(info.value)
    assert len(bob.finish(msg_a)) == PAKE_KEY_SIZE


def test_a_failed_pake_stays_failed() -> None:
    alice, bob = pair()
    alice.start()
    good = bob.start()
    with pytest.raises(RemoteProtocolError):
        alice.finish(b"B" + bytes(32))
    with pytest.raises(LocalProtocolError) as info:
        alice.finish(good)
    assert "S_failed" in str(info.value)


@pytest.mark.parametrize("password", [b"", "text"])
def test_password_must_be_non_empty_bytes(password: Any) -> None:
    with pytest.raises(ValueError):
        spake2_for(Role.INITIATOR, password, INITIATOR, JOINER, seeded(1))


def test_initiator_and_joiner_must_differ() -> None:
    with pytest.raises(ValueError):
        spake2_for(Role.JOINER, PASSWORD, INITIATOR, INITIATOR, seeded(1))


def test_repr_shows_no_secret() -> None:
    alice, _ = pair()
    alice.start()
    assert PASSWORD.decode() not in repr(alice)
    assert repr(alice) == "Spake2(initiator, S1_started)"
