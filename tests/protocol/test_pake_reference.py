"""SPAKE2 on libsodium against the reference ``spake2`` package: the same bytes, and stricter.

protocol/pake.py computes with libsodium (PyNaCl); ``spake2`` 0.9 is the
reference its bytes must equal (PROTOCOL.md 8.1). Here, over random passwords,
identities and draws, in both directions: the same messages, the same keys,
and each side of ours pairs with the other side of the reference. Then the
points a peer may send: every one the reference refuses is refused, and so
are the non-canonical encodings it accepts.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spake2 import SPAKE2_A, SPAKE2_B

from quicpair.protocol.errors import ErrorCode, RemoteProtocolError
from quicpair.protocol.identity import NodeId
from quicpair.protocol.keys import Role
from quicpair.protocol.pake import M, N, spake2_for
from support.edwards import IDENTITY, L, P, Point, add, enc, encode_raw, mul, x_even

INITIATOR = NodeId(bytes([1]) * 32)
JOINER = NodeId(bytes([2]) * 32)
PASSWORD = b"abandon-ability-able"
BASE: Point = (x_even(4 * pow(5, P - 2, P) % P) or 0, 4 * pow(5, P - 2, P) % P)


def seeded(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def reference(role: Role, password: bytes, ids: tuple[bytes, bytes], rand: Callable[[int], bytes]) -> Any:
    side = SPAKE2_A if role is Role.INITIATOR else SPAKE2_B
    return side(password, idA=ids[0], idB=ids[1], entropy_f=rand)


def password_scalar(password: bytes) -> int:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=48, salt=b"", info=b"SPAKE2 pw")
    return int.from_bytes(hkdf.derive(password), "big") % L


def dec(data: bytes) -> Point:
    y = int.from_bytes(data, "little") & ((1 << 255) - 1)
    x = x_even(y)
    assert x is not None
    return (P - x) % P if data[31] >> 7 else x, y


# -- the same bytes, both ways ---------------------------------------------------------------

node_ids = st.binary(min_size=32, max_size=32)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    password=st.binary(min_size=1, max_size=40),
    id_a=node_ids,
    id_b=node_ids,
    seed_a=st.integers(0, 2**32),
    seed_b=st.integers(0, 2**32),
)
def test_messages_and_keys_equal_the_reference_in_both_directions(
    password: bytes, id_a: bytes, id_b: bytes, seed_a: int, seed_b: int
) -> None:
    if id_a == id_b:
        return
    ids = (id_a, id_b)
    ours_a = spake2_for(Role.INITIATOR, password, NodeId(id_a), NodeId(id_b), seeded(seed_a))
    ours_b = spake2_for(Role.JOINER, password, NodeId(id_a), NodeId(id_b), seeded(seed_b))
    ref_a = reference(Role.INITIATOR, password, ids, seeded(seed_a))
    ref_b = reference(Role.JOINER, password, ids, seeded(seed_b))
    msg_a, msg_b = ours_a.start(), ours_b.start()
    assert (msg_a, msg_b) == (ref_a.start(), ref_b.start())
    # Ours as A with the reference as B, and the reference as A with ours as B.
    key = ours_a.finish(msg_b)
    assert key == ref_b.finish(msg_a) == ref_a.finish(msg_b) == ours_b.finish(msg_a)


@settings(max_examples=15, deadline=None)
@given(password_a=st.binary(min_size=1, max_size=20), password_b=st.binary(min_size=1, max_size=20))
def test_different_passwords_give_the_same_different_keys_as_the_reference(
    password_a: bytes, password_b: bytes
) -> None:
    ids = (INITIATOR.raw, JOINER.raw)
    ours_a = spake2_for(Role.INITIATOR, password_a, INITIATOR, JOINER, seeded(1))
    ref_b = reference(Role.JOINER, password_b, ids, seeded(2))
    msg_a, msg_b = ours_a.start(), ref_b.start()
    key_a, key_b = ours_a.finish(msg_b), ref_b.finish(msg_a)
    assert (key_a == key_b) == (password_a == password_b)


def test_a_zero_scalar_is_the_identity_as_in_the_reference() -> None:
    # A draw that is a multiple of L reduces to x = 0: spake2 makes x*B the identity, where
    # libsodium would refuse to compute it. X is then w*M, and Z the identity.
    zero: Callable[[int], bytes] = lambda n: (L * 3).to_bytes(n, "big")  # noqa: E731
    ours = spake2_for(Role.INITIATOR, PASSWORD, INITIATOR, JOINER, zero)
    ref = reference(Role.INITIATOR, PASSWORD, (INITIATOR.raw, JOINER.raw), zero)
    msg = ours.start()
    assert msg == ref.start() == b"A" + enc(mul(password_scalar(PASSWORD), dec(M)))
    peer = reference(Role.JOINER, PASSWORD, (INITIATOR.raw, JOINER.raw), seeded(5)).start()
    assert ours.finish(peer) == ref.finish(peer)


def test_a_peer_point_that_cancels_the_blinding_gives_the_reference_key() -> None:
    # The joiner sends exactly w*N: Y - w*N is the identity, and so is Z, in both libraries.
    y = b"B" + enc(mul(password_scalar(PASSWORD), dec(N)))
    ours = spake2_for(Role.INITIATOR, PASSWORD, INITIATOR, JOINER, seeded(9))
    ref = reference(Role.INITIATOR, PASSWORD, (INITIATOR.raw, JOINER.raw), seeded(9))
    assert ours.start() == ref.start()
    assert ours.finish(y) == ref.finish(y)


# -- the points a peer may send --------------------------------------------------------------


def _torsion() -> list[Point]:
    """The 8 points of small order (the identity included)."""
    y = 2
    while True:
        x = x_even(y)
        if x is not None:
            t = mul(L, (x, y))
            if mul(4, t) != IDENTITY:  # order 8: its multiples are the whole torsion group
                return [mul(k, t) for k in range(8)]
        y += 1


TORSION = _torsion()


def _bad_points() -> dict[str, bytes]:
    bad: dict[str, bytes] = {}
    for k, t in enumerate(TORSION):
        bad[f"small order: {k}*T8"] = enc(t)
        if t[0] == 0:  # x = 0 has a second spelling with the sign bit set
            bad[f"small order, sign bit on x = 0: {k}*T8"] = encode_raw(t[1], 1)
        if t[1] < 19:
            bad[f"small order, y + p: {k}*T8"] = encode_raw(t[1] + P, t[0] & 1)
    for k, t in enumerate(TORSION[1:], start=1):
        bad[f"outside the subgroup: B + {k}*T8"] = enc(add(BASE, t))
    for y in range(19):  # the only y with a second spelling y + p below 2^255
        x = x_even(y)
        if x is not None:
            for sign in (0, 1):
                bad[f"non-canonical y = {y} + p, sign {sign}"] = encode_raw(y + P, sign)
        else:
            bad[f"not on the curve: y = {y}"] = encode_raw(y, 0)
    bad["y = 2^255 - 1"] = b"\xff" * 31 + b"\x7f"
    bad["all ones"] = b"\xff" * 32
    return bad


BAD_POINTS = _bad_points()


def outcomes(point: bytes) -> tuple[bytes | Exception, bytes | Exception]:
    """(ours, reference): the key each derives from a joiner message with ``point``, or its error."""
    ids = (INITIATOR.raw, JOINER.raw)
    ours = spake2_for(Role.INITIATOR, PASSWORD, INITIATOR, JOINER, seeded(3))
    ref = reference(Role.INITIATOR, PASSWORD, ids, seeded(3))
    assert ours.start() == ref.start()
    results: list[bytes | Exception] = []
    for side in (ours, ref):
        try:
            results.append(side.finish(b"B" + point))
        except Exception as exc:  # the reference raises ValueError, NotOnCurve, SPAKEError...
            results.append(exc)
    return results[0], results[1]


@pytest.mark.parametrize("name", sorted(BAD_POINTS))
def test_every_bad_point_is_refused(name: str) -> None:
    point = BAD_POINTS[name]
    ours, ref = outcomes(point)
    assert isinstance(ours, RemoteProtocolError), f"accepted {name}"
    assert ours.code is ErrorCode.PROTOCOL_VIOLATION
    if not name.startswith("non-canonical") and "sign bit" not in name and "y + p" not in name:
        assert isinstance(ref, Exception), f"the reference accepts {name}: the list is wrong"


def test_the_reference_accepts_non_canonical_encodings_that_we_refuse() -> None:
    # What "stricter than the reference" means, shown: these reach spake2's key derivation.
    accepted = [name for name, point in BAD_POINTS.items() if not isinstance(outcomes(point)[1], Exception)]
    assert accepted, "the reference refused every spelling: nothing here shows the stricter check"
    assert all("non-canonical" in name or "sign bit" in name or "y + p" in name for name in accepted)


@settings(max_examples=150, deadline=None)
@given(point=st.binary(min_size=32, max_size=32))
def test_any_32_bytes_give_the_reference_key_or_are_refused_no_more_than_it_refuses(point: bytes) -> None:
    ours, ref = outcomes(point)
    if isinstance(ours, Exception):
        assert isinstance(ours, RemoteProtocolError)
        value = int.from_bytes(point, "little")
        y, sign = value & ((1 << 255) - 1), value >> 255
        canonical = y < P and not (sign and x_even(y) == 0)
        # Refused while the reference accepts: only a spelling that is not the canonical one.
        assert isinstance(ref, Exception) or not canonical
    else:
        assert ours == ref


def test_a_random_subgroup_point_is_accepted_like_the_reference() -> None:
    point = enc(mul(random.Random(4).randrange(1, L), BASE))
    ours, ref = outcomes(point)
    assert isinstance(ours, bytes) and ours == ref
