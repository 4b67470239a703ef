"""Paired links between real node processes on real hosts: network namespaces, mDNS on.

Each node is a ``quicpair.tools.nodehost`` process inside its own namespace of a
:class:`netns.Lan` the test creates (tests/support/nodeproc.py with ``netns=``),
listening on that namespace's address, with discovery on. Inside a namespace
the only interfaces are ``lo`` and the veth cable to the test's switch, so
mDNS and QUIC never leave the namespaces the test made; nothing runs mDNS in
the test's own namespace (nodeproc refuses it).

What is proved, in the words of issue 4:

* a joiner with only a code (no address, no URI) finds the initiator by its
  nameplate through mDNS and pairs (every test pairs that way);
* the waiting side SIGKILLed and restarted on the same address and port is
  reached again through the mDNS announcement hint (its new boot id), well
  before the dead-peer bound (QUIC idle timeout);
* a node moved to a new address is found again through mDNS by the dialer
  after its stored address failed;
* a 10 s partition heals within the documented backoff bound, with no split
  state: one connection, the same on both sides, each registry holding the
  other confirmed, sealed messages both ways.

**Both role assignments.** Alice opens the code (pairing initiator), Bob
types it (joiner). Their identities are generated and written to their homes
before the nodes start, ordered so that Alice holds the lower NodeId (she
dials) or the higher one (she waits): each reconnection test runs with both
(``alice-lower`` / ``alice-higher``); the partition test runs both pairs at
once on one LAN of four hosts, so the 10 s are spent once.

Timers are short (idle timeout 2 s, backoff 0.2..2 s); the restart test uses
a 10 s idle timeout on purpose, so that a reconnection in ~2 s can only have
come from the mDNS hint. Measured numbers are printed (``pytest -s``).
Needs root: without it these tests FAIL (they never skip), as CI runs as root.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from quicpair.protocol.advert import encode_txt, new_boot_id
from quicpair.protocol.identity import Identity, NodeId
from support.link_harness import WAIT, exchange, link, lower_of, wait_linked
from support.mdns_probe import Probe
from support.netnodes import NetNodes, net_fixture
from support.netns import Host
from support.nodeproc import NodeProcess

pytestmark = [pytest.mark.netns, pytest.mark.integration]

#: Discovery on; a dead peer noticed within ~2.5 s; redials 0.2..2.4 s apart.
NET = (
    "discovery.mdns=true",
    "link.idle_timeout=2",
    "link.keepalive_interval=0.5",
    "link.backoff_min=0.2",
    "link.backoff_max=2",
    "link.backoff_random_factor=0.2",
    "link.stable_after=1",
    "link.stagger=0.05",
    "link.dial_timeout=2",
    "pairing.step_timeout=3",
)
#: Bound on every wait for something that normally takes well under a second or two.
#: Where a moved host goes (tests/support/netns.py hands out 10.231.0.10+ to hosts).
NEW_ADDRESS = "10.231.9.9"


def setting(settings: tuple[str, ...], name: str) -> float:
    """The last ``--set name=value`` in ``settings``, as a number."""
    values = [item.split("=", 1)[1] for item in settings if item.split("=", 1)[0] == name]
    return float(values[-1])


# -- the harness: nodes inside the namespaces of a Lan ---------------------------------------


class Net(NetNodes):
    def node(self, name: str, host: Host, identity: Identity, settings: tuple[str, ...]) -> NodeProcess:
        """A node (not launched) in ``host``, listening on its address, with this identity."""
        node = self.add(NodeProcess(name, self.workdir, settings, listen=f"{host.address}:0", netns=host.ns))
        identity.save(node.home / "identity.pem")
        return node


net = net_fixture(Net)


def identities(*, alice_lower: bool) -> tuple[Identity, Identity]:
    """(Alice's, Bob's) identities, Alice's NodeId the lower one or the higher one."""
    low, high = sorted((Identity.generate(), Identity.generate()), key=lambda i: i.node_id.raw)
    return (low, high) if alice_lower else (high, low)


def start_pair(
    net: Net, hosts: list[Host], *, alice_lower: bool, settings: tuple[str, ...] = NET, tag: str = ""
) -> tuple[NodeProcess, NodeProcess]:
    """Alice in ``hosts[0]``, Bob in ``hosts[1]``, both started (in parallel), not paired."""
    ids = identities(alice_lower=alice_lower)
    alice, bob = (
        net.node(f"{who}{tag}", host, identity, settings)
        for who, host, identity in zip(("alice", "bob"), hosts, ids, strict=True)
    )
    for node in (alice, bob):
        node.launch()
    for node, host in zip((alice, bob), hosts, strict=False):
        node.wait_ready()
        assert node.info["host"] == host.address, "listening on its namespace's address only"
    return alice, bob


def pair_by_code(alice: NodeProcess, bob: NodeProcess) -> dict[str, Any]:
    """Alice opens a code, Bob types just the code: no address, no URI. Bob's reply result."""
    bob.wait_event("discovery.started", timeout=WAIT)  # a bare code needs Bob's mDNS running
    offer = alice.pair()
    # The nameplate is on the LAN (Alice's records went out); Bob still has to find it.
    alice.wait_event("discovery.advertised", nameplates=[offer["nameplate"]], timeout=WAIT)
    reply = bob.join(offer["code"], timeout=WAIT)
    assert reply.ok, f"pairing by code failed: {reply.error}"
    result: dict[str, Any] = reply.result
    return result


def stamp(event: dict[str, Any]) -> float:
    """A log event's time (structlog's UTC timestamp) as seconds since the epoch."""
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def since(node: NodeProcess, name: str, t0: float, **match: Any) -> list[dict[str, Any]]:
    """``node``'s log events ``name`` (current incarnation) logged at or after ``t0``."""
    return [e for e in node.events(name, **match) if stamp(e) >= t0]


def wait_since(
    node: NodeProcess, name: str, t0: float, timeout: float = WAIT, **match: Any
) -> dict[str, Any]:
    node.wait_for(lambda: bool(since(node, name, t0, **match)), timeout=timeout, what=f"{name} {match}")
    return since(node, name, t0, **match)[0]


ROLES = pytest.mark.parametrize("alice_lower", [True, False], ids=["alice-lower", "alice-higher"])


# -- pairing with a bare code ----------------------------------------------------------------


def test_a_joiner_with_only_a_code_finds_the_initiator_by_nameplate_and_pairs(net: Net) -> None:
    a, b = net.lan(2).hosts
    alice, bob = start_pair(net, [a, b], alice_lower=True)

    device = pair_by_code(alice, bob)

    assert device["node_id"] == alice.node_id and device["state"] == "confirmed"
    resolved = bob.wait_event("pairing.nameplate_resolved")
    assert resolved["addresses"] == 1, "exactly Alice's one address, found by mDNS"
    lookup = bob.events("discovery.lookup")[0]
    assert lookup["what"].startswith("nameplate ") and lookup["found"] == 1
    how = "asked the LAN" if lookup["queried"] else "Alice's announcement was already cached"
    print(f"\nnameplate resolved by mDNS in {lookup['elapsed_ms']} ms ({how})")
    assert [d["node_id"] for d in alice.devices()] == [bob.node_id]
    wait_linked(alice, bob)
    # What the joiner found by mDNS is the address it stores (first) for Alice.
    assert bob.devices()[0]["addresses"][0] == alice.address
    exchange(alice, bob, "paired by code")


# -- the waiting side restarts: the mDNS hint ------------------------------------------------


@ROLES
def test_a_restarted_waiting_side_is_reached_again_through_the_mdns_hint(net: Net, alice_lower: bool) -> None:
    """SIGKILL + restart at the same address and port, its restart notice lost: the new boot id tells."""
    # A long keep-alive and idle timeout on purpose: the dialer's own PINGs cannot meet the
    # restarted node's stateless reset before ~6 s, nor its idle timeout before 10 s, so a
    # link back in ~2 s can only be the announcement's doing (it checks the connection: the
    # check's PING gets the reset).
    settings = (*NET, "link.idle_timeout=10", "link.keepalive_interval=6", "testing.drop_restart_notice=true")
    idle = setting(settings, "link.idle_timeout")
    alice, bob = start_pair(net, net.lan(2).hosts, alice_lower=alice_lower, settings=settings)
    pair_by_code(alice, bob)
    before = wait_linked(alice, bob)
    dialer, waiter = lower_of(alice, bob)
    address = waiter.address

    killed = time.time()
    waiter.kill()  # SIGKILL: no GOING_AWAY, no mDNS goodbye; the dialer's link still looks up
    waiter.restart()  # same home, address and port: a new boot id only
    ready = time.time()
    announced = stamp(waiter.wait_event("discovery.advertised"))
    up = wait_since(dialer, "link.up", killed, timeout=idle)
    wait_linked(dialer, waiter)
    back = max(stamp(up), stamp(waiter.wait_event("link.up")))

    print(
        f"\nwaiting side restarted ({'alice' if waiter is alice else 'bob'}): link back "
        f"{back - killed:.2f} s after SIGKILL, {back - ready:.2f} s after the new process was "
        f"ready, {back - announced:.3f} s after its mDNS announcement (idle timeout {idle:g} s)"
    )
    assert back - killed < idle, "faster than the dead-peer bound: the hint did it"
    # From the dialer's log: the announcement checks the connection; the restarted node
    # answers the check's PING with a stateless reset; the dialer redials at once.
    checks = since(dialer, "link.liveness_check", killed)
    assert [(c["why"], c["conn"]) for c in checks] == [("hint", before)]
    closed = [c for c in since(dialer, "link.connection_closed", killed) if c["conn"] == before]
    assert [c["code"] for c in closed] == ["PEER_RESTARTED"]
    dials = since(dialer, "link.dial", killed)
    assert [(d["why"], d["address"], d["source"]) for d in dials] == [("restarted", address, "stored")]
    assert up["source"] == "stored" and up["address"] == address
    # No lookup held the dial: one may only start beside it, when the handshake took longer
    # than the stagger (a loaded machine), as Happy Eyeballs would.
    assert all(stamp(e) >= stamp(dials[0]) for e in since(dialer, "link.mdns_lookup", killed))
    assert waiter.events("link.dial") == [] and waiter.counters().get("link.dials", 0) == 0
    exchange(alice, bob, "after the restart")


# -- a node moves --------------------------------------------------------------------------


@ROLES
def test_a_moved_node_is_found_again_through_mdns_after_its_stored_address_fails(
    net: Net, alice_lower: bool
) -> None:
    """The waiting side stops, its host is renumbered, it restarts there (same home and port).

    The mover is the waiting side (the higher NodeId) in both role assignments:
    only a dialer looks a peer up; a moved dialer just dials from its new
    address, and its peer records where it came from.
    """
    # The lookup (bounded by dial_timeout) must outlast the mover's restart and name probe.
    settings = (*NET, "link.dial_timeout=5")
    hosts = net.lan(2).hosts
    alice, bob = start_pair(net, hosts, alice_lower=alice_lower, settings=settings)
    pair_by_code(alice, bob)
    wait_linked(alice, bob)
    dialer, mover = lower_of(alice, bob)
    host = hosts[0] if mover is alice else hosts[1]
    old, port = mover.address, mover.port
    new = f"{NEW_ADDRESS}:{port}"

    stopped = time.time()
    mover.stop()  # GOING_AWAY and mDNS goodbyes: the dialer redials after backoff_min
    host.move(NEW_ADDRESS)
    # The dialer's redial: the stored (old) address first, then mDNS for the peer.
    first = wait_since(dialer, "link.dial", stopped)
    assert (first["address"], first["source"]) == (old, "stored")
    wait_since(dialer, "link.mdns_lookup", stopped)
    mover.listen = new
    mover.start()

    up = wait_since(dialer, "link.up", stopped)
    wait_linked(alice, bob)
    found = since(dialer, "link.dial", stopped, address=new)
    print(
        f"\nmoved ({mover.name}) {old} -> {new}: link up {stamp(up) - stopped:.2f} s after the stop, "
        f"{stamp(up) - stamp(mover.wait_event('discovery.advertised')):.3f} s after its announcement, "
        f"found via {found[0]['source'] if found else '?'}"
    )
    assert (up["address"], up["dialed"]) == (new, True)
    # Found by mDNS (the lookup's answer, or the announcement that came while it waited).
    assert found and found[0]["source"] in ("mdns", "hint") and up["source"] == found[0]["source"]
    assert all(d["source"] != "stored" for d in found), "the new address was not known before"
    # The address that worked is stored first for next time (a registry write after link.up).
    dialer.wait_for(
        lambda: dialer.devices()[0]["addresses"][0] == new, timeout=WAIT, what="the new address stored first"
    )
    assert mover.events("link.dial") == []
    exchange(alice, bob, "after the move")


# -- a refused dial -----------------------------------------------------------------------------


@ROLES
def test_a_refused_dial_goes_to_the_backoff_at_once_and_looks_the_peer_up_beside_it(
    net: Net, alice_lower: bool
) -> None:
    """The waiting side stops cleanly and stays away: its host answers ICMP port unreachable.

    The dialer's round ends at that answer, not after an mDNS lookup (it used to sit in a 5 s
    one first); the lookup runs in the background while the backoff counts.
    """
    settings = (*NET, "link.dial_timeout=5", "link.backoff_min=0.5", "link.backoff_max=1")
    alice, bob = start_pair(net, net.lan(2).hosts, alice_lower=alice_lower, settings=settings)
    pair_by_code(alice, bob)
    wait_linked(alice, bob)
    dialer, waiter = lower_of(alice, bob)
    stopped = time.time()
    waiter.stop()
    dialer.wait_for(
        lambda: len(since(dialer, "link.dial_failed", stopped)) >= 2, timeout=WAIT, what="two refused rounds"
    )
    dials, failures = since(dialer, "link.dial", stopped), since(dialer, "link.dial_failed", stopped)
    for dial, failed in zip(dials, failures, strict=False):
        took = stamp(failed) - stamp(dial)
        assert took < 1.0, f"a refused round took {took:.2f} s (dial_timeout 5 s, mDNS lookup 5 s)"
    assert since(dialer, "link.mdns_lookup", stopped, background=True), "the lookup, beside the backoff"
    assert all(e.get("background") for e in since(dialer, "link.mdns_lookup", stopped))
    waiter.restart()
    wait_linked(alice, bob)
    exchange(alice, bob, "after the refused rounds")


# -- forged adverts ----------------------------------------------------------------------------

FORGED = 30


@ROLES
def test_forged_adverts_for_a_paired_peer_never_replace_its_working_connection(
    net: Net, alice_lower: bool, tmp_path: Path
) -> None:
    """An unpaired host on the LAN publishes 30 adverts with the waiting side's NodeId, its own
    address, other ports and a new boot id each: every one looks like a restart to the dialer.

    Each is an announcement: the dialer checks its connection (a PING answered) at most once a
    second and keeps it; none starts a handshake, none replaces anything.
    """
    hosts = net.lan(3).hosts
    alice, bob = start_pair(net, hosts[:2], alice_lower=alice_lower)
    pair_by_code(alice, bob)
    before = wait_linked(alice, bob)
    dialer, waiter = lower_of(alice, bob)
    victim = NodeId.from_text(waiter.node_id)
    rogue = Probe(hosts[2], tmp_path / "rogue.log")
    try:
        forged = time.time()
        for k in range(FORGED):  # one every 0.1 s: the attack lasts 3 s, three check intervals
            rogue.send(
                "rogue",
                name=f"forged-{k}",
                port=40000 + k,
                addresses=[hosts[2].address],
                txt_hex=encode_txt(victim, (), new_boot_id()).hex(),
            )
            time.sleep(0.1)

        def heard() -> list[dict[str, Any]]:
            resolved = since(dialer, "discovery.resolved", forged, peer=victim.fingerprint)
            return [e for e in resolved if any(hosts[2].address in x for x in e["endpoints"])]

        dialer.wait_for(lambda: len(heard()) >= FORGED, timeout=WAIT, what="every forged advert heard")
        # The checks the adverts caused have ended (each within liveness_timeout, 1 s).
        dialer.wait_for(
            lambda: (
                len(since(dialer, "link.liveness_check", forged))
                == len(since(dialer, "link.liveness_ok", forged))
            ),
            timeout=WAIT,
            what="the liveness checks answered",
        )
        elapsed = time.time() - forged
        exchange(alice, bob, "while forged adverts are on the LAN")
    finally:
        rogue.join(rogue.stop())

    checks = since(dialer, "link.liveness_check", forged)
    counts = dialer.counters()
    print(
        f"\n{FORGED} forged adverts over {elapsed:.1f} s: {len(checks)} liveness checks, "
        f"{counts.get('link.announcements_damped', 0)} damped, 0 handshakes"
    )
    assert wait_linked(alice, bob, timeout=1.0) == before, "the very same connection"
    assert 2 <= len(checks) <= elapsed + 1, "one check a second at most, whatever the address"
    assert all(c["why"] == "hint" and c["conn"] == before for c in checks)
    assert len(checks) + counts.get("link.announcements_damped", 0) >= FORGED
    assert counts.get("link.liveness_failed", 0) == 0
    for node in (alice, bob):
        for event in ("link.replaced", "link.duplicate_closed", "link.down", "link.dial", "link.accepted"):
            assert since(node, event, forged) == [], f"{node.name}: {event}"
    assert counts.get("link.reconnects", 0) == 0


# -- a partition heals -------------------------------------------------------------------------


def test_a_ten_second_partition_heals_within_the_backoff_bound_without_split_state(net: Net) -> None:
    """Both role assignments at once: two pairs on one LAN, each Alice cut off for 10 s."""
    settings = (*NET, "link.dial_timeout=1")
    hosts = net.lan(4).hosts
    ids = [identities(alice_lower=True), identities(alice_lower=False)]
    pairs = []
    for tag, (a, b), (ia, ib) in zip(("-low", "-high"), (hosts[0:2], hosts[2:4]), ids, strict=True):
        pairs.append((net.node(f"alice{tag}", a, ia, settings), net.node(f"bob{tag}", b, ib, settings), a))
    for alice, bob, _ in pairs:
        alice.launch()
        bob.launch()
    for alice, bob, _ in pairs:
        alice.wait_ready()
        bob.wait_ready()
    first = {}
    for alice, bob, _ in pairs:
        pair_by_code(alice, bob)
        first[alice.name] = wait_linked(alice, bob)

    cut = time.time()
    for _, _, host in pairs:
        host.partition()  # everything to and from Alice's host silently dropped
    try:
        for alice, bob, _ in pairs:
            for node in (alice, bob):
                wait_since(node, "link.down", cut, timeout=WAIT)
        time.sleep(max(0.0, cut + 10.0 - time.time()))  # the scenario: 10 s apart
    finally:
        healed = time.time()
        for _, _, host in pairs:
            host.heal()

    # The documented bound (docs/LINKS.md): the current backoff delay (at most
    # backoff_max x (1 + random factor)) plus one dial round (stagger + 2 x dial_timeout).
    bound = (
        setting(settings, "link.backoff_max") * (1 + setting(settings, "link.backoff_random_factor"))
        + setting(settings, "link.stagger")
        + 2 * setting(settings, "link.dial_timeout")
    )
    for alice, bob, _ in pairs:
        dialer, waiter = lower_of(alice, bob)
        up = wait_since(dialer, "link.up", healed, timeout=bound + WAIT)
        conn = wait_linked(alice, bob)
        took = stamp(up) - healed
        print(
            f"\npartition of {healed - cut:.1f} s ({alice.name} cut off): link back {took:.2f} s after heal"
        )
        assert took < bound + 0.5, f"link back {took:.2f} s after heal; bound {bound:.2f} s"
        assert conn != first[alice.name] and up["conn"] == conn and up["reconnect"] is True
        # No split state: one connection, the same id on both ends, the dialer's own;
        # each registry holds the other confirmed.
        assert link(dialer)["dialed_by"] == "local" and link(waiter)["dialed_by"] == "peer"  # type: ignore[index]
        for node, peer in ((alice, bob), (bob, alice)):
            devices = node.devices(include_pending=True)
            assert [(d["node_id"], d["state"]) for d in devices] == [(peer.node_id, "confirmed")]
            assert node.counters().get("link.down", 0) == 1
        assert waiter.counters().get("link.dials", 0) == 0, "the higher NodeId never dialed"
        exchange(alice, bob, "after the partition")
