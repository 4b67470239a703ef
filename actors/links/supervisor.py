"""The reconnection supervisor: one link worker per paired device, and the node's door to them.

:class:`LinksActor` is a LoopActor, a permanent child of the node's root
supervisor started before the listener (which asks it, through
``ctx.links``, whom to admit on the link ALPN). It holds the table of
devices that may have a link, loaded from the registry when it starts and
kept current by the pairing sessions (:meth:`LinksActor.peer_paired`), by
``Node.unpair`` and by its workers' reports:

* every CONFIRMED device, and every REVOKED device we must still tell that
  it was unpaired (``unpair_pending``; admitted only to receive the unpair);
* for each, one :class:`~quicpair.actors.links.worker.LinkWorker` child actor owning
  that peer's link, named ``link-<fingerprint>``.

**Dial rule, computed once.** Whether this node dials a peer is
``should_dial(local, peer)`` (the lower NodeId dials), computed when the
device enters the table and logged once (``link.role``, role=dialer or
listener); a worker restart reuses it. It never changes while the node
runs, and since it depends on nothing but the two NodeIds, the peer
computes the complementary answer (DESIGN.md failure #5).

**Restart notices** (protocol/notice.py) arrive on the node's port; the
listener hands them to :meth:`notice`, on the loop: the sender must be in the
table and the tag must prove its pairing secret, else the datagram is dropped
(counted ``link.notices_refused``); a valid one goes to the peer's worker.

**Admission is instant** (the listener calls :meth:`admit` on the loop in
the middle of a handshake): a table lookup. Unknown or unpaired NodeIds are
refused with UNKNOWN_PEER; a paired one whose worker is being restarted
with BUSY (it retries), never with UNKNOWN_PEER, which a peer delivering an
unpair takes as "it no longer knows me".

**Supervision of workers.** A worker that crashes (an exception in a
handler) closes its connections with INTERNAL_ERROR and is restarted after
``[link] backoff_min``; sends that arrive meanwhile wait for the new
incarnation. More than :data:`MAX_WORKER_RESTARTS` crashes within
:data:`RESTART_PERIOD` seconds escalate: this actor fails, and the root
supervisor restarts it (with the listener after it, rest_for_one).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pykka import ActorDeadError, ActorRef

from quicpair.actors.context import NodeContext
from quicpair.actors.kernel.exits import ChildExited, Supervised, supervised_by
from quicpair.actors.kernel.logs import get_logger
from quicpair.actors.kernel.loopactor import ActorTimer, LoopActor, Shutdown
from quicpair.actors.kernel.replies import call_async
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
    Settleable,
    StatusChanged,
    UnpairDelivered,
    UnpairRequest,
    WorkerSpec,
)
from quicpair.actors.links.worker import LinkWorker
from quicpair.actors.registry.actor import DeviceRecord, DeviceState
from quicpair.actors.transport.quic_link import QuicLink
from quicpair.protocol.codes import format_address
from quicpair.protocol.dialrule import should_dial
from quicpair.protocol.errors import ErrorCode, LocalProtocolError, QuicpairError, RegistryError
from quicpair.protocol.identity import NodeId
from quicpair.protocol.notice import RestartNotice

__all__ = [
    "ADDRESS_POLL",
    "MAX_WORKER_RESTARTS",
    "RESTART_PERIOD",
    "LinksActor",
    "PeerPaired",
    "UnpairCommand",
    "load_link_records",
]

#: Worker crashes tolerated within RESTART_PERIOD before this actor gives up (escalates).
MAX_WORKER_RESTARTS = 5
RESTART_PERIOD = 10.0
#: How often our own direct addresses are compared with the last announced ones. Reading
#: the interfaces costs ~1 ms; a moved device is otherwise found by its peer via mDNS.
ADDRESS_POLL = 2.0
#: Bound on reading the registry when the actor starts (in the supervisor's thread).
LOAD_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class PeerPaired:
    """A pairing completed (both sides committed): start or replace the peer's worker."""

    #: The confirmed record.
    record: DeviceRecord


@dataclass(frozen=True, slots=True)
class UnpairCommand:
    """``Node.unpair``: revoke the pairing durably, then tell the peer (now or at next contact)."""

    #: The device to unpair.
    peer: NodeId
    #: Settled once the revocation is durable (or with the error: not paired, registry failed).
    revoked: concurrent.futures.Future[None]
    #: Settled with True once the peer was told.
    delivered: concurrent.futures.Future[bool]


@dataclass(frozen=True, slots=True)
class _Revoked:
    #: The command this answers.
    command: UnpairCommand
    #: The registry's failure, if any.
    error: BaseException | None


@dataclass(frozen=True, slots=True)
class _RestartWorker:
    #: The peer whose worker crashed.
    peer: NodeId


@dataclass(slots=True, eq=False)
class _Peer:
    """One row of the table."""

    record: DeviceRecord
    dials: bool
    unpairing: bool
    name: str
    ref: ActorRef[Any] | None = None
    status: LinkStatus | None = None
    ever_up: bool = False
    just_paired: bool = False
    #: Loaded when this actor started (the node, most likely, just started): its first
    #: worker sends restart notices as the waiting side; a restarted worker does not.
    node_started: bool = False
    held: list[Any] = field(default_factory=list)  # messages for a worker being restarted
    waiters: list[concurrent.futures.Future[bool]] = field(default_factory=list)


def load_link_records(ctx: NodeContext, timeout: float = LOAD_TIMEOUT) -> list[DeviceRecord]:
    """The devices that get a link worker: confirmed ones and unpairs still to deliver.

    Blocking: call it from a supervisor's thread (the ChildSpec's start), never on the loop.
    """
    proxy = ctx.require_registry().proxy()
    confirmed: list[DeviceRecord] = proxy.list([DeviceState.CONFIRMED]).get(timeout=timeout)
    unpairs: list[DeviceRecord] = proxy.pending_unpairs().get(timeout=timeout)
    return confirmed + unpairs


class LinksActor(Supervised, LoopActor):
    """The reconnection supervisor; see the module docstring."""

    def __init__(self, ctx: NodeContext, records: list[DeviceRecord]) -> None:
        super().__init__()
        self.ctx = ctx
        self.log = (ctx.log or get_logger()).bind(actor="links")
        self._records = list(records)
        self._peers: dict[NodeId, _Peer] = {}
        self._forced = ctx.settings.testing.force_simultaneous_dial
        self._crashes: collections.deque[float] = collections.deque()
        self._addresses: list[str] | None = None
        self._poll: ActorTimer | None = None

    # -- lifecycle ------------------------------------------------------------------

    def on_start(self) -> None:
        self.ctx.links = self
        for record in self._records:
            self._add(record, node_started=True)
        self._records = []
        self._poll = self.call_later(ADDRESS_POLL, self._poll_addresses)
        self.log.info("links.started", peers=len(self._peers))

    def on_stop(self) -> None:
        self._stop_all()

    def on_failure(self, *exc_info: Any) -> None:
        self._stop_all()

    def _stop_all(self) -> None:
        if self.ctx.links is self:
            self.ctx.links = None
        for peer in list(self._peers):
            self._drop(peer, delivered=False)

    # -- the listener's hooks (on the loop, instant) -------------------------------------

    def admit(self, peer: NodeId) -> ErrorCode | None:
        """None admits a link connection from ``peer``; else the code to refuse it with."""
        entry = self._peers.get(peer)
        if entry is None:
            return ErrorCode.UNKNOWN_PEER
        if entry.ref is None:
            return ErrorCode.BUSY  # its worker is restarting: come back soon
        return None

    def notice(self, datagram: bytes, addr: Any) -> None:
        """A restart notice arrived on our port (on the loop): check it, pass it to the worker."""
        parsed = RestartNotice.parse(datagram)
        entry = None if parsed is None else self._peers.get(parsed.sender)
        if (
            parsed is None
            or entry is None
            or entry.unpairing
            or not parsed.verify(entry.record.pairing_secret, self.ctx.identity.node_id)
        ):
            self.ctx.counters.incr("link.notices_refused")
            return
        self._forward(parsed.sender, Notice(format_address(str(addr[0]), int(addr[1]))))

    def inbox_room(self) -> None:
        """The application's inbox has room again (thread-safe): receiving may go on."""
        self.actor_ref.tell(InboxRoom())

    def accepted(self, link: QuicLink) -> None:
        """An admitted link connection: hand it to its peer's worker."""
        entry = self._peers.get(link.peer)
        if entry is None or entry.ref is None:
            link.close(ErrorCode.BUSY, "no link worker for this peer right now")
            return
        try:
            entry.ref.tell(Accepted(link))
        except ActorDeadError:
            link.close(ErrorCode.BUSY, "link worker stopped")

    # -- entry points for other actors and threads (thread-safe: tells) -------------------

    def peer_paired(self, record: DeviceRecord) -> None:
        """A pairing session committed ``record``: give it a link."""
        self.actor_ref.tell(PeerPaired(record))

    def hint(self, peer: NodeId, endpoints: list[str]) -> None:
        """Discovery saw ``peer`` at ``endpoints``: a hint to dial now."""
        self.actor_ref.tell(Hint(peer, tuple(endpoints)))

    def statuses(self) -> list[LinkStatus]:
        """Every paired device's link, in NodeId order (call through a proxy)."""
        out = []
        for peer in sorted(self._peers):
            entry = self._peers[peer]
            out.append(
                entry.status
                or LinkStatus(peer=peer, role="dialer" if entry.dials else "listener", state="down")
            )
        return out

    def worker_refs(self) -> dict[NodeId, ActorRef[Any]]:
        """The running link workers by peer (call through a proxy); for fault injection."""
        return {peer: entry.ref for peer, entry in self._peers.items() if entry.ref is not None}

    # -- messages -------------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, SendRequest):
            self._forward(message.peer, message, missing=(message.future,))
        elif isinstance(message, SendBatch):
            self._forward(message.peer, message, missing=tuple(r.future for r in message.requests))
        elif isinstance(message, Hint):
            self._forward(message.peer, message)
        elif isinstance(message, InboxRoom):
            for peer in list(self._peers):
                self._forward(peer, message)
        elif isinstance(message, StatusChanged):
            entry = self._peers.get(message.status.peer)
            if entry is not None:
                entry.status = message.status
                entry.ever_up = entry.ever_up or message.status.state == "up"
        elif isinstance(message, RecordChanged):
            entry = self._peers.get(message.record.node_id)
            if entry is not None:
                entry.record = message.record
        elif isinstance(message, PeerPaired):
            self._on_paired(message.record)
        elif isinstance(message, UnpairCommand):
            self._on_unpair(message)
        elif isinstance(message, _Revoked):
            self._on_revoked(message)
        elif isinstance(message, UnpairDelivered | PeerUnpairedUs):
            self._drop(message.peer, delivered=True)
        elif isinstance(message, ChildExited):
            self._on_child_exited(message)
        elif isinstance(message, _RestartWorker):
            entry = self._peers.get(message.peer)
            if entry is not None and entry.ref is None:
                self._start_worker(entry)
                self.log.info("actor.restarted", peer=message.peer.fingerprint)
        else:
            raise TypeError(f"links got an unexpected message {message!r}")
        return None

    def _forward(self, peer: NodeId, message: Any, missing: Sequence[Settleable] = ()) -> None:
        entry = self._peers.get(peer)
        if entry is None:
            for future in missing:
                if future.set_running_or_notify_cancel():
                    future.set_exception(
                        LocalProtocolError(
                            ErrorCode.UNKNOWN_PEER, f"{peer.fingerprint} is not a paired device"
                        )
                    )
            return
        if entry.ref is None:
            entry.held.append(message)
            return
        try:
            entry.ref.tell(message)
        except ActorDeadError:
            entry.held.append(message)  # its ChildExited is on the way; the restart gets it

    # -- the table ---------------------------------------------------------------------------

    def _add(self, record: DeviceRecord, *, just_paired: bool = False, node_started: bool = False) -> None:
        peer = record.node_id
        dials = should_dial(self.ctx.identity.node_id, peer)
        unpairing = record.state is DeviceState.REVOKED
        entry = _Peer(
            record=record,
            dials=dials,
            unpairing=unpairing,
            name=f"link-{peer.fingerprint}",
            just_paired=just_paired,
            node_started=node_started,
        )
        self._peers[peer] = entry
        self.log.info(
            "link.role",
            peer=peer.fingerprint,
            role="dialer" if dials else "listener",
            forced_dial=self._forced and not dials,
            unpairing=unpairing,
        )
        self._start_worker(entry)

    def _start_worker(self, entry: _Peer) -> None:
        spec = WorkerSpec(
            record=entry.record,
            dials=entry.dials,
            forced=self._forced,
            was_up=entry.ever_up,
            unpairing=entry.unpairing,
            just_paired=entry.just_paired and not entry.ever_up,
            node_started=entry.node_started,
            parent=self.actor_ref,
        )
        entry.node_started = False  # a restart of this worker is not a restart of the node
        with supervised_by(self.actor_ref, entry.name, "links"):
            entry.ref = LinkWorker.start_on(self.loop_thread, self.ctx, spec)
        held, entry.held = entry.held, []
        for message in held:
            entry.ref.tell(message)

    def _drop(self, peer: NodeId, *, delivered: bool) -> None:
        """Forget ``peer`` (unpaired, or we stop): stop its worker, answer unpair waiters."""
        entry = self._peers.pop(peer, None)
        if entry is None:
            return
        for waiter in entry.waiters:
            if not waiter.done():
                waiter.set_result(delivered)
        for message in entry.held:
            requests = message.requests if isinstance(message, SendBatch) else (message,)
            for request in requests:
                if isinstance(request, SendRequest) and request.future.set_running_or_notify_cancel():
                    request.future.set_exception(
                        LocalProtocolError(ErrorCode.UNPAIRED, f"{peer.fingerprint} is no longer paired")
                    )
        if entry.ref is not None:
            ref, entry.ref = entry.ref, None
            with contextlib.suppress(ActorDeadError):  # it is gone already
                ref.tell(Shutdown())

    def _on_paired(self, record: DeviceRecord) -> None:
        old = self._peers.get(record.node_id)
        if old is not None:
            if old.record.pairing_id == record.pairing_id and not old.unpairing:
                return  # the same pairing, reported twice (a resolved in-doubt joiner)
            self.log.info("link.repaired", peer=record.node_id.fingerprint)
            self._drop(record.node_id, delivered=False)
        self._add(record, just_paired=True)

    # -- unpair ------------------------------------------------------------------------------

    def _on_unpair(self, command: UnpairCommand) -> None:
        entry = self._peers.get(command.peer)
        if entry is None:
            command.revoked.set_exception(
                LocalProtocolError(
                    ErrorCode.UNKNOWN_PEER, f"{command.peer.fingerprint} is not a paired device"
                )
            )
            return
        if entry.unpairing:
            command.revoked.set_result(None)
            entry.waiters.append(command.delivered)
            return
        ref = self.actor_ref

        def done(fut: asyncio.Future[Any]) -> None:
            error = asyncio.CancelledError() if fut.cancelled() else fut.exception()
            try:
                ref.tell(_Revoked(command, error))
            except ActorDeadError:
                command.revoked.set_exception(QuicpairError("the node stopped during the unpair"))

        call_async(
            self.ctx.require_registry(), "revoke", command.peer, self.ctx.wall_clock(), True
        ).add_done_callback(done)

    def _on_revoked(self, message: _Revoked) -> None:
        command = message.command
        if message.error is not None:
            # A registry failure stays one (the CLI says so, exit status 6).
            kind = RegistryError if isinstance(message.error, RegistryError) else QuicpairError
            command.revoked.set_exception(kind(f"could not unpair: {message.error}"))
            return
        command.revoked.set_result(None)
        entry = self._peers.get(command.peer)
        if entry is None:  # the peer unpaired us meanwhile: nothing left to tell it
            command.delivered.set_result(True)
            return
        entry.unpairing = True
        entry.waiters.append(command.delivered)
        self.log.info("link.unpair_requested", peer=command.peer.fingerprint)
        self._forward(command.peer, UnpairRequest())

    # -- worker supervision ------------------------------------------------------------------

    def _on_child_exited(self, message: ChildExited) -> None:
        entry = next((e for e in self._peers.values() if e.name == message.name), None)
        if entry is None or entry.ref is None or entry.ref.actor_urn != message.ref.actor_urn:
            return  # stale: a worker we stopped on purpose, or an older incarnation
        entry.ref = None
        now = self.ctx.clock()
        self._crashes.append(now)
        while self._crashes and now - self._crashes[0] >= RESTART_PERIOD:
            self._crashes.popleft()
        if len(self._crashes) > MAX_WORKER_RESTARTS:
            raise QuicpairError(
                f"link workers crashed more than {MAX_WORKER_RESTARTS} times within {RESTART_PERIOD} s; "
                f"the last one was {message.name} ({message.reason!r})"
            )
        delay = self.ctx.settings.link.backoff_min
        self.log.warning(
            "actor.restart_scheduled", actor=message.name, delay=delay, reason=repr(message.reason)
        )
        self.call_later(delay, self.actor_ref.tell, _RestartWorker(entry.record.node_id))

    # -- our addresses -----------------------------------------------------------------------

    def _poll_addresses(self) -> None:
        self._poll = self.call_later(ADDRESS_POLL, self._poll_addresses)
        current = self.ctx.direct_addresses()
        previous, self._addresses = self._addresses, current
        if previous is None or previous == current or not current:
            return
        self.log.info("link.addresses_changed", addresses=current)
        for peer in list(self._peers):
            self._forward(peer, AddressesChanged(tuple(current)))
