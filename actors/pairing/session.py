"""The part of a pairing session actor that both roles share.

A session actor holds ONE QUIC connection and ONE bidirectional stream from
the first pairing message to the last (DESIGN.md failure #1): it feeds a
protocol/ machine with the stream's bytes, sends what the machine wants
sent, arms the machine's deadline, and performs the durable writes the
machine asks for (through the registry actor) before telling the machine
they are done. The logic lives in protocol/pairing*.py; this is plumbing.

Everything runs on the node's loop thread: QuicLink callbacks are turned
into messages to this actor (actors/transport/events.py, the adapter link
workers use too), and registry replies come back the same way.

A registry write that fails (a full disk, an I/O error, a registry replaced
under the node) is not a crash: the session ends the machine with
STORAGE_ERROR, so the peer is told why (PairReject, where the 2PC allows it)
and the person on this side gets the registry's own message
(:meth:`PairingSessionBase.storage_failed`).

A session is a TEMPORARY child of the ``sessions`` supervisor: never
restarted mid-handshake. If it crashes, ``on_failure`` resets the stream
with INTERNAL_ERROR and closes the connection; a PENDING record it wrote is
deleted unless this side already voted to commit (a joiner after PairDone:
the initiator may have committed, so the record stays PENDING, in doubt,
and is resolved at the node's next start at the latest).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass
from typing import Any

import pykka

from quicpair.actors.context import NodeContext
from quicpair.actors.kernel.exits import Supervised
from quicpair.actors.kernel.logs import get_logger
from quicpair.actors.kernel.loopactor import ActorTimer, LoopActor
from quicpair.actors.kernel.replies import call_async
from quicpair.actors.registry.actor import DeviceRecord, DeviceState
from quicpair.actors.transport.events import ConnClosed, ConnData, ConnReset, ToActor
from quicpair.actors.transport.quic_link import QuicLink
from quicpair.protocol import errors
from quicpair.protocol.addresses import announced_addresses, dialable_observed
from quicpair.protocol.codes import format_address
from quicpair.protocol.errors import ErrorCode, QuicpairError, RegistryError
from quicpair.protocol.framing import FrameDecoder
from quicpair.protocol.identity import NodeId
from quicpair.protocol.keys import PairingKeys, Role
from quicpair.protocol.messages import DeviceInfo
from quicpair.protocol.pairing import Initiator, Joiner, PairingMachine

__all__ = ["LINGER", "PairingSessionBase", "SasAnswer", "SessionCrash", "tell_if_alive"]

#: After sending its last frame with FIN, a session waits this long for the
#: peer to close before closing itself: closing at once could drop the frame
#: (a CONNECTION_CLOSE discards unsent stream data, RFC 9000 10.2).
LINGER = 2.0


@dataclass(frozen=True, slots=True)
class _Deadline:
    pass


@dataclass(frozen=True, slots=True)
class SasAnswer:
    """The person here answered the SAS check (told from any thread)."""

    confirmed: bool


@dataclass(frozen=True, slots=True)
class _WriteDone:
    """A registry write finished; ``what`` names the machine callback to call."""

    what: str
    result: Any
    error: BaseException | None


class SessionCrash(RuntimeError):
    """A crash injected by ``[testing] crash_session_after`` (never set on a real device)."""


class PairingSessionBase(Supervised, LoopActor):
    """One pairing, one connection, one stream. Subclasses wire a machine to it."""

    role: Role

    def __init__(self, ctx: NodeContext, session_id: str) -> None:
        super().__init__()
        self.ctx = ctx
        self.session_id = session_id
        self.link: QuicLink | None = None
        self.stream_id: int | None = None
        self.machine: PairingMachine[Any] | None = None
        self.log = (ctx.log or get_logger()).bind(session=session_id, role=self.role.value)
        self._deadline: ActorTimer | None = None
        self._linger: ActorTimer | None = None
        self._pending_record: tuple[NodeId, bytes] | None = None  # written PENDING, not yet confirmed
        self._machine_ended = False
        self._streams_seen = 0
        self._crashed = False
        self._writes_in_flight = 0
        self._done_link: QuicLink | None = None
        #: The registry's failure that ended this pairing (STORAGE_ERROR), if one did.
        self.storage_error: RegistryError | None = None
        self.connections = 0

    # -- subclass hooks ------------------------------------------------------

    def handle_event(self, event: Any) -> None:
        raise NotImplementedError

    def on_link_closed(self, code: ErrorCode, reason: str, by_peer: bool) -> None:
        """The connection ended; the machine has been told already."""

    # -- wiring ----------------------------------------------------------------

    def attach(self, link: QuicLink) -> None:
        self.link = link
        self.connections += 1
        self.log = self.log.bind(
            conn=link.connection_id,
            peer=link.peer.fingerprint,
            peer_address=format_address(*link.remote_address),
        )
        # Keyed by connection number: events of an earlier connection (a joiner that
        # dials again to resolve a pairing in doubt) are told apart and dropped.
        link.set_handler(ToActor(self.connections, self.actor_ref.tell))

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, ConnData | ConnReset | ConnClosed) and message.key != self.connections:
            return None  # a late event of a connection this session has left
        if isinstance(message, ConnData):
            self._on_stream_data(message)
        elif isinstance(message, ConnReset):
            if message.stream_id == self.stream_id and self.machine is not None:
                self.machine.peer_closed(self.ctx.clock(), int(message.code))
        elif isinstance(message, ConnClosed):
            self._on_closed(message)
        elif isinstance(message, _Deadline):
            self._deadline = None
            if self.machine is not None:
                self.machine.handle_timer(self.ctx.clock())
        elif isinstance(message, _WriteDone):
            self._on_write_done(message)
        elif isinstance(message, SasAnswer):
            self._on_sas_answer(message)
        else:
            result = self.on_other(message)
            self._check_done()
            return result
        self.pump()
        self._check_done()
        return None

    def on_sas_answered(self) -> None:
        """Subclass hook: the person's SAS answer went to the machine."""

    def _on_sas_answer(self, message: SasAnswer) -> None:
        machine = self.machine
        if isinstance(machine, Initiator | Joiner) and not machine.is_finished:
            self.log.info("pairing.sas_answered", confirmed=message.confirmed)
            now = self.ctx.clock()
            machine.sas_confirmed(now) if message.confirmed else machine.sas_refused(now)
            self.on_sas_answered()

    def on_other(self, message: Any) -> Any:
        raise TypeError(f"{type(self).__name__} got an unexpected message {message!r}")

    def _on_stream_data(self, message: ConnData) -> None:
        if self.stream_id is None:
            self.stream_id = message.stream_id
            self._streams_seen += 1
            self.ctx.counters.incr(f"pair.streams.{self.role.value}")
        elif message.stream_id != self.stream_id:
            # One stream per pairing (DESIGN.md #1): a second one is a protocol violation.
            self._streams_seen += 1
            self.log.warning("pairing.extra_stream", stream=message.stream_id)
            if self.machine is not None:
                self.machine.abort(ErrorCode.PROTOCOL_VIOLATION, self.ctx.clock())
            return
        self.maybe_crash_before(message.data)
        if self.machine is not None and message.data:
            self.machine.receive_data(message.data, self.ctx.clock())
        if message.ended and self.machine is not None and not self.machine.is_finished:
            self.machine.peer_closed(self.ctx.clock())

    def _on_closed(self, message: ConnClosed) -> None:
        if self.machine is not None and not self.machine.is_finished:
            self.machine.peer_closed(self.ctx.clock(), int(message.code))
            self.pump()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self.log.debug("pairing.connection_closed", code=message.code.name, by_peer=message.by_peer)
        self.on_link_closed(message.code, message.reason, message.by_peer)

    def _check_done(self) -> None:
        """Call connection_done once per connection: machine ended, link closed, no write in flight."""
        link = self.link
        if link is None or not link.is_closed or self._writes_in_flight:
            return
        if self.machine is not None and not self.machine.is_finished:
            return
        if self._done_link is link:
            return
        self._done_link = link
        self.connection_done()

    def connection_done(self) -> None:
        """The connection is closed, the machine has ended, writes are done: by default, stop."""
        self.stop()

    # -- the pump: machine -> wire, events, deadline ---------------------------

    def install(self, machine: PairingMachine[Any]) -> None:
        """Drive ``machine`` from now on (a resolver replaces a joiner in doubt)."""
        self.machine = machine
        self._machine_ended = False

    def pump(self) -> None:
        machine = self.machine
        if machine is None:
            return
        final_sent = False
        while True:
            out = machine.data_to_send()
            if out:
                self.send(out, end=machine.is_finished)
                final_sent = final_sent or machine.is_finished
            event = machine.next_event()
            if event is None:
                break
            self.handle_event(event)
        self._arm_deadline(machine.next_deadline())
        if machine.is_finished and not self._machine_ended:
            self._machine_ended = True
            if final_sent:
                # Our last frame is queued with FIN: the peer closes once it has
                # it; if it does not, we close after LINGER.
                self._linger = self.call_later(LINGER, self._close_after_linger)
            else:
                self._close_link_soon()
            self.machine_finished()

    def machine_finished(self) -> None:
        """Subclass hook: the current machine reached a final state."""

    def send(self, data: bytes, *, end: bool = False) -> None:
        if self.link is None or self.link.is_closed or self.stream_id is None:
            return
        if self.drop_outgoing(data):
            return
        self.link.send(self.stream_id, data, end_stream=end)

    def drop_outgoing(self, data: bytes) -> bool:
        """Fault injection hook (``[testing]``): True drops this frame on purpose."""
        return False

    def dropping(self, data: bytes, message_type: type) -> bool:
        """True (and logged) when ``data`` carries a ``message_type`` frame: for drop_outgoing."""
        decoder = FrameDecoder()
        decoder.feed(data)
        if any(isinstance(m, message_type) for m in decoder):
            self.log.warning("testing.dropped", message=message_type.__name__)
            return True
        return False

    def maybe_crash_before(self, data: bytes) -> None:
        """Fault injection hook: raise SessionCrash when the configured message arrives."""

    def kill_point(self, step: str) -> None:
        """``[testing] kill_at``: SIGKILL this whole process at ``step`` (the crash tests)."""
        if self.ctx.settings.testing.kill_at == step:
            self.log.warning("testing.killed", step=step)
            os.kill(os.getpid(), signal.SIGKILL)

    def _arm_deadline(self, deadline: float | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if deadline is not None:
            delay = max(deadline - self.ctx.clock(), 0.0)
            self._deadline = self.call_later(delay, self.actor_ref.tell, _Deadline())

    def _close_link_soon(self) -> None:
        link = self.link
        if link is None or link.is_closed:
            return
        if self.stream_id is not None and self.machine is not None and self.machine.failure_code:
            link.reset_stream(self.stream_id, self.machine.failure_code)
        link.close(ErrorCode.NO_ERROR, "pairing finished")

    def _close_after_linger(self) -> None:
        self._linger = None
        self._close_link_soon()

    def close_now(self, code: ErrorCode = ErrorCode.NO_ERROR, reason: str = "pairing finished") -> None:
        if self.link is not None and not self.link.is_closed:
            self.link.close(code, reason)

    # -- durable writes through the registry actor -----------------------------

    def write(self, what: str, method: str, *args: Any) -> None:
        """Call ``registry.method(*args)``; ``what`` names the follow-up in on_write_done."""
        future: asyncio.Future[Any] = call_async(self.ctx.require_registry(), method, *args)
        ref = self.actor_ref
        self._writes_in_flight += 1

        def done(fut: asyncio.Future[Any]) -> None:
            if fut.cancelled():
                message = _WriteDone(what, None, asyncio.CancelledError())
            elif fut.exception() is not None:
                message = _WriteDone(what, None, fut.exception())
            else:
                message = _WriteDone(what, fut.result(), None)
            # The session may have been stopped meanwhile (node shutdown): the write is
            # done all the same, and nobody is left to tell.
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(message)

        future.add_done_callback(done)

    def _on_write_done(self, message: _WriteDone) -> None:
        self._writes_in_flight -= 1
        if isinstance(message.error, RegistryError):
            self.storage_failed(message.what, message.error)
        elif message.error is not None:
            # Anything else is a bug of this node: crash the session (on_failure
            # aborts the pairing with INTERNAL_ERROR).
            raise QuicpairError(f"registry write {message.what!r} failed: {message.error!r}")
        else:
            self.on_write_done(message.what, message.result)

    def storage_failed(self, what: str, error: RegistryError) -> None:
        """A registry write failed: end the pairing with STORAGE_ERROR (the peer is told where it may be)."""
        self.log.error("pairing.storage_failed", write=what, error=str(error))
        self.ctx.counters.incr(f"pair.storage_failed.{self.role.value}")
        if self.storage_error is None:
            self.storage_error = error
        if self.machine is not None:
            self.machine.abort(ErrorCode.STORAGE_ERROR, self.ctx.clock())

    def failure_for(self, code: ErrorCode, remote: bool) -> errors.PairingFailed:
        """The error a person sees for a pairing that ended with ``code``."""
        if code is ErrorCode.SAS_REFUSED:
            who = "on the other device" if remote else "here"
            closed = " and the code is cancelled" if self.role is Role.INITIATOR else ""
            return errors.PairingFailed(
                code,
                f"the SAS words were refused {who}: someone may be in the middle; nothing was stored{closed}",
                remote=remote,
            )
        if code is not ErrorCode.STORAGE_ERROR:
            return errors.PairingFailed(code, remote=remote)
        if remote:
            return errors.PairingFailed(
                code,
                "the other device could not store the pairing (its disk may be full); "
                "it is not paired on either device",
                remote=True,
            )
        return errors.PairingFailed(
            code, f"this device could not store the pairing ({self.storage_error}); it is not paired"
        )

    def on_write_done(self, what: str, result: Any) -> None:
        raise NotImplementedError

    def store_pending(
        self, peer: NodeId, info: DeviceInfo, keys: PairingKeys, *, what: str, durable: bool
    ) -> None:
        """Write the peer PENDING, with the addresses it announced and where we saw it.

        Where we saw it is its listening address: the one we dialed (joiner),
        or the host it came from at the port it announced (initiator; the
        connection's source port is the joiner's ephemeral socket).
        ``on_write_done(what, None)`` follows (PROTOCOL.md 10.5 says which role's
        record must be ``durable``).
        """
        assert self.link is not None
        now = self.ctx.wall_clock()
        mine = keys.for_role(self.role)
        seen = format_address(*self.link.remote_address)
        addresses = announced_addresses(info.addresses, peer=seen)
        observed = seen if self.link.is_dialer else dialable_observed(seen, addresses)
        record = DeviceRecord(
            node_id=peer,
            name=info.name,
            role=self.role,
            state=DeviceState.PENDING,
            pairing_id=keys.pairing_id,
            pairing_secret=keys.pairing_secret,
            send_key_fp=mine.send_fingerprint,
            receive_key_fp=mine.receive_fingerprint,
            paired_at=now,
            updated_at=now,
            addresses=addresses,
            observed_address=observed,
            sas=keys.sas,
        )
        self._pending_record = (peer, keys.pairing_id)
        self.write(what, "add_pending", record, durable)

    def forget_pending(self) -> None:
        """Delete the PENDING record this session wrote (never a confirmed one)."""
        if self._pending_record is not None and self.ctx.registry is not None:
            peer, pairing_id = self._pending_record
            self._pending_record = None
            call_async(self.ctx.registry, "delete_pending", peer, pairing_id).add_done_callback(
                _log_failure(self.log, "pairing.forget_failed")
            )

    def pending_confirmed(self) -> None:
        self._pending_record = None

    def may_forget_pending(self) -> bool:
        """May a stop or crash of this session delete the PENDING record it wrote?

        Yes, unless this side already voted to commit (a joiner that sent
        PairDone): the initiator may have committed, so the record stays
        PENDING and is resolved later (at the node's next start at the latest).
        """
        return True

    # -- lifecycle -------------------------------------------------------------

    def on_start(self) -> None:
        self.log.debug("pairing.session_started")
        try:
            self.begin()
        except Exception as exc:
            # pykka calls neither on_failure nor on_stop when on_start raises:
            # release what a session holds here, or the slot and the link leak.
            self.log.error("pairing.start_failed", error=repr(exc))
            self._crashed = True
            self.abandon(exc)
            self.session_ended()
            self.crashed(exc)
            raise

    def begin(self) -> None:
        """Subclass hook, on the loop at start: build the machine, attach or dial."""

    def abandon(self, exc: BaseException) -> None:
        """The session failed to start: close whatever connection it was given."""
        if self.link is not None and not self.link.is_closed:
            self.link.close(ErrorCode.INTERNAL_ERROR, "pairing session failed to start")

    def on_stop(self) -> None:
        self.session_ended()
        if self._deadline is not None:
            self._deadline.cancel()
        if self._linger is not None:
            self._linger.cancel()
        if self.machine is not None and not self.machine.is_finished and not self._crashed:
            # Stopped from outside (node shutdown): tell the peer, keep nothing half-done.
            self.machine.abort(ErrorCode.GOING_AWAY, self.ctx.clock())
            out = self.machine.data_to_send()
            if out:
                self.send(out, end=True)
            if self.may_forget_pending():
                self.forget_pending()
        self.close_now(ErrorCode.NO_ERROR if self._machine_ended else ErrorCode.GOING_AWAY)

    def on_failure(self, *exc_info: Any) -> None:
        # pykka calls on_failure INSTEAD of on_stop when a handler raised.
        self._crashed = True
        self.session_ended()
        exc = exc_info[1] if len(exc_info) > 1 else None
        self.log.error("pairing.crashed", error=repr(exc))
        self.ctx.counters.incr(f"pair.crashed.{self.role.value}")
        if self.link is not None and not self.link.is_closed:
            if self.stream_id is not None:
                self.link.reset_stream(self.stream_id, ErrorCode.INTERNAL_ERROR)
            self.link.close(ErrorCode.INTERNAL_ERROR, "pairing session failed")
        if self.may_forget_pending():
            self.forget_pending()
        self.crashed(exc)

    def is_spare(self) -> bool:
        """True for a session started ahead of time that holds no pairing yet (initiator spares)."""
        return False

    def session_ended(self) -> None:
        """Subclass hook: the actor is ending (stopped or crashed); called once."""

    def crashed(self, exc: BaseException | None) -> None:
        """Subclass hook: report the crash to whoever waits for the result."""


def _log_failure(log: Any, event: str) -> Any:
    def done(fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            log.error(event, error=repr(fut.exception()))

    return done


def tell_if_alive(ref: Any, message: Any) -> None:
    """Tell a session ``message`` from any thread; nothing if it has ended meanwhile
    (a person answering a SAS check after the peer already refused, say)."""
    with contextlib.suppress(pykka.ActorDeadError):
        ref.tell(message)
