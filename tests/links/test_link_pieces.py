"""The pieces of the paired links, each on its own, without a network.

:func:`quicpair.actors.links.dial.race` (stored addresses first, staggered, discovery
last, the first answer wins), :class:`quicpair.actors.links.delivery.PeerDelivery` (sends
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
from quicpair.actors.links.delivery import PeerDelivery
from quicpair.actors.links.dial import SOURCE_MDNS, SOURCE_STORED, race
from quicpair.actors.links.inbox import Inbox
from quicpair.actors.links.messages import SendRequest
from quicpair.actors.registry.store import DeliveryState
from quicpair.config.settings import load_settings
from quicpair.protocol.errors import (
    ErrorCode,
    NotAcknowledged,
    NotTransmitted,
    PeerUnreachable,
    QuicpairError,
)
from quicpair.protocol.identity import Identity, NodeId
from quicpair.protocol.messages import MAX_APP_PAYLOAD
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


def test_race_refused_everywhere_ends_at_once_without_waiting_for_the_lookup() -> None:
    """A peer that stopped cleanly answers with ICMP port unreachable: the round ends there."""
    looked_up: list[str] = []

    async def dial_one(address: str) -> Any:
        raise PeerUnreachable(f"{address} refused the connection", refused=True)

    async def resolve() -> list[str]:
        looked_up.append("resolve")
        await asyncio.sleep(60)  # the 5 s mDNS lookup the round used to sit in
        return []

    async def scenario() -> None:
        with pytest.raises(PeerUnreachable) as refused:
            await asyncio.wait_for(
                race([("a", SOURCE_STORED), ("b", SOURCE_STORED)], dial_one, stagger=10.0, resolve=resolve), 5
            )
        assert refused.value.refused

    asyncio.run(scenario())
    assert looked_up == [], "the lookup is the caller's to run in the background"


# -- the inbox -----------------------------------------------------------------------------------------


def test_the_inbox_never_drops_a_message_it_says_when_full_and_when_room_comes_back() -> None:
    room_back: list[int] = []
    inbox = Inbox("t", Counters(), structlog.get_logger(), limit=3, on_room=lambda: room_back.append(1))
    peer = Identity.generate().node_id
    for i in range(3):
        assert inbox.room() == 3 - i
        inbox.deliver(peer, b"%d" % i, seq=i + 1)
    assert inbox.room() == 0 and room_back == []
    first = inbox.receive(timeout=0.01)
    assert first is not None and (first.payload, first.seq) == (b"0", 1)
    assert room_back == [1], "a full inbox that gives room back says so, once"
    assert [m.payload for m in inbox.drain()] == [b"1", b"2"]
    assert room_back == [1] and inbox.room() == 3
    assert inbox.receive(timeout=0.01) is None
    inbox.close()


def test_messages_given_back_are_the_first_the_next_reader_gets_and_go_back_to_the_registry() -> None:
    returned: list[list[int]] = []
    inbox = Inbox(
        "t", Counters(), structlog.get_logger(), on_give_back=lambda ms: returned.append([m.seq for m in ms])
    )
    peer = Identity.generate().node_id
    inbox.deliver_many(peer, [(1, b"a"), (2, b"b"), (3, b"c")])
    taken = [inbox.receive(timeout=0.01), inbox.receive(timeout=0.01)]
    assert [m.seq for m in taken if m is not None] == [1, 2]
    inbox.give_back([m for m in taken if m is not None])
    assert returned == [[1, 2]], "the registry hears of it once, with the messages in order"
    assert [m.seq for m in inbox.drain()] == [1, 2, 3]
    inbox.give_back([])
    assert returned == [[1, 2]], "nothing given back, nothing said"
    inbox.close()


def test_the_inbox_bounds_the_bytes_it_holds_counting_each_message_it_takes_at_the_largest_size() -> None:
    room_back: list[int] = []
    limit_bytes = 3 * MAX_APP_PAYLOAD + 10
    inbox = Inbox(
        "t",
        Counters(),
        structlog.get_logger(),
        limit=100,
        limit_bytes=limit_bytes,
        on_room=lambda: room_back.append(1),
    )
    peer = Identity.generate().node_id
    assert inbox.room() == 3, "three payloads of the largest size fit in the bytes"
    big = bytes(MAX_APP_PAYLOAD)
    inbox.deliver_many(peer, [(1, big), (2, big), (3, big)])
    assert inbox.room() == 1, "below the byte bound there is room for one more, whatever its size"
    inbox.deliver(peer, big, seq=4)
    assert inbox.room() == 0, "over the byte bound: full (by at most one message)"
    taken = inbox.drain()
    assert [m.seq for m in taken] == [1, 2, 3, 4] and room_back == [1]
    assert inbox.room() == 3
    inbox.deliver_many(peer, [(5, b"x" * 100)])
    assert inbox.room() == 2, "room counts each new message at the largest size"
    inbox.close()


def test_a_slow_subscriber_holds_at_most_the_limit_and_gets_everything_in_order() -> None:
    room_back: list[int] = []
    inbox = Inbox("t", Counters(), structlog.get_logger(), limit=3, on_room=lambda: room_back.append(1))
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
    sent = 1
    while inbox.room():  # what a link worker does: no more than there is room for
        inbox.deliver(peer, b"%d" % sent)
        sent += 1
    assert sent == 4, "three wait for the slow subscriber"
    release.set()
    wait_until(lambda: len(got) == 4, 5, "the queued messages delivered")
    assert got == [b"0", b"1", b"2", b"3"]
    wait_until(lambda: room_back == [1], 5, "room announced once")
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


def future() -> concurrent.futures.Future[int]:
    f: concurrent.futures.Future[int] = concurrent.futures.Future()
    f.set_running_or_notify_cancel()
    return f


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """The worker's side of a PeerDelivery: registry writes asked for, and the application's inbox."""

    def __init__(self) -> None:
        self.writes: list[tuple[Any, str, tuple[Any, ...]]] = []
        self.inbox = Inbox("test", Counters(), structlog.get_logger(), limit=2)

    def write(self, what: Any, method: str, *args: Any) -> None:
        self.writes.append((what, method, args))


PEER = Identity.from_seed(bytes([9]) * 32).node_id


def delivery(
    rec: Recorder, timers: Timers, clock: Clock, **limits: int
) -> tuple[PeerDelivery, Callable[[], int]]:
    numbers = iter(range(1 << 32, 1 << 33))
    settings = load_settings(link={"send_window": 2, "outbox_limit": 3, **limits}).link
    d = PeerDelivery(
        peer=PEER, settings=settings, next_seq=lambda: next(numbers), clock=clock, wall_clock=clock,
        call_later=timers, write=rec.write, inbox=rec.inbox, log=structlog.get_logger(),
    )  # fmt: skip
    d.resume(DeliveryState(receive_mark=0, queued=()), bytes(32))
    return d, lambda: next(numbers)


def request(payload: bytes, deadline: float = 110.0, queue: bool = False) -> SendRequest:
    return SendRequest(PEER, payload, deadline, future(), queue)


def test_sends_wait_in_order_a_full_queue_refuses_and_an_ack_returns_each_number() -> None:
    rec, timers, clock, wire = Recorder(), Timers(), Clock(), []
    d, _ = delivery(rec, timers, clock)
    sends = [request(b"%d" % i) for i in range(6)]
    for r in sends:
        d.submit(r)  # the link is down: they wait (window 2 in flight + 3 waiting at most)
    assert isinstance(sends[3].future.exception(0), NotTransmitted), "a full queue refuses at once"
    d.transmit(lambda seq, payload: wire.append((seq, payload)) or True)
    assert [p for _, p in wire] == [b"0", b"1"], "the window: two in flight"
    d.acked(wire[0][0])
    assert sends[0].future.result(0) == wire[0][0] and not sends[1].future.done()
    d.transmit(lambda seq, payload: wire.append((seq, payload)) or True)
    assert [p for _, p in wire] == [b"0", b"1", b"2"], "the ack opened the window; in order"


def test_deadlines_say_whether_the_message_left_and_a_dead_connection_sends_it_again() -> None:
    rec, timers, clock, wire = Recorder(), Timers(), Clock(), []
    d, _ = delivery(rec, timers, clock, send_window=1)
    left, waited = request(b"left"), request(b"waited")
    d.submit(left)
    d.submit(waited)
    assert d.transmit(lambda seq, payload: False) == 0  # the connection died under us
    d.transmit(lambda seq, payload: wire.append(payload) or True)
    assert wire == [b"left"], "sent again, first, on the next connection; nothing overtook it"
    clock.now = 111.0
    timers.fire_all()
    assert isinstance(left.future.exception(0), NotAcknowledged), "it left: it may have arrived"
    assert isinstance(waited.future.exception(0), NotTransmitted), "it never left"
    assert "send window" in str(waited.future.exception(0)), "it waited for the window, not the link"
    assert d.in_flight == d.waiting == 0


def test_a_send_that_never_left_says_whether_the_link_or_the_window_kept_it() -> None:
    rec, timers, clock = Recorder(), Timers(), Clock()
    d, _ = delivery(rec, timers, clock)
    down = request(b"no link")
    d.submit(down)  # nothing transmits it: no connection
    clock.now = 111.0
    timers.fire_all()
    error = down.future.exception(0)
    assert isinstance(error, NotTransmitted) and "did not come up in time" in str(error)


def test_a_durable_send_returns_once_queued_and_is_dequeued_once_acknowledged() -> None:
    rec, timers, clock, wire = Recorder(), Timers(), Clock(), []
    d, _ = delivery(rec, timers, clock)
    durable, doomed = request(b"keep me", queue=True), request(b"no disk", queue=True)
    d.submit(durable)
    d.submit(doomed)
    [(what, method, args), (what2, _, _)] = rec.writes
    assert method == "enqueue" and args[0].payload == b"keep me" and not durable.future.done()
    d.written(what, None, None)
    assert durable.future.result(0) == what[1], "durable now: the caller may go"
    d.written(what2, None, OSError("disk full"))
    assert isinstance(doomed.future.exception(0), QuicpairError) and d.waiting == 1
    d.transmit(lambda seq, payload: wire.append((seq, payload)) or True)
    d.acked(wire[0][0])
    assert rec.writes[-1][1:] == ("dequeue", (PEER, wire[0][0]))
    clock.now = 10_000.0
    timers.fire_all()
    d.end("the node stopped")  # nothing waits any more: nothing to fail


def test_received_payloads_are_recorded_then_delivered_once_and_a_full_inbox_holds_them() -> None:
    rec, timers, clock = Recorder(), Timers(), Clock()
    d, _ = delivery(rec, timers, clock)
    assert d.take(5, b"five") and d.take(7, b"seven") and d.take(9, b"nine")
    assert not d.take(7, b"seven again"), "a duplicate is only re-acknowledged"
    d.record()
    (what, method, args) = rec.writes[-1]
    assert (what, method) == ("mark", "take"), "payloads and mark in one durable write"
    assert args == (PEER, bytes(32), [(5, b"five"), (7, b"seven")], clock.now), "the inbox holds 2"
    assert d.mark_written(True) == 7
    assert [(m.seq, m.payload) for m in rec.inbox.drain()] == [(5, b"five"), (7, b"seven")]
    d.record()
    assert rec.writes[-1][2][2][-1][0] == 9
    assert d.mark_written(True) == 9 and d.mark == 9
    d.take(10, b"ten")
    d.take(11, b"eleven")
    d.take(12, b"twelve")
    d.record()  # the inbox holds 9 already: room for one
    assert rec.writes[-1][2][2][-1][0] == 10 and d.mark_written(True) == 10
    d.record()
    assert d.waiting_for_room and rec.writes[-1][2][2][-1][0] == 10, "no write while the inbox is full"
    assert [m.seq for m in rec.inbox.drain()] == [9, 10]
    d.record()  # the worker does this when the inbox says it has room
    assert rec.writes[-1][2][2][-1][0] == 12 and d.mark_written(True) == 12
    assert [m.payload for m in rec.inbox.drain()] == [b"eleven", b"twelve"]


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
