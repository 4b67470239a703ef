"""Paired links, in one process: two Nodes on 127.0.0.1 with short timers.

The scenarios a user would check (the link comes up after pairing, only the
lower NodeId dials, sealed messages both ways, a send while the link is down,
duplicate connections, unpair online and offline), plus the attacks on the
link stream, played by a hand-driven client that holds Bob's identity key and
pairing secret (a third party cannot even get through TLS): a replayed and a
tampered sealed frame are refused with the SealError's code, logged, and the
node is unharmed. Real node processes: tests/links/test_links_processes.py.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from quicpair.actors.kernel.loop import EventLoopThread
from quicpair.actors.links.messages import LinkStatus
from quicpair.actors.node import Node
from quicpair.actors.registry.actor import DeviceState, RegistryStore
from quicpair.actors.transport.dial import dial
from quicpair.actors.transport.quic_link import QuicLink
from quicpair.config.settings import Settings, load_settings
from quicpair.protocol.errors import ErrorCode, LocalProtocolError, PeerUnreachable, RemoteProtocolError
from quicpair.protocol.framing import encode_frame
from quicpair.protocol.identity import Identity, NodeId
from quicpair.protocol.keys import key_id
from quicpair.protocol.link import AppDataReceived, LinkChannel, LinkEstablished
from quicpair.protocol.messages import ALPN_LINK, LinkSealed
from support.waiting import wait_until

#: Short timers: a dead peer is noticed in 2 s, a redial happens within 0.5 s.
FAST = {
    "idle_timeout": 2.0,
    "keepalive_interval": 0.5,
    "backoff_min": 0.05,
    "backoff_max": 0.5,
    "stable_after": 0.5,
    "stagger": 0.05,
    "dial_timeout": 2.0,
}
WAIT = 10.0


def settings(port: int = 0, link: dict[str, Any] | None = None, **testing: Any) -> Settings:
    return load_settings(
        node={"listen_host": "127.0.0.1", "listen_port": port},
        discovery={"mdns": False},
        link={**FAST, **(link or {})},
        testing=testing,
    )


class Pair:
    """Alice (the initiator) and Bob (the joiner), with the role assignment the test asked for."""

    def __init__(
        self, tmp_path: Path, alice_lower: bool, link: dict[str, Any] | None = None, **testing: Any
    ) -> None:
        self.tmp_path = tmp_path
        self.link = link
        self.testing = testing
        homes = [tmp_path / "n1", tmp_path / "n2"]
        ids = sorted((Identity.load_or_create(_prep(h) / "identity.pem").node_id, h) for h in homes)
        (_, low_home), (_, high_home) = ids
        self.alice_home, self.bob_home = (low_home, high_home) if alice_lower else (high_home, low_home)
        self.ports: dict[Path, int] = {}
        self.alice = self._start(self.alice_home, 0)
        self.bob = self._start(self.bob_home, 0)
        self.alice_id, self.bob_id = self.alice.node_id, self.bob.node_id
        self.lower, self.higher = (self.alice, self.bob) if alice_lower else (self.bob, self.alice)

    def _start(self, home: Path, port: int) -> Node:
        node = Node(home, settings(port, self.link, **self.testing)).start()
        self.ports[home] = node.address[1]
        return node

    def pair(self) -> None:
        offer = self.alice.pair()
        self.bob.join(offer.uri, timeout=WAIT)
        offer.wait(WAIT)

    def restart(self, node: Node) -> Node:
        """Stop ``node`` (if running) and start it again on the same home and port."""
        if node._root is not None:
            node.stop()
        fresh = self._start(node.home, self.ports[node.home])
        if node is self.alice:
            self.alice = fresh
        else:
            self.bob = fresh
        if node is self.lower:
            self.lower = fresh
        else:
            self.higher = fresh
        return fresh

    def close(self) -> None:
        for node in (self.alice, self.bob):
            if node._root is not None:
                node.stop()


def _prep(home: Path) -> Path:
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    return home


@pytest.fixture(params=[True, False], ids=["alice-lower", "alice-higher"])
def alice_lower(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def pair(tmp_path: Path, alice_lower: bool) -> Iterator[Pair]:
    p = Pair(tmp_path, alice_lower)
    try:
        yield p
    finally:
        p.close()


def link_of(node: Node) -> LinkStatus | None:
    links = node.links()
    return links[0] if links else None


def linked(a: Node, b: Node) -> bool:
    la, lb = link_of(a), link_of(b)
    return (
        la is not None
        and lb is not None
        and la.state == lb.state == "up"
        and la.connection_id == lb.connection_id
        and la.connections == lb.connections == 1
    )


def wait_linked(a: Node, b: Node, timeout: float = WAIT) -> str:
    wait_until(lambda: linked(a, b), timeout, "one link up on both sides, the same connection")
    status = link_of(a)
    assert status is not None and status.connection_id is not None
    return status.connection_id


# -- the link comes up, only the lower NodeId dials ------------------------------------


def test_the_link_comes_up_after_pairing_and_only_the_lower_node_dials(pair: Pair) -> None:
    with capture_logs() as logs:
        pair.pair()
        conn = wait_linked(pair.alice, pair.bob)
    lower, higher = link_of(pair.lower), link_of(pair.higher)
    assert lower is not None and higher is not None
    assert (lower.role, lower.dialed_by) == ("dialer", "local")
    assert (higher.role, higher.dialed_by) == ("listener", "peer")
    assert pair.lower.counters()["link.dials.dialer"] >= 1
    assert "link.dials" not in pair.higher.counters(), "the higher NodeId never dials"
    assert pair.higher.counters()["link.connections_accepted"] == 1
    roles = [e for e in logs if e["event"] == "link.role"]
    assert sorted(e["role"] for e in roles) == ["dialer", "listener"], "computed and logged once per device"
    ups = [e for e in logs if e["event"] == "link.up"]
    assert {e["conn"] for e in ups} == {conn} and len(ups) == 2
    # The address the dial succeeded on is stored as the one that worked: first next time.
    wait_until(
        lambda: pair.lower.device(pair.higher.node_id).addresses[0] == lower.remote_address,  # type: ignore[union-attr]
        WAIT,
        "the dialed address marked as worked",
    )
    # Where the accepted connection came from, at the port the peer listens on
    # (the connection's source port is the dialer's ephemeral socket).
    observed = f"{higher.remote_address.rsplit(':', 1)[0]}:{pair.lower.address[1]}"
    wait_until(
        lambda: pair.higher.device(pair.lower.node_id).observed_address == observed,  # type: ignore[union-attr]
        WAIT,
        "the accepted connection's address recorded",
    )


# -- sealed messages ------------------------------------------------------------------------


def test_sealed_messages_flow_both_ways_in_order(pair: Pair) -> None:
    pair.pair()
    wait_linked(pair.alice, pair.bob)
    got: queue.Queue[tuple[NodeId, bytes, str]] = queue.Queue()
    unsubscribe = pair.alice.subscribe(
        lambda peer, data: got.put((peer, data, threading.current_thread().name))
    )
    for i in range(50):
        pair.alice.send(pair.bob.node_id, b"to bob %d" % i, timeout=2)
        pair.bob.send(pair.alice.node_id, b"to alice %d" % i, timeout=2)
    for i in range(50):
        message = pair.bob.receive(timeout=WAIT)
        assert message is not None and (message.peer, message.payload) == (
            pair.alice.node_id,
            b"to bob %d" % i,
        )
        peer, data, thread = got.get(timeout=WAIT)
        assert (peer, data) == (pair.bob.node_id, b"to alice %d" % i)
        assert thread.endswith("-deliver"), "callbacks never run on the network loop"
    unsubscribe()
    big = os.urandom(60_000)
    pair.alice.send(pair.bob.node_id, big, timeout=2)
    message = pair.bob.receive(timeout=WAIT)
    assert message is not None and message.payload == big
    assert pair.alice.counters()["link.messages_sent"] == 51
    assert pair.bob.counters()["link.messages_received"] == 51
    with pytest.raises(LocalProtocolError) as too_big:
        pair.alice.send(pair.bob.node_id, bytes(60_001))
    assert too_big.value.code is ErrorCode.FRAME_TOO_LARGE


def test_sending_to_a_device_that_is_not_paired_is_refused(pair: Pair) -> None:
    stranger = Identity.generate().node_id
    with pytest.raises(LocalProtocolError) as refused:
        pair.alice.send(stranger, b"hi", timeout=1)
    assert refused.value.code is ErrorCode.UNKNOWN_PEER
    with pytest.raises(LocalProtocolError):
        pair.alice.unpair(stranger)


def test_a_send_while_the_link_is_down_waits_for_it_or_fails_and_is_never_sent_later(pair: Pair) -> None:
    pair.pair()
    wait_linked(pair.alice, pair.bob)
    pair.bob.stop()
    wait_until(lambda: link_of(pair.alice).state != "up", WAIT, "alice sees the link down")  # type: ignore[union-attr]
    with pytest.raises(PeerUnreachable):
        pair.alice.send(pair.bob_id, b"too late", timeout=0.2)
    outcome: queue.Queue[BaseException | None] = queue.Queue()

    def send_later() -> None:
        try:
            pair.alice.send(pair.bob_id, b"waited for the link", timeout=WAIT)
            outcome.put(None)
        except BaseException as exc:
            outcome.put(exc)

    sender = threading.Thread(target=send_later)
    sender.start()
    bob = pair.restart(pair.bob)
    sender.join(WAIT + 5)
    assert outcome.get_nowait() is None
    message = bob.receive(timeout=WAIT)
    assert message is not None and message.payload == b"waited for the link"
    assert bob.receive(timeout=0.3) is None, "the send that timed out was dropped, not sent late"


# -- duplicates ---------------------------------------------------------------------------------


def test_simultaneous_connections_end_as_the_same_one_on_both_sides(
    tmp_path: Path, alice_lower: bool
) -> None:
    p = Pair(tmp_path, alice_lower, force_simultaneous_dial=True)
    try:
        p.pair()

        def settled() -> bool:
            both_closed_one = all(
                n.counters().get("link.duplicates_closed", 0) >= 1 for n in (p.alice, p.bob)
            )
            return both_closed_one and linked(p.alice, p.bob)

        wait_until(settled, WAIT, "a duplicate closed on both sides, then one connection")
        lower = link_of(p.lower)
        assert lower is not None and lower.dialed_by == "local", "the one dialed by the lower NodeId is kept"
        for node in (p.alice, p.bob):
            counters = node.counters()
            assert counters["link.dials"] >= 1, "the test hook makes both sides dial"
            assert counters.get("link.down", 0) == 0, "a duplicate closed is not a link down"
        for i in range(20):
            p.alice.send(p.bob.node_id, b"%d" % i, timeout=2)
        assert [p.bob.receive(WAIT).payload for _ in range(20)] == [b"%d" % i for i in range(20)]  # type: ignore[union-attr]
    finally:
        p.close()


# -- unpair -----------------------------------------------------------------------------------------


def test_unpair_online_reaches_the_peer_which_can_no_longer_connect(pair: Pair) -> None:
    pair.pair()
    wait_linked(pair.alice, pair.bob)
    assert pair.alice.unpair(pair.bob.node_id) is True
    assert pair.alice.devices() == [] and pair.alice.links() == []
    wait_until(lambda: pair.bob.devices() == [] and pair.bob.links() == [], WAIT, "bob removed alice")
    assert pair.bob.device(pair.alice.node_id).state == DeviceState.REVOKED.value  # type: ignore[union-attr]
    with pytest.raises(LocalProtocolError) as unpaired:
        pair.bob.send(pair.alice.node_id, b"hi", timeout=0.2)
    assert unpaired.value.code is ErrorCode.UNKNOWN_PEER
    # Bob's key cannot get a link with Alice any more (nor Alice's with Bob).
    raw = RawLink(pair.bob_home, pair.alice)
    try:
        with pytest.raises(RemoteProtocolError) as refused:
            raw.connect()
        assert refused.value.code is ErrorCode.UNKNOWN_PEER
    finally:
        raw.close()


def test_unpair_offline_is_delivered_at_the_next_contact(pair: Pair) -> None:
    pair.pair()
    wait_linked(pair.alice, pair.bob)
    pair.bob.stop()
    assert pair.alice.unpair(pair.bob_id, timeout=0.3) is False, "bob is offline: told later"
    assert pair.alice.devices() == []
    assert [s.state for s in pair.alice.links()] == ["unpairing"]
    bob = pair.restart(pair.bob)
    wait_until(lambda: bob.devices() == [] and pair.alice.links() == [], WAIT, "the unpair delivered")
    with RegistryStore(pair.alice_home / "registry.sqlite3") as store:
        record = store.get(bob.node_id)
    assert record is not None and record.state is DeviceState.REVOKED and not record.unpair_pending


# -- attacks on the stream, from a client holding Bob's key and pairing secret --------------------


class RawLink:
    """A hand-driven link dialer with Bob's identity and pairing secret (Bob's node stopped)."""

    def __init__(self, bob_home: Path, alice: Node) -> None:
        self.identity = Identity.load(bob_home / "identity.pem")
        with RegistryStore(bob_home / "registry.sqlite3") as store:
            record = store.get(alice.node_id)
        self.secret = record.pairing_secret if record is not None else bytes(32)
        self.key_id = key_id(record.pairing_id if record is not None else bytes(32))
        self.alice_id = alice.node_id
        self.host, self.port = alice.address
        self.loop = EventLoopThread("raw-link").start()
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.link: QuicLink | None = None
        self.stream = 0
        self.channel = LinkChannel(
            local=self.identity.node_id,
            peer=alice.node_id,
            local_is_dialer=True,
            pairing_secret=self.secret,
            key_id=self.key_id,
            addresses=[],
            rand=os.urandom,
        )

    def on_loop(self, fn: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return fn()

        return self.loop.submit(run()).result(WAIT)

    # LinkHandler, called on the loop
    def stream_data(self, stream_id: int, data: bytes, ended: bool) -> None:
        self.events.put(("data", data))

    def stream_reset(self, stream_id: int, code: ErrorCode) -> None:
        self.events.put(("reset", code))

    def closed(self, code: ErrorCode, reason: str, by_peer: bool) -> None:
        self.events.put(("closed", code))

    def connect(self) -> None:
        self.link = self.loop.submit(
            dial(self.host, self.port, self.identity, alpn=ALPN_LINK, expect=self.alice_id, timeout=5)
        ).result(WAIT)
        link = self.link

        def start() -> None:
            link.set_handler(self)
            self.stream = link.open_stream()
            link.send(self.stream, self.channel.hello())

        self.on_loop(start)

    def send_raw(self, frame: bytes) -> None:
        link = self.link
        assert link is not None
        self.on_loop(lambda: link.send(self.stream, frame))

    def next_event(self) -> Any:
        """The next channel event from Alice (feeding her bytes); ("closed", code) when she closed."""
        while True:
            event = self.channel.next_event()
            if event is not None:
                return event
            kind, value = self.events.get(timeout=WAIT)
            if kind == "data":
                self.channel.receive_data(value)
            else:
                return (kind, value)

    def close(self) -> None:
        link = self.link
        if link is not None and not link.is_closed:
            self.on_loop(lambda: link.close(ErrorCode.GOING_AWAY, "test over"))
        self.loop.stop()


@pytest.mark.parametrize("attack", ["replay", "tamper"])
def test_a_replayed_or_tampered_frame_is_rejected_and_the_node_is_unharmed(pair: Pair, attack: str) -> None:
    pair.pair()
    wait_linked(pair.alice, pair.bob)
    pair.bob.stop()
    wait_until(lambda: link_of(pair.alice).state != "up", WAIT, "alice sees the link down")  # type: ignore[union-attr]
    raw = RawLink(pair.bob_home, pair.alice)
    try:
        with capture_logs() as logs:
            raw.connect()
            assert isinstance(raw.next_event(), LinkEstablished)
            good = raw.channel.send_app(1 << 40, b"a genuine message")
            raw.send_raw(good)
            message = pair.alice.receive(timeout=WAIT)
            assert message is not None and message.payload == b"a genuine message"
            if attack == "replay":
                raw.send_raw(good)  # the very same frame again: seq 0 a second time
                expected = ErrorCode.REPLAYED
            else:
                frame = raw.channel.send_app((1 << 40) + 1, b"change me")
                body = bytearray(frame)
                body[-1] ^= 0x01  # the last byte of the Poly1305 tag
                raw.send_raw(bytes(body))
                expected = ErrorCode.DECRYPT_FAILED
            while True:
                event = raw.next_event()
                if isinstance(event, tuple):
                    break
                assert not isinstance(event, AppDataReceived)
            assert event == ("closed", expected), "alice closed the connection with the SealError's code"
            wait_until(
                lambda: any(e["event"] == "link.message_rejected" for e in logs), WAIT, "the rejection logged"
            )
        rejected = [e for e in logs if e["event"] == "link.message_rejected"]
        assert rejected[0]["code"] == expected.name and rejected[0]["peer"] == pair.bob_id.fingerprint
        assert pair.alice.counters()["link.messages_rejected"] == 1
        assert pair.alice.receive(timeout=0.2) is None, "nothing from the bad frame was delivered"
    finally:
        raw.close()
    # Alice is unharmed: the real Bob comes back and the link works.
    bob = pair.restart(pair.bob)
    wait_linked(pair.alice, bob)
    pair.alice.send(bob.node_id, b"still here", timeout=2)
    message = bob.receive(timeout=WAIT)
    assert message is not None and message.payload == b"still here"


def test_a_peer_that_sends_hellos_but_no_sealed_message_is_closed_at_the_hello_deadline(pair: Pair) -> None:
    """The link is up only once the peer's first sealed message opens (PROTOCOL.md 11.2): a peer
    that completes the hellos and then says nothing is closed with TIMEOUT, never kept."""
    pair.pair()
    wait_linked(pair.alice, pair.bob)
    pair.bob.stop()
    wait_until(lambda: link_of(pair.alice).state != "up", WAIT, "alice sees the link down")  # type: ignore[union-attr]
    raw = RawLink(pair.bob_home, pair.alice)
    try:
        with capture_logs() as logs:
            raw.connect()
            assert isinstance(raw.next_event(), LinkEstablished)
            events = []
            while True:
                event = raw.next_event()
                if isinstance(event, tuple):
                    break
                events.append(event)
            assert event == ("closed", ErrorCode.TIMEOUT)
            assert [type(e).__name__ for e in events] == ["AddressesReceived"], "alice's LinkAddresses first"
            assert link_of(pair.alice).state != "up"  # type: ignore[union-attr]
        timeouts = [e for e in logs if e["event"] == "link.hello_timeout"]
        assert len(timeouts) == 1 and timeouts[0]["established"] is True
    finally:
        raw.close()


def test_a_sealed_frame_with_a_wrong_sequence_number_is_a_replay() -> None:
    """The framing of the attack above, without a network: a frame re-sent with its own seq."""
    alice, bob = Identity.generate().node_id, Identity.generate().node_id
    secret = os.urandom(32)
    kid = key_id(os.urandom(32))
    d = LinkChannel(
        local=alice,
        peer=bob,
        local_is_dialer=True,
        pairing_secret=secret,
        key_id=kid,
        addresses=[],
        rand=os.urandom,
    )
    listener = LinkChannel(
        local=bob,
        peer=alice,
        local_is_dialer=False,
        pairing_secret=secret,
        key_id=kid,
        addresses=[],
        rand=os.urandom,
    )
    listener.receive_data(d.hello())
    d.receive_data(listener.hello())
    assert isinstance(d.next_event(), LinkEstablished) and isinstance(listener.next_event(), LinkEstablished)
    listener.receive_data(encode_frame(LinkSealed(seq=1, box=bytes(32))))
    from quicpair.protocol.errors import SealError

    with pytest.raises(SealError) as replay:
        listener.next_event()
    assert replay.value.code is ErrorCode.REPLAYED


# -- discovery as the fallback, announcements as hints (fake mDNS: tests stay on loopback) --------


class FakeFinder:
    """Stands in for mDNS discovery: knows where nodes are, counts lookups."""

    def __init__(self) -> None:
        self.endpoints: dict[NodeId, list[str]] = {}
        self.lookups: list[NodeId] = []

    async def resolve_node(self, node_id: NodeId, timeout: float) -> list[str]:
        self.lookups.append(node_id)
        return list(self.endpoints.get(node_id, []))


def on_loop(node: Node, fn: Callable[[], Any]) -> Any:
    async def run() -> Any:
        return fn()

    return node._context.loop_thread.submit(run()).result(WAIT)


def test_a_peer_that_moved_is_found_through_discovery_after_its_stored_addresses_fail(
    tmp_path: Path, alice_lower: bool
) -> None:
    # Its restart notice lost (a moved waiting node is usually found by it): mDNS must do.
    p = Pair(tmp_path, alice_lower, drop_restart_notice=True)
    try:
        p.pair()
        wait_linked(p.alice, p.bob)
        dialer, mover = p.lower, p.higher
        mover_id, old = mover.node_id, link_of(dialer).remote_address  # type: ignore[union-attr]
        finder = FakeFinder()
        on_loop(dialer, lambda: setattr(dialer._context, "discovery", finder))
        with capture_logs() as logs:
            mover.stop()
            p.ports[mover.home] = 0  # it comes back on another port: the stored one is dead
            mover = p.restart(mover)
            finder.endpoints[mover_id] = [f"127.0.0.1:{mover.address[1]}"]
            wait_linked(dialer, mover)
        assert finder.lookups and set(finder.lookups) == {mover_id}
        dials = [e for e in logs if e["event"] == "link.dial"]
        assert dials[0]["address"] == old and dials[0]["source"] == "stored", "stored addresses first"
        assert dials[-1]["source"] == "mdns" and dials[-1]["address"] == finder.endpoints[mover_id][0]
        assert any(e["event"] == "link.mdns_lookup" for e in logs)
        new = finder.endpoints[mover_id][0]
        wait_until(
            lambda: dialer.device(mover_id).addresses[0] == new,  # type: ignore[union-attr]
            WAIT,
            "the address found by discovery stored as the one that worked",
        )
    finally:
        p.close()


def test_an_announcement_of_a_paired_peer_dials_at_once_instead_of_at_the_next_backoff(
    tmp_path: Path, alice_lower: bool
) -> None:
    slow = {"backoff_min": 30.0, "backoff_max": 30.0}  # without the hint: no dial for 30 s
    p = Pair(tmp_path, alice_lower, link=slow, drop_restart_notice=True)  # only the hint can tell
    try:
        p.pair()
        wait_linked(p.alice, p.bob)
        dialer, mover = p.lower, p.higher
        mover_id = mover.node_id
        mover.stop()
        wait_until(lambda: link_of(dialer).state != "up", WAIT, "the dialer sees the link down")  # type: ignore[union-attr]
        p.ports[mover.home] = 0
        mover = p.restart(mover)
        with capture_logs() as logs:
            on_loop(dialer, lambda: dialer._context.links.hint(mover_id, [f"127.0.0.1:{mover.address[1]}"]))
            wait_linked(dialer, mover)
        dials = [e for e in logs if e["event"] == "link.dial"]
        assert dials and {e["why"] for e in dials} == {"hint"}
        assert dials[-1]["source"] == "hint"
    finally:
        p.close()


def test_an_announcement_while_up_checks_the_connection_and_never_replaces_a_working_one(
    pair: Pair,
) -> None:
    """What a dialer does when mDNS says its peer restarted (or moved) while the link is up and fine."""
    pair.pair()
    old = wait_linked(pair.alice, pair.bob)
    dialer, listener = pair.lower, pair.higher
    listener_id, address = listener.node_id, link_of(dialer).remote_address  # type: ignore[union-attr]
    with capture_logs() as logs:
        on_loop(dialer, lambda: dialer._context.links.hint(listener_id, [address, "192.0.2.1:9"]))
        wait_until(lambda: any(e["event"] == "link.liveness_ok" for e in logs), WAIT, "the check answered")
        for _ in range(5):  # more announcements within a second: damped, whatever the address
            on_loop(dialer, lambda: dialer._context.links.hint(listener_id, ["198.51.100.1:1"]))
        dialer.send(listener_id, b"on the same connection", timeout=2)
        message = listener.receive(timeout=WAIT)
        assert message is not None and message.payload == b"on the same connection"
    events = [e["event"] for e in logs]
    assert events.count("link.liveness_check") == 1
    assert "link.dial" not in events and "link.replaced" not in events and "link.down" not in events
    assert link_of(dialer).connection_id == old == link_of(listener).connection_id  # type: ignore[union-attr]
    assert dialer.counters()["link.announcements_damped"] == 5
