"""One QUIC connection whose peer identity has been checked: :class:`QuicLink`.

A link is created by an endpoint (a Listener, actors/transport/listener.py, or one
dial, actors/transport/dial.py) and handed out only once the peer's certificate passed our checks
(actors/transport/tls.py) and, on a listener, ``admit(peer, alpn)``. Nothing the
peer sent before that is ever delivered; a refused handshake drops it all.

Contract with the owner of a link (a session or link actor), all on the
link's loop:

- Events reach the :class:`LinkHandler` in order, each exactly once; events
  that arrive before ``set_handler`` wait for it. ``closed(code, reason,
  by_peer)`` comes last, exactly once, however the connection ended (local
  close, peer close, idle timeout, listener shut down).
- A handler is never re-entered from inside a call it made (``close``,
  ``set_handler``): those deliver from a fresh loop callback.
- Events caused by a datagram are delivered right away, and the transmit is
  deferred to the next loop tick: what the handler schedules for this tick (a
  LoopActor's drain) runs first, so its reply shares a packet with the ACK
  (measured: one packet instead of two, DESIGN.md "Actors").
- Misuse (sending on a closed link or an unknown stream) raises
  LocalProtocolError; no aioquic exception leaves this module.

A dead peer is noticed three ways, the first that applies: its stateless
reset (RFC 9000 10.3, the peer restarted and lost the connection: closed at
once with PEER_RESTARTED), ``dead_after_ptos`` probe timeouts in a row with
our packets unacknowledged (RFC 9002 6.2: closed with TIMEOUT, the peer is
gone; this is seconds, not the idle timeout), or the QUIC idle timeout.
:meth:`QuicLink.check_alive` asks the peer for one acknowledged PING, to tell
a working connection from a dead one before replacing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, cast

from aioquic.quic import events

from quicpair.actors.kernel.logs import get_logger
from quicpair.actors.transport.tls import (
    IDLE_TIMEOUT_REASON,
    PinnedQuicConnection,
    check_handshake,
    code_from_peer_close,
    code_from_transport,
)
from quicpair.protocol.errors import (
    ErrorCode,
    LocalProtocolError,
    PeerUnreachable,
    ProtocolError,
    QuicpairError,
    RemoteProtocolError,
    describe_code,
)
from quicpair.protocol.identity import NodeId

__all__ = ["Address", "LinkHandler", "LinkOwner", "QuicLink"]

#: A (host, port) pair as people and logs see it.
Address = tuple[str, int]


class LinkHandler(Protocol):
    """What a link tells its owner; called on the link's loop."""

    def stream_data(self, stream_id: int, data: bytes, ended: bool) -> None: ...

    def stream_reset(self, stream_id: int, code: ErrorCode) -> None: ...

    def closed(self, code: ErrorCode, reason: str, by_peer: bool) -> None: ...


class LinkOwner(Protocol):
    """The endpoint a link lives in: a Listener (many links) or one dial."""

    def send_datagram(self, data: bytes, addr: Any) -> None: ...

    def admit(self, link: QuicLink, peer: NodeId, alpn: str) -> ErrorCode | None: ...

    def link_open(self, link: QuicLink) -> None: ...

    def link_failed(self, link: QuicLink, error: QuicpairError) -> None: ...

    def link_released(self, link: QuicLink) -> None: ...

    def cid_changed(self, link: QuicLink, cid: bytes, issued: bool) -> None: ...


class _State(enum.Enum):
    HANDSHAKING = "handshaking"
    OPEN = "open"
    CLOSED = "closed"


class QuicLink:
    """One QUIC connection whose peer identity has been checked."""

    def __init__(
        self,
        quic: PinnedQuicConnection,
        owner: LinkOwner,
        *,
        is_dialer: bool,
        local_address: Address,
        remote_address: Address,
        handshake_timeout: float,
        keepalive_interval: float | None,
        dead_after_ptos: int | None = None,
        handshake_budget: float | None = None,
    ) -> None:
        self._quic = quic
        self._owner = owner
        self._loop = asyncio.get_running_loop()
        self.is_dialer = is_dialer
        self.local_address = local_address
        self.remote_address = remote_address
        #: Short hex id, the same on both sides (the client's first destination CID).
        self.connection_id = quic.original_destination_connection_id.hex()[:8]
        #: Streams this side opened / the peer opened, since the link came up.
        self.streams_opened = 0
        self.streams_accepted = 0
        self._alpns = list(quic.configuration.alpn_protocols or [])
        self._state = _State.HANDSHAKING
        self._peer: NodeId | None = None
        self._alpn: str | None = None
        self._close_info: tuple[ErrorCode, str, bool] | None = None
        self._handler: LinkHandler | None = None
        self._pending: deque[Callable[[LinkHandler], None]] = deque()
        self._draining = False
        self._drain_handle: asyncio.Handle | None = None
        self._streams: set[int] = set()
        self._no_send: set[int] = set()  # reset by us or STOP_SENDING from the peer
        self._no_receive: set[int] = set()  # reset by us: drop what still arrives
        self._reset_seen: set[int] = set()
        self._released = False
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._transmit_handle: asyncio.Handle | None = None
        self._keepalive_interval = keepalive_interval
        self._keepalive: asyncio.TimerHandle | None = None
        self._ping_ids = itertools.count()
        self._dead_after_ptos = dead_after_ptos
        #: PING uid -> whoever waits for its acknowledgement (check_alive).
        self._alive_checks: dict[int, asyncio.Future[bool]] = {}
        self._handshake_timeout = handshake_timeout
        #: What a failed handshake reports as its bound: the whole dial's, if it was given.
        self._handshake_budget = handshake_budget if handshake_budget is not None else handshake_timeout
        self._handshake_timer: asyncio.TimerHandle | None = self._loop.call_later(
            handshake_timeout, self._handshake_timed_out
        )
        self._log = get_logger(conn=self.connection_id, remote=f"{remote_address[0]}:{remote_address[1]}")

    def __repr__(self) -> str:
        peer = self._peer.fingerprint if self._peer else "?"
        return f"QuicLink({self.connection_id}, peer={peer}, {self._state.value})"

    # -- public API ---------------------------------------------------------

    @property
    def peer(self) -> NodeId:
        """The peer's NodeId, as verified in the TLS handshake."""
        if self._peer is None:
            raise LocalProtocolError(ErrorCode.INTERNAL_ERROR, "the link's handshake has not completed")
        return self._peer

    @property
    def alpn(self) -> str:
        """The negotiated application protocol (ALPN_PAIR or ALPN_LINK)."""
        if self._alpn is None:
            raise LocalProtocolError(ErrorCode.INTERNAL_ERROR, "the link's handshake has not completed")
        return self._alpn

    @property
    def is_closed(self) -> bool:
        return self._state is _State.CLOSED

    @property
    def close_info(self) -> tuple[ErrorCode, str, bool] | None:
        """(code, reason, by_peer) once closed, else None."""
        return self._close_info

    def set_handler(self, handler: LinkHandler) -> None:
        """Route events to ``handler``; those that arrived earlier follow on the next tick."""
        self._handler = handler
        self._schedule_drain()

    def open_stream(self) -> int:
        """A new bidirectional stream; the peer learns of it with the first data."""
        self._check_open()
        stream_id = self._quic.get_next_available_stream_id()
        # aioquic only advances the next id once a stream exists: create it now.
        self._quic.send_stream_data(stream_id, b"")
        self._streams.add(stream_id)
        self.streams_opened += 1
        return stream_id

    def send(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Queue ``data`` on a stream; it leaves on the next loop tick.

        Data for a stream that was reset (by us, or stopped by the peer) is
        dropped: the peer would discard it (RFC 9000 3.5).
        """
        self._check_open()
        if stream_id not in self._streams:
            raise LocalProtocolError(ErrorCode.PROTOCOL_VIOLATION, f"stream {stream_id} is not open here")
        if stream_id in self._no_send:
            return
        try:
            self._quic.send_stream_data(stream_id, data, end_stream=end_stream)
        except (ValueError, RuntimeError) as exc:
            raise LocalProtocolError(
                ErrorCode.PROTOCOL_VIOLATION, f"cannot send on stream {stream_id}: {exc}"
            ) from exc
        self._transmit_soon()

    def reset_stream(self, stream_id: int, code: ErrorCode) -> None:
        """Abort a stream both ways (RESET_STREAM + STOP_SENDING with ``code``)."""
        self._check_open()
        if stream_id not in self._streams:
            raise LocalProtocolError(ErrorCode.PROTOCOL_VIOLATION, f"stream {stream_id} is not open here")
        if stream_id in self._no_receive:
            return
        self._no_send.add(stream_id)
        self._no_receive.add(stream_id)
        self._quic.reset_stream(stream_id, int(code))
        with contextlib.suppress(ValueError):  # the receiving half already ended and was discarded
            self._quic.stop_stream(stream_id, int(code))
        self._transmit_soon()

    def close(self, code: ErrorCode = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Close the connection with ``code`` (sent now); ``closed`` follows. Idempotent."""
        if self._state is _State.CLOSED:
            return
        if self._state is _State.HANDSHAKING:
            self._fail(PeerUnreachable("the connection was closed during the handshake"), code)
            return
        self._quic.close(error_code=int(code), reason_phrase=reason)
        self._flush()
        self._finish(code, reason, by_peer=False)

    def set_keepalive(self, interval: float | None) -> None:
        """PING every ``interval`` seconds while open (None: never); one side of a link is enough."""
        self._keepalive_interval = interval
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        if interval is not None and self._state is _State.OPEN:
            self._keepalive = self._loop.call_later(interval, self._keepalive_tick)

    def check_alive(self, timeout: float) -> asyncio.Future[bool]:
        """Send one PING; the future says True once the peer acknowledged it, False after ``timeout``.

        False too if the link closes meanwhile (a stateless reset answers a
        restarted peer's PING at once). Costs one small packet each way.
        """
        result: asyncio.Future[bool] = self._loop.create_future()
        if self._state is not _State.OPEN:
            result.set_result(False)
            return result
        uid = next(self._ping_ids)
        self._alive_checks[uid] = result
        self._quic.send_ping(uid)
        self._transmit_soon()

        def expire() -> None:
            self._alive_checks.pop(uid, None)
            if not result.done():
                result.set_result(False)

        handle = self._loop.call_later(timeout, expire)
        result.add_done_callback(lambda _: handle.cancel())
        return result

    async def wait_closed(self) -> None:
        """Wait until the link is closed and its resources (socket, timers) released."""
        await asyncio.shield(self._done)

    # -- driving the QUIC connection ----------------------------------------

    def _connect(self, addr: Any) -> None:
        self._quic.connect(addr, now=self._loop.time())
        self._flush()

    def _datagram_received(self, data: bytes, addr: Any) -> None:
        if self._released:
            return
        if self._state is _State.OPEN and self._quic.is_stateless_reset(data):
            # RFC 9000 10.3.1: the peer no longer knows this connection (it restarted).
            # Draining: nothing more is sent on it.
            self._finish(ErrorCode.PEER_RESTARTED, "stateless reset: the peer restarted", by_peer=True)
            return
        self._quic.receive_datagram(data, addr, now=self._loop.time())
        self._process()
        # Deliver now, transmit next tick: whatever the handler schedules for
        # this tick (an actor's drain) runs before the flush and its reply
        # shares the packet with the ACK.
        self._drain()
        self._transmit_soon()

    def _socket_error(self, exc: Exception) -> None:
        # ICMP port unreachable on our connected socket: nobody listens there.
        if self._state is _State.HANDSHAKING:
            self._fail(PeerUnreachable(f"{self._where()} refused the connection ({exc})", refused=True), None)

    def _on_timer(self) -> None:
        self._timer = None
        now = max(self._timer_at or 0.0, self._loop.time())
        self._timer_at = None
        if self._released:
            return
        self._quic.handle_timer(now=now)
        self._process()
        dead_after = self._dead_after_ptos
        if self._state is _State.OPEN and dead_after is not None and self._quic.probe_timeouts >= dead_after:
            # RFC 9002 6.2: that many probes in a row unanswered. The peer is gone (a
            # vanished host, a cable out); waiting for the idle timeout would only delay it.
            self._quic.close(error_code=int(ErrorCode.TIMEOUT), reason_phrase="no answer")
            self._flush()
            self._finish(
                ErrorCode.TIMEOUT, f"the peer stopped answering ({dead_after} probe timeouts)", by_peer=False
            )
            return
        self._drain()
        self._flush()

    def _transmit_soon(self) -> None:
        if self._transmit_handle is None and not self._released:
            self._transmit_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._transmit_handle = None
        if self._released:
            return
        for data, addr in self._quic.datagrams_to_send(now=self._loop.time()):
            self._owner.send_datagram(data, addr)
        timer_at = self._quic.get_timer()
        if self._timer is not None and self._timer_at != timer_at:
            self._timer.cancel()
            self._timer = None
        if self._timer is None and timer_at is not None:
            self._timer = self._loop.call_at(timer_at, self._on_timer)
        self._timer_at = timer_at

    def _process(self) -> None:
        while not self._released:
            event = self._quic.next_event()
            if event is None:
                break
            self._on_event(event)
        if self._released:
            return
        quic = self._quic
        if self._state is _State.HANDSHAKING:
            if quic.refusal is not None:
                self._fail(quic.refusal, None)  # aioquic already sends the TLS alert
            elif quic.peer_close is not None:
                code, reason = code_from_peer_close(quic.peer_close)
                self._fail(RemoteProtocolError(code, f"{self._where()} refused the connection: {reason}"))
            elif self.is_dialer and self._peer is not None and quic.handshake_confirmed:
                self._open()  # HANDSHAKE_DONE: the listener checked us and let us in
        elif self._state is _State.OPEN and quic.peer_close is not None:
            code, reason = code_from_peer_close(quic.peer_close)
            self._finish(code, reason, by_peer=True)

    def _on_event(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            sid = event.stream_id
            if sid in self._no_receive or (not event.data and not event.end_stream):
                return
            if sid not in self._streams:
                self._streams.add(sid)
                self.streams_accepted += 1
            data, ended = event.data, event.end_stream
            self._post(lambda h: h.stream_data(sid, data, ended))
        elif isinstance(event, events.StreamReset | events.StopSendingReceived):
            if isinstance(event, events.StopSendingReceived):
                self._no_send.add(event.stream_id)
            sid = event.stream_id
            if sid in self._reset_seen or sid in self._no_receive:
                return
            self._reset_seen.add(sid)
            self._streams.add(sid)
            code = _known_code(event.error_code)
            self._post(lambda h: h.stream_reset(sid, code))
        elif isinstance(event, events.PingAcknowledged):
            waiter = self._alive_checks.pop(event.uid, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(True)
        elif isinstance(event, events.HandshakeCompleted):
            self._handshake_completed(event)
        elif isinstance(event, events.ConnectionIdIssued | events.ConnectionIdRetired):
            issued = isinstance(event, events.ConnectionIdIssued)
            self._owner.cid_changed(self, event.connection_id, issued)
        elif isinstance(event, events.ConnectionTerminated):
            self._terminated(event)

    def _handshake_completed(self, event: events.HandshakeCompleted) -> None:
        try:
            peer = check_handshake(self._quic, event, self._alpns)
        except RemoteProtocolError as exc:
            self._fail(exc, exc.code)
            return
        self._peer, self._alpn = peer, cast(str, event.alpn_protocol)
        self._log = self._log.bind(peer=peer.fingerprint, alpn=self._alpn)
        try:
            verdict = self._owner.admit(self, peer, self._alpn)
        except Exception:
            self._log.exception("quic.admit_failed")
            verdict = ErrorCode.INTERNAL_ERROR
        if verdict is not None:
            self._fail(RemoteProtocolError(verdict, f"{peer.fingerprint} not admitted"), verdict)
        elif not self.is_dialer:
            self._open()  # a server's handshake is confirmed at completion (RFC 9001 4.1.2)

    def _terminated(self, event: events.ConnectionTerminated) -> None:
        if event.reason_phrase == IDLE_TIMEOUT_REASON:
            code, reason = ErrorCode.TIMEOUT, "idle timeout: no packet from the peer"
        else:
            code, reason = code_from_transport(event.error_code, event.reason_phrase)
        if self._state is _State.HANDSHAKING:
            if code is ErrorCode.TIMEOUT:
                self._fail(PeerUnreachable(f"no answer from {self._where()}"))
            else:
                self._fail(RemoteProtocolError(code, reason))
        else:
            self._finish(code, reason, by_peer=False)

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        if self._state is _State.HANDSHAKING:
            error = PeerUnreachable(
                f"no handshake with {self._where()} within {round(self._handshake_budget, 2):g} s"
            )
            self._fail(error, ErrorCode.TIMEOUT)

    def _keepalive_tick(self) -> None:
        self._keepalive = None
        if self._state is _State.OPEN and self._keepalive_interval is not None:
            self._quic.send_ping(next(self._ping_ids))  # a PING, never a stream (DESIGN.md #3)
            self._transmit_soon()
            self._keepalive = self._loop.call_later(self._keepalive_interval, self._keepalive_tick)

    # -- state changes ------------------------------------------------------

    def _open(self) -> None:
        self._state = _State.OPEN
        self._cancel_handshake_timer()
        if self._keepalive_interval is not None:
            self._keepalive = self._loop.call_later(self._keepalive_interval, self._keepalive_tick)
        self._log.debug("quic.connected", dialer=self.is_dialer)
        self._owner.link_open(self)

    def _fail(self, error: QuicpairError, close_code: ErrorCode | None = None) -> None:
        """The handshake did not produce a link: refuse, free everything, tell the owner."""
        if self._state is not _State.HANDSHAKING:
            return
        if close_code is not None:
            self._quic.close(error_code=int(close_code), reason_phrase=describe_code(close_code))
        self._flush()
        self._state = _State.CLOSED
        code = error.code if isinstance(error, ProtocolError) else ErrorCode.TIMEOUT
        self._close_info = (code, str(error), False)
        self._pending.clear()  # nothing from an unchecked peer is ever delivered
        # Debug: a stranger can fail handshakes as often as it likes.
        self._log.debug("quic.handshake_failed", error=str(error), dialer=self.is_dialer)
        self._owner.link_failed(self, error)
        self._release()

    def _finish(self, code: ErrorCode, reason: str, *, by_peer: bool) -> None:
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        self._close_info = (code, reason, by_peer)
        self._log.debug("quic.closed", code=code.name, reason=reason, by_peer=by_peer)
        self._post(lambda h: h.closed(code, reason, by_peer))
        self._release()

    def _release(self) -> None:
        if self._released:
            return
        self._released = True
        for waiter in self._alive_checks.values():
            if not waiter.done():
                waiter.set_result(False)
        self._alive_checks.clear()
        for handle in (self._timer, self._transmit_handle, self._keepalive, self._handshake_timer):
            if handle is not None:
                handle.cancel()
        self._timer = self._transmit_handle = self._keepalive = self._handshake_timer = None
        self._owner.link_released(self)

    def _cancel_handshake_timer(self) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None

    def _check_open(self) -> None:
        if self._state is _State.OPEN:
            return
        if self._close_info is not None:
            code, reason, by_peer = self._close_info
            who = "the peer" if by_peer else "this side"
            raise LocalProtocolError(code, f"the link is closed (by {who}: {reason or describe_code(code)})")
        raise LocalProtocolError(ErrorCode.INTERNAL_ERROR, "the link is not open yet")

    def _where(self) -> str:
        return f"{self.remote_address[0]}:{self.remote_address[1]}"

    def _mark_done(self) -> None:
        if not self._done.done():
            self._done.set_result(None)

    # -- handler delivery ---------------------------------------------------

    def _post(self, call: Callable[[LinkHandler], None]) -> None:
        self._pending.append(call)
        self._schedule_drain()

    def _schedule_drain(self) -> None:
        # After a call the handler made (close(), set_handler()): from a fresh
        # loop callback, so the handler is never re-entered; order is kept.
        if self._handler is not None and self._pending and self._drain_handle is None and not self._draining:
            self._drain_handle = self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        if self._drain_handle is not None:
            self._drain_handle.cancel()
            self._drain_handle = None
        if self._draining:
            return
        self._draining = True
        try:
            while self._pending and self._handler is not None:
                call = self._pending.popleft()
                try:
                    call(self._handler)  # re-read: a handler may hand the link on
                except Exception:
                    self._log.exception("quic.handler_failed")
                    if self._state is _State.OPEN:
                        self.close(ErrorCode.INTERNAL_ERROR, "internal error")
        finally:
            self._draining = False


def _known_code(value: int) -> ErrorCode:
    try:
        return ErrorCode(value)
    except ValueError:
        return ErrorCode.PROTOCOL_VIOLATION
