"""One paired peer's link: :class:`LinkWorker`, a child of the links supervisor (actors/links/supervisor.py).

The worker owns everything about one peer's link: its connections (normally
exactly one, ALPN ``quicpair/link/1``, one stream; each a
:class:`~quicpair.actors.links.conn.LinkConn`), the dial loop and its backoff, the
acknowledged delivery of messages both ways (:class:`~quicpair.actors.links.delivery.PeerDelivery`),
the address bookkeeping and the delivery of an unpair. docs/LINKS.md explains
the decisions; in short:

* **Only the node with the lower NodeId dials** (``spec.dials``, computed
  once by the supervisor); the other only accepts. ``[testing]
  force_simultaneous_dial`` makes both dial until one of their own dials got
  through, which is how the tests make duplicates.
* **Which of two connections is kept**, the same on both ends, and how the
  other one is retired without losing a message: actors/links/choice.py.
* **Up** from the first sealed message the peer sends on the kept connection
  (it proves the pairing secret; only then are its addresses persisted and
  the address recorded as worked or observed). **Down** when no kept
  connection is left and none is being set up. Replacing the kept connection
  by a newer one is not a down.
* **A dead peer** is seen by the transport (actors/transport/quic_link.py): its
  stateless reset (it restarted: PEER_RESTARTED, redial at once), probe
  timeouts in a row (it vanished), or the idle timeout (the waiting side, which
  sends no keep-alive of its own).
* **Redial** (dialer only): faults back off (actors/kernel/backoff.py);
  GOING_AWAY, a duplicate or a clean close redial after ``backoff_min``
  without counting an attempt, a stateless reset at once.
* **An announcement never replaces a working connection by itself.** An mDNS
  announcement of the peer (a hint) or its restart notice while the link is up
  first checks the connection in use (one acknowledged PING within
  ``[link] liveness_timeout``); only one that does not answer is replaced. At
  most one such check per :data:`CHECK_INTERVAL` per peer, whatever the
  announced address. While down, a hint or a notice dials at once.
* **The waiting side announces its restarts** (actors/links/notices.py): the
  dialer checks and redials within a round trip instead of at its next packet.
* **Which pairing**: the hellos carry each side's pairing key id; two different
  ids (a re-pair one side has not seen decided) fail the connection with
  PAIRING_MISMATCH at once, and the node resolves the pairing it holds in doubt
  (``ctx.pairing_mismatch``) instead of looping on undecryptable boxes.
* **Unpair**: ours goes sealed on the kept (or next) connection and counts as
  delivered when the peer closes with UNPAIRED, or refuses us as
  UNKNOWN_PEER; the peer's is made durable (revoke) before we close with
  UNPAIRED, which is our acknowledgement.

The worker starts by reading its delivery state from the registry (the receive
mark and the durable sends queued for the peer); messages that arrive before
that are handled right after it, in order.
"""

from __future__ import annotations

import asyncio
from typing import Any

from quicpair.actors.context import NodeContext
from quicpair.actors.kernel.exits import Supervised
from quicpair.actors.kernel.logs import get_logger
from quicpair.actors.kernel.loopactor import ActorTimer, LoopActor
from quicpair.actors.kernel.replies import call_async
from quicpair.actors.links.choice import LinkConns
from quicpair.actors.links.conn import LinkConn
from quicpair.actors.links.delivery import PeerDelivery
from quicpair.actors.links.dial import SOURCE_HINT, SOURCE_MDNS, SOURCE_STORED, DialDone, DialLoop, Found
from quicpair.actors.links.messages import (
    Accepted,
    AddressesChanged,
    Hint,
    InboxRoom,
    LinkStatus,
    Notice,
    PeerUnpairedUs,
    RecordChanged,
    SendBatch,
    SendRequest,
    StatusChanged,
    UnpairDelivered,
    UnpairRequest,
    WorkerSpec,
    Written,
    tell_or_drop,
)
from quicpair.actors.links.notices import NoticeSender
from quicpair.actors.registry.actor import DeliveryState, DeviceRecord
from quicpair.actors.transport.events import ConnClosed, ConnData, ConnReset
from quicpair.actors.transport.quic_link import QuicLink
from quicpair.protocol.addresses import announced_addresses, dialable_observed
from quicpair.protocol.errors import (
    ErrorCode,
    LocalProtocolError,
    ProtocolError,
    QuicpairError,
    RemoteProtocolError,
    SealError,
)
from quicpair.protocol.keys import key_id
from quicpair.protocol.link import (
    AckReceived,
    AddressesReceived,
    AppDataReceived,
    LinkChannel,
    LinkEstablished,
    UnpairReceived,
)

__all__ = ["CHECK_INTERVAL", "COMMIT_RETRY", "MAX_CONNECTIONS", "UNPAIR_ACK_TIMEOUT", "LinkWorker"]

#: How long we wait for the peer to acknowledge our LinkUnpair (one fsync and a close).
UNPAIR_ACK_TIMEOUT = 5.0
#: Connections one peer may hold with us at once (normally 1; 2 during a duplicate).
MAX_CONNECTIONS = 4
#: At most one liveness check or announcement-triggered dial per this many seconds per
#: peer: forged or replayed announcements cost at most that (module docstring).
CHECK_INTERVAL = 1.0
#: Retry delay for a just-paired peer that has not committed yet: its commit is one
#: fsync away (a few ms on a local disk), so a few retries cover it.
COMMIT_RETRY = 0.05

_NOT_FAULTS = (
    ErrorCode.NO_ERROR,
    ErrorCode.GOING_AWAY,
    ErrorCode.DUPLICATE_CONNECTION,
    ErrorCode.PEER_RESTARTED,
)


class _Alive:
    """The answer to a liveness check of connection ``key``."""

    __slots__ = ("alive", "endpoints", "key", "why")

    def __init__(self, key: int, alive: bool, why: str, endpoints: list[str]) -> None:
        self.key, self.alive, self.why, self.endpoints = key, alive, why, endpoints


class LinkWorker(Supervised, LoopActor):
    """Owns one paired peer's link; see the module docstring."""

    def __init__(self, ctx: NodeContext, spec: WorkerSpec) -> None:
        super().__init__()
        self.ctx = ctx
        self.peer = spec.record.node_id
        self.local = ctx.identity.node_id
        self._record: DeviceRecord = spec.record
        self._key_id = key_id(spec.record.pairing_id)
        self._dials = spec.dials or spec.forced
        self._forced = spec.forced  # until one forced dial succeeded (see _may_dial)
        self._role = "dialer" if spec.dials else "listener"
        self._was_up = spec.was_up
        self._unpairing = spec.unpairing
        self._unpaired = False  # the peer told us; we only close and end
        self._parent = spec.parent
        self.log = (ctx.log or get_logger()).bind(
            peer=self.peer.fingerprint, peer_name=spec.record.name, role=self._role
        )
        self._conns = LinkConns(self.local, self.peer, self.call_later, self._retired)
        self._dialer = DialLoop(
            ctx,
            self.peer,
            role=self._role,
            log=self.log,
            call_later=self.call_later,
            tell=self.actor_ref.tell,
        )
        self._delivery = PeerDelivery(
            peer=self.peer,
            settings=ctx.settings.link,
            next_seq=ctx.next_send_seq,
            clock=ctx.clock,
            wall_clock=ctx.wall_clock,
            call_later=self.call_later,
            write=self._write,
            inbox=ctx.inbox,
            log=self.log,
        )
        self._notices = NoticeSender(
            local=self.local,
            peer=self.peer,
            secret=spec.record.pairing_secret,
            boot=ctx.boot,
            port=lambda: ctx.port,
            call_later=self.call_later,
            log=self.log,
            count=lambda: ctx.counters.incr("link.notices_sent"),
        )
        self._node_started = spec.node_started
        self._drop_notice = ctx.settings.testing.drop_restart_notice
        self._loaded = False
        self._stash: list[Any] = []
        self._up = False
        self._sending_on: int | None = None  # the connection the delivery's in-flight sends went on
        self._hints: list[str] = []
        self._last_check = float("-inf")
        self._checking = False
        # 2PC: the initiator commits first, so its first dials may reach the joiner a
        # few ms before the joiner commits and be refused UNKNOWN_PEER. Until then
        # (bounded by the pairing step timeout) such a refusal is retried promptly.
        self._commit_grace = ctx.clock() + ctx.settings.pairing.step_timeout if spec.just_paired else 0.0
        self._unpair_timer: ActorTimer | None = None
        self._last_status: LinkStatus | None = None
        self._last_error: str | None = None
        self._last_up: float | None = None
        self._up_since: float | None = None

    # -- lifecycle ------------------------------------------------------------------

    def on_start(self) -> None:
        self._report()
        self._write("delivery_state", "delivery_state", self.peer)

    def _resume(self, state: DeliveryState) -> None:
        """The delivery state is read: go, then handle what arrived meanwhile, in order."""
        self._delivery.resume(state, self._record.pairing_id)
        self._loaded = True
        if self._unpairing:
            self._begin_unpair()
        elif self._dials:
            self._dial_now("start")
        if self._node_started and not self._dials and not self._unpairing and not self._drop_notice:
            observed = [self._record.observed_address] if self._record.observed_address else []
            self._notices.start([*self._record.addresses, *observed])
        stash, self._stash = self._stash, []
        for message in stash:
            self.on_receive(message)

    def on_stop(self) -> None:
        self._end(ErrorCode.GOING_AWAY, "node shutting down", "the node stopped")

    def on_failure(self, *exc_info: Any) -> None:
        self.log.error("link.worker_crashed", error=repr(exc_info[1] if len(exc_info) > 1 else None))
        self._end(ErrorCode.INTERNAL_ERROR, "link worker failed", "the link worker failed")

    def _end(self, code: ErrorCode, reason: str, why: str) -> None:
        self._dialer.stop()
        self._notices.stop()
        for conn in self._conns:
            conn.close(code, reason)
        self._delivery.end(why)

    # -- messages ---------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        if not self._loaded:
            if isinstance(message, Written) and message.what == "delivery_state":
                if message.error is not None:
                    raise QuicpairError(f"could not read the link's delivery state: {message.error}")
                self._resume(message.result)
                self._report()
            else:
                self._stash.append(message)
            return None
        if isinstance(message, ConnData):
            self._on_data(message)
        elif isinstance(message, ConnClosed):
            self._on_closed(message)
        elif isinstance(message, ConnReset):
            conn = self._conns.get(message.key)
            if conn is not None:
                self.log.info("link.stream_reset", conn=conn.id, code=message.code.name)
                conn.close(message.code, "the peer reset the link stream")
        elif isinstance(message, DialDone):
            self._on_dial_done(message)
        elif isinstance(message, Written):
            self._on_written(message)
        elif isinstance(message, SendRequest):
            self._on_send(message)
        elif isinstance(message, SendBatch):
            for request in message.requests:
                self._on_send(request, flush=False)
            self._flush()
        elif isinstance(message, Accepted):
            self._on_accepted(message.link)
        elif isinstance(message, Hint):
            self._on_hint(list(message.endpoints))
        elif isinstance(message, Found):
            self._on_found(list(message.endpoints))
        elif isinstance(message, Notice):
            self._on_notice(message.address)
        elif isinstance(message, _Alive):
            self._on_alive(message)
        elif isinstance(message, InboxRoom):
            self._delivery.record()
        elif isinstance(message, UnpairRequest):
            self._begin_unpair()
        elif isinstance(message, AddressesChanged):
            self._announce(list(message.addresses))
        else:
            raise TypeError(f"link worker got an unexpected message {message!r}")
        self._report()
        return None

    # -- connections: in --------------------------------------------------------------

    def _make_channel(self, local_is_dialer: bool, link: QuicLink) -> LinkChannel:
        return LinkChannel(
            local=self.local,
            peer=self.peer,
            local_is_dialer=local_is_dialer,
            pairing_secret=self._record.pairing_secret,
            key_id=self._key_id,
            addresses=self.ctx.addresses_for(link),
            rand=self.ctx.rand,
        )

    def _adopt(self, link: QuicLink, *, dialed: bool, address: str, source: str) -> LinkConn | None:
        if self._unpaired or len(self._conns) >= MAX_CONNECTIONS:
            link.close(ErrorCode.BUSY, "too many connections" if not self._unpaired else "unpaired")
            return None
        conn = LinkConn(
            link,
            dialed=dialed,
            address=address,
            source=source,
            tell=self.actor_ref.tell,
            make_channel=lambda local_is_dialer: self._make_channel(local_is_dialer, link),
        )
        self._conns.add(conn)
        conn.timer = self.call_later(self.ctx.settings.link.dial_timeout, self._hello_timeout, conn.key)
        return conn

    def _on_accepted(self, link: QuicLink) -> None:
        self.ctx.counters.incr("link.connections_accepted")
        conn = self._adopt(link, dialed=False, address=LinkConn.remote_of(link), source="accepted")
        if conn is not None:
            self.log.info("link.accepted", conn=conn.id, address=conn.address)

    def _on_data(self, message: ConnData) -> None:
        conn = self._conns.get(message.key)
        if conn is None:
            return
        if message.data and not conn.adopt_stream(message.stream_id):
            self._protocol_error(conn, RemoteProtocolError(ErrorCode.PROTOCOL_VIOLATION, "a second stream"))
            return
        if message.data and conn.channel is not None:
            conn.feed(message.data)
            duplicate = False
            while self._conns.get(conn.key) is conn and conn.is_open:
                try:
                    event = conn.next_event()
                except ProtocolError as error:  # the peer's bytes broke the protocol
                    self._protocol_error(conn, error)
                    return
                if event is None:
                    break
                duplicate = self._on_event(conn, event) or duplicate
            self._delivery.record()
            if duplicate and self._delivery.mark:
                # A payload we had taken came again: our ack was lost with a connection.
                self._send_ack(self._delivery.mark)
        if message.ended and self._conns.get(conn.key) is conn and self._conns.peer_finished(conn):
            self._check_down(ErrorCode.DUPLICATE_CONNECTION, "retired by the peer", True)

    def _on_event(self, conn: LinkConn, event: Any) -> bool:
        """Act on one channel event; True when it was a payload we had already taken."""
        if isinstance(event, LinkEstablished):
            # The hello deadline keeps running: the link is up only once the peer's first
            # sealed message opens (PROTOCOL.md 11.2), and a peer that sends none is closed.
            self.log.debug("link.established", conn=conn.id, dialed=conn.dialed, keys=repr(event.keys))
            if self._unpairing:
                self._send_unpair(conn)
                return False
            assert conn.channel is not None
            # Each side's first sealed message is its LinkAddresses (PROTOCOL.md 11.2).
            conn.send(conn.channel.send_addresses(self.ctx.addresses_for(conn.link)))
            self._resolve()
        elif isinstance(event, AddressesReceived):
            self._authenticated(conn, event.addresses)
        elif isinstance(event, AppDataReceived):
            self._authenticated(conn, None)
            if not self._delivery.take(event.seq, event.data):
                return True
            self.ctx.counters.incr("link.messages_received")
            if self._delivery.unwritten_overflow:
                self._protocol_error(
                    conn, RemoteProtocolError(ErrorCode.PROTOCOL_VIOLATION, "payloads far beyond our acks")
                )
        elif isinstance(event, AckReceived):
            self._authenticated(conn, None)
            self._delivery.acked(event.upto)
            self._flush()
        elif isinstance(event, UnpairReceived):
            self._on_peer_unpair(conn)
        return False

    def _protocol_error(self, conn: LinkConn, error: ProtocolError) -> None:
        if isinstance(error, SealError):
            self.ctx.counters.incr("link.messages_rejected")
            self.log.warning("link.message_rejected", conn=conn.id, code=error.code.name, error=str(error))
        elif error.code is ErrorCode.PAIRING_MISMATCH:
            self._pairing_mismatch(conn.id, str(error))
        else:
            self.log.warning("link.protocol_error", conn=conn.id, code=error.code.name, error=str(error))
        self._last_error = f"{error.code.name}: {error}"
        conn.close(error.code, str(error)[:200])

    def _pairing_mismatch(self, conn: str, detail: str) -> None:
        self.ctx.counters.incr("link.pairing_mismatches")
        self.log.warning("link.pairing_mismatch", conn=conn, detail=detail)
        if self.ctx.pairing_mismatch is not None:
            self.ctx.pairing_mismatch(self.peer)

    def _hello_timeout(self, key: int) -> None:
        conn = self._conns.get(key)
        if conn is not None and not conn.authenticated and not conn.retiring:
            what = "no sealed message" if conn.established else "no link hello"
            self.log.warning("link.hello_timeout", conn=conn.id, established=conn.established)
            conn.close(ErrorCode.TIMEOUT, f"{what} in time")

    # -- which connection is kept (actors/links/choice.py) ----------------------------------

    def _retired(self, conn: LinkConn, kept: LinkConn | None, reason: str) -> None:
        self.ctx.counters.incr("link.duplicates_closed")
        self.log.info("link.duplicate_closed", conn=conn.id, kept=kept and kept.id, reason=reason)

    def _resolve(self) -> None:
        old, keep = self._conns.resolve()
        if keep is None:
            return
        if old is not None and old is not keep and self._up and old.dialer == keep.dialer:
            self.ctx.counters.incr("link.reconnects")
            self.log.info("link.replaced", conn=keep.id, old_conn=old.id, address=keep.address)
        if not self._up and keep.authenticated:
            self._go_up(keep)
        else:
            self._flush()

    def _on_closed(self, message: ConnClosed) -> None:
        was_kept = self._conns.primary is not None and self._conns.primary.key == message.key
        conn = self._conns.remove(message.key)
        if conn is None:
            return
        self.log.info(
            "link.connection_closed",
            conn=conn.id,
            code=message.code.name,
            by_peer=message.by_peer,
            reason=message.reason,
        )
        if message.code.is_fault or message.code is ErrorCode.PEER_RESTARTED:
            self._last_error = f"{message.code.name}: {message.reason}"
        if self._unpairing and message.by_peer and message.code is ErrorCode.UNPAIRED:
            self._unpair_delivered("the peer closed with UNPAIRED")
            return
        if message.by_peer and message.code is ErrorCode.PAIRING_MISMATCH:
            self._pairing_mismatch(conn.id, message.reason)
        if was_kept:
            self._resolve()
        self._check_down(message.code, message.reason, message.by_peer)
        self._ensure_dialing(message.code)

    def _check_down(self, code: ErrorCode, reason: str, by_peer: bool) -> None:
        if self._conns.primary is not None or not self._up or self._conns.setting_up():
            return  # still kept, never up, or a connection being set up may take over
        self._up = False
        self._last_up = self.ctx.wall_clock()
        self.ctx.counters.incr("link.down")
        self.log.info(
            "link.down", code=code.name, reason=reason, by_peer=by_peer, fault=code not in _NOT_FAULTS
        )

    # -- up ------------------------------------------------------------------------------

    def _authenticated(self, conn: LinkConn, addresses: tuple[str, ...] | None) -> None:
        if addresses is None and conn.authenticated:
            return  # every later message of the connection: nothing announced, nothing new
        first = not conn.authenticated
        conn.authenticated = True
        if first and not conn.retiring:
            conn.cancel_timer()  # the hello deadline (a retiring one's timer is its linger)
        announced = announced_addresses(
            addresses if addresses is not None else conn.hello_addresses if first else (), peer=conn.address
        )
        if announced:  # an empty list gives nothing to dial: keep what we know
            self._write("addresses", "set_addresses", self.peer, list(announced), self.ctx.wall_clock())
        if first:
            now = self.ctx.wall_clock()
            if conn.dialed:
                self._write("worked", "mark_address_worked", self.peer, conn.address, now)
            else:
                observed = dialable_observed(conn.address, announced)
                if observed is not None:
                    self._write("observed", "record_observed", self.peer, observed, now)
            self._write("record", "get", self.peer)
            if conn is self._conns.primary and not self._up:
                self._go_up(conn)

    def _go_up(self, conn: LinkConn) -> None:
        self._up = True
        self._up_since = self.ctx.wall_clock()
        self._notices.stop()
        self._dialer.backoff.succeeded(self.ctx.clock())
        if not self._forced:
            self._dialer.cancel_retry()
        self.ctx.counters.incr("link.up")
        reconnect, self._was_up = self._was_up, True
        if reconnect:
            self.ctx.counters.incr("link.reconnects")
        self.log.info(
            "link.up",
            conn=conn.id,
            address=conn.address,
            dialed=conn.dialed,
            source=conn.source,
            reconnect=reconnect,
        )
        self._flush()

    # -- dialing -------------------------------------------------------------------------

    def _may_dial(self) -> bool:
        if not self._dials or self._unpaired or self._dialer.running:
            return False
        if self._forced:
            # Test hook: keep dialing until one of OUR dials got through, even
            # though the peer's connection may be up already: that makes the duplicate.
            return not self._conns.dialed_any()
        return not self._conns

    def _ensure_dialing(self, code: ErrorCode) -> None:
        if not self._may_dial() or self._dialer.retry_pending:
            return
        backoff = self._dialer.backoff
        if code is ErrorCode.PEER_RESTARTED:
            self._dial_now("restarted")  # it is back already: its new incarnation answered us
            return
        # The peer went away on purpose, a duplicate: soon, without counting an attempt.
        delay = backoff.min_delay if code in _NOT_FAULTS else backoff.next_delay(self.ctx.clock())
        self._dialer.schedule(delay, code.name, self._dial_now)

    def _dial_now(self, why: str, *, probe: bool = False, extra: list[tuple[str, str]] | None = None) -> None:
        self._dialer.cancel_retry()
        if not (self._may_dial() or (probe and not self._dialer.running and not self._unpaired)):
            return
        stored = self.ctx.dial_order(self._record.addresses)  # families interleaved, zones added
        candidates = [(a, SOURCE_STORED) for a in stored]
        candidates += [(h, SOURCE_HINT) for h in self.ctx.dial_order(self._hints) if h not in stored]
        candidates += extra or []
        self._hints = []
        self._dialer.start(candidates, why)

    def _on_dial_done(self, message: DialDone) -> None:
        if not self._dialer.finished(message):
            return
        if message.dialed is not None:
            dialed = message.dialed
            self._forced = False
            conn = self._adopt(dialed.link, dialed=True, address=dialed.address, source=dialed.source)
            if conn is not None:
                conn.start_as_dialer()
            return
        error = message.error
        code = error.code if isinstance(error, ProtocolError) else None
        self.ctx.counters.incr("link.dials_failed")
        self._last_error = str(error)
        self.log.info("link.dial_failed", code=None if code is None else code.name, error=str(error))
        if self._unpairing and code is ErrorCode.UNKNOWN_PEER:
            self._unpair_delivered("the peer no longer knows us")
        elif self._may_dial():
            now = self.ctx.clock()
            if code is ErrorCode.UNKNOWN_PEER and now < self._commit_grace:
                delay = min(self._dialer.backoff.min_delay, COMMIT_RETRY)  # not a failure yet
            else:
                delay = self._dialer.backoff.next_delay(now)
            self._dialer.schedule(delay, type(error).__name__, self._dial_now)

    # -- announcements: mDNS hints and restart notices -------------------------------------

    def _on_hint(self, endpoints: list[str]) -> None:
        """mDNS saw the peer announce itself (it came up, restarted or moved)."""
        if not self._dials or self._unpaired:
            return
        self._hints = endpoints  # the next round tries them after the stored addresses
        self._announced("hint", endpoints)

    def _on_found(self, endpoints: list[str]) -> None:
        """The background mDNS lookup after a refused round found the peer: dial there now."""
        new = [e for e in endpoints if e not in self._record.addresses]
        if not new or not self._may_dial():
            return
        self._dial_now("mdns", extra=[(e, SOURCE_MDNS) for e in self.ctx.dial_order(new)])

    def _on_notice(self, address: str) -> None:
        """The peer says it restarted (its restart notice, verified by the links supervisor)."""
        self.ctx.counters.incr("link.notices_received")
        if not self._dials or self._unpaired:
            return
        self.log.info("link.notice_received", address=address)
        if address not in self._hints and address not in self._record.addresses:
            self._hints = [*self._hints, address]
        self._announced("notice", [address])

    def _announced(self, why: str, endpoints: list[str]) -> None:
        """The peer announced itself: dial at once while down; check the connection while up."""
        if self._dialer.running:
            return
        now = self.ctx.clock()
        if now - self._last_check < CHECK_INTERVAL or self._checking:
            self.ctx.counters.incr("link.announcements_damped")
            return
        self._last_check = now
        kept = self._conns.primary
        if kept is None:
            self._dialer.backoff.reset()  # the peer is back: no reason to wait any more
            self._dial_now(why)
            return
        # Up, as far as we know: but a peer that restarted (SIGKILL) or moved leaves our
        # connection dead until something tells. One PING tells: a restarted peer answers
        # it with a stateless reset, a live one with an ACK, a vanished one not at all.
        self._checking = True
        self.log.info("link.liveness_check", conn=kept.id, why=why)
        ref = self.actor_ref
        check = kept.link.check_alive(self.ctx.settings.link.liveness_timeout)
        key = kept.key

        def done(fut: asyncio.Future[bool]) -> None:
            alive = not fut.cancelled() and fut.exception() is None and fut.result()
            tell_or_drop(ref, _Alive(key, alive, why, endpoints))

        check.add_done_callback(done)

    def _on_alive(self, message: _Alive) -> None:
        self._checking = False
        conn = self._conns.get(message.key)
        if message.alive or conn is None:
            if conn is not None:
                self.log.info("link.liveness_ok", conn=conn.id, why=message.why)
            return  # a working connection is never replaced by an announcement
        self.ctx.counters.incr("link.liveness_failed")
        self.log.info("link.liveness_failed", conn=conn.id, why=message.why)
        conn.close(ErrorCode.TIMEOUT, "no answer to a liveness check")
        self._dial_now(message.why, probe=True)

    # -- sending -------------------------------------------------------------------------

    def _on_send(self, request: SendRequest, *, flush: bool = True) -> None:
        future = request.future
        if not future.set_running_or_notify_cancel():
            return
        if self._unpairing or self._unpaired:
            future.set_exception(
                LocalProtocolError(ErrorCode.UNPAIRED, f"{self.peer.fingerprint} is unpaired")
            )
            return
        self._delivery.submit(request)
        if flush:
            self._flush()

    def _flush(self) -> None:
        primary = self._conns.primary
        if not self._up or primary is None:
            return
        if self._sending_on != primary.key:
            self._delivery.connection_lost()  # a new connection: what was in flight goes again
            self._sending_on = primary.key
        sent = self._delivery.transmit(self._transmit)
        if sent:
            self.ctx.counters.incr("link.messages_sent", sent)

    def _transmit(self, seq: int, payload: bytes) -> bool:
        """Seal and send on the kept connection; False if it died under us (its close is coming)."""
        conn = self._conns.primary
        assert conn is not None and conn.channel is not None
        return conn.send(conn.channel.send_app(seq, payload))

    def _send_ack(self, mark: int) -> None:
        conn = self._conns.primary
        if conn is not None and conn.channel is not None and conn.established and not self._unpairing:
            conn.send(conn.channel.send_ack(mark))

    def _announce(self, addresses: list[str]) -> None:
        # ``addresses`` only says that ours changed: each peer is told what it can reach.
        for conn in self._conns:
            if conn.established and not conn.retiring and conn.channel is not None and not self._unpairing:
                conn.send(conn.channel.send_addresses(self.ctx.addresses_for(conn.link)))

    # -- unpair ----------------------------------------------------------------------------

    def _begin_unpair(self) -> None:
        self._unpairing = True
        self._notices.stop()
        self._delivery.end("unpaired")
        sent = False
        for conn in self._conns:
            if conn.established and conn.is_open and not sent and not conn.retiring:
                sent = self._send_unpair(conn)
            elif conn.established:
                conn.close(ErrorCode.GOING_AWAY, "unpairing")
        if not sent and self._dials and not self._conns:
            self._dialer.backoff.reset()
            self._dial_now("unpair")

    def _send_unpair(self, conn: LinkConn) -> bool:
        assert conn.channel is not None
        try:
            frame = conn.channel.send_unpair()
        except ProtocolError:
            return False
        if not conn.send(frame):
            return False
        self.log.info("link.unpair_sent", conn=conn.id)
        if self._unpair_timer is None or self._unpair_timer.cancelled():
            self._unpair_timer = self.call_later(UNPAIR_ACK_TIMEOUT, self._unpair_unacknowledged, conn.key)
        return True

    def _unpair_unacknowledged(self, key: int) -> None:
        self._unpair_timer = None
        conn = self._conns.get(key)
        self.log.warning("link.unpair_unacknowledged", conn=None if conn is None else conn.id)
        if conn is not None:
            conn.close(ErrorCode.UNPAIRED, "unpaired (not acknowledged; retried at next contact)")

    def _unpair_delivered(self, how: str) -> None:
        if self._unpair_timer is not None:
            self._unpair_timer.cancel()
        self._unpairing = False
        self._unpaired = True
        self.log.info("link.unpaired", initiated_by="local", delivered=True, how=how)
        self._write("unpair_delivered", "mark_unpair_delivered", self.peer)
        for conn in self._conns:
            conn.close(ErrorCode.UNPAIRED, "unpaired")

    def _on_peer_unpair(self, conn: LinkConn) -> None:
        if self._unpaired:
            return
        self._unpaired = True
        self.ctx.counters.incr("link.unpaired_by_peer")
        self.log.info("link.unpair_received", conn=conn.id)
        self._delivery.end("the peer unpaired this node")
        self._dialer.stop()
        # Durable first: closing with UNPAIRED is our acknowledgement to the peer.
        self._write("revoked", "revoke", self.peer, self.ctx.wall_clock(), False)

    # -- registry ---------------------------------------------------------------------------

    def _write(self, what: Any, method: str, *args: Any) -> None:
        registry = self.ctx.registry
        if registry is None:
            self.actor_ref.tell(Written(what, None, RuntimeError("the registry is not running")))
            return
        ref = self.actor_ref

        def done(fut: asyncio.Future[Any]) -> None:
            error = None if fut.cancelled() else fut.exception()
            result = None if fut.cancelled() or error is not None else fut.result()
            tell_or_drop(ref, Written(what, result, error))

        call_async(registry, method, *args).add_done_callback(done)

    def _on_written(self, message: Written) -> None:
        what = message.what
        if isinstance(what, tuple):  # a durable send's queueing or dequeueing
            self._delivery.written(what, message.result, message.error)
            return
        if what == "mark":
            self._on_mark_written(message)
            return
        if what == "revoked":
            if message.error is not None:
                raise QuicpairError(f"could not revoke the pairing the peer removed: {message.error}")
            self.log.info("link.unpaired", initiated_by="peer", delivered=True)
            for conn in self._conns:
                conn.close(ErrorCode.UNPAIRED, "unpaired by the peer")
            self._tell_parent(PeerUnpairedUs(self.peer))
            return
        if message.error is not None:
            self.log.error("link.registry_failed", what=what, error=repr(message.error))
            if what == "unpair_delivered":
                self._tell_parent(UnpairDelivered(self.peer))
            return
        if what == "unpair_delivered":
            self._tell_parent(UnpairDelivered(self.peer))
        elif what == "record" and isinstance(message.result, DeviceRecord):
            self._record = message.result
            self._tell_parent(RecordChanged(message.result))

    def _on_mark_written(self, message: Written) -> None:
        if message.error is not None:
            # This node cannot record what it takes: it must not acknowledge anything. A
            # crash closes the connections (the peer sends again on the next) and the links
            # supervisor restarts us from the registry.
            self._delivery.mark_written(False)
            raise QuicpairError(f"could not record the receive mark: {message.error}")
        mark = self._delivery.mark_written(bool(message.result))
        if mark is None:
            # The pairing in use changed under us (a re-pair committed): a new worker
            # takes over; nothing of this pairing is delivered or acknowledged any more.
            self.log.info("link.mark_refused", reason="the pairing changed")
            return
        self._send_ack(mark)
        self._delivery.record()

    # -- status ---------------------------------------------------------------------------

    def _report(self) -> None:
        primary = self._conns.primary
        if self._unpairing or self._unpaired:
            state = "unpairing" if self._unpairing else "unpaired"
        elif self._up:
            state = "up"
        elif self._dialer.running or self._conns:
            state = "connecting"
        else:
            state = "down"
        up = self._up and primary is not None
        retry_at = self._dialer.retry_at()
        next_dial = None
        if retry_at is not None:
            next_dial = round(self.ctx.wall_clock() + max(retry_at - self.loop.time(), 0.0), 3)
        status = LinkStatus(
            peer=self.peer,
            role=self._role,
            state=state,
            connection_id=primary.id if up and primary is not None else None,
            connections=self._conns.open_count(),
            remote_address=primary.address if up and primary is not None else None,
            dialed_by=(None if not up or primary is None else ("local" if primary.dialed else "peer")),
            last_error=self._last_error,
            up_since=self._up_since if up else None,
            last_up=None if up else self._last_up,
            next_dial=next_dial,
            in_flight=self._delivery.in_flight,
            waiting=self._delivery.waiting,
        )
        if status != self._last_status:
            self._last_status = status
            self._tell_parent(StatusChanged(status))

    def _tell_parent(self, message: Any) -> None:
        tell_or_drop(self._parent, message)
