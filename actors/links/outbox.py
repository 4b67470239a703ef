"""Sends that wait for a peer's link: :class:`Outbox`, one per link worker.

``Node.send`` while the link is down must neither block the node nor lose
the message silently (docs/LINKS.md, "Sends"). A link worker therefore puts
such a send in its outbox, where it waits, in the order it was made, until:

* the link comes up: the worker flushes the outbox, oldest first, and each
  caller returns as its message is handed to the connection; or
* its deadline passes: the caller gets PeerUnreachable and the message is
  dropped from the outbox, so it is never sent later; or
* the worker ends (node stopping, unpaired, crashed): every caller gets the
  error the worker gives.

The outbox holds at most :data:`MAX_QUEUED` sends; one more fails at once
(PeerUnreachable) instead of growing without bound while a peer is away.
Every future is settled exactly once. Loop-confined, like its worker.
"""

from __future__ import annotations

import collections
import concurrent.futures
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from quicpair.actors.kernel.loopactor import ActorTimer
from quicpair.protocol.errors import PeerUnreachable, ProtocolError, QuicpairError

__all__ = ["MAX_QUEUED", "Outbox", "Transmit"]

#: Sends waiting for one peer's link. Each holds at most MAX_APP_PAYLOAD (60 kB), so
#: this bounds a worker's backlog at ~60 MB for an application that keeps sending.
MAX_QUEUED = 1024

#: ``transmit(payload)``: True when handed to the connection, False when the
#: connection died under us (try again on the next); raises ProtocolError when
#: this payload cannot be sent at all.
Transmit = Callable[[bytes], bool]
#: ``LoopActor.call_later``.
CallLater = Callable[..., ActorTimer]


@dataclass(slots=True, eq=False)
class _Waiting:
    payload: bytes
    future: concurrent.futures.Future[None]
    timer: ActorTimer | None = None


class Outbox:
    """The sends waiting for one peer's link; see the module docstring."""

    def __init__(self, peer: str, call_later: CallLater, *, limit: int = MAX_QUEUED) -> None:
        self._peer = peer
        self._call_later = call_later
        self._limit = limit
        self._queue: collections.deque[_Waiting] = collections.deque()

    def __len__(self) -> int:
        return len(self._queue)

    def send(
        self,
        payload: bytes,
        future: concurrent.futures.Future[None],
        deadline: float,
        transmit: Transmit | None,
    ) -> None:
        """Send now through ``transmit`` (None: the link is down) or wait until ``deadline``.

        ``deadline`` is on ``time.monotonic()``'s clock. Nothing overtakes a
        waiting send: with a backlog, this one waits behind it.
        """
        item = _Waiting(payload, future)
        if transmit is not None and not self._queue and self._try(item, transmit):
            return
        if len(self._queue) >= self._limit:
            future.set_exception(
                PeerUnreachable(f"the link to {self._peer} is down and {self._limit} sends wait")
            )
            return
        item.timer = self._call_later(max(deadline - time.monotonic(), 0.0), self._expire, item)
        self._queue.append(item)

    def flush(self, transmit: Transmit) -> None:
        """The link is up: send what waits, oldest first, until done or the connection fails."""
        while self._queue:
            item = self._queue[0]
            if not self._try(item, transmit):
                return
            self._queue.popleft()
            if item.timer is not None:
                item.timer.cancel()

    def fail_all(self, error: QuicpairError) -> None:
        """Settle every waiting send with ``error`` (the worker is ending, or unpaired)."""
        while self._queue:
            item = self._queue.popleft()
            if item.timer is not None:
                item.timer.cancel()
            if not item.future.done():
                item.future.set_exception(error)

    @staticmethod
    def _try(item: _Waiting, transmit: Transmit) -> bool:
        """True when ``item`` is settled (sent, or refused for good)."""
        try:
            sent = transmit(item.payload)
        except ProtocolError as exc:
            item.future.set_exception(exc)
            return True
        if sent:
            item.future.set_result(None)
        return sent

    def _expire(self, item: Any) -> None:
        if item in self._queue:
            self._queue.remove(item)
            item.future.set_exception(
                PeerUnreachable(f"the link to {self._peer} did not come up in time; the message was not sent")
            )
