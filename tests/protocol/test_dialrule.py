"""The dial rule: both sides always reach the same decision (DESIGN.md, failure #5)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quicpair.protocol.dialrule import ConnInfo, dialer_of, keep_connection, listener_of, should_dial
from quicpair.protocol.identity import NodeId

node_ids = st.binary(min_size=32, max_size=32).map(NodeId)
nonces = st.binary(min_size=32, max_size=32)


def distinct_pair() -> st.SearchStrategy[tuple[NodeId, NodeId]]:
    return st.tuples(node_ids, node_ids).filter(lambda p: p[0] != p[1])


LOW = NodeId(b"\x00" * 31 + b"\x01")
HIGH = NodeId(b"\x80" + b"\x00" * 31)


def test_the_lower_node_id_dials() -> None:
    assert dialer_of(LOW, HIGH) == dialer_of(HIGH, LOW) == LOW
    assert listener_of(LOW, HIGH) == listener_of(HIGH, LOW) == HIGH
    assert should_dial(LOW, HIGH)
    assert not should_dial(HIGH, LOW)


def test_a_node_does_not_dial_itself() -> None:
    with pytest.raises(ValueError):
        dialer_of(LOW, LOW)
    with pytest.raises(ValueError):
        should_dial(LOW, LOW)


@given(distinct_pair())
def test_exactly_one_side_dials(pair: tuple[NodeId, NodeId]) -> None:
    a, b = pair
    assert should_dial(a, b) != should_dial(b, a)
    assert dialer_of(a, b) == dialer_of(b, a)
    assert {dialer_of(a, b), listener_of(a, b)} == {a, b}
    assert dialer_of(a, b) == min(a, b)


@given(distinct_pair(), st.booleans(), st.booleans(), nonces, nonces, st.integers(0, 3), st.integers(0, 3))
def test_both_sides_keep_the_same_connection(
    pair: tuple[NodeId, NodeId],
    a_by_first: bool,
    b_by_first: bool,
    nonce_a: bytes,
    nonce_b: bytes,
    seq_a: int,
    seq_b: int,
) -> None:
    x, y = pair
    a = ConnInfo(dialer=x if a_by_first else y, dialer_nonce=nonce_a, sequence=seq_a)
    b = ConnInfo(dialer=x if b_by_first else y, dialer_nonce=nonce_b, sequence=seq_b)
    if a.dialer == b.dialer and a.sequence == b.sequence:
        with pytest.raises(ValueError):
            keep_connection(x, y, a, b)
        return
    kept = keep_connection(x, y, a, b)
    assert kept in (a, b)
    # The same on the other node, and whichever connection it saw first.
    assert keep_connection(y, x, a, b) == kept
    assert keep_connection(x, y, b, a) == kept
    assert keep_connection(y, x, b, a) == kept
    # Antisymmetry: the kept one beats the other, never the other way round.
    loser = b if kept == a else a
    assert keep_connection(x, y, kept, loser) == kept


@given(distinct_pair(), nonces, nonces)
def test_the_connection_dialed_by_the_lower_node_wins(
    pair: tuple[NodeId, NodeId], nonce_low: bytes, nonce_high: bytes
) -> None:
    x, y = pair
    low, high = min(x, y), max(x, y)
    by_low = ConnInfo(dialer=low, dialer_nonce=nonce_low)
    by_high = ConnInfo(dialer=high, dialer_nonce=nonce_high)
    assert keep_connection(x, y, by_low, by_high) == by_low
    assert keep_connection(y, x, by_high, by_low) == by_low


@given(distinct_pair(), nonces, nonces)
def test_same_dialer_keeps_the_newer_connection(pair: tuple[NodeId, NodeId], n1: bytes, n2: bytes) -> None:
    x, y = pair
    older = ConnInfo(dialer=x, dialer_nonce=n1, sequence=1)
    newer = ConnInfo(dialer=x, dialer_nonce=n2, sequence=2)
    assert keep_connection(x, y, older, newer) == keep_connection(y, x, newer, older) == newer


def test_a_connection_dialed_by_a_stranger_is_a_caller_bug() -> None:
    stranger = NodeId(b"\x42" * 32)
    good = ConnInfo(dialer=LOW, dialer_nonce=bytes(32))
    bad = ConnInfo(dialer=stranger, dialer_nonce=bytes(32))
    with pytest.raises(ValueError):
        keep_connection(LOW, HIGH, good, bad)


def test_conn_info_repr_is_short() -> None:
    info = ConnInfo(dialer=LOW, dialer_nonce=bytes(range(32)))
    assert bytes(range(32)).hex() not in repr(info)
