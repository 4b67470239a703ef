"""The pieces of the paired links, each on its own, without a network.

:func:`quicpair.actors.links.dial.race` (stored addresses first, staggered, discovery
last, the first answer wins), :class:`quicpair.actors.links.outbox.Outbox` (sends
waiting for the link: in order, until their deadline, never sent late),
:class:`quicpair.actors.links.inbox.Inbox`, :class:`quicpair.actors.discovery.actor.DiscoveryActor`
with a stand-in for mDNS, and the control protocol's validation of the link
requests. The scenarios between two nodes are in tests/links/test_links.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import structlog
from structlog.testing import capture_logs

from quicpair.actors.context import NodeContext, Offer
from quicpair.actors.discovery.actor import DiscoveryActor, advertised_ips
from quicpair.actors.kernel.counters import Counters
from quicpair.actors.kernel.loop import EventLoopThread
from quicpair.actors.links.dial import SOURCE_MDNS, SOURCE_STORED, race
from quicpair.actors.links.inbox import Inbox
from quicpair.actors.links.outbox import Outbox
from quicpair.config.settings import load_settings
from quicpair.protocol.errors import ErrorCode, LocalProtocolError, PeerUnreachable
from quicpair.protocol.identity import Identity, NodeId
from quicpair.tools.control import RequestError, decode_request
from support.waiting import wait_until

# -- race: stored addresses first, staggered; discovery last ---------------------------------


class FakeLink:
    """Stands in for a QuicLink in race(): only closing matters."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.is_closed = False
        self.closed_with: ErrorCode | None = None

    def close(self, code: ErrorCode, reason: str = "") -> None:
        self.is_closed, self.closed_with = True, code


async def ticks_until(predicate: Callable[[], bool], ticks: int = 1000) -> None:
    """Let the loop run until ``predicate`` holds (bounded in loop iterations, not time)."""
    for _ in range(ticks):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("the race did not get there")


def test_race_tries_stored_addresses_first_and_mdns_only_after_them() -> None:
    async def scenario() -> tuple[list[tuple[str, str]], str, list[str]]:
        attempts: list[tuple[str, str]] = []
        gates: dict[str, asyncio.Future[FakeLink | None]] = {}
        order: list[str] = []

        async def dial_one(address: str) -> Any:
            gate = gates.setdefault(address, asyncio.get_running_loop().create_future())
            result = await gate
            if result is None:
                raise PeerUnreachable(f"{address} did not answer")
            return result

        async def resolve() -> list[str]:
            order.append("resolve")
            return ["10.0.0.3:1", "10.0.0.1:1"]  # one new, one already tried

        task = asyncio.ensure_future(
            race(
                [("10.0.0.1:1", SOURCE_STORED), ("10.0.0.2:1", SOURCE_STORED)],
                dial_one,
                stagger=10.0,  # only failures move the race on in this test
                resolve=resolve,
                on_attempt=lambda a, s: attempts.append((a, s)),
            )
        )
        await ticks_until(lambda: "10.0.0.1:1" in gates)
        assert len(attempts) == 1, "the second waits for the stagger or a failure"
        gates["10.0.0.1:1"].set_result(None)  # the first stored address fails: the next starts at once
        await ticks_until(lambda: "10.0.0.2:1" in gates)
        order.append("second started")
        gates["10.0.0.2:1"].set_result(None)
        await ticks_until(lambda: "10.0.0.3:1" in gates)
        gates["10.0.0.3:1"].set_result(FakeLink("10.0.0.3:1"))
        dialed = await asyncio.wait_for(task, 5)
        return attempts, dialed.source, order

    attempts, source, order = asyncio.run(scenario())
    assert attempts == [
        ("10.0.0.1:1", SOURCE_STORED),
        ("10.0.0.2:1", SOURCE_STORED),
        ("10.0.0.3:1", SOURCE_MDNS),
    ]
    assert source == SOURCE_MDNS
    assert order == ["second started", "resolve"], "mDNS only once every stored address had its chance"


def test_race_keeps_the_first_answer_and_closes_a_late_one() -> None:
    async def scenario() -> tuple[str, FakeLink]:
        late = FakeLink("b")
        gates: dict[str, asyncio.Future[Any]] = {}

        async def dial_one(address: str) -> Any:
            return await gates.setdefault(address, asyncio.get_running_loop().create_future())

        task = asyncio.ensure_future(
            race([("a", SOURCE_STORED), ("b", SOURCE_STORED)], dial_one, stagger=0.0)
        )
        await ticks_until(lambda: len(gates) == 2)
        gates["a"].set_result(FakeLink("a"))
        gates["b"].set_result(late)  # completes in the same tick: too late
        dialed = await asyncio.wait_for(task, 5)
        for _ in range(3):
            await asyncio.sleep(0)
        return dialed.address, late

    address, late = asyncio.run(scenario())
    assert address == "a"
    assert late.closed_with is ErrorCode.GOING_AWAY


def test_race_raises_the_last_error_when_nothing_answers() -> None:
    async def dial_one(address: str) -> Any:
        raise PeerUnreachable(f"{address}: nobody")

    with pytest.raises(PeerUnreachable, match="b: nobody"):
        asyncio.run(race([("a", SOURCE_STORED), ("b", SOURCE_STORED)], dial_one, stagger=0.01))
    with pytest.raises(PeerUnreachable, match="no address"):
        asyncio.run(race([], dial_one, stagger=0.01))


# -- the inbox -----------------------------------------------------------------------------------------


def test_the_inbox_keeps_the_newest_messages_when_nobody_reads() -> None:
    counters = Counters()
    inbox = Inbox("t", counters, structlog.get_logger(), limit=3)
    peer = Identity.generate().node_id
    for i in range(5):
        inbox.deliver(peer, b"%d" % i)
    assert [m.payload for m in inbox.drain()] == [b"2", b"3", b"4"]
    assert counters.get("link.messages_dropped") == 2
    assert inbox.receive(timeout=0.01) is None
    inbox.close()


def test_a_slow_subscriber_costs_at_most_the_limit() -> None:
    counters = Counters()
    inbox = Inbox("t", counters, structlog.get_logger(), limit=3)
    peer = Identity.generate().node_id
    entered, release = threading.Event(), threading.Event()
    got: list[bytes] = []

    def slow(_: NodeId, payload: bytes) -> None:
        got.append(payload)
        entered.set()
        assert release.wait(5), "the test never released the subscriber"

    inbox.subscribe(slow)
    inbox.deliver(peer, b"0")
    assert entered.wait(5), "the first message was never delivered"
    for i in range(1, 10):
        inbox.deliver(peer, b"%d" % i)
    release.set()
    wait_until(lambda: len(got) == 4, 5, "the queued messages delivered")
    assert got == [b"0", b"7", b"8", b"9"]
    assert counters.get("link.messages_dropped") == 6
    inbox.close()


# -- the outbox: sends waiting for the link ------------------------------------------------------


class Timers:
    """call_later for the outbox, fired by hand."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, Callable[..., Any], tuple[Any, ...], Any]] = []

    def __call__(self, delay: float, fn: Callable[..., Any], *args: Any) -> Any:
        timer = _Timer()
        self.pending.append((delay, fn, args, timer))
        return timer

    def fire_all(self) -> None:
        for _, fn, args, timer in list(self.pending):
            if not timer.cancelled():
                fn(*args)


class _Timer:
    def __init__(self) -> None:
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True

    def cancelled(self) -> bool:
        return self._cancelled


def future() -> concurrent.futures.Future[None]:
    f: concurrent.futures.Future[None] = concurrent.futures.Future()
    f.set_running_or_notify_cancel()
    return f


def test_the_outbox_sends_in_order_once_the_link_is_up_and_fails_what_waited_too_long() -> None:
    timers, wire = Timers(), []
    outbox = Outbox("peer", timers, limit=3)
    early, late, full, extra = future(), future(), future(), future()
    outbox.send(b"early", early, 0.0, None)  # the link is down: it waits
    outbox.send(b"late", late, 0.0, None)
    outbox.send(b"third", full, 0.0, None)
    outbox.send(b"too many", extra, 0.0, None)
    assert isinstance(extra.exception(0), PeerUnreachable), "a full outbox refuses at once"
    timers.pending[0][3].cancel()  # "early" will still be waiting when the link comes up
    timers.pending[2][3].cancel()
    timers.fire_all()  # "late" reached its deadline
    assert isinstance(late.exception(0), PeerUnreachable)
    outbox.flush(lambda payload: wire.append(payload) or True)
    assert wire == [b"early", b"third"], "in order, and the expired one never sent"
    assert early.result(0) is None and len(outbox) == 0


def test_the_outbox_waits_again_when_the_connection_dies_under_it() -> None:
    timers = Timers()
    outbox = Outbox("peer", timers)
    first, second = future(), future()
    outbox.send(b"1", first, 0.0, lambda payload: False)  # up, but the connection just died
    outbox.send(b"2", second, 0.0, lambda payload: True)  # must not overtake "1"
    assert not first.done() and not second.done() and len(outbox) == 2
    outbox.flush(lambda payload: True)
    assert first.result(0) is None and second.result(0) is None


def test_the_outbox_refuses_what_cannot_be_sealed_and_fails_all_when_the_worker_ends() -> None:
    outbox = Outbox("peer", Timers())
    bad, waiting = future(), future()

    def too_big(payload: bytes) -> bool:
        raise LocalProtocolError(ErrorCode.FRAME_TOO_LARGE, "too big")

    outbox.send(b"x", bad, 0.0, too_big)
    assert isinstance(bad.exception(0), LocalProtocolError)
    outbox.send(b"y", waiting, 0.0, None)
    outbox.fail_all(PeerUnreachable("stopped"))
    assert isinstance(waiting.exception(0), PeerUnreachable)


# -- the discovery actor, with a stand-in for mDNS -------------------------------------------------


class FakeDiscovery:
    """Records what the actor asks of actors/discovery/mdns.py's Discovery."""

    instances: ClassVar[list[FakeDiscovery]] = []

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.watchers: list[Callable[[NodeId, list[str]], None]] = []
        FakeDiscovery.instances.append(self)

    async def start(self, node_id: NodeId, port: int, addresses: list[str]) -> None:
        self.calls.append(("start", port, list(addresses)))

    async def stop(self) -> None:
        self.calls.append(("stop",))

    def watch(self, callback: Callable[[NodeId, list[str]], None]) -> Callable[[], None]:
        self.watchers.append(callback)
        return lambda: None

    async def set_nameplates(self, nameplates: frozenset[int]) -> None:
        self.calls.append(("nameplates", sorted(nameplates)))

    async def update_addresses(self, addresses: list[str], port: int | None = None) -> None:
        self.calls.append(("addresses", list(addresses)))


class FakeLinks:
    def __init__(self) -> None:
        self.hints: list[tuple[NodeId, list[str]]] = []

    def hint(self, peer: NodeId, endpoints: list[str]) -> None:
        self.hints.append((peer, endpoints))


@pytest.fixture
def loop_thread() -> Iterator[EventLoopThread]:
    with EventLoopThread("test-discovery") as loop:
        yield loop


def test_the_discovery_actor_advertises_open_nameplates_and_turns_announcements_into_hints(
    tmp_path: Path, loop_thread: EventLoopThread
) -> None:
    # A documentation address (RFC 5737): never contacted, the discovery here is fake.
    settings = load_settings(node={"listen_host": "192.0.2.7", "listen_port": 0}, discovery={"mdns": True})
    ctx = NodeContext(
        identity=Identity.generate(),
        settings=settings,
        home=tmp_path,
        counters=Counters(),
        loop_thread=loop_thread,
    )
    ctx.bound.set_result(("192.0.2.7", 47470))
    links = FakeLinks()
    ctx.links = links
    FakeDiscovery.instances.clear()
    ref = DiscoveryActor.start_on(loop_thread, ctx, FakeDiscovery)
    try:
        wait_until(lambda: ctx.discovery is not None, 5, "discovery started")
        fake = FakeDiscovery.instances[0]
        assert fake.calls[0] == ("start", 47470, ["192.0.2.7"]), "only the listen address is advertised"

        async def open_code() -> None:
            ctx.offers[42] = Offer(42)
            ctx.offers_changed()

        loop_thread.submit(open_code()).result(5)
        wait_until(lambda: ("nameplates", [42]) in fake.calls, 5, "the open nameplate advertised")
        peer = Identity.generate().node_id

        async def announce() -> None:
            fake.watchers[0](peer, ["10.0.0.7:47470"])

        loop_thread.submit(announce()).result(5)
        assert links.hints == [(peer, ["10.0.0.7:47470"])]
    finally:
        ref.stop(timeout=5)

    async def goodbyes() -> None:
        await asyncio.gather(*ctx.closing)

    loop_thread.submit(goodbyes()).result(5)
    assert fake.calls[-1] == ("stop",) and ctx.discovery is None


def test_discovery_off_leaves_nothing_running(tmp_path: Path, loop_thread: EventLoopThread) -> None:
    settings = load_settings(discovery={"mdns": False})
    ctx = NodeContext(
        identity=Identity.generate(),
        settings=settings,
        home=tmp_path,
        counters=Counters(),
        loop_thread=loop_thread,
    )
    FakeDiscovery.instances.clear()
    ref = DiscoveryActor.start_on(loop_thread, ctx, FakeDiscovery)
    ref.stop(timeout=5)
    assert FakeDiscovery.instances == [] and ctx.discovery is None and ctx.closing == []


def test_a_and_aaaa_records_carry_every_address_but_loopback() -> None:
    # Link-local too, without our zone: the receiver knows the interface it heard them on.
    assert advertised_ips(
        ["127.0.0.1:1", "10.0.0.2:1", "[::1]:1", "[fe80::1%eth0]:1", "[2001:db8::1]:1", "[::ffff:10.0.0.3]:1"]
    ) == ["10.0.0.2", "fe80::1", "2001:db8::1", "10.0.0.3"]


# -- the control protocol ------------------------------------------------------------------------------


def test_control_requests_for_links_are_validated_strictly() -> None:
    node_id = Identity.generate().node_id.text
    ok = decode_request(
        f'{{"id": 1, "op": "send", "node_id": "{node_id}", "payload": "aGk=", "base64": true}}'
    )
    assert ok["base64"] is True
    for line, problem in [
        ('{"op": "send", "payload": "x"}', "needs 'node_id'"),
        (f'{{"op": "send", "node_id": "{node_id}", "payload": 3}}', "wrong type"),
        (f'{{"op": "send", "node_id": "{node_id}", "payload": "x", "base64": "yes"}}', "wrong type"),
        (f'{{"op": "unpair", "node_id": "{node_id}", "force": true}}', "does not take force"),
        ('{"op": "messages", "timeout": -1}', "between 0 and"),
        ('{"op": "links", "peer": "x"}', "does not take peer"),
    ]:
        with pytest.raises(RequestError, match=problem):
            decode_request(line)


def test_a_node_bound_to_loopback_never_starts_mdns(tmp_path: Path, loop_thread: EventLoopThread) -> None:
    settings = load_settings(node={"listen_host": "127.0.0.1", "listen_port": 0}, discovery={"mdns": True})
    ctx = NodeContext(
        identity=Identity.generate(),
        settings=settings,
        home=tmp_path,
        counters=Counters(),
        loop_thread=loop_thread,
    )
    ctx.bound.set_result(("127.0.0.1", 47470))
    FakeDiscovery.instances.clear()
    with capture_logs() as logs:
        ref = DiscoveryActor.start_on(loop_thread, ctx, FakeDiscovery)
        ref.stop(timeout=5)
    assert FakeDiscovery.instances == [] and ctx.discovery is None
    assert any(e["event"] == "discovery.disabled" and "loopback" in e["reason"] for e in logs)


def test_an_accepted_connection_is_remembered_at_the_port_the_peer_listens_on() -> None:
    from quicpair.protocol.addresses import dialable_observed

    # The source port of an accepted connection is the dialer's ephemeral socket.
    assert dialable_observed("10.231.0.9:53117", ("10.231.0.5:47470",)) == "10.231.0.9:47470"
    assert dialable_observed("[fd00::9]:53117", ("[fd00::5]:4433",)) == "[fd00::9]:4433"
    assert dialable_observed("10.231.0.9:53117", ()) is None
