"""The registry actor: the node's one owner of the device registry.

:class:`RegistryActor` is a pykka ``ThreadingActor`` around a
:class:`~quicpair.actors.registry.store.RegistryStore`: the SQLite connection is opened in
``on_start`` and closed in ``on_stop`` on the actor's own thread, so every disk
access (and every fsync) happens there, never on the asyncio loop. Its methods are
the store's, called through a proxy or ``ask``; each change is one transaction and is
durable when the reply arrives, which is what the pairing's 2PC relies on
(``pending_stored``/``committed`` are called only after that reply). Pairing an
already paired device again leaves its working pairing in use until the new one is
confirmed, and untouched if it fails (:mod:`quicpair.actors.registry.store` has the rules).

Start it with :meth:`RegistryActor.open`, which waits for the file to be opened and
raises :class:`RegistryError` (the actor already stopped) if it cannot be: a corrupt,
foreign or newer registry stops the node at start-up with that message. Started with
plain ``RegistryActor.start(path)``, an open failure is kept and raised by every call
instead, so whoever asks first sees it; the actor stays failed.

Callers on the asyncio loop must not block on a reply (DESIGN.md, "Actors"): they use
``proxy().method(...)`` futures with callbacks, or ``tell`` from the loop actor.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

import pykka

from quicpair.actors.kernel.logs import get_logger
from quicpair.actors.registry.store import (
    APPLICATION_ID,
    MAX_OBSERVED_ADDRESSES,
    SCHEMA_VERSION,
    DeliveryState,
    DeviceRecord,
    DeviceState,
    QueuedMessage,
    RegistryStore,
)
from quicpair.protocol.errors import RegistryError
from quicpair.protocol.identity import NodeId

__all__ = [
    "APPLICATION_ID",
    "DEFAULT_OPEN_TIMEOUT",
    "MAX_OBSERVED_ADDRESSES",
    "SCHEMA_VERSION",
    "DeliveryState",
    "DeviceRecord",
    "DeviceState",
    "QueuedMessage",
    "RegistryActor",
    "RegistryError",
    "RegistryStore",
]

#: Opening runs an integrity check over the whole file; a registry of a few thousand
#: devices is well under a megabyte, so this is generous even on a slow SD card.
DEFAULT_OPEN_TIMEOUT = 10.0

_Records = builtins.list[DeviceRecord]


class RegistryActor(pykka.ThreadingActor):
    """Owns the node's :class:`RegistryStore`; all its disk I/O runs on this actor's thread."""

    def __init__(self, path: Path | str) -> None:
        super().__init__()
        self._path = Path(path)
        self._store: RegistryStore | None = None
        self._open_error: RegistryError | None = None
        self._log = get_logger(actor="registry", path=str(self._path))

    @classmethod
    def open(
        cls, path: Path | str, *, timeout: float = DEFAULT_OPEN_TIMEOUT
    ) -> pykka.ActorRef[RegistryActor]:
        """Start the actor and wait until the registry is open.

        Raises RegistryError (with the store's message) when the file cannot be used,
        or when opening takes longer than ``timeout`` seconds; no actor is left running.
        """
        ref = cls.start(path)
        try:
            ref.proxy().ready().get(timeout=timeout)
        except RegistryError:
            ref.stop(block=True, timeout=timeout)
            raise
        except pykka.Timeout as exc:
            ref.stop(block=False)
            raise RegistryError(f"registry {path} did not open within {timeout} s") from exc
        except pykka.ActorDeadError as exc:
            raise RegistryError(f"registry {path}: the registry actor died while opening") from exc
        return ref

    # -- lifecycle (on the actor's thread) -----------------------------------------

    def on_start(self) -> None:
        try:
            self._store = RegistryStore(self._path)
        except RegistryError as exc:
            # Kept, not raised: pykka would only log it; this way the caller gets it.
            self._open_error = exc
            self._log.error("registry.open_failed", error=str(exc))
            return
        self._log.info("registry.opened", devices=len(self._store.list()))

    def on_stop(self) -> None:
        self._close()

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._close()

    def _close(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            try:
                store.close()
            except RegistryError as exc:
                self._log.error("registry.close_failed", error=str(exc))
            else:
                self._log.info("registry.closed")

    def _ready(self) -> RegistryStore:
        if self._store is None:
            raise self._open_error or RegistryError(f"registry {self._path} is closed")
        return self._store

    def ready(self) -> None:
        """Returns once the registry is open; raises the open failure if it is not."""
        self._ready()

    # -- the store's operations --------------------------------------------------------

    def check(self) -> None:
        """RegistryError if the file was replaced or damaged under the node (actors/registry/guard.py)."""
        self._ready().check()

    def add_pending(self, record: DeviceRecord, durable: bool = True) -> None:
        self._ready().add_pending(record, durable=durable)

    def confirm(self, node_id: NodeId, pairing_id: bytes, now: float, durable: bool = True) -> bool:
        return self._ready().confirm(node_id, pairing_id, now, durable=durable)

    def confirm_and_get(
        self, node_id: NodeId, pairing_id: bytes, now: float, durable: bool = True
    ) -> DeviceRecord | None:
        """:meth:`confirm`, then the device's record; None when the confirm was refused.

        One message instead of two on the end of a pairing: each is a hop to this thread
        and back (milliseconds when the loop is busy)."""
        store = self._ready()
        return store.get(node_id) if store.confirm(node_id, pairing_id, now, durable=durable) else None

    def delete_pending(self, node_id: NodeId, pairing_id: bytes) -> bool:
        return self._ready().delete_pending(node_id, pairing_id)

    def set_addresses(self, node_id: NodeId, addresses: Sequence[str], now: float) -> bool:
        return self._ready().set_addresses(node_id, addresses, now)

    def mark_address_worked(self, node_id: NodeId, address: str, now: float) -> bool:
        return self._ready().mark_address_worked(node_id, address, now)

    def record_observed(self, node_id: NodeId, address: str, now: float) -> bool:
        return self._ready().record_observed(node_id, address, now)

    def add_manual_address(self, node_id: NodeId, address: str, now: float) -> bool:
        return self._ready().add_manual_address(node_id, address, now)

    def remove_address(self, node_id: NodeId, address: str, now: float) -> bool:
        return self._ready().remove_address(node_id, address, now)

    def revoke(self, node_id: NodeId, now: float, notify_peer: bool) -> bool:
        return self._ready().revoke(node_id, now, notify_peer)

    def mark_unpair_delivered(self, node_id: NodeId) -> bool:
        return self._ready().mark_unpair_delivered(node_id)

    def remove(self, node_id: NodeId) -> bool:
        return self._ready().remove(node_id)

    def get(self, node_id: NodeId) -> DeviceRecord | None:
        return self._ready().get(node_id)

    def find_by_pairing_id(self, pairing_id: bytes) -> DeviceRecord | None:
        return self._ready().find_by_pairing_id(pairing_id)

    def pending_unpairs(self) -> _Records:
        return self._ready().pending_unpairs()

    def allowed_link_peers(self) -> set[bytes]:
        return self._ready().allowed_link_peers()

    def list(self, states: Iterable[DeviceState] | None = None) -> _Records:
        return self._ready().list(states)

    def take(
        self, node_id: NodeId, pairing_id: bytes, payloads: Sequence[tuple[int, bytes]], now: float
    ) -> bool:
        return self._ready().take(node_id, pairing_id, payloads, now)

    def handed_over(self, taken: Sequence[tuple[NodeId, int]]) -> int:
        return self._ready().handed_over(taken)

    def given_back(self, messages: Sequence[tuple[NodeId, int, bytes]]) -> int:
        return self._ready().given_back(messages)

    def enqueue(self, message: QueuedMessage) -> None:
        self._ready().enqueue(message)

    def dequeue(self, node_id: NodeId, upto: int) -> int:
        return self._ready().dequeue(node_id, upto)

    def queued(self, node_id: NodeId | None = None) -> builtins.list[QueuedMessage]:
        return self._ready().queued(node_id)

    def delivery_state(self, node_id: NodeId) -> DeliveryState:
        return self._ready().delivery_state(node_id)
