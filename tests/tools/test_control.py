"""The control protocol's ``messages`` op on its own (tools/control.py), against a stand-in node.

A unit test of one module: the node here is a queue. The same behaviour against a real
daemon whose client leaves is in test_daemon_faults.py.
"""

from __future__ import annotations

import collections
from typing import Any

from quicpair.actors.links.inbox import ReceivedMessage
from quicpair.protocol.identity import Identity
from quicpair.tools.control import Controller

PEER = Identity.from_seed(bytes([7]) * 32).node_id


class QueueNode:
    """``receive`` and ``give_back`` as the node has them, over a deque; records each wait."""

    def __init__(self, *payloads: bytes) -> None:
        self.queue = collections.deque(ReceivedMessage(PEER, p, i + 1) for i, p in enumerate(payloads))
        self.waits: list[float | None] = []
        self.given_back: list[list[int]] = []

    def receive(self, timeout: float | None = None) -> ReceivedMessage | None:
        self.waits.append(timeout)
        return self.queue.popleft() if self.queue else None

    def give_back(self, messages: list[ReceivedMessage]) -> None:
        self.given_back.append([m.seq for m in messages])
        self.queue.extendleft(reversed(messages))


def controller(node: QueueNode) -> Controller:
    return Controller(node, lambda: None)  # type: ignore[arg-type]


def test_messages_without_a_timeout_or_with_null_does_not_wait() -> None:
    node = QueueNode()
    for request in ({"id": 1, "op": "messages"}, {"id": 2, "op": "messages", "timeout": None}):
        assert controller(node).handle(request) == {"id": request["id"], "ok": True, "result": []}
    assert node.waits == [0.0, 0.0]


def test_messages_takes_the_first_and_everything_queued_in_order() -> None:
    node = QueueNode(b"a", b"b", b"\xff")
    reply = controller(node).handle({"id": 1, "op": "messages", "timeout": 5})
    got: list[dict[str, Any]] = reply["result"]
    assert [(m["seq"], m["text"], m["base64"]) for m in got] == [
        (1, "a", "YQ=="),
        (2, "b", "Yg=="),
        (3, None, "/w=="),
    ]
    assert not node.queue and node.given_back == []


def test_a_client_that_left_gets_nothing_taken_and_what_was_taken_is_given_back() -> None:
    node = QueueNode(b"a", b"b")
    reply = controller(node).handle({"id": 1, "op": "messages", "timeout": 30}, client_gone=lambda: True)
    assert reply["result"] == [] and node.waits == [], "gone before the wait: nothing asked for"
    calls = iter([False, True])  # there when the wait starts, gone once a message came
    reply = controller(node).handle(
        {"id": 2, "op": "messages", "timeout": 30}, client_gone=lambda: next(calls)
    )
    assert reply["result"] == [] and node.given_back == [[1, 2]]
    assert [m.seq for m in node.queue] == [1, 2], "first in line again, in order"


def test_a_reply_that_could_not_be_written_gives_its_messages_back() -> None:
    node = QueueNode(b"a", b"b")
    request = {"id": 1, "op": "messages", "timeout": 1}
    ctl = controller(node)
    reply = ctl.handle(request)
    ctl.reply_lost(request, reply)
    assert node.given_back == [[1, 2]] and [m.payload for m in node.queue] == [b"a", b"b"]
    ctl.reply_lost({"id": 2, "op": "links"}, {"id": 2, "ok": True, "result": []})
    ctl.reply_lost(request, {"id": 1, "ok": False, "error": {}})
    assert node.given_back == [[1, 2]], "only a messages reply that carried messages gives back"
