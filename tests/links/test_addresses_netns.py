"""Addresses a peer can use (issue 12), between real node processes on real hosts.

Each node is a ``quicpair.tools.nodehost`` process inside its own namespace
of a :class:`netns.Lan` the test creates (tests/support/netns.py), on a LAN
that speaks IPv4 and IPv6, IPv6 only, or only link-local IPv6; nothing
leaves the namespaces. What is proved, in the words of the issue:

* two nodes with the **default listen setting** (``[::]:47470``, both on
  the same port, as two devices are) pair and link with no loopback address
  in the URI or in either side's stored addresses, and no
  IDENTITY_MISMATCH in either log;
* an **IPv6-only** LAN pairs (by bare code, through mDNS AAAA records) and
  links by default;
* a **link-local-only** LAN pairs (by URI: its addresses carry no zone, the
  joiner adds its own interface) and links;
* on a **dual-stack LAN with IPv4 blackholed**, pairing and a reconnection
  still get through over IPv6 within the Happy Eyeballs delay (one
  ``stagger`` after the IPv4 attempt, not a dial timeout);
* a **multi-homed** joiner bound to one address pairs, and links, from that
  address: what the initiator records and sees.

Needs root, ``ip netns`` and nftables: without them these tests FAIL (never
skip), as CI runs as root and installs nftables (.ci/run).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pytest

from quicpair.protocol.addresses import Scope, scope_of
from quicpair.protocol.codes import PairingUri, split_address
from quicpair.protocol.identity import Identity
from support.link_harness import WAIT, exchange, link, lower_of, wait_linked
from support.netnodes import NetNodes, net_fixture
from support.netns import Host
from support.nodeproc import NodeProcess

pytestmark = [pytest.mark.netns, pytest.mark.integration]

#: The default port: every node of these tests listens there, as two real devices would.
PORT = 47470
#: Short timers so that a failure shows in seconds; the addresses are the defaults'.
TIMERS = (
    "link.idle_timeout=3",
    "link.keepalive_interval=1",
    "link.backoff_min=0.2",
    "link.backoff_max=2",
    "link.stable_after=1",
    "pairing.step_timeout=5",
)
MDNS = ("discovery.mdns=true",)


class Net(NetNodes):
    def node(
        self, name: str, host: Host, settings: tuple[str, ...], *, listen: str | None = None
    ) -> NodeProcess:
        """A node in ``host`` (not launched); ``listen`` None is the default setting."""
        return self.add(NodeProcess(name, self.workdir, (*TIMERS, *settings), listen=listen, netns=host.ns))


net = net_fixture(Net)


def ordered_identities(*nodes: NodeProcess) -> None:
    """Give ``nodes`` identities in ascending NodeId order (the first one dials its links)."""
    identities = sorted((Identity.generate() for _ in nodes), key=lambda i: i.node_id.raw)
    for node, identity in zip(nodes, identities, strict=True):
        identity.save(node.home / "identity.pem")


def host_of(address: str) -> str:
    return split_address(address)[0]


def no_loopback(addresses: list[str]) -> bool:
    return all(scope_of(host_of(a)) is not Scope.LOOPBACK for a in addresses)


def assert_stored(node: NodeProcess, peer: Host) -> dict[str, Any]:
    """``node`` holds ``peer`` with every address it announced, and nothing but its addresses at
    its listening port (a link-local one may also be kept with our zone, where it worked)."""
    [record] = node.devices()
    announced = {at(h) for h in (peer.ipv4, peer.ula, peer.link_local) if h is not None}
    stored = set(record["addresses"])
    assert announced <= stored, f"{node.name} stored {record['addresses']}, {peer} announced {announced}"
    assert {at(host_of(x)) for x in stored} == announced, f"{node.name} stored {record['addresses']}"
    assert no_loopback(record["addresses"])
    # Where the peer was seen is where it listens: its default port, never an ephemeral one.
    observed = record["observed_address"]
    assert observed is not None and at(host_of(observed)) in announced, f"{node.name} observed {observed}"
    return dict(record)


def stamp(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def log_text(node: NodeProcess) -> str:
    return node.log_path.read_text(encoding="utf-8")


def at(host: str, port: int = PORT) -> str:
    """``host:port`` as stored (IPv6 in brackets, link-local without a zone: as announced)."""
    bare = host.split("%", 1)[0]
    return f"[{bare}]:{port}" if ":" in bare else f"{bare}:{port}"


def pair_by_uri(alice: NodeProcess, bob: NodeProcess) -> tuple[dict[str, Any], PairingUri]:
    offer = alice.pair()
    reply = bob.join(offer["uri"], timeout=WAIT)
    assert reply.ok, f"pairing by URI failed: {reply.error}"
    return reply.result, PairingUri.parse(offer["uri"])


# -- the default listen setting ------------------------------------------------------------------


def test_default_listen_pairs_and_links_with_no_loopback_anywhere_and_no_identity_mismatch(net: Net) -> None:
    a, b = net.lan(2, "dual").hosts
    alice, bob = net.node("alice", a, MDNS), net.node("bob", b, MDNS)
    net.start(alice, bob)
    for node, host in ((alice, a), (bob, b)):
        assert (node.info["host"], node.info["port"]) == ("::", PORT), "dual-stack on the default port"
        assert node.info["addresses"] == [at(h) for h in (host.ipv4, host.ula, host.link_local)]

    # mDNS: an A and two AAAA records (ULA, link-local without a zone), no loopback.
    advertised = alice.wait_event("discovery.advertised", timeout=WAIT)
    assert advertised["addresses"] == [a.ipv4, a.ula, a.link_local.split("%")[0]], advertised

    device, uri = pair_by_uri(alice, bob)

    # The URI: what a device on the LAN can use, best first (RFC 6724: IPv4 35 > ULA 3 > link-local).
    assert list(uri.addresses) == [at(a.ipv4), at(a.ula), at(a.link_local)]
    assert device["node_id"] == alice.node_id and device["state"] == "confirmed"
    wait_linked(alice, bob)
    assert_stored(alice, b)
    assert_stored(bob, a)
    for node in (alice, bob):
        text = log_text(node)
        assert "IDENTITY_MISMATCH" not in text and "listener.refused_self" not in text, node.name
    exchange(alice, bob, "default listen")


# -- IPv6 only, link-local only ----------------------------------------------------------------------


def test_an_ipv6_only_lan_pairs_by_code_and_links_by_default(net: Net) -> None:
    a, b = net.lan(2, "ipv6").hosts
    alice, bob = net.node("alice", a, MDNS), net.node("bob", b, MDNS)
    net.start(alice, bob)

    bob.wait_event("discovery.started", timeout=WAIT)
    offer = alice.pair()
    alice.wait_event("discovery.advertised", nameplates=[offer["nameplate"]], timeout=WAIT)
    reply = bob.join(offer["code"], timeout=WAIT)  # a bare code: Alice is found by mDNS (AAAA)

    assert reply.ok, f"pairing by code on an IPv6-only LAN failed: {reply.error}"
    assert list(PairingUri.parse(offer["uri"]).addresses) == [at(a.ula), at(a.link_local)]
    found = bob.wait_event("pairing.nameplate_resolved")
    assert found["addresses"] == 2, "Alice's AAAA records: her ULA and her link-local address"
    wait_linked(alice, bob)
    assert_stored(alice, b)
    assert_stored(bob, a)
    exchange(alice, bob, "IPv6 only")


def test_a_link_local_only_lan_pairs_and_links(net: Net) -> None:
    a, b = net.lan(2, "link-local").hosts
    alice, bob = net.node("alice", a, ()), net.node("bob", b, ())
    ordered_identities(alice, bob)  # Alice dials the link: she dials a zone-less stored address
    net.start(alice, bob)

    device, uri = pair_by_uri(alice, bob)

    # Announced without Alice's zone ("eth0" names her interface, not Bob's); Bob dialed it
    # with his own interface's (his is called eth0 too: the zone is his choice, not hers).
    assert list(uri.addresses) == [at(a.link_local)]
    assert [d["address"] for d in bob.events("pairing.dial")] == [f"[{a.link_local}]:{PORT}"]
    assert device["state"] == "confirmed"
    wait_linked(alice, bob)
    up = alice.wait_event("link.up")
    assert up["dialed"] is True and up["address"] == f"[{b.link_local}]:{PORT}", up
    assert_stored(alice, b)
    assert_stored(bob, a)
    exchange(alice, bob, "link-local only")


# -- IPv4 blackholed -------------------------------------------------------------------------------------


def test_with_ipv4_blackholed_pairing_and_links_get_through_ipv6_within_the_happy_eyeballs_delay(
    net: Net,
) -> None:
    """RFC 6724 puts private IPv4 (35) before ULA (3): IPv4 is tried first, and must not be waited for."""
    stagger = 0.25  # [link] stagger, the default (RFC 8305's Connection Attempt Delay)
    settings = ("link.dial_timeout=5", f"link.stagger={stagger}")
    a, b, c = net.lan(3, "dual").hosts
    alice, bob, carol = (net.node(n, h, settings) for n, h in (("alice", a), ("bob", b), ("carol", c)))
    ordered_identities(bob, alice)  # Bob dials the link
    net.start(alice, bob, carol)
    pair_by_uri(alice, bob)
    wait_linked(alice, bob)
    assert bob.wait_event("link.up")["address"] == at(a.ipv4), "IPv4 first while it works"

    lan = net.lans[0]
    lan.blackhole_ipv4()  # IPv4 packets vanish at the switch; ARP still answers

    # A reconnection: Bob restarts and dials Alice's stored addresses, IPv4 (last worked) first.
    bob.stop()
    restarted = time.time()
    bob.start()
    up = bob.wait_event("link.up", timeout=WAIT)
    dials = [d for d in bob.events("link.dial") if stamp(d) >= restarted]
    wait_linked(alice, bob)
    took = stamp(up) - stamp(dials[0])
    print(f"\nIPv4 blackholed: link up over {up['address']} {took * 1000:.0f} ms after the first dial")
    assert [d["address"] for d in dials[:2]] == [at(a.ipv4), at(a.ula)], dials
    assert up["address"] == at(a.ula)
    assert stagger <= took < stagger + 1.0, "one stagger step, not the 5 s dial timeout"

    # A pairing: Carol's URI lists Alice's IPv4 address first, and it is blackholed.
    t0 = time.time()
    device, uri = pair_by_uri(alice, carol)
    took = time.time() - t0
    attempts = [d["address"] for d in carol.events("pairing.dial")]
    print(f"IPv4 blackholed: paired over IPv6 in {took * 1000:.0f} ms")
    assert uri.addresses[0] == at(a.ipv4) and attempts[:2] == [at(a.ipv4), at(a.ula)], attempts
    assert device["state"] == "confirmed" and took < stagger + 3.0
    exchange(alice, bob, "IPv4 blackholed")


# -- a multi-homed joiner -----------------------------------------------------------------------------


def test_a_multi_homed_joiner_bound_to_one_address_pairs_and_links_from_it(net: Net) -> None:
    a, b = net.lan(2, "ipv4").hosts
    second = "10.231.1.11"
    b.add_cable(second)  # eth0 10.231.0.11 is what the kernel picks when nothing is bound
    alice = net.node("alice", a, (), listen=f"{a.ipv4}:{PORT}")
    bob = net.node("bob", b, (), listen=f"{second}:{PORT}")
    ordered_identities(bob, alice)  # Bob dials the link too
    net.start(alice, bob)

    pair_by_uri(alice, bob)

    # On the initiator's side: the pairing connection came from the joiner's listen address.
    session = alice.wait_event("pairing.completed")
    assert host_of(session["peer_address"]) == second, session
    [record] = alice.devices()
    assert record["addresses"] == [f"{second}:{PORT}"]
    assert record["observed_address"] == f"{second}:{PORT}", "its listening address, not the source port"
    wait_linked(alice, bob)
    status = link(alice)
    assert status is not None and host_of(status["remote_address"]) == second, status
    assert lower_of(alice, bob)[0] is bob
    exchange(alice, bob, "multi-homed")
