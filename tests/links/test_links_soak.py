"""The soak (issue 8): a paired link under a steady trickle of messages stays one connection.

Two pairs of real node processes on loopback run at the same time, one per role
assignment (Alice holds the lower NodeId and dials, or the higher one and
waits), so the run's time is spent once. For ``QUICPAIR_SOAK_SECONDS`` (60 by
default, CI's short mode; 600 in the long mode) each of the four directions
sends a steady trickle of acknowledged messages, 10 a second for 6 s out of
every 10; in the 4 s pauses the link carries nothing but the dialer's
keep-alive PINGs, longer than the idle timeout (3 s), so both what keeps a busy
link and what keeps an idle one are exercised, over and over.

Checked every second, and at the end:

* exactly one connection on each side, the same one for the whole run (the
  ``links`` op's ``connections`` and ``connection_id``); no ``link.down``, one
  ``link.up``, zero reconnects; the dialer dialed once, the waiting side never;
* every send acknowledged, every message received exactly once, in
  delivery-number order, as sent;
* memory flat: the VmRSS of the four node processes (``/proc/PID/status``),
  sampled each second; the highest value of the second half of the run must not
  exceed the highest of the first half by more than :data:`RSS_MARGIN` (a leak
  check with a generous margin, not a benchmark: a leak of one 200-byte
  message's worth per message would show in the long mode, a missing bound on a
  buffer in either).

Run the long mode with ``QUICPAIR_SOAK_SECONDS=600 python -m pytest -s
tests/links/test_links_soak.py``; ``-s`` prints the RSS figures.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from test_links_processes import FAST, pair, start_pair

from support.link_harness import counter, link, lower_of, rss, wait_linked
from support.nodeproc import NodeFactory, NodeProcess, Pending, Reply
from support.nodeproc import nodes_fixture as nodes_fixture  # the ``nodes`` fixture

pytestmark = pytest.mark.integration

#: How long the trickle runs (seconds): 60 in CI's short mode, 600 in its long mode.
SOAK_SECONDS = float(os.environ.get("QUICPAIR_SOAK_SECONDS", "60"))
#: Messages a second per direction while sending; sending CYCLE_ON of every CYCLE seconds.
RATE = 10.0
CYCLE, CYCLE_ON = 10.0, 6.0
#: Idle timeout 3 s, a PING a second: each 4 s pause outlasts the idle timeout.
STEADY = (*FAST[2:], "link.idle_timeout=3", "link.keepalive_interval=1")
#: Growth of the highest RSS from the first half of the run to the second that is still "flat".
RSS_MARGIN = 8 * 1024 * 1024


class Direction:
    """One sender -> receiver direction: what was sent and what arrived."""

    def __init__(self, sender: NodeProcess, receiver: NodeProcess) -> None:
        self.sender, self.receiver = sender, receiver
        self.sends: list[tuple[str, Pending]] = []
        self.taken: list[dict[str, Any]] = []

    def send(self) -> None:
        text = f"{self.sender.name}->{self.receiver.name} {len(self.sends):05d}"
        self.sends.append((text, self.sender.request("send", node_id=self.receiver.node_id, payload=text)))

    def replies(self) -> list[tuple[str, Reply]]:
        return [(text, self.sender.await_reply(p, timeout=30)) for text, p in self.sends]


@pytest.mark.timeout(SOAK_SECONDS + 240)
def test_a_link_under_a_steady_trickle_keeps_one_connection_and_flat_memory(nodes: NodeFactory) -> None:
    pairs = [
        start_pair(nodes, alice_lower=True, settings=STEADY, tag="-low"),
        start_pair(nodes, alice_lower=False, settings=STEADY, tag="-high"),
    ]
    first: dict[str, str] = {}
    for alice, bob in pairs:
        pair(alice, bob)
        first[alice.name] = first[bob.name] = wait_linked(alice, bob)
    everyone = [node for two in pairs for node in two]
    directions = [Direction(s, r) for alice, bob in pairs for s, r in ((alice, bob), (bob, alice))]
    by_receiver = {d.receiver.name: d for d in directions}
    samples: dict[str, list[int]] = {node.name: [] for node in everyone}
    wrong: list[str] = []

    def check_once() -> None:
        for node in everyone:
            samples[node.name].append(rss(node))
            status = link(node)
            if status is None or (status["state"], status["connections"], status["connection_id"]) != (
                "up",
                1,
                first[node.name],
            ):
                wrong.append(f"{node.name} at {time.monotonic() - started:.1f} s: {status}")
            by_receiver[node.name].taken += node.ok("messages", timeout=0)

    started = time.monotonic()
    next_send, next_check, sent = started, started, 0
    while (now := time.monotonic()) < started + SOAK_SECONDS:
        if now >= next_check:
            check_once()
            assert not wrong, wrong[:3]
            next_check += 1.0
        if now >= next_send:
            if (now - started) % CYCLE < CYCLE_ON:
                for direction in directions:
                    direction.send()
                sent += 1
            next_send += 1.0 / RATE
        time.sleep(max(0.0, min(next_send, next_check) - time.monotonic()))
    check_once()
    assert not wrong, wrong[:3]

    for direction in directions:
        replies = direction.replies()
        failed = [(text, r.error) for text, r in replies if not r.ok]
        assert failed == [], f"sends not acknowledged: {failed[:3]}"
        receiver = direction.receiver
        deadline = time.monotonic() + 30
        while len(direction.taken) < len(replies) and time.monotonic() < deadline:
            direction.taken += receiver.ok("messages", timeout=1.0)
        sent_by_seq = {r.result["seq"]: text for text, r in replies}
        seqs = [m["seq"] for m in direction.taken]
        assert len(seqs) == len(set(seqs)) == len(replies), f"{receiver.name}: exactly once"
        assert seqs == sorted(seqs), f"{receiver.name}: in order"
        assert {m["seq"]: m["text"] for m in direction.taken} == sent_by_seq
        assert all(m["node_id"] == direction.sender.node_id for m in direction.taken)

    for alice, bob in pairs:
        dialer, listener = lower_of(alice, bob)
        for node in (alice, bob):
            assert node.events("link.down") == [], f"{node.name} saw the link go down"
            assert len(node.events("link.up")) == 1, f"{node.name}: one link.up, no reconnect"
            assert node.events("link.replaced") == []
            assert counter(node, "link.reconnects") == 0
            assert counter(node, "link.messages_rejected") == 0
        assert counter(dialer, "link.dials") - counter(dialer, "link.dials_failed") == 1, "one connection"
        assert counter(listener, "link.dials") == 0, "the higher NodeId never dials"
        assert counter(listener, "link.connections_accepted") == 1

    report = []
    for node in everyone:
        values = samples[node.name]
        half = len(values) // 2
        early, late = max(values[:half]), max(values[half:])
        report.append(f"{node.name} {early / 2**20:.1f}->{late / 2**20:.1f} MiB")
        assert late <= early + RSS_MARGIN, f"{node.name}: RSS grew {early} -> {late} bytes: {values}"
    print(
        f"\nsoak {SOAK_SECONDS:g} s: {sum(len(d.sends) for d in directions)} messages "
        f"({sent} per direction), one connection per pair; highest RSS first half -> second half: "
        + ", ".join(report)
    )
