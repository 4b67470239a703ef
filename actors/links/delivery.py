"""Acknowledged delivery with one peer, for its link worker: callers, deadlines, durable writes.

The rules are protocol/delivery.py's (sans-I/O: numbers, window, cumulative acks, the
receive mark). This is what they need from the runtime, for one peer, on the loop:

* **sending**: each ``Node.send`` becomes one :class:`~quicpair.protocol.delivery.Outgoing`
  whose token is the caller's future. It is settled exactly once: with the payload's delivery
  number when the peer acknowledged it; with NotTransmitted (dropped, never sent later) or
  NotAcknowledged (it left, it may have arrived) when its deadline passed; with the worker's
  error when the link ends for good. A durable send (``queue=True``) is written to the
  registry first (the caller returns then) and has no deadline: it survives restarts of this
  node and is sent at every contact until acknowledged, then removed from the registry.
* **receiving**: a payload taken from the peer joins a batch; one registry transaction
  stores the batch in the registry's inbox and raises the receive mark to its highest
  number (``take``, fsynced), then the batch goes to the application (the node's inbox)
  and one LinkAck says so. So an acknowledged payload is never lost with this node's
  process (it waits in the registry until the application takes it, across restarts) and
  never taken twice; a full inbox stops the writes, hence the acks, hence the peer's sender.

Everything here is loop-confined, like the worker that owns it; registry calls go through
the worker's ``write(what, method, *args)`` and come back as :meth:`written`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from quicpair.actors.kernel.loopactor import ActorTimer
from quicpair.actors.links.inbox import Inbox
from quicpair.actors.links.messages import SendRequest, Settleable
from quicpair.actors.registry.store import DeliveryState, QueuedMessage
from quicpair.config.settings import LinkSettings
from quicpair.protocol.delivery import Inbound, Outbound, Outgoing, QueueFull
from quicpair.protocol.errors import (
    NotAcknowledged,
    NotTransmitted,
    QuicpairError,
)
from quicpair.protocol.identity import NodeId

__all__ = ["MAX_UNWRITTEN", "PeerDelivery", "Transmit", "Write"]

#: ``transmit(seq, payload)``: seal and send on the link in use; False if it is gone.
Transmit = Callable[[int, bytes], bool]
#: ``write(what, method, *args)``: a registry call whose result comes back as :meth:`PeerDelivery.written`.
Write = Callable[..., None]
#: Payloads a peer may have us hold taken but not yet recorded (its window is its own setting;
#: a peer that sends this far beyond what we acknowledged breaks the protocol).
MAX_UNWRITTEN = 65536


@dataclass(slots=True, eq=False)
class _Caller:
    """Who waits for one send: its future (None for a durable send resumed from the registry)."""

    future: Settleable | None
    durable: bool


class PeerDelivery:
    """One peer's acknowledged delivery; see the module docstring."""

    def __init__(
        self,
        *,
        peer: NodeId,
        settings: LinkSettings,
        next_seq: Callable[[], int],
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        call_later: Callable[..., ActorTimer],
        write: Write,
        inbox: Inbox | None,
        log: Any,
    ) -> None:
        self._peer = peer
        self._next_seq = next_seq
        self._clock, self._wall_clock = clock, wall_clock
        self._call_later = call_later
        self._write = write
        self._inbox = inbox
        self._log = log
        self._out = Outbound(
            window=settings.send_window,
            window_bytes=settings.send_window_bytes,
            limit=settings.outbox_limit,
            limit_bytes=settings.outbox_limit_bytes,
        )
        self._in = Inbound(0)
        self._timer: ActorTimer | None = None
        self._timer_at: float | None = None
        #: The pairing whose mark the receive side records (the worker's record's).
        self.pairing_id = b""
        #: The application's inbox was full at the last try: the batch waits for room.
        self.waiting_for_room = False
        self.received = 0
        self.acknowledged = 0

    # -- resuming ------------------------------------------------------------------

    def resume(self, state: DeliveryState, pairing_id: bytes) -> None:
        """Start from the registry: the receive mark and the durable sends still unacknowledged."""
        self.pairing_id = pairing_id
        self._in = Inbound(state.receive_mark)
        for message in state.queued:
            self._out.submit(message.payload, seq=message.seq, deadline=None, token=_Caller(None, True))

    # -- sending -------------------------------------------------------------------

    def submit(self, request: SendRequest) -> None:
        """Take one ``Node.send``; the caller's future is settled later (module docstring)."""
        future = request.future
        seq = self._next_seq()
        deadline = None if request.queue else request.deadline
        try:
            self._out.submit(
                request.payload, seq=seq, deadline=deadline, token=_Caller(future, request.queue)
            )
        except QueueFull as exc:
            future.set_exception(
                NotTransmitted(f"{exc}: the link to {self._peer.fingerprint} is behind; not sent")
            )
            return
        if request.queue:
            message = QueuedMessage(self._peer, seq, request.payload, self._wall_clock())
            self._write(("queued", seq), "enqueue", message)
        self._arm()

    def transmit(self, send: Transmit) -> int:
        """The link is up: send what the window admits, in order; how many went."""
        sent = 0
        for item in self._out.take():
            if not send(item.seq, item.payload):
                self._out.connection_lost()  # it died under us; its close comes next
                break
            sent += 1
        return sent

    def acked(self, upto: int) -> None:
        """The peer took every payload numbered up to ``upto``."""
        done = self._out.ack(upto)
        if not done:
            return
        self.acknowledged += len(done)
        durable_upto = 0
        for item in done:
            caller: _Caller = item.token
            if caller.durable:
                durable_upto = item.seq
            if caller.future is not None and not caller.future.done():
                caller.future.set_result(item.seq)
        if durable_upto:
            self._write(("dequeued", durable_upto), "dequeue", self._peer, durable_upto)
        self._arm()

    def connection_lost(self) -> None:
        """The link in use is gone: what was in flight goes again, first, on the next one."""
        self._out.connection_lost()

    def end(self, why: str) -> None:
        """The link ends for good (stopping, unpaired): settle every caller that still waits."""
        for item in self._out.drop_all():
            self._settle_failed(item, why)
        self._disarm()

    @property
    def in_flight(self) -> int:
        return self._out.in_flight

    @property
    def waiting(self) -> int:
        return self._out.waiting

    # -- receiving -----------------------------------------------------------------

    def take(self, seq: int, payload: bytes) -> bool:
        """A payload from the peer; True when it is new, False for a duplicate (only re-acknowledge)."""
        if not self._in.receive(seq, payload):
            return False
        self.received += 1
        return True

    @property
    def unwritten_overflow(self) -> bool:
        """The peer sent far beyond anything we acknowledged (more than MAX_UNWRITTEN): a fault."""
        return self._in.unwritten > MAX_UNWRITTEN

    def record(self) -> None:
        """Start the durable write of the next batch's mark, if none runs and the inbox has room."""
        if self._in.writing:
            return
        room = self._inbox.room() if self._inbox is not None else MAX_UNWRITTEN
        self.waiting_for_room = room == 0 and self._in.unwritten > 0
        if room == 0:
            return
        if self._in.begin_write(room) is not None:
            # The payloads and the mark in one durable transaction; then deliver and ack.
            self._write("mark", "take", self._peer, self.pairing_id, self._in.batch, self._wall_clock())

    def mark_written(self, ok: bool) -> int | None:
        """The mark write ended: deliver the batch (ok) and return the mark to acknowledge."""
        if not ok:
            self._in.write_failed()
            return None
        done = self._in.write_done()
        if self._inbox is not None:
            self._inbox.deliver_many(self._peer, list(done))
        return self._in.mark

    @property
    def mark(self) -> int:
        """The durable receive mark: what an acknowledgement says."""
        return self._in.mark

    # -- registry answers ------------------------------------------------------------

    def written(self, what: Any, result: Any, error: BaseException | None) -> None:
        """A registry call made for a durable send ended."""
        kind, seq = what
        if kind == "queued":
            item = next((i for i in self._out if i.seq == seq), None)
            if item is None:
                return  # acknowledged (or dropped) before the write even finished
            caller: _Caller = item.token
            if error is not None:
                self._out.remove(item)
                if caller.future is not None and not caller.future.done():
                    caller.future.set_exception(
                        QuicpairError(f"could not queue the message durably: {error}")
                    )
            elif caller.future is not None and not caller.future.done():
                caller.future.set_result(seq)  # durable now: the caller may go
        elif kind == "dequeued" and error is not None:
            # Acknowledged, but still in the registry: it is sent again after a restart and
            # the peer drops it as a duplicate. Harmless; worth a line.
            self._log.warning("link.dequeue_failed", upto=seq, error=repr(error))

    # -- deadlines -------------------------------------------------------------------

    def _arm(self) -> None:
        when = self._out.next_deadline()
        if when == self._timer_at:
            return
        self._disarm()
        if when is not None:
            self._timer_at = when
            self._timer = self._call_later(max(when - self._clock(), 0.0), self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_at = None

    def _expire(self) -> None:
        self._timer = self._timer_at = None
        # Payloads in flight mean a connection in use: one that never left waited for the window.
        in_flight = self._out.in_flight
        for item in self._out.expire(self._clock()):
            self._settle_failed(item, "", window_full=in_flight)
        self._arm()

    def _settle_failed(self, item: Outgoing, why: str, *, window_full: int = 0) -> None:
        caller: _Caller = item.token
        future = caller.future
        if future is None or future.done():
            return  # a durable send stays queued in the registry for the next run
        peer = self._peer.fingerprint
        if caller.durable:  # the link ended while its registry write was in flight
            future.set_exception(
                QuicpairError(
                    f"the link to {peer} ended while queueing the message ({why}): see `quicpair outbox`"
                )
            )
            return
        reason = f" ({why})" if why else ""
        if item.transmitted:
            error: QuicpairError = NotAcknowledged(
                f"{peer} did not confirm the message in time{reason}; it may have arrived; not sent again"
            )
        elif window_full:
            error = NotTransmitted(
                f"the send window to {peer} stayed full ({window_full} messages sent and not yet "
                "acknowledged: the peer's application is not taking them); the message was not sent"
            )
        else:
            error = NotTransmitted(
                f"the link to {peer} did not come up in time{reason}; the message was not sent"
            )
        future.set_exception(error)
