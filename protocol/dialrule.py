"""Who dials whom, and which of two connections survives: one rule, the same on both sides.

An earlier design let each node re-decide who dials, from state that the two
nodes saw differently; they changed their minds and connected in a loop
(failure #5 of DESIGN.md). Here the rule depends on nothing but the two
NodeIds, which never change and which both sides know once they are paired:

* **The node with the lower NodeId dials; the other only listens.**
  (:func:`dialer_of`, :func:`should_dial`; NodeIds compare by their raw
  bytes.)

Two connections between the same pair can still exist at the same time: the
dialer restarts, or its address changes, and it dials again while the peer
still holds the old connection until its idle timeout; or a node dials once
against the rule (for example to deliver an unpair to a peer that will not
dial it). The nodes then decide which one to keep, each on its own, from
facts both of them see:

* **Keep the connection dialed by the lower NodeId.**
* **If the same node dialed both, keep the newer one** (the higher
  ``sequence``: the order in which this end saw its connections with the
  peer established). Both ends agree: a dialer runs one dial at a time, so
  its connections reach the other end in the order it opened them; and the
  older one is dead or dying on the dialer's side anyway (it dials only when
  it holds no connection it dialed, or to probe a peer that announced a
  restart or a move), which a dialer restarted by SIGKILL does not even
  remember. Comparing the hellos' nonces instead would need both ends to
  know both connections, which that restarted dialer does not.

The loser is closed with ``DUPLICATE_CONNECTION``, which is not a fault: the
peer does not back off or count a reconnect for it.

Everything here is pure and deterministic; the property tests check that
both sides always agree and that the choice does not depend on argument
order.
"""

from __future__ import annotations

from dataclasses import dataclass

from .identity import NodeId

__all__ = ["ConnInfo", "dialer_of", "keep_connection", "listener_of", "should_dial"]


def dialer_of(a: NodeId, b: NodeId) -> NodeId:
    """The node that dials between ``a`` and ``b``: the lower NodeId (by raw bytes)."""
    if a == b:
        raise ValueError("a node does not dial itself")
    return a if a.raw < b.raw else b


def listener_of(a: NodeId, b: NodeId) -> NodeId:
    """The node that waits to be dialed between ``a`` and ``b``: the higher NodeId."""
    return b if dialer_of(a, b) == a else a


def should_dial(local: NodeId, peer: NodeId) -> bool:
    """True when ``local`` is the one that dials ``peer`` under the rule."""
    return dialer_of(local, peer) == local


@dataclass(frozen=True, slots=True)
class ConnInfo:
    """What both ends know about one link connection after the hellos."""

    #: The node that opened the connection (the QUIC client).
    dialer: NodeId
    #: The dialer's nonce from its LinkHello on this connection (identifies it).
    dialer_nonce: bytes
    #: The order in which this end saw its connections with the peer established.
    sequence: int = 0

    def __repr__(self) -> str:
        return (
            f"ConnInfo(dialer={self.dialer!r}, dialer_nonce={self.dialer_nonce[:4].hex()}…, "
            f"sequence={self.sequence})"
        )


def _rank(conn: ConnInfo) -> tuple[bytes, int]:
    # Lower is better: first the dialer's NodeId, then the newer connection.
    return (conn.dialer.raw, -conn.sequence)


def keep_connection(local: NodeId, peer: NodeId, a: ConnInfo, b: ConnInfo) -> ConnInfo:
    """Which of two connections between ``local`` and ``peer`` to keep (``a`` or ``b``).

    The other one is closed with ``DUPLICATE_CONNECTION``. The answer is the
    same on both nodes (swap ``local`` and ``peer``) and for either order of
    ``a`` and ``b``.

    Raises ValueError if a connection was dialed by neither node, or if the
    two cannot be told apart (same dialer and sequence): a caller bug.
    """
    if local == peer:
        raise ValueError("a link joins two different nodes")
    for conn in (a, b):
        if conn.dialer not in (local, peer):
            raise ValueError(f"{conn!r} was dialed by neither {local!r} nor {peer!r}")
    if _rank(a) == _rank(b):
        raise ValueError(f"{a!r} and {b!r} are the same connection")
    return a if _rank(a) < _rank(b) else b
