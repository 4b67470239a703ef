"""``Node.send_many``: pipelined acknowledged sends, in one process (two Nodes on 127.0.0.1).

Each payload is delivered once and in order like a ``send``; the call keeps at most
``[link] send_window`` unacknowledged (a small window here, so the call waits for
acknowledgements many times over), returns every delivery number, and refuses what
``send`` refuses, before sending anything.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import pytest

from quicpair.actors.node import Node
from quicpair.config.settings import load_settings
from quicpair.protocol.errors import ErrorCode, LocalProtocolError
from quicpair.protocol.identity import Identity, NodeId
from support.waiting import wait_until

WAIT = 10.0
#: A window of 8: 300 payloads make the call wait for acknowledgements ~75 times.
WINDOW = 8


def _node(home: Path) -> Node:
    settings = load_settings(
        node={"listen_host": "127.0.0.1", "listen_port": 0},
        discovery={"mdns": False},
        link={"send_window": WINDOW},
    )
    return Node(home, settings).start()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    alice, bob = _node(tmp_path / "alice"), _node(tmp_path / "bob")
    try:
        bob.join(alice.pair().uri, timeout=WAIT)
        wait_until(
            lambda: all(s.state == "up" for n in (alice, bob) for s in n.links()) and bool(alice.links()),
            WAIT,
            "the link up on both sides",
        )
        yield alice, bob
    finally:
        alice.stop()
        bob.stop()


def test_send_many_delivers_every_payload_once_in_order_within_the_window(nodes: tuple[Node, Node]) -> None:
    alice, bob = nodes
    got: queue.Queue[tuple[NodeId, bytes]] = queue.Queue()
    bob.subscribe(lambda peer, payload: got.put((peer, payload)))
    payloads = [b"message %d" % i for i in range(300)]

    seqs = alice.send_many(bob.node_id, payloads, timeout=WAIT)

    assert len(seqs) == len(payloads) and seqs == sorted(set(seqs)), "one increasing number each"
    received = [got.get(timeout=WAIT) for _ in payloads]
    assert received == [(alice.node_id, p) for p in payloads]
    assert alice.counters()["link.messages_sent"] == 300
    assert bob.counters()["link.messages_received"] == 300
    # The status is reported just after the acknowledgements settle the call: waited for.
    wait_until(
        lambda: (alice.links()[0].in_flight, alice.links()[0].waiting) == (0, 0),
        WAIT,
        "nothing in flight or waiting once every payload was acknowledged",
    )
    # A send after it continues the same numbering.
    assert alice.send(bob.node_id, b"after", timeout=WAIT) > seqs[-1]
    assert got.get(timeout=WAIT) == (alice.node_id, b"after")


def test_send_many_of_nothing_returns_nothing(nodes: tuple[Node, Node]) -> None:
    alice, bob = nodes
    assert alice.send_many(bob.node_id, [], timeout=WAIT) == []


def test_send_many_refuses_what_send_refuses_before_sending_anything(nodes: tuple[Node, Node]) -> None:
    alice, bob = nodes
    with pytest.raises(LocalProtocolError) as too_big:
        alice.send_many(bob.node_id, [b"fine", bytes(60_001)], timeout=WAIT)
    assert too_big.value.code is ErrorCode.FRAME_TOO_LARGE
    with pytest.raises(TypeError):
        alice.send_many(bob.node_id, [b"fine", "text"], timeout=WAIT)  # type: ignore[list-item]
    assert alice.counters().get("link.messages_sent", 0) == 0, "nothing went before the check"
    with pytest.raises(LocalProtocolError) as unknown:
        alice.send_many(Identity.generate().node_id, [b"a", b"b"], timeout=WAIT)
    assert unknown.value.code is ErrorCode.UNKNOWN_PEER
    with pytest.raises(ValueError):
        alice.send_many(bob.node_id, [b"a"], timeout=-1)
