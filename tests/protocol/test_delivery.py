"""Acknowledged delivery, sans-I/O: a sender and a receiver over connections that die, with restarts.

The property test drives :class:`Outbound` and :class:`Inbound` through random histories:
sends, transmissions on the current connection (which may die after any frame, losing what is
in flight), acknowledgements (which may be lost), deadlines, the durable write of the
receiver's mark, and restarts of the sender (a new epoch; only durable, queued sends survive)
and of the receiver (only its durable mark survives). Whatever happens: the application sees
each payload at most once and in send order, nothing acknowledged was left undelivered, and
after a calm final connection everything the sender did not give up on is delivered.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicpair.protocol.delivery import (
    EPOCH_BITS,
    Inbound,
    Outbound,
    Outgoing,
    QueueFull,
    first_seq_of_epoch,
)


def outbound(window: int = 4, limit: int = 100) -> Outbound:
    return Outbound(window=window, window_bytes=10_000, limit=limit, limit_bytes=10**6)


class Numbers:
    """A node's send counter: numbers of one run start at its epoch's first."""

    def __init__(self, epoch: int = 1) -> None:
        self.next = first_seq_of_epoch(epoch)

    def __call__(self) -> int:
        self.next += 1
        return self.next - 1


def submit_all(out: Outbound, count: int, number: Numbers | None = None) -> list[Outgoing]:
    number = number or Numbers()
    return [out.submit(bytes([i]), seq=number(), deadline=None) for i in range(count)]


# -- the sender on its own ---------------------------------------------------------------------


def test_the_window_bounds_what_is_in_flight_and_acks_open_it() -> None:
    out = outbound(window=2)
    items = submit_all(out, 5)
    assert [i.seq for i in items] == [first_seq_of_epoch(1) + n for n in range(5)]
    sent = out.take()
    assert sent == items[:2] and out.in_flight == 2 and out.waiting == 3
    assert out.take() == []  # the window is full
    assert out.ack(items[0].seq) == [items[0]]
    assert out.take() == [items[2]]


def test_a_lost_connection_sends_everything_unacknowledged_again_in_order() -> None:
    out = outbound(window=3)
    items = submit_all(out, 4)
    assert out.take() == items[:3]
    out.connection_lost()
    assert out.in_flight == 0 and all(i.transmitted and not i.in_flight for i in items[:3])
    assert out.take() == items[:3]
    assert out.ack(items[2].seq) == items[:3]
    assert out.take() == [items[3]]


def test_an_ack_for_payloads_no_longer_in_flight_still_settles_them() -> None:
    out = outbound()
    a, b = submit_all(out, 2)
    out.take()
    out.connection_lost()  # the ack was in flight when the connection died...
    assert out.ack(b.seq) == [a, b]  # ...and arrives on the next one
    assert len(out) == 0 and out.in_flight == 0


def test_an_ack_beyond_what_was_transmitted_settles_only_what_was() -> None:
    out = outbound(window=1)
    a, b = submit_all(out, 2)
    out.take()  # a is in flight; b waits behind the window
    assert out.ack(b.seq) == [a], "b was never sent: a peer cannot have taken it"
    assert list(out) == [b] and out.take() == [b]


def test_deadlines_give_up_and_say_whether_it_left() -> None:
    out = outbound(window=1)
    first = out.submit(b"first", seq=1, deadline=10.0)
    second = out.submit(b"second", seq=2, deadline=10.0)
    durable = out.submit(b"durable", seq=3, deadline=None)
    out.take()
    assert out.next_deadline() == 10.0
    gone = out.expire(10.0)
    assert gone == [first, second]
    assert first.transmitted and not second.transmitted
    assert list(out) == [durable] and out.in_flight == 0
    assert out.take() == [durable]


def test_the_waiting_limit_refuses_without_changing_anything() -> None:
    out = outbound(limit=2)
    out.submit(b"1", seq=1, deadline=None)
    out.submit(b"2", seq=2, deadline=None)
    with pytest.raises(QueueFull):
        out.submit(b"3", seq=3, deadline=None)
    assert len(out) == 2
    out.take()  # in flight no longer counts as waiting
    out.submit(b"3", seq=3, deadline=None)  # the refused number was not used up


def test_restored_payloads_keep_their_numbers_and_come_first() -> None:
    out = outbound()
    old = first_seq_of_epoch(1) + 7
    restored = out.submit(b"queued in the last run", seq=old, deadline=None)
    fresh = out.submit(b"new", seq=Numbers(epoch=2)(), deadline=None)
    assert restored.seq == old < fresh.seq == first_seq_of_epoch(2)
    assert [i.payload for i in out.take()] == [b"queued in the last run", b"new"]
    with pytest.raises(ValueError, match="out of order"):
        out.submit(b"late", seq=old + 1, deadline=None)


def test_epochs_never_overlap() -> None:
    assert first_seq_of_epoch(2) - first_seq_of_epoch(1) == 2**EPOCH_BITS
    with pytest.raises(ValueError):
        first_seq_of_epoch(0)


# -- the receiver on its own -------------------------------------------------------------------


def test_the_receiver_takes_each_number_once_and_acks_only_what_is_durable() -> None:
    inb = Inbound(mark=5)
    assert not inb.receive(5, b"dup")  # already taken before the restart
    assert inb.receive(7, b"seven") and inb.receive(9, b"nine")  # gaps are fine
    assert not inb.receive(8, b"late")  # below what was taken: a duplicate
    assert inb.mark == 5  # nothing durable yet: nothing to acknowledge beyond 5
    assert inb.begin_write() == 9
    assert inb.receive(10, b"ten")
    assert inb.begin_write() is None  # one write at a time
    assert inb.write_done() == [(7, b"seven"), (9, b"nine")]
    assert inb.mark == 9
    assert inb.begin_write() == 10 and inb.write_done() == [(10, b"ten")]


def test_a_failed_write_delivers_nothing_and_retakes_on_retransmission() -> None:
    inb = Inbound(mark=0)
    inb.receive(1, b"a")
    inb.begin_write()
    inb.receive(2, b"b")
    inb.write_failed()
    assert inb.mark == 0 and inb.begin_write() is None
    assert inb.receive(1, b"a") and inb.receive(2, b"b")


# -- the whole: random histories -----------------------------------------------------------------


@dataclass
class World:
    epoch: int = 1
    out: Outbound = field(default_factory=outbound)
    number: Numbers = field(default_factory=Numbers)
    inb: Inbound = field(default_factory=Inbound)
    durable_mark: int = 0
    wire: list[tuple[str, int, bytes]] = field(default_factory=list)  # sender -> receiver, in order
    acks: list[int] = field(default_factory=list)  # receiver -> sender
    delivered: list[bytes] = field(default_factory=list)
    acked: set[bytes] = field(default_factory=set)
    given_up: set[bytes] = field(default_factory=set)
    lost_in_restart: set[bytes] = field(default_factory=set)
    submitted: list[bytes] = field(default_factory=list)
    durable_queue: dict[int, bytes] = field(default_factory=dict)
    counter: int = 0

    def submit(self, durable: bool) -> None:
        self.counter += 1
        payload = f"m{self.counter}".encode()
        try:
            item = self.out.submit(
                payload, seq=self.number(), deadline=None if durable else float(self.counter + 30)
            )
        except QueueFull:
            return
        self.submitted.append(payload)
        if durable:
            self.durable_queue[item.seq] = payload

    def transmit(self) -> None:
        self.wire += [("data", item.seq, item.payload) for item in self.out.take()]

    def arrive(self, n: int) -> None:
        for kind, seq, payload in self.wire[:n]:
            assert kind == "data"
            if not self.inb.receive(seq, payload):
                self.acks.append(self.inb.mark)
        self.wire = self.wire[n:]

    def write(self) -> None:
        mark = self.inb.begin_write()
        if mark is None:
            return
        self.durable_mark = mark
        batch = self.inb.write_done()
        self.delivered += [payload for _, payload in batch]
        self.acks.append(self.inb.mark)

    def ack_arrives(self, n: int) -> None:
        for upto in self.acks[:n]:
            for item in self.out.ack(upto):
                self.acked.add(item.payload)
                self.durable_queue.pop(item.seq, None)
        self.acks = self.acks[n:]

    def connection_dies(self) -> None:
        self.wire, self.acks = [], []
        self.out.connection_lost()
        if self.inb.writing:  # the write completes on its own; only the connection died
            self.write()

    def time_passes(self, now: float) -> None:
        self.given_up |= {item.payload for item in self.out.expire(now)}

    def sender_restarts(self) -> None:
        self.connection_dies()
        survivors = dict(self.durable_queue)
        self.lost_in_restart |= {i.payload for i in self.out if i.seq not in survivors}
        self.epoch += 1
        self.out, self.number = outbound(), Numbers(self.epoch)
        for seq in sorted(survivors):
            self.out.submit(survivors[seq], seq=seq, deadline=None)

    def receiver_restarts(self) -> None:
        self.connection_dies()
        self.inb = Inbound(mark=self.durable_mark)


ACTIONS = st.sampled_from(
    ["send", "send_durable", "transmit", "arrive", "write", "ack", "die", "time", "restart_s", "restart_r"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(ACTIONS, st.integers(0, 5)), max_size=120))
def test_random_histories_deliver_exactly_once_in_order(history: list[tuple[str, int]]) -> None:
    w = World()
    for action, n in history:
        if action == "send":
            w.submit(durable=False)
        elif action == "send_durable":
            w.submit(durable=True)
        elif action == "transmit":
            w.transmit()
        elif action == "arrive":
            w.arrive(n)
        elif action == "write":
            w.write()
        elif action == "ack":
            w.ack_arrives(n)
        elif action == "die":
            w.connection_dies()
        elif action == "time":
            w.time_passes(float(w.counter + n))
        elif action == "restart_s":
            w.sender_restarts()
        else:
            w.receiver_restarts()
        check(w)
    # A calm connection at the end: everything still held by the sender arrives.
    w.connection_dies()
    for _ in range(len(w.submitted) + 2):
        w.transmit()
        w.arrive(len(w.wire))
        w.write()
        w.ack_arrives(len(w.acks))
    check(w)
    assert len(w.out) == 0
    expected = [p for p in w.submitted if p not in w.given_up and p not in w.lost_in_restart]
    assert [p for p in w.delivered if p in set(expected)] == expected  # none missing, in order


def check(w: World) -> None:
    assert len(set(w.delivered)) == len(w.delivered), "a payload was delivered twice"
    order = {p: i for i, p in enumerate(w.submitted)}
    assert [order[p] for p in w.delivered] == sorted(order[p] for p in w.delivered), "out of order"
    assert w.acked <= set(w.delivered), "acknowledged but never delivered"


def test_a_write_can_take_part_of_the_batch_when_the_application_has_little_room() -> None:
    inb = Inbound()
    for seq in (1, 2, 3):
        inb.receive(seq, b"%d" % seq)
    assert inb.begin_write(0) is None and inb.unwritten == 3
    assert inb.begin_write(2) == 2 and inb.unwritten == 1
    assert inb.write_done() == [(1, b"1"), (2, b"2")]
    assert inb.mark == 2 and inb.begin_write() == 3


def test_a_payload_can_be_forgotten_when_its_queueing_failed() -> None:
    out = outbound()
    a, b = submit_all(out, 2)
    assert out.remove(a) and not out.remove(a)
    assert list(out) == [b] and out.take() == [b]
