"""Where application messages from paired peers end up: ``Node.subscribe`` and ``Node.receive``.

Link workers run on the node's event loop and hand every opened
``LinkAppData`` payload to the node's one :class:`Inbox` (``deliver`` never
blocks). From there a message goes one of two ways:

* **to the subscribers**, when at least one is registered
  (``Node.subscribe(callback)``): each callback is called with
  ``(peer: NodeId, payload: bytes)`` on the node's *delivery thread*, one
  message at a time, in the order the messages arrived (per peer that is the
  order the peer sent them: one QUIC stream per link). Never on the event
  loop: a slow or blocking callback (one that calls ``Node.send``, say) must
  not stall the node's network I/O. An exception in a callback is logged
  (``link.subscriber_failed``) and the next callback still runs.
* **to the receive queue** otherwise, for ``Node.receive(timeout)`` and the
  control protocol's ``messages`` op. The queue holds at most
  :data:`INBOX_LIMIT` messages; beyond that the oldest is dropped, counted
  (``link.messages_dropped``) and logged (``link.inbox_overflow``), so a node
  whose application never reads cannot be driven out of memory by its peers.

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

__all__ = ["INBOX_LIMIT", "Inbox", "ReceivedMessage", "Subscriber"]

#: Messages the receive queue keeps for an application that does not read: 4096 x at
#: most 60 kB (MAX_APP_PAYLOAD) bounds it at ~240 MB in the worst case, ~0 normally.
INBOX_LIMIT = 4096

#: ``callback(peer, payload)``, called on the node's delivery thread.
Subscriber = Callable[[NodeId, bytes], None]


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """One application message from a paired peer."""

    #: The peer that sent it (proven by the link: TLS identity and the pairing secret).
    peer: NodeId
    #: The payload, exactly as the peer's application passed it to ``Node.send``.
    payload: bytes

    def __repr__(self) -> str:
        return f"ReceivedMessage(peer={self.peer.fingerprint}, {len(self.payload)} bytes)"


class Inbox:
    """Thread-safe: ``deliver`` from the loop, ``receive``/``subscribe`` from any thread."""

    def __init__(self, name: str, counters: Counters, log: Any, *, limit: int = INBOX_LIMIT) -> None:
        if limit < 1:
            raise ValueError("the inbox limit must be at least 1")
        self._name = name
        self._counters = counters
        self._log = log
        self._limit = limit
        self._cond = threading.Condition()
        self._queue: collections.deque[ReceivedMessage] = collections.deque()
        self._outbox: collections.deque[ReceivedMessage] = collections.deque()
        self._subscribers: list[Subscriber] = []
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- the loop's side ---------------------------------------------------------

    def deliver(self, peer: NodeId, payload: bytes) -> None:
        """Queue one message for the application; never blocks."""
        message = ReceivedMessage(peer, payload)
        with self._cond:
            if self._closed:
                return
            # The same bound whether a subscriber is slow or nobody receives: a
            # peer sending faster than the application reads costs memory up to
            # the limit, then the oldest messages (counted and logged).
            target = self._outbox if self._subscribers else self._queue
            if len(target) >= self._limit:
                dropped = target.popleft()
                self._counters.incr("link.messages_dropped")
                self._log.warning("link.inbox_overflow", peer=dropped.peer.fingerprint, limit=self._limit)
            target.append(message)
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
            return self._queue.popleft() if self._queue else None

    def drain(self, timeout: float = 0.0) -> list[ReceivedMessage]:
        """Every queued message; waits up to ``timeout`` seconds for the first if none is queued."""
        first = self.receive(timeout)
        if first is None:
            return []
        with self._cond:
            rest = list(self._queue)
            self._queue.clear()
        return [first, *rest]

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
                message = self._outbox.popleft()
                subscribers = list(self._subscribers)
            for callback in subscribers:
                try:
                    callback(message.peer, message.payload)
                except Exception:
                    self._log.exception("link.subscriber_failed", peer=message.peer.fingerprint)
