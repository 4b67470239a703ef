"""Where application messages from paired peers end up: ``Node.subscribe`` and ``Node.receive``.

Link workers run on the node's event loop and hand every payload they took
(protocol/delivery.py: each delivery number once, in order) to the node's one
:class:`Inbox` (``deliver`` never blocks). From there a message goes one of two
ways:

* **to the subscribers**, when at least one is registered
  (``Node.subscribe(callback)``): each callback is called with
  ``(peer: NodeId, payload: bytes)`` on the node's *delivery thread*, one
  message at a time, in the order the messages arrived (per peer that is the
  order the peer sent them: one QUIC stream per link). Never on the event
  loop: a slow or blocking callback (one that calls ``Node.send``, say) must
  not stall the node's network I/O. An exception in a callback is logged
  (``link.subscriber_failed``) and the next callback still runs.
* **to the receive queue** otherwise, for ``Node.receive(timeout)`` and the
  control protocol's ``messages`` op.

Nothing is ever dropped here: a message in the inbox has been acknowledged to
its sender, and it is also in the registry's inbox until the application takes
it: ``on_take`` (the node's) removes it there *before* it is handed over, so a
message reaches the application at most once, and one the application never
took is offered again after a restart. (For subscribers, the messages waiting
together, at most :data:`HANDOVER_BATCH`, leave the registry in one
transaction before their callbacks run: a crash in between loses those to the
application, as it loses the one message whose callback it interrupts.)

The inbox holds at most :data:`INBOX_LIMIT` messages and :data:`INBOX_LIMIT_BYTES`
bytes of payload (queued, or waiting for a slow subscriber); a link worker asks
:meth:`Inbox.room` before it takes more, and when there is none it stops
acknowledging, so the peers' send windows fill and their senders wait
(back-pressure) until the application reads; ``on_room`` tells the node when
space comes back.

The delivery thread starts with the first subscription and ends with
:meth:`Inbox.close` (``Node.stop``).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from quicpair.actors.kernel.counters import Counters
from quicpair.protocol.identity import NodeId
from quicpair.protocol.messages import MAX_APP_PAYLOAD

__all__ = ["HANDOVER_BATCH", "INBOX_LIMIT", "INBOX_LIMIT_BYTES", "Inbox", "ReceivedMessage", "Subscriber"]

#: Messages the inbox holds for an application that does not read (then its peers wait), unless
#: `[link] inbox_limit` says otherwise (the node passes it).
INBOX_LIMIT = 4096
#: And bytes of payload (`[link] inbox_limit_bytes`): whichever bound is reached first holds the
#: peers back. The inbox never holds more than this plus one message (MAX_APP_PAYLOAD).
INBOX_LIMIT_BYTES = 64 << 20

#: Messages waiting for the subscribers leave the registry together, at most this many: one
#: registry transaction for them (it waits behind the fsync of the link's receive write, so
#: one per message held a busy receiver to ~1 message per fsync). A crash of the node
#: between that transaction and the callbacks loses these to the application (at most once).
HANDOVER_BATCH = 64

#: ``callback(peer, payload)``, called on the node's delivery thread.
Subscriber = Callable[[NodeId, bytes], None]
#: Called (from the thread that took messages) when a full inbox has room again.
OnRoom = Callable[[], None]
#: Called (on the taking thread) with the messages about to leave the inbox, before they do.
OnTake = Callable[[list["ReceivedMessage"]], None]


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """One application message from a paired peer."""

    #: The peer that sent it (proven by the link: TLS identity and the pairing secret).
    peer: NodeId
    #: The payload, exactly as the peer's application passed it to ``Node.send``.
    payload: bytes
    #: Its delivery number from that peer: increasing, never delivered twice by this node;
    #: after a power loss (not a crash) of this machine an application that must never see
    #: a payload twice can drop numbers it already saw (docs/LINKS.md "Sends").
    seq: int = 0

    def __repr__(self) -> str:
        return f"ReceivedMessage(peer={self.peer.fingerprint}, seq={self.seq}, {len(self.payload)} bytes)"


class Inbox:
    """Thread-safe: ``deliver`` from the loop, ``receive``/``subscribe`` from any thread."""

    def __init__(
        self,
        name: str,
        counters: Counters,
        log: Any,
        *,
        limit: int = INBOX_LIMIT,
        limit_bytes: int = INBOX_LIMIT_BYTES,
        on_room: OnRoom | None = None,
        on_take: OnTake | None = None,
        on_give_back: OnTake | None = None,
    ) -> None:
        if limit < 1 or limit_bytes < 1:
            raise ValueError("the inbox limits must be at least 1")
        self._on_room = on_room
        self._on_take = on_take
        self._on_give_back = on_give_back
        self._full = False
        self._name = name
        self._counters = counters
        self._log = log
        self._limit = limit
        self._limit_bytes = limit_bytes
        #: Payload bytes held (queued, or waiting for the subscribers).
        self._bytes = 0
        self._cond = threading.Condition()
        self._queue: collections.deque[ReceivedMessage] = collections.deque()
        self._outbox: collections.deque[ReceivedMessage] = collections.deque()
        self._subscribers: list[Subscriber] = []
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- the loop's side ---------------------------------------------------------

    def room(self) -> int:
        """How many more messages the inbox takes now (0: full; ``on_room`` says when it is not).

        Counted as if each were as large as a payload can be, so the byte bound holds whatever
        the peers send; below the byte bound there is room for at least one.
        """
        with self._cond:
            room = self._limit - len(self._queue) - len(self._outbox)
            free_bytes = self._limit_bytes - self._bytes
            room = min(room, max(free_bytes // MAX_APP_PAYLOAD, 1)) if free_bytes > 0 else 0
            if room <= 0:
                self._full = True
            return max(room, 0)

    def deliver(self, peer: NodeId, payload: bytes, seq: int = 0) -> None:
        """Hand one message to the application; never blocks (the caller asked :meth:`room`)."""
        self.deliver_many(peer, [(seq, payload)])

    def deliver_many(self, peer: NodeId, payloads: list[tuple[int, bytes]]) -> None:
        """Hand ``(seq, payload)`` messages to the application, in order, with one wake-up."""
        messages = [ReceivedMessage(peer, payload, seq) for seq, payload in payloads]
        with self._cond:
            if self._closed or not messages:
                return
            (self._outbox if self._subscribers else self._queue).extend(messages)
            self._bytes += sum(len(message.payload) for message in messages)
            self._cond.notify_all()

    # -- the application's side ---------------------------------------------------

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(peer, payload)`` for every message from now on; returns an unsubscribe."""
        if not callable(callback):
            raise TypeError("subscribe() needs a callable taking (peer, payload)")
        with self._cond:
            if self._closed:
                raise RuntimeError("the node is stopped")
            self._subscribers.append(callback)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"{self._name}-deliver", daemon=False)
                self._thread.start()

        def unsubscribe() -> None:
            with self._cond:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def receive(self, timeout: float | None = None) -> ReceivedMessage | None:
        """The oldest queued message, waiting up to ``timeout`` seconds; None if none came."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._queue and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            message = self._queue.popleft() if self._queue else None
            if message is not None:
                self._bytes -= len(message.payload)
        if message is not None:
            self._taken([message])
        self._took()
        return message

    def drain(self, timeout: float = 0.0) -> list[ReceivedMessage]:
        """Every queued message; waits up to ``timeout`` seconds for the first if none is queued."""
        first = self.receive(timeout)
        if first is None:
            return []
        with self._cond:
            rest = list(self._queue)
            self._queue.clear()
            self._bytes -= sum(len(message.payload) for message in rest)
        self._taken(rest)
        self._took()
        return [first, *rest]

    def give_back(self, messages: list[ReceivedMessage]) -> None:
        """Messages :meth:`receive` returned but that never reached the application (the control
        client that asked for them left): first in line again, in their order, and back in the
        registry's inbox (``on_give_back``), so the next reader gets them, after a restart too."""
        if not messages:
            return
        if self._on_give_back is not None:
            try:
                self._on_give_back(messages)
            except Exception as exc:  # the registry failed: they are still offered until a restart
                self._log.error("link.inbox_give_back_failed", messages=len(messages), error=repr(exc))
        with self._cond:
            if self._closed:
                return
            self._queue.extendleft(reversed(messages))
            self._bytes += sum(len(message.payload) for message in messages)
            self._cond.notify_all()

    def _taken(self, messages: list[ReceivedMessage]) -> None:
        """``messages`` leave the inbox now: out of the registry first (at most once)."""
        if messages and self._on_take is not None:
            try:
                self._on_take(messages)
            except Exception as exc:  # the registry failed: offered again after a restart
                self._log.error("link.inbox_take_failed", messages=len(messages), error=repr(exc))

    def _took(self) -> None:
        """Messages left the inbox: if it was full, say there is room again (once)."""
        with self._cond:
            was_full, self._full = self._full, False
        if was_full and self._on_room is not None:
            try:
                self._on_room()
            except Exception:  # a closed loop at shutdown: nobody needs the news
                self._log.debug("link.inbox_room_unheard")

    def close(self, timeout: float = 5.0) -> None:
        """Stop delivering; the delivery thread finishes the callback it is in and ends."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- the delivery thread -----------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._outbox and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                count = min(len(self._outbox), HANDOVER_BATCH)
                batch = [self._outbox.popleft() for _ in range(count)]
                self._bytes -= sum(len(message.payload) for message in batch)
                subscribers = list(self._subscribers)
            self._taken(batch)  # one registry transaction for the batch
            self._took()
            for message in batch:
                for callback in subscribers:
                    try:
                        callback(message.peer, message.payload)
                    except Exception:
                        self._log.exception("link.subscriber_failed", peer=message.peer.fingerprint)
