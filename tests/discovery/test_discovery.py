"""Discovery: real mDNS between network namespaces (the TXT record alone: tests/protocol/test_advert.py).

The multi-host tests run one ``quicpair.tools.mdns_probe serve`` process per host of a
:class:`netns.Lan` (root needed; they fail, never skip, without it). mDNS
never runs in the test's own namespace: no multicast leaves the namespaces
the test made.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import quicpair.actors.discovery.mdns as discovery
from quicpair.actors.discovery.mdns import (
    BOOT_ID_LENGTH,
)
from quicpair.protocol.identity import Identity, NodeId
from support import netns
from support.mdns_probe import Probe
from support.netns import Host, lan

ALICE = Identity.from_seed(b"\x01" * 32).node_id
BOB = Identity.from_seed(b"\x02" * 32).node_id
PORT = 4433
#: Every wait in these tests is bounded by this (mDNS on a veth answers in ms).
WAIT = 10.0


def txt(*items: bytes) -> bytes:
    """TXT rdata from strings, as on the wire (RFC 6763 6.1)."""
    return b"".join(bytes([len(item)]) + item for item in items)


ID = b"id=" + ALICE.text.encode()


def test_public_api_is_listed() -> None:
    for name in discovery.__all__:
        assert hasattr(discovery, name), name


# -- real mDNS between namespaces ----------------------------------------------


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[list[tuple[Host, Probe]]]:
    """Three hosts on one LAN, each with a probe process (not started yet)."""
    with lan(3) as net:
        probes = [Probe(host, tmp_path / f"h{host.index}.log") for host in net.hosts]
        try:
            yield list(zip(net.hosts, probes, strict=True))
        finally:
            stopping = [(probe, probe.stop()) for probe in probes]  # in parallel: goodbyes take 0.25 s
            for probe, request_id in stopping:
                probe.join(request_id)


def start(probe: Probe, node: NodeId, host: Host, *, advertise: bool = True, **options: Any) -> int:
    options.setdefault("addresses", [host.address])
    return probe.send("start", node=node.text, port=PORT, advertise=advertise, **options)


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"not within {WAIT} s: {what}"
        time.sleep(0.01)


@pytest.mark.netns
def test_node_resolved_across_namespaces_then_gone_after_goodbye(
    hosts: list[tuple[Host, Probe]], record_property: Callable[[str, object], None]
) -> None:
    (a, alice), (b, bob), _ = hosts
    alice.reply(start(alice, ALICE, a))
    # The lookup runs right after bob's start, before its browser's first query
    # (20-120 ms later, RFC 6762 5.2): a cold cache, so this one asks the LAN.
    ids = bob.send_together(
        ("start", {"node": BOB.text, "port": PORT, "addresses": [b.address], "advertise": False}),
        ("resolve_node", {"node": ALICE.text, "timeout": WAIT}),
    )
    bob.reply(ids[0])
    cold = bob.reply(ids[1])
    warm = bob("resolve_node", node=ALICE.text, timeout=WAIT)

    assert cold["endpoints"] == warm["endpoints"] == [f"{a.address}:{PORT}"]
    record_property("resolve_cold_ms", cold["elapsed_ms"])
    record_property("resolve_warm_ms", warm["elapsed_ms"])
    print(f"resolve across namespaces: cold {cold['elapsed_ms']} ms, warm {warm['elapsed_ms']} ms")
    lookups = bob.log_events("discovery.lookup")
    assert lookups[0]["what"] == f"node {ALICE.fingerprint}" and lookups[0]["queried"] is True
    assert "elapsed_ms" in lookups[0]

    alice("stop")  # goodbye packets: bob forgets alice at once, not after the 2-minute TTL
    wait_until(lambda: bob("resolve_node", node=ALICE.text, timeout=0.2)["endpoints"] == [], "goodbye")


@pytest.mark.netns
def test_nameplate_found_while_open_and_not_after(hosts: list[tuple[Host, Probe]]) -> None:
    (a, alice), (b, bob), _ = hosts
    started = [start(alice, ALICE, a, addresses=[]), start(bob, BOB, b)]  # []: its interfaces'
    alice.reply(started[0])
    bob.reply(started[1])
    alice("nameplates", nameplates=[42, 7])

    found = bob("resolve_nameplate", nameplate=42, timeout=WAIT)
    assert found["nodes"] == [[ALICE.text, [f"{a.address}:{PORT}"]]]
    assert bob("resolve_nameplate", nameplate=8, timeout=0.3)["nodes"] == []
    assert alice("resolve_nameplate", nameplate=42, timeout=0.3)["nodes"] == []  # never ourselves

    alice("nameplates", nameplates=[7])
    wait_until(lambda: bob("resolve_nameplate", nameplate=42, timeout=0.2)["nodes"] == [], "42 withdrawn")
    assert bob("resolve_nameplate", nameplate=7, timeout=WAIT)["nodes"][0][0] == ALICE.text


@pytest.mark.netns
def test_moved_node_is_found_at_its_new_address_only(hosts: list[tuple[Host, Probe]]) -> None:
    (a, alice), (b, bob), _ = hosts
    started = [start(alice, ALICE, a), start(bob, BOB, b)]
    alice.reply(started[0])
    bob.reply(started[1])
    bob("watch")
    old = f"{a.address}:{PORT}"
    assert bob("resolve_node", node=ALICE.text, timeout=WAIT)["endpoints"] == [old]

    a.move("10.231.7.7")
    alice("addresses", addresses=[a.address])

    new = f"{a.address}:{PORT}"
    event = bob.wait_event(lambda e: e.get("node") == ALICE.text and new in e["endpoints"])
    assert event["endpoints"] == [new]  # the goodbye for the old address came in the same packet
    assert bob("resolve_node", node=ALICE.text, timeout=WAIT)["endpoints"] == [new]


@pytest.mark.netns
def test_watch_fires_when_a_node_announces_itself(hosts: list[tuple[Host, Probe]]) -> None:
    (a, alice), (b, bob), _ = hosts
    for request_id in bob.send_together(
        ("start", {"node": BOB.text, "port": PORT, "addresses": [b.address], "wait": False}),
        ("watch", {}),
    ):
        bob.reply(request_id)

    # Restricted to its LAN interface; also a (documentation-prefix) IPv6 address,
    # which is only record data here: nothing is sent to it.
    alice.reply(start(alice, ALICE, a, interfaces=[a.address], addresses=[a.address, "2001:db8::7"]))

    event = bob.wait_event(lambda e: e.get("node") == ALICE.text)
    assert event["endpoints"] == [f"{a.address}:{PORT}", f"[2001:db8::7]:{PORT}"]
    # Not for ourselves: bob's own advert reached bob's browser, and one more round
    # trip lets any event it caused reach stdout before we look.
    assert bob("resolve_node", node=BOB.text, timeout=WAIT)["endpoints"] == [f"{b.address}:{PORT}"]
    bob("resolve_node", node=ALICE.text, timeout=WAIT)
    assert [e["node"] for e in bob.events] == [ALICE.text]


@pytest.mark.netns
def test_watch_fires_when_a_node_restarts_at_the_same_address_and_port(
    hosts: list[tuple[Host, Probe]], tmp_path: Path
) -> None:
    """SIGKILL, restart: identical records but for the boot id, and that is enough for a hint."""
    (a, alice), (b, bob), _ = hosts
    bob.reply(start(bob, BOB, b, advertise=False))
    bob("watch")
    alice.reply(start(alice, ALICE, a))
    endpoints = [f"{a.address}:{PORT}"]
    assert bob.wait_event(lambda e: e.get("node") == ALICE.text)["endpoints"] == endpoints
    first_boot = alice.log_events("discovery.advertised")[0]["boot"]

    alice.proc.kill()  # no goodbye: bob's cache still holds the first start's records
    alice.join(None)
    again = Probe(a, tmp_path / "h0-restarted.log")
    try:
        killed = time.monotonic()
        again.reply(start(again, ALICE, a))  # same node, address and port: a new boot id only
        second_boot = again.log_events("discovery.advertised")[0]["boot"]
        assert first_boot != second_boot and len(second_boot) == BOOT_ID_LENGTH

        bob.wait_event(lambda e: e.get("node") == ALICE.text and e is not bob.events[0])
        print(f"restart seen by watch {time.monotonic() - killed:.2f} s after the new start began")
        assert [e["endpoints"] for e in bob.events] == [endpoints, endpoints]
        resolved = bob.log_events("discovery.resolved")
        assert [(e["boot"], e["restarted"]) for e in resolved] == [(first_boot, False), (second_boot, True)]

        # A nameplate change of the restarted node is still no hint.
        again("nameplates", nameplates=[42])
        assert bob("resolve_nameplate", nameplate=42, timeout=WAIT)["nodes"] == [[ALICE.text, endpoints]]
        bob("resolve_node", node=ALICE.text, timeout=WAIT)  # one more round trip for stray events
        assert len(bob.events) == 2
    finally:
        again.join(again.stop())


GARBAGE = {
    "no-id": txt(b"v=1", b"np=42"),
    "bad-id": txt(b"v=1", b"id=not-a-node-id", b"np=42"),
    "future": txt(b"v=2", b"id=" + BOB.text.encode(), b"np=42"),
    "bad-np": txt(b"v=1", b"id=" + BOB.text.encode(), b"np=42;drop table"),
    "truncated": txt(b"v=1", b"id=" + BOB.text.encode())[:-9],
    "noise": bytes(range(256))[1:200],
}


@pytest.mark.netns
def test_garbage_adverts_are_ignored(hosts: list[tuple[Host, Probe]]) -> None:
    (a, alice), (b, bob), (c, rogue) = hosts
    for name, rdata in GARBAGE.items():
        rogue("rogue", name=f"rogue-{name}", port=PORT, addresses=[c.address], txt_hex=rdata.hex())
    alice.reply(start(alice, ALICE, a))
    alice("nameplates", nameplates=[42])
    bob.reply(start(bob, BOB, b, advertise=False))
    bob("watch")

    found = bob("resolve_nameplate", nameplate=42, timeout=WAIT)

    assert found["nodes"] == [[ALICE.text, [f"{a.address}:{PORT}"]]]
    wait_until(
        lambda: len({e["name"] for e in bob.log_events("discovery.ignored")}) == len(GARBAGE),
        "every rogue advert seen and ignored",
    )
    assert bob.proc.poll() is None
    assert all(e["node"] == ALICE.text for e in bob.events)
    assert bob("resolve_node", node=ALICE.text, timeout=WAIT)["endpoints"] == [f"{a.address}:{PORT}"]


# -- the namespace helper itself -------------------------------------------------


@pytest.mark.netns
def test_lan_removes_its_namespaces_and_processes_even_on_failure() -> None:
    stale = f"{netns.PREFIX}-{dead_pid()}-0-h0"  # as left by a run that crashed
    subprocess.run(["ip", "netns", "add", stale], check=True, timeout=WAIT)
    with pytest.raises(RuntimeError, match="boom"), lan(2) as net:
        assert stale not in netns.namespaces_now()
        sleeper = net.hosts[0].popen(["sleep", "60"])
        assert set(net.namespaces) == {net.bridge_ns, *(h.ns for h in net.hosts)}
        raise RuntimeError("boom")
    assert sleeper.poll() is not None
    assert not set(netns.namespaces_now()) & {net.bridge_ns, *(h.ns for h in net.hosts)}


def dead_pid() -> int:
    """A pid that no process has right now (a child we reaped)."""
    child = subprocess.Popen(["true"])
    child.wait(timeout=WAIT)
    return child.pid
