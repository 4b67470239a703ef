"""What the link process tests share: who dials, is the link up, a message each way.

Both tests/links/test_links_processes.py (loopback) and tests/links/test_links_netns.py
(network namespaces) drive node processes through tests/support/nodeproc.py and
read their links through the ``links`` control op.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quicpair.protocol.identity import NodeId
from support.nodeproc import NodeProcess

__all__ = ["WAIT", "counter", "exchange", "link", "linked", "lower_of", "rss", "wait_linked"]

#: Every wait in the link tests is bounded by this (seconds).
WAIT = 15.0


def lower_of(alice: NodeProcess, bob: NodeProcess) -> tuple[NodeProcess, NodeProcess]:
    """(the dialer, the waiting side) of the pair: the lower NodeId dials."""
    a, b = NodeId.from_text(alice.node_id), NodeId.from_text(bob.node_id)
    return (alice, bob) if a.raw < b.raw else (bob, alice)


def link(node: NodeProcess) -> dict[str, Any] | None:
    """The node's one link status (these tests pair each node with one peer), if any."""
    links: list[dict[str, Any]] = node.ok("links")
    assert len(links) <= 1
    return links[0] if links else None


def linked(a: NodeProcess, b: NodeProcess) -> bool:
    la, lb = link(a), link(b)
    return (
        la is not None
        and lb is not None
        and la["state"] == lb["state"] == "up"
        and la["connection_id"] == lb["connection_id"]
        and la["connections"] == lb["connections"] == 1
    )


def wait_linked(a: NodeProcess, b: NodeProcess, timeout: float = WAIT) -> str:
    """Wait until both hold exactly one connection, up, the same one; its connection id."""
    a.wait_for(lambda: linked(a, b), timeout=timeout, what=f"one link up between {a.name} and {b.name}")
    status = link(a)
    assert status is not None
    return str(status["connection_id"])


def exchange(a: NodeProcess, b: NodeProcess, text: str) -> None:
    """A sealed message each way, received intact."""
    for sender, receiver in ((a, b), (b, a)):
        sender.ok("send", node_id=receiver.node_id, payload=f"{text} from {sender.name}", timeout=5)
        messages = receiver.ok("messages", timeout=5)
        assert [(m["node_id"], m["text"]) for m in messages] == [
            (sender.node_id, f"{text} from {sender.name}")
        ]


def counter(node: NodeProcess, name: str) -> int:
    return node.counters().get(name, 0)


def rss(node: NodeProcess) -> int:
    """The node process's resident set size in bytes (VmRSS of /proc/PID/status)."""
    assert node.proc is not None
    for line in Path(f"/proc/{node.proc.pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"{node.name}: no VmRSS in /proc/{node.proc.pid}/status")
