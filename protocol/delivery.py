"""Acknowledged, ordered, exactly-once delivery of application payloads over a link: sans-I/O.

A link connection is reliable and ordered, but connections die and nodes restart; QUIC
alone cannot say whether the peer's *node* took a payload. Here each direction of a pairing
numbers its payloads (``LinkAppData.seq``) and the receiver acknowledges them cumulatively
(``LinkAck.upto``) once it has durably recorded how far it got (docs/PROTOCOL.md §11.3).

**Sequence numbers.** A sender's sequence numbers only grow and are never reused, across
connections and across restarts of the sender: they are ``epoch << 32 | n``, where the epoch
is a counter the node raises durably each time it starts (so a restarted node never repeats a
number an earlier run may have used, even one still in flight on a dying connection) and
``n`` counts up within a run. Gaps are allowed (a payload whose sender gave up on it leaves
one); order is the order of the numbers.

**Sender** (:class:`Outbound`): payloads wait in sequence order; at most ``window``
payloads (and ``window_bytes``) are in flight, unacknowledged, on the current connection, so
throughput is not one round trip per payload and memory is bounded. When the connection is
lost, everything in flight goes back to waiting, in order, and is sent again on the next
connection, before anything newer; an acknowledgement settles every payload up to its number.
A payload whose deadline passes is given up: removed, never sent later, and reported as
never transmitted or as transmitted-but-unacknowledged (it may have arrived).

**Receiver** (:class:`Inbound`): a payload is taken when its number is above the high-water
mark (the highest number taken), else it is a duplicate (a retransmission whose ack was
lost) and only re-acknowledged. Taken payloads form a batch; the actor records the batch's
mark durably (one write for the whole batch), then delivers the batch to the application and
acknowledges the mark. A payload is therefore delivered at most once even across a crash of
the receiving node, and acknowledged only once it can no longer be delivered twice.

Invariant that makes cumulative acks and gaps safe: on one connection a sender transmits
strictly increasing numbers, and on a new connection it starts with the lowest payload still
unacknowledged. So when the receiver takes ``s`` on a connection, every live payload below
``s`` was transmitted before it on that same connection, and the ordered stream delivered it
first (or it was taken earlier): a cumulative ack never covers a live payload the receiver
did not take.
"""

from __future__ import annotations

import collections
import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "EPOCH_BITS",
    "MAX_SEQ",
    "Inbound",
    "Outbound",
    "Outgoing",
    "QueueFull",
    "first_seq_of_epoch",
]

#: Sequence numbers are ``epoch << EPOCH_BITS | n``: 2^32 payloads per peer per run of a node.
EPOCH_BITS = 32
#: Delivery numbers stay below 2^63 (the wire allows uint64): every signed 64-bit store, as
#: SQLite's INTEGER, can hold a receive mark (docs/PROTOCOL.md §11.3).
MAX_SEQ = 2**63 - 1


def first_seq_of_epoch(epoch: int) -> int:
    """The first sequence number a node uses in the run whose epoch is ``epoch`` (>= 1)."""
    if not 1 <= epoch < 2 ** (63 - EPOCH_BITS):
        raise ValueError(f"epoch {epoch} out of range")
    return epoch << EPOCH_BITS


class QueueFull(Exception):
    """The sender already holds its limit of payloads waiting: this one was refused."""


@dataclass(slots=True, eq=False)
class Outgoing:
    """One payload on its way: waiting, or in flight on the current connection."""

    #: Its sequence number (``LinkAppData.seq``).
    seq: int
    #: The payload.
    payload: bytes
    #: When the sender gives up on it (the caller's clock); None: never (a durable, queued send).
    deadline: float | None
    #: The owner's handle for it (a future, a durable row...); opaque here.
    token: Any = field(default=None, repr=False)
    #: It went on the wire at least once (so, given up, it may have arrived).
    transmitted: bool = False
    #: It is on the current connection and not yet acknowledged.
    in_flight: bool = False
    #: Still held by its Outbound (not acknowledged, expired or removed).
    held: bool = field(default=True, repr=False)


class Outbound:
    """The sending half of one pairing direction; see the module docstring.

    Numbers come from the caller (a node numbers all its sends from one counter, so a
    restarted link worker never repeats one) and must grow with each :meth:`submit`;
    ``window``/``window_bytes`` bound what is in flight; ``limit``/``limit_bytes`` bound
    what waits (beyond them :meth:`submit` raises QueueFull). A payload larger than
    ``window_bytes`` still goes, alone.
    """

    def __init__(self, *, window: int, window_bytes: int, limit: int, limit_bytes: int) -> None:
        if window < 1 or window_bytes < 1 or limit < 1 or limit_bytes < 1:
            raise ValueError("the window and the limits must be positive")
        self._window, self._window_bytes = window, window_bytes
        self._limit, self._limit_bytes = limit, limit_bytes
        self._queue: collections.deque[Outgoing] = collections.deque()  # unacknowledged, by seq
        # (deadline, seq, item) of every held payload with a deadline, and of some no longer
        # held (skipped when they come to the top): next_deadline without a scan of the queue.
        self._deadlines: list[tuple[float, int, Outgoing]] = []
        self._in_flight = 0  # the first _in_flight entries of _queue are in flight
        self._flight_bytes = 0
        self._queued_bytes = 0
        self._last_seq = -1

    def __len__(self) -> int:
        return len(self._queue)

    def __iter__(self) -> Iterator[Outgoing]:
        return iter(list(self._queue))

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return len(self._queue) - self._in_flight

    @property
    def waiting_bytes(self) -> int:
        return self._queued_bytes - self._flight_bytes

    def submit(self, payload: bytes, *, seq: int, deadline: float | None, token: Any = None) -> Outgoing:
        """Queue ``payload``, numbered ``seq``, behind everything unacknowledged; returns it.

        ``seq`` must be above every number submitted before (ValueError otherwise). Raises
        QueueFull when the waiting limit is reached; then nothing changed.
        """
        if not self._last_seq < seq <= MAX_SEQ:
            raise ValueError(f"seq {seq} is out of order (the last one was {self._last_seq})")
        waiting, waiting_bytes = self.waiting, self.waiting_bytes
        if waiting >= self._limit or (waiting and waiting_bytes + len(payload) > self._limit_bytes):
            raise QueueFull(f"{waiting} payloads ({waiting_bytes} bytes) already wait")
        self._last_seq = seq
        item = Outgoing(seq, payload, deadline, token)
        self._queue.append(item)
        self._queued_bytes += len(payload)
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, seq, item))
        return item

    def take(self) -> list[Outgoing]:
        """What to transmit now on the open connection, in order: waiting payloads the window admits."""
        out = []
        while self._in_flight < len(self._queue) and self._in_flight < self._window:
            item = self._queue[self._in_flight]
            if self._in_flight and self._flight_bytes + len(item.payload) > self._window_bytes:
                break
            item.in_flight = item.transmitted = True
            self._in_flight += 1
            self._flight_bytes += len(item.payload)
            out.append(item)
        return out

    def ack(self, upto: int) -> list[Outgoing]:
        """The peer acknowledged every number up to ``upto``: those payloads, now settled.

        Only payloads that were transmitted: an acknowledgement that covers a number never
        sent (a peer's bug) cannot settle a payload the peer never saw.
        """
        done = []
        while self._queue and self._queue[0].seq <= upto and self._queue[0].transmitted:
            done.append(self._remove_front())
        return done

    def connection_lost(self) -> None:
        """The connection is gone: what was in flight waits again, first in line, in order."""
        for item in list(self._queue)[: self._in_flight]:
            item.in_flight = False
        self._in_flight = 0
        self._flight_bytes = 0

    def remove(self, item: Outgoing) -> bool:
        """Forget one payload (its durable queueing failed); False if it is no longer held."""
        if item not in self._queue:
            return False
        self._remove(item)
        return True

    def expire(self, now: float) -> list[Outgoing]:
        """Give up on every payload whose deadline is at or before ``now``: removed, returned."""
        gone = [item for item in self._queue if item.deadline is not None and item.deadline <= now]
        for item in gone:
            self._remove(item)
        return gone

    def next_deadline(self) -> float | None:
        """The earliest deadline of a payload still held, or None."""
        deadlines = self._deadlines
        while deadlines and not deadlines[0][2].held:
            heapq.heappop(deadlines)
        return deadlines[0][0] if deadlines else None

    def drop_all(self) -> list[Outgoing]:
        """Remove and return everything (the link ends for good: unpaired, stopping)."""
        gone = list(self._queue)
        for item in gone:
            item.held = False
        self._queue.clear()
        self._deadlines.clear()
        self._in_flight = self._flight_bytes = self._queued_bytes = 0
        return gone

    def _remove_front(self) -> Outgoing:
        item = self._queue.popleft()
        self._forget(item)
        return item

    def _remove(self, item: Outgoing) -> None:
        self._queue.remove(item)
        self._forget(item)

    def _forget(self, item: Outgoing) -> None:
        item.held = False
        self._queued_bytes -= len(item.payload)
        if item.in_flight:
            item.in_flight = False
            self._in_flight -= 1
            self._flight_bytes -= len(item.payload)


class Inbound:
    """The receiving half of one pairing direction; see the module docstring.

    ``mark`` is the durable high-water mark (the highest number ever taken, as recorded).
    """

    def __init__(self, mark: int = 0) -> None:
        if not 0 <= mark <= MAX_SEQ:
            raise ValueError(f"mark {mark} out of range")
        self._durable = mark
        self._taken = mark  # highest number taken, durable or not
        self._batch: list[tuple[int, bytes]] = []  # taken, waiting for the next write
        self._writing: list[tuple[int, bytes]] | None = None  # taken, being written
        self._writing_mark = mark

    @property
    def mark(self) -> int:
        """The durable high-water mark: what an acknowledgement may say."""
        return self._durable

    @property
    def writing(self) -> bool:
        return self._writing is not None

    @property
    def batch(self) -> list[tuple[int, bytes]]:
        """The payloads of the write in flight (what :meth:`begin_write` chose), in order."""
        return list(self._writing or ())

    @property
    def unwritten(self) -> int:
        """Payloads taken, waiting for the next write (not counting the one in flight)."""
        return len(self._batch)

    def receive(self, seq: int, payload: bytes) -> bool:
        """Take one payload; False when it is a duplicate (already taken: only re-acknowledge)."""
        if seq <= self._taken:
            return False
        self._taken = seq
        self._batch.append((seq, payload))
        return True

    def begin_write(self, limit: int | None = None) -> int | None:
        """The mark to record durably now, or None (nothing new, or a write is in flight).

        ``limit`` caps the batch (what the application can take now); the rest waits.
        """
        if self._writing is not None or not self._batch or (limit is not None and limit < 1):
            return None
        cut = len(self._batch) if limit is None else limit
        self._writing, self._batch = self._batch[:cut], self._batch[cut:]
        self._writing_mark = self._writing[-1][0]
        return self._writing_mark

    def write_done(self) -> list[tuple[int, bytes]]:
        """The mark of :meth:`begin_write` is durable: the batch to deliver, in order."""
        if self._writing is None:
            raise RuntimeError("no write in flight")
        batch, self._writing = self._writing, None
        self._durable = self._writing_mark
        return batch

    def write_failed(self) -> None:
        """The durable write failed: forget the batch unacknowledged (the sender sends it again)."""
        if self._writing is None:
            raise RuntimeError("no write in flight")
        self._writing = None
        self._batch = []
        self._taken = self._durable
