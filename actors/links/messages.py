"""The messages between the node, the links supervisor and its link workers, and a link's status.

Every message is a frozen, slotted dataclass (like every actor message of
quicpair), named for what happened or what is asked:

====================  =====================  ==========================================
message               from -> to             meaning
====================  =====================  ==========================================
:class:`SendRequest`  Node -> links -> worker  seal and send one payload (with a deadline)
:class:`SendBatch`    Node -> links -> worker  several SendRequests to one peer (``send_many``)
:class:`UnpairRequest`  links -> worker        the pairing is revoked: tell the peer
:class:`Accepted`     links -> worker          the listener accepted a connection of the peer
:class:`Hint`         discovery -> links -> worker  mDNS saw the peer (at these endpoints)
:class:`Notice`       listener -> links -> worker  the peer's restart notice (verified)
:class:`InboxRoom`    node -> links -> workers     the application's inbox has room again
:class:`AddressesChanged`  links -> worker     our direct addresses changed: announce them
:class:`StatusChanged`  worker -> links        the link's state changed (``Node.links()``)
:class:`RecordChanged`  worker -> links        the peer's record changed (addresses)
:class:`UnpairDelivered`  worker -> links      our unpair reached the peer: forget it
:class:`PeerUnpairedUs`  worker -> links       the peer unpaired us (revoked): forget it
====================  =====================  ==========================================

A ``concurrent.futures.Future`` travels with the requests a caller waits
on; it is settled exactly once by the actor that ends the request. The sends
of a :class:`SendBatch` carry a :class:`TallySlot` instead (a
:class:`Settleable` too): a Future per payload cost ``send_many`` a fifth of
its CPU; the batch's one Future is done when every slot is settled.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from dataclasses import dataclass
from typing import Any, Protocol

from pykka import ActorDeadError, ActorRef

from quicpair.actors.registry.actor import DeviceRecord
from quicpair.actors.transport.quic_link import QuicLink
from quicpair.protocol.identity import NodeId

__all__ = [
    "Accepted",
    "AddressesChanged",
    "Hint",
    "InboxRoom",
    "LinkStatus",
    "Notice",
    "PeerUnpairedUs",
    "RecordChanged",
    "SendBatch",
    "SendRequest",
    "SendTally",
    "Settleable",
    "StatusChanged",
    "TallySlot",
    "UnpairDelivered",
    "UnpairRequest",
    "WorkerSpec",
    "Written",
    "tell_or_drop",
]


@dataclass(frozen=True, slots=True)
class LinkStatus:
    """What ``Node.links()`` tells about one paired peer's link."""

    #: The peer.
    peer: NodeId
    #: This node's role by the dial rule: "dialer" (lower NodeId) or "listener".
    role: str
    #: "up", "connecting", "down", "unpairing" (telling the peer) or "unpaired".
    state: str
    #: The id of the connection in use (the same on both ends), when up.
    connection_id: str | None = None
    #: QUIC connections held with the peer right now (1 when settled; 2 while a duplicate retires).
    connections: int = 0
    #: The peer's ``host:port`` on the connection in use, when up.
    remote_address: str | None = None
    #: Who dialed the connection in use: "local" or "peer", when up.
    dialed_by: str | None = None
    #: Why the last connection or dial ended, for people (None: nothing went wrong yet).
    last_error: str | None = None
    #: While up: since when (Unix time).
    up_since: float | None = None
    #: While not up: when it was last up (Unix time), or None if never.
    last_up: float | None = None
    #: When the next dial is due (Unix time), while this node waits to redial.
    next_dial: float | None = None
    #: Sends in flight unacknowledged, and waiting behind them.
    in_flight: int = 0
    waiting: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (NodeId as text)."""
        return {
            "node_id": self.peer.text,
            "fingerprint": self.peer.fingerprint,
            "role": self.role,
            "state": self.state,
            "connection_id": self.connection_id,
            "connections": self.connections,
            "remote_address": self.remote_address,
            "dialed_by": self.dialed_by,
            "last_error": self.last_error,
            "up_since": self.up_since,
            "last_up": self.last_up,
            "next_dial": self.next_dial,
            "in_flight": self.in_flight,
            "waiting": self.waiting,
        }


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """How the links supervisor starts (and restarts) one peer's worker."""

    #: The peer's record (its secret, addresses), as the registry holds it.
    record: DeviceRecord
    #: This node dials the peer (it has the lower NodeId), computed once by the supervisor.
    dials: bool
    #: ``[testing] force_simultaneous_dial``: dial even as the listener.
    forced: bool
    #: The link was up before (in an earlier incarnation of the worker): the next up is a reconnect.
    was_up: bool
    #: The pairing is revoked here and the peer must still be told.
    unpairing: bool
    #: The pairing completed just now (not loaded at start): the peer may not have
    #: committed yet (2PC: the joiner commits after the initiator).
    just_paired: bool
    #: This node just started (the worker is one of the first, loaded from the registry):
    #: as the waiting side, tell the peer with restart notices (actors/links/notices.py).
    node_started: bool
    #: The links supervisor (reports go there).
    parent: ActorRef[Any]


class Settleable(Protocol):
    """What a send's caller waits on: a ``concurrent.futures.Future[int]`` or a :class:`TallySlot`."""

    def set_running_or_notify_cancel(self) -> bool: ...

    def done(self) -> bool: ...

    def set_result(self, result: int) -> None: ...

    def set_exception(self, exception: BaseException | None) -> None: ...


class SendTally:
    """The outcome of each payload of one :class:`SendBatch`; :attr:`future` is done when all are."""

    def __init__(self, count: int) -> None:
        #: Per payload, in order: its delivery number, the error it failed with, or None (pending).
        self.results: list[int | BaseException | None] = [None] * count
        #: Done (with None) once every payload is settled.
        self.future: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._left = count
        self._lock = threading.Lock()
        if not count:
            self.future.set_result(None)

    def slot(self, index: int) -> TallySlot:
        return TallySlot(self, index)

    @property
    def failed(self) -> bool:
        return any(isinstance(r, BaseException) for r in self.results)

    def _settle(self, index: int, value: int | BaseException) -> None:
        with self._lock:
            if self.results[index] is not None:
                raise concurrent.futures.InvalidStateError(f"payload {index} of the batch is settled")
            self.results[index] = value
            self._left -= 1
            last = not self._left
        if last:
            self.future.set_result(None)


class TallySlot:
    """One payload's place in a :class:`SendTally`; settled once, like a Future (never cancelled)."""

    __slots__ = ("_index", "_tally")

    def __init__(self, tally: SendTally, index: int) -> None:
        self._tally, self._index = tally, index

    def set_running_or_notify_cancel(self) -> bool:
        return True

    def done(self) -> bool:
        return self._tally.results[self._index] is not None

    def set_result(self, result: int) -> None:
        self._tally._settle(self._index, result)

    def set_exception(self, exception: BaseException | None) -> None:
        self._tally._settle(self._index, exception or RuntimeError("failed without an error"))


@dataclass(frozen=True, slots=True)
class SendRequest:
    """Deliver ``payload`` to ``peer``; settle ``future`` with its delivery number, or the error."""

    #: The destination.
    peer: NodeId
    #: The application payload (at most MAX_APP_PAYLOAD bytes).
    payload: bytes
    #: ``time.monotonic()`` after which a send not yet acknowledged is given up (not for ``queue``).
    deadline: float
    #: Settled with the payload's delivery number once the peer acknowledged it (``queue``: once
    #: it is queued durably), or with NotTransmitted / NotAcknowledged / LocalProtocolError.
    future: Settleable
    #: Queue durably: kept in the registry across restarts until the peer acknowledges it.
    queue: bool = False


@dataclass(frozen=True, slots=True)
class SendBatch:
    """Several sends to ``peer`` (``Node.send_many``): one message through the actors, one flush."""

    #: The destination of every request.
    peer: NodeId
    #: In order; each settled as its own :class:`SendRequest`.
    requests: tuple[SendRequest, ...]


@dataclass(frozen=True, slots=True)
class UnpairRequest:
    """The pairing with the worker's peer is revoked (durably): deliver the unpair."""


@dataclass(frozen=True, slots=True)
class Accepted:
    """The listener accepted a link connection from the worker's peer."""

    #: The connection (handshake done, peer admitted).
    link: QuicLink


@dataclass(frozen=True, slots=True)
class Hint:
    """mDNS saw a paired peer announce itself: dial now if the link is down."""

    #: The peer.
    peer: NodeId
    #: Its announced ``host:port`` endpoints.
    endpoints: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Notice:
    """The peer says it restarted (a restart notice, its tag verified by the links supervisor)."""

    #: Where the notice came from (``host:port``): the peer's port, as it sees itself.
    address: str


@dataclass(frozen=True, slots=True)
class InboxRoom:
    """The application took messages from a full inbox: receiving may go on."""


@dataclass(frozen=True, slots=True)
class AddressesChanged:
    """Our direct addresses changed; tell the peer (sealed LinkAddresses)."""

    #: Our complete current list.
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StatusChanged:
    """A worker's link status changed."""

    #: The new status.
    status: LinkStatus


@dataclass(frozen=True, slots=True)
class RecordChanged:
    """A worker re-read its peer's record (after an address update)."""

    #: The record as the registry now holds it.
    record: DeviceRecord


@dataclass(frozen=True, slots=True)
class UnpairDelivered:
    """Our unpair reached the peer (it acknowledged, or no longer knows us)."""

    #: The peer.
    peer: NodeId


@dataclass(frozen=True, slots=True)
class PeerUnpairedUs:
    """The peer unpaired us; the pairing is revoked here too (durably)."""

    #: The peer.
    peer: NodeId


@dataclass(frozen=True, slots=True)
class Written:
    """A registry call made by a link worker finished."""

    #: What it was for.
    what: str
    #: The registry's answer.
    result: Any
    #: The exception, if it failed.
    error: BaseException | None


def tell_or_drop(ref: Any, message: Any) -> None:
    """Tell an actor that may have stopped meanwhile (then nobody needs the message)."""
    with contextlib.suppress(ActorDeadError):
        ref.tell(message)
