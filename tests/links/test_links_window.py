"""The message window (issue 9): a receiver that does not take its messages stops its sender.

Two real node processes on loopback; the receiver's application takes nothing
(no ``messages`` request) until the end, and its inbox holds 4 untaken messages
(``link.inbox_limit=4``, so that a few messages fill it instead of 4096). The
sender keeps the default window (256 payloads / 4 MiB in flight) and outbox
(1024 / 16 MiB waiting), and sends 60 kB messages (MAX_APP_PAYLOAD):

1. 4 sends are acknowledged: the receiver's inbox is full now;
2. the next send leaves, is never acknowledged, and fails when its timeout
   passes with NotAcknowledged (it may have arrived: it does, at the end, once);
3. durable sends (``queue=True``) return once queued; 69 go in flight (the
   4 MiB window), 279 wait (the 16 MiB outbox), the next is refused at once with
   NotTransmitted ("... already wait: the link ... is behind"), and so are the
   next 300 (18 MB offered): the sender's RSS does not grow by what it refused,
   and grows by less than what it holds plus a margin;
4. a direct send then waits behind the full window and fails when its timeout
   passes with NotTransmitted, saying the send window stayed full; it never
   arrives;
5. the receiver's application takes its messages: the rest flows, every
   acknowledged or queued message arrives exactly once, in order, and the
   sender's outbox empties; the link never went down.

Both role assignments: the receiver is the dialer (lower NodeId) or the waiting
side. The time bounds are wide functional checks (the failure comes after the
timeout, not long after it), not measurements.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from test_links_processes import FAST, pair, start_pair
from test_links_trust import by_role

from support.link_harness import WAIT, link, rss, wait_linked
from support.nodeproc import NodeFactory, NodeProcess, Reply
from support.nodeproc import nodes_fixture as nodes_fixture  # the ``nodes`` fixture

pytestmark = pytest.mark.integration

INBOX = 4
SIZE = 60_000  # MAX_APP_PAYLOAD
#: The defaults (config/defaults.toml): what is in flight, and what waits behind it.
WINDOW_BYTES, OUTBOX_BYTES = 4 << 20, 16 << 20
IN_FLIGHT = WINDOW_BYTES // SIZE  # 69 payloads of 60 kB fit in 4 MiB
WAITING = OUTBOX_BYTES // SIZE  # 279 in 16 MiB
REFUSED = 300
#: A send's timeout in steps 2 and 4; it must fail after it, and not much later.
TIMEOUT = 2.0
#: Growth of a node's RSS that is still "bounded", beyond the payload bytes it holds.
RSS_MARGIN = 24 << 20


def text(tag: str, i: int) -> str:
    head = f"{tag}{i:04d}|"
    return head + "x" * (SIZE - len(head))


def timed_send(sender: NodeProcess, receiver: NodeProcess, payload: str) -> tuple[Reply, float]:
    started = time.monotonic()
    reply = sender.call("send", node_id=receiver.node_id, payload=payload, timeout=TIMEOUT)
    return reply, time.monotonic() - started


@pytest.mark.parametrize("receiver_role", ["dialer", "waiter"])
def test_a_slow_receiver_fills_the_window_and_the_sender_blocks_then_fails_with_bounded_memory(
    nodes: NodeFactory, receiver_role: str
) -> None:
    alice, bob = start_pair(nodes, alice_lower=True, settings=(*FAST, f"link.inbox_limit={INBOX}"))
    pair(alice, bob)
    conn = wait_linked(alice, bob)
    receiver, sender = by_role(alice, bob, receiver_role)
    peer = receiver.node_id
    expected: list[str] = []

    # 1. The receiver's inbox fills.
    for i in range(INBOX):
        expected.append(text("a", i))
        assert sender.ok("send", node_id=peer, payload=expected[-1], timeout=WAIT)["sent"] == SIZE

    # 2. Sent, never acknowledged: NotAcknowledged once the timeout passed.
    expected.append(text("a", INBOX))
    reply, took = timed_send(sender, receiver, expected[-1])
    assert not reply.ok and reply.error is not None and reply.error["type"] == "NotAcknowledged", reply.error
    assert TIMEOUT <= took < TIMEOUT + 5, took

    # 3. Durable sends: the window, then the outbox, then refused at once.
    before = {node.name: rss(node) for node in (sender, receiver)}
    queued = 0
    while True:
        payload = text("q", queued)
        reply = sender.call("send", node_id=peer, payload=payload, queue=True)
        if not reply.ok:
            break
        expected.append(payload)
        queued += 1
        assert queued <= IN_FLIGHT + WAITING, "more was queued than the window and the outbox hold"
    assert reply.error is not None and reply.error["type"] == "NotTransmitted", reply.error
    assert "already wait" in reply.error["message"] and "behind" in reply.error["message"], reply.error
    assert queued == IN_FLIGHT + WAITING, queued
    status = link(sender)
    assert status is not None and (status["in_flight"], status["waiting"]) == (IN_FLIGHT, WAITING), status
    assert len(sender.ok("outbox", node_id=peer)) == queued
    held = rss(sender)
    for i in range(REFUSED):  # many windows' worth more, direct and queued: none of it is kept
        reply = sender.call("send", node_id=peer, payload=text("r", i), queue=i % 2 == 0, timeout=TIMEOUT)
        assert not reply.ok and reply.error is not None and reply.error["type"] == "NotTransmitted"
        assert "already wait" in reply.error["message"], reply.error
    after_refused = rss(sender)

    # 4. A direct send that fits behind the window waits for it, and fails with its timeout.
    reply, took = timed_send(sender, receiver, "never sent")
    assert not reply.ok and reply.error is not None and reply.error["type"] == "NotTransmitted", reply.error
    assert "send window" in reply.error["message"], reply.error
    assert TIMEOUT <= took < TIMEOUT + 5, took

    after = {node.name: rss(node) for node in (sender, receiver)}
    mib = 2**20
    print(
        f"\nreceiver={receiver_role}: sender RSS {before[sender.name] / mib:.1f} MiB, "
        f"{held / mib:.1f} holding {queued} x 60 kB, {after_refused / mib:.1f} after {REFUSED} refused "
        f"({REFUSED * SIZE / mib:.1f} MiB offered), {after[sender.name] / mib:.1f} at the end; receiver "
        f"{before[receiver.name] / mib:.1f} -> {after[receiver.name] / mib:.1f} MiB"
    )
    assert after_refused <= held + 8 * mib, "what was refused was not kept"
    assert held - before[sender.name] <= WINDOW_BYTES + OUTBOX_BYTES + RSS_MARGIN
    assert after[receiver.name] - before[receiver.name] <= WINDOW_BYTES + RSS_MARGIN

    # 5. The application takes its messages: everything flows, once, in order.
    taken: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    while len(taken) < len(expected):
        left = deadline - time.monotonic()
        assert left > 0, f"took {len(taken)} of {len(expected)} messages"
        taken += receiver.ok("messages", timeout=min(left, 1.0), wait=left + 5)
    seqs = [m["seq"] for m in taken]
    assert seqs == sorted(set(seqs)), "exactly once, in order"
    assert [m["text"] for m in taken] == expected, "what was acknowledged or queued, nothing else"
    assert receiver.ok("messages", timeout=0.5) == [], "the refused and the never-sent never arrive"
    sender.wait_for(lambda: sender.ok("outbox") == [], timeout=WAIT, what="the outbox emptied")
    status = link(sender)
    assert status is not None and (status["in_flight"], status["waiting"]) == (0, 0), status
    assert wait_linked(alice, bob) == conn, "the same connection throughout"
    for node in (alice, bob):
        assert node.events("link.down") == []
