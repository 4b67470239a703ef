"""The device registry: which devices this node is paired with, kept durably in SQLite.

One file in the node's home (DESIGN.md, "Persistence"); :mod:`quicpair.actors.registry.file`
owns its format, and opens it owner-only, durable (WAL, ``synchronous=FULL``) and never
damaging a file it does not understand. :class:`RegistryStore` is a plain
single-threaded class; the node uses it through :class:`quicpair.actors.registry.actor.RegistryActor`.
Every public method that changes something is exactly one transaction, and no sqlite3
exception escapes it (``raise RegistryError(...) from exc``).

**One pairing in use per device.** The ``device`` table holds, per NodeId, the pairing
the node works with (CONFIRMED: its links are accepted), or one being made (PENDING:
never used as paired), or a revoked one. :meth:`~RegistryStore.get`,
:meth:`~RegistryStore.allowed_link_peers` and the address and unpair methods only
ever see that table.

**A failed pairing leaves nothing behind and destroys nothing.** A new pairing with a
device whose record must survive until the new one commits -- a CONFIRMED one (a
re-pair) or a REVOKED one we still owe an unpair (``unpair_pending``) -- is stored
apart, in ``pending_pairing``, while the old record stays in use:

======================  =========================================================
``add_pending``         no record, or PENDING, or REVOKED with nothing to deliver:
                        the device row is replaced. CONFIRMED, or REVOKED with an
                        unpair to deliver: the row stays; the new pairing is stored
                        apart (replacing an earlier one still pending there).
``confirm``             the device row's own pairing: marked CONFIRMED. A pairing
                        stored apart: it replaces the device row and its
                        addresses, as CONFIRMED, in one transaction.
``delete_pending``      only that PENDING pairing, wherever it is; never a
                        confirmed or revoked record.
``find_by_pairing_id``  finds a pairing in either place (stored apart: PENDING).
``list``                device rows; with PENDING among the states, also the
                        pairings stored apart (then a device appears twice).
``revoke``              the device row only; a pairing stored apart is left to
                        its session (it may still commit, see :meth:`revoke`).
``remove``              the device, and any pairing with it stored apart.
======================  =========================================================

**Acknowledged delivery** (protocol/delivery.py) keeps four things here: the node's
send epoch (:meth:`~RegistryStore.next_send_epoch`, raised once per start), per device
the receive mark of its pairing in use (deleted with the device row, so a new pairing
starts at 0), the durably queued sends (``outbox``: they outlive a re-pair, an unpair
drops them) and the received payloads the application has not taken yet (``inbox``:
written with the mark in one transaction, before the acknowledgement).

Why a REVOKED record we still owe an unpair survives a new pairing: the unpair can
only be delivered over a link keyed by the *old* pairing secret, which the peer still
holds until it learns of the unpair; if the new pairing then failed with that record
gone, the peer would keep a pairing we no longer know, forever. Once the new pairing
commits, the peer has paired with us again and the unpair is moot.
"""

from __future__ import annotations

import builtins
import dataclasses
import enum
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from quicpair.actors.registry.file import (
    APPLICATION_ID,
    DEVICE_COLUMNS,
    MIGRATIONS,
    SCHEMA_VERSION,
    SQLITE_ERRORS,
    atomic,
    open_registry,
)
from quicpair.actors.registry.guard import FileGuard
from quicpair.protocol.errors import RegistryError
from quicpair.protocol.identity import NodeId
from quicpair.protocol.keys import Role

__all__ = [
    "APPLICATION_ID",
    "MAX_OBSERVED_ADDRESSES",
    "SCHEMA_VERSION",
    "DeliveryState",
    "DeviceRecord",
    "DeviceState",
    "QueuedMessage",
    "RegistryStore",
]

#: Observed addresses (not announced by the peer) that worked, kept per device (the most
#: recent ones), besides the latest observation that has not been dialled yet.
MAX_OBSERVED_ADDRESSES = 4
_SECRET_SIZE = 32


class DeviceState(enum.StrEnum):
    """Where a device stands with this node."""

    #: Pairing verified but not committed yet: never used as paired (2PC, PROTOCOL.md).
    #: With a device already paired, such a pairing is stored apart (module docstring).
    PENDING = "pending"
    #: Paired: its links are accepted.
    CONFIRMED = "confirmed"
    #: Unpaired here; kept until removed (``unpair_pending`` while the peer must be told).
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True, repr=False)
class DeviceRecord:
    """One paired (or pairing) device as the registry holds it."""

    #: The device's identity.
    node_id: NodeId
    #: The name the device announced when pairing.
    name: str
    #: Our role in the pairing.
    role: Role
    #: Pending, confirmed or revoked.
    state: DeviceState
    #: The pairing's transcript hash (32 bytes): names this pairing in PairResolve.
    pairing_id: bytes
    #: The secret link keys are derived from (32 bytes); never shown in a repr or a log.
    pairing_secret: bytes
    #: Fingerprint of our send key of the pairing (never the key).
    send_key_fp: str
    #: Fingerprint of our receive key of the pairing (never the key).
    receive_key_fp: str
    #: When the pairing was stored, then when it was confirmed (caller's clock).
    paired_at: float
    #: When this record last changed.
    updated_at: float
    #: Addresses ``host:port`` to dial: the most recently worked first, then the
    #: announced ones in the peer's order, then observed ones.
    addresses: tuple[str, ...] = ()
    #: We unpaired the device and must still tell it.
    unpair_pending: bool = False
    #: Where the device last connected from, if it did.
    observed_address: str | None = None
    #: The SAS words of the pairing (empty for pairings stored before they were kept).
    sas: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not (isinstance(self.node_id, NodeId) and isinstance(self.role, Role)):
            raise ValueError("node_id must be a NodeId and role a Role")
        if not isinstance(self.state, DeviceState):
            raise ValueError(f"state must be a DeviceState, not {self.state!r}")
        secrets = (self.pairing_id, self.pairing_secret)
        if not all(isinstance(v, bytes) and len(v) == _SECRET_SIZE for v in secrets):
            raise ValueError(f"pairing_id and pairing_secret must be {_SECRET_SIZE} bytes each")
        if not isinstance(self.addresses, tuple) or not all(isinstance(a, str) and a for a in self.addresses):
            raise ValueError("addresses must be a tuple of non-empty strings")

    def __repr__(self) -> str:
        return (
            f"DeviceRecord(node={self.node_id.fingerprint}, name={self.name!r}, role={self.role.value}, "
            f"state={self.state.value}, addresses={self.addresses!r}, "
            f"unpair_pending={self.unpair_pending}, paired_at={self.paired_at}, "
            f"updated_at={self.updated_at})"
        )


@dataclass(frozen=True, slots=True, repr=False)
class QueuedMessage:
    """A send queued durably (``Node.send(..., queue=True)``), waiting for the peer's ack."""

    #: The destination.
    node_id: NodeId
    #: Its delivery number (protocol/delivery.py), kept across restarts.
    seq: int
    #: The payload.
    payload: bytes
    #: When it was queued (caller's clock).
    queued_at: float

    def __repr__(self) -> str:
        return f"QueuedMessage(node={self.node_id.fingerprint}, seq={self.seq}, {len(self.payload)} bytes)"


@dataclass(frozen=True, slots=True)
class DeliveryState:
    """What a link worker resumes from: its receive mark and the sends queued for its peer."""

    #: The highest delivery number taken from the peer under the pairing in use.
    receive_mark: int
    #: Queued sends for the peer, by delivery number.
    queued: tuple[QueuedMessage, ...]


def _unique(addresses: Iterable[str]) -> tuple[str, ...]:
    """The addresses in order, without repeats (a peer may announce one twice)."""
    return tuple(dict.fromkeys(addresses))


# -- where pairings live -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Tables:
    """One place a pairing can be stored: its row table and its address table."""

    #: The table of pairing rows (columns: DEVICE_COLUMNS).
    pairings: str
    #: The table of their addresses.
    addresses: str
    #: ORDER BY of the address rows, the order of DeviceRecord.addresses.
    order: str
    #: Inserts one announced address: (node_id, address, rank in the announcement).
    insert_announced: str


#: The pairing in use per device. Most recently worked addresses first; then the ones a
#: person added by hand; then the announced ones in the peer's order; observed last.
_DEVICE = _Tables(
    "device",
    "address",
    "last_worked IS NULL, last_worked DESC, source != 'manual', source = 'observed', rank, address",
    "INSERT INTO address (node_id, address, last_worked, source, rank) VALUES (?, ?, NULL, 'announced', ?)",
)
#: A new pairing waiting to replace a record that must survive until it commits.
_PENDING = _Tables(
    "pending_pairing",
    "pending_address",
    "rank, address",
    "INSERT INTO pending_address (node_id, address, rank) VALUES (?, ?, ?)",
)

_Records = builtins.list[DeviceRecord]


def _same(value: Any) -> Any:
    return value


# Columns are named after DeviceRecord's fields; these convert the ones that differ.
_TO_SQL: dict[str, Callable[[Any], Any]] = {
    "node_id": lambda v: v.raw,
    "role": lambda v: v.value,
    "state": lambda v: v.value,
    "unpair_pending": int,
    "sas": " ".join,
}
_FROM_SQL: dict[str, Callable[[Any], Any]] = {
    "node_id": lambda v: NodeId(bytes(v)),
    "role": Role,
    "state": DeviceState,
    "pairing_id": bytes,
    "pairing_secret": bytes,
    "unpair_pending": bool,
    "sas": lambda v: tuple(v.split()),
}


def _insert(conn: sqlite3.Connection, tables: _Tables, record: DeviceRecord) -> None:
    """Insert ``record`` and its (announced) addresses into ``tables``."""
    conn.execute(
        f"INSERT INTO {tables.pairings} ({', '.join(DEVICE_COLUMNS)}) "
        f"VALUES ({', '.join('?' * len(DEVICE_COLUMNS))})",
        [_TO_SQL.get(column, _same)(getattr(record, column)) for column in DEVICE_COLUMNS],
    )
    conn.executemany(
        tables.insert_announced,
        [(record.node_id.raw, a, i) for i, a in enumerate(_unique(record.addresses))],
    )


def _must_survive(state: str, unpair_pending: int) -> bool:
    """Whether a device row must outlive a new pairing until that one commits: it is in
    use (CONFIRMED), or it is how we still owe the peer an unpair (module docstring)."""
    return state == DeviceState.CONFIRMED or (state == DeviceState.REVOKED and bool(unpair_pending))


class RegistryStore:
    """The device registry in one SQLite file. Not thread-safe: one owner thread.

    Changes take the caller's clock as ``now``. Changes of one device return False when it
    (in the required state) is not there: a race with an unpair is an answer, not a crash.
    The module docstring says where a pairing with an already known device is kept.
    """

    #: The schema steps; a subclass may extend them (tests of the migration path).
    MIGRATIONS: ClassVar[tuple[tuple[str, ...], ...]] = MIGRATIONS

    def __init__(self, path: Path | str) -> None:
        self._path = Path(path)
        self._conn: sqlite3.Connection | None = None
        #: Why the file is no longer the registry that was opened (actors/registry/guard.py).
        self._lost: str | None = None
        self._conn = open_registry(self._path, self.MIGRATIONS)
        self._durable = True  # open_registry sets synchronous = FULL
        try:
            self._file = FileGuard(self._path)
        except BaseException:
            self._conn.close()
            raise
        self._file.settle()

    # -- lifecycle -------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        """The version this code writes (the file has it once opened)."""
        return len(self.MIGRATIONS)

    def close(self) -> None:
        """Close the file (folds the WAL into it). Idempotent.

        If the file was replaced or damaged while open, what is valid is kept aside first
        (a checked copy, the WAL) and RegistryError says where. Nothing is written to a file
        that replaced the registry; one overwritten in place is no registry any more, and
        SQLite's close may still write the WAL's pages into it.
        """
        conn, self._conn = self._conn, None
        if conn is None:
            return
        problem = self._lost or self._file.problem()
        kept = self._file.keep_aside(conn) if problem is not None else []
        try:
            conn.close()
        except SQLITE_ERRORS as exc:
            raise RegistryError(f"registry {self._path}: closing failed: {exc}") from exc
        finally:
            self._file.close()  # after SQLite's close: see FileGuard
        if problem is not None:
            raise RegistryError(
                f"registry {self._path} {problem} while it was open; {'; '.join(kept)}; "
                "to start again from that state, put the copy in the registry's place"
            )

    def check(self) -> None:
        """RegistryError if the file was replaced, truncated or overwritten since it was opened."""
        with self._guard("check"):
            pass

    def __enter__(self) -> RegistryStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the pairing's writes (2PC: store PENDING, then confirm or delete) --------

    def add_pending(self, record: DeviceRecord, *, durable: bool = True) -> None:
        """Store a new pairing as PENDING. A device row that is CONFIRMED, or REVOKED with an
        unpair still to deliver, stays as it is and in use: the new pairing is stored apart
        until :meth:`confirm` (replacing one stored apart before). Any other row is replaced.

        ``durable=False``: no fsync (see :meth:`_transaction`); the initiator's PENDING
        record needs none (PROTOCOL.md 10.5)."""
        if record.state is not DeviceState.PENDING:
            raise RegistryError(f"add_pending needs a pending record, not a {record.state.value} one")
        if record.unpair_pending:
            raise RegistryError("add_pending needs a new pairing, which has no unpair to deliver")
        raw = record.node_id.raw
        with self._transaction("add_pending", durable=durable) as conn:
            row = conn.execute(
                "SELECT state, unpair_pending FROM device WHERE node_id = ?", (raw,)
            ).fetchone()
            if row is not None and _must_survive(*row):
                conn.execute("DELETE FROM pending_pairing WHERE node_id = ?", (raw,))
                _insert(conn, _PENDING, record)
            else:
                conn.execute("DELETE FROM device WHERE node_id = ?", (raw,))  # its addresses too (cascade)
                _insert(conn, _DEVICE, record)

    def confirm(self, node_id: NodeId, pairing_id: bytes, now: float, *, durable: bool = True) -> bool:
        """Mark pairing ``pairing_id`` CONFIRMED (``paired_at`` = ``now``); True if it is now.

        A pairing stored apart replaces the device's record and addresses, in this one
        transaction. Idempotent (a retried commit); False when that pairing is not stored
        (deleted, replaced by another one) or was revoked. ``durable=False``: no fsync;
        the joiner's confirmation needs none (PROTOCOL.md 10.5)."""
        raw = node_id.raw
        with self._transaction("confirm", durable=durable) as conn:
            cursor = conn.execute(
                "UPDATE device SET state = 'confirmed', updated_at = ?, "
                "paired_at = CASE state WHEN 'pending' THEN ? ELSE paired_at END "
                "WHERE node_id = ? AND pairing_id = ? AND state IN ('pending', 'confirmed')",
                (now, now, raw, pairing_id),
            )
            if cursor.rowcount == 1:
                return True
            apart = self._read(conn, _PENDING, "WHERE node_id = ? AND pairing_id = ?", (raw, pairing_id))
            if not apart:
                return False
            new = dataclasses.replace(apart[0], state=DeviceState.CONFIRMED, paired_at=now, updated_at=now)
            # The old record's addresses and the row stored apart go with it (cascade).
            conn.execute("DELETE FROM device WHERE node_id = ?", (raw,))
            _insert(conn, _DEVICE, new)
            return True

    def delete_pending(self, node_id: NodeId, pairing_id: bytes) -> bool:
        """Forget an aborted pairing: only if still PENDING with this ``pairing_id``, in the
        device row or stored apart. A confirmed or revoked record is never touched.

        Not fsynced: a delete lost with the machine's power is done again by recovery (an
        initiator deletes its PENDING records at start; a joiner asks again and hears
        ABORTED), PROTOCOL.md 10.5."""
        with self._transaction("delete_pending", durable=False) as conn:
            deleted = conn.execute(
                "DELETE FROM device WHERE node_id = ? AND pairing_id = ? AND state = 'pending'",
                (node_id.raw, pairing_id),
            ).rowcount
            deleted += conn.execute(
                "DELETE FROM pending_pairing WHERE node_id = ? AND pairing_id = ?", (node_id.raw, pairing_id)
            ).rowcount
            return deleted == 1

    # -- the device row's other changes (one transaction each) --------------------

    def set_addresses(self, node_id: NodeId, addresses: Sequence[str], now: float) -> bool:
        """Replace the announced addresses: one that stays keeps its ``last_worked``, one that
        goes is dropped (observed ones stay), an observed one now announced becomes announced.

        Addresses are hints, written while a link is up: none of their writes is fsynced."""
        wanted = _unique(addresses)
        with self._transaction("set_addresses", durable=False) as conn:
            if not self._touch(conn, node_id, now):
                return False
            raw = node_id.raw
            conn.execute(
                "DELETE FROM address WHERE node_id = ? AND source = 'announced' "
                f"AND address NOT IN ({', '.join('?' * len(wanted))})",
                (raw, *wanted),
            )
            conn.executemany(
                "INSERT INTO address (node_id, address, last_worked, source, rank) "
                "VALUES (?, ?, NULL, 'announced', ?) "
                "ON CONFLICT (node_id, address) DO UPDATE SET rank = excluded.rank, "
                "source = CASE source WHEN 'manual' THEN 'manual' ELSE 'announced' END",
                [(raw, a, i) for i, a in enumerate(wanted)],
            )
            return True

    def mark_address_worked(self, node_id: NodeId, address: str, now: float) -> bool:
        """A dial to ``address`` reached the device: try it first next time (an unknown
        address, e.g. found by discovery, is kept as an observed one)."""
        with self._transaction("mark_address_worked", durable=False) as conn:
            if not self._touch(conn, node_id, now):
                return False
            conn.execute(
                "INSERT INTO address (node_id, address, last_worked, source) VALUES (?, ?, ?, 'observed') "
                "ON CONFLICT (node_id, address) DO UPDATE SET last_worked = excluded.last_worked",
                (node_id.raw, address, now),
            )
            self._trim_observed(conn, node_id)
            return True

    def record_observed(self, node_id: NodeId, address: str, now: float) -> bool:
        """The device connected from ``address``: its ``observed_address``, and a dial candidate
        after the announced ones (unproven: a client's source port is usually ephemeral)."""
        with self._transaction("record_observed", durable=False) as conn:
            cursor = conn.execute(
                "UPDATE device SET observed_address = ?, updated_at = ? WHERE node_id = ?",
                (address, now, node_id.raw),
            )
            if cursor.rowcount != 1:
                return False
            # Only the latest never-worked observation is worth a dial attempt.
            conn.execute(
                "DELETE FROM address WHERE node_id = ? AND source = 'observed' "
                "AND last_worked IS NULL AND address != ?",
                (node_id.raw, address),
            )
            conn.execute(
                "INSERT INTO address (node_id, address, last_worked, source) VALUES (?, ?, NULL, 'observed') "
                "ON CONFLICT (node_id, address) DO NOTHING",
                (node_id.raw, address),
            )
            self._trim_observed(conn, node_id)
            return True

    def add_manual_address(self, node_id: NodeId, address: str, now: float) -> bool:
        """A person says the device can be reached at ``address``: kept until they remove it,
        tried right after the addresses that worked (an announced one becomes manual)."""
        with self._transaction("add_manual_address") as conn:
            if not self._touch(conn, node_id, now):
                return False
            conn.execute(
                "INSERT INTO address (node_id, address, last_worked, source) VALUES (?, ?, NULL, 'manual') "
                "ON CONFLICT (node_id, address) DO UPDATE SET source = 'manual'",
                (node_id.raw, address),
            )
            return True

    def remove_address(self, node_id: NodeId, address: str, now: float) -> bool:
        """Forget ``address`` for the device, whatever its source; False if it was not stored.
        (The peer may announce it again at its next contact.)"""
        with self._transaction("remove_address") as conn:
            if not self._touch(conn, node_id, now):
                return False
            cursor = conn.execute(
                "DELETE FROM address WHERE node_id = ? AND address = ?", (node_id.raw, address)
            )
            return cursor.rowcount == 1

    def revoke(self, node_id: NodeId, now: float, notify_peer: bool) -> bool:
        """Unpair: its links are refused from now on; the record stays until :meth:`remove`.
        ``notify_peer``: we must still tell it (False when the device told us).

        A new pairing stored apart is left to its session: a joiner that voted must follow
        the initiator's decision (2PC), and if it commits it replaces the revoked record."""
        with self._transaction("revoke") as conn:
            conn.execute("DELETE FROM outbox WHERE node_id = ?", (node_id.raw,))  # never sent now
            cursor = conn.execute(
                "UPDATE device SET state = 'revoked', unpair_pending = ?, updated_at = ? WHERE node_id = ?",
                (int(notify_peer), now, node_id.raw),
            )
            return cursor.rowcount == 1

    def mark_unpair_delivered(self, node_id: NodeId) -> bool:
        """The revoked device has been told; nothing more to deliver."""
        return self._change(
            "mark_unpair_delivered",
            "UPDATE device SET unpair_pending = 0 WHERE node_id = ? AND state = 'revoked'",
            (node_id.raw,),
        )

    def remove(self, node_id: NodeId) -> bool:
        """Erase the device and its addresses, whatever its state, and any pairing with it
        stored apart (cascade), and the sends queued for it."""
        with self._transaction("remove") as conn:
            conn.execute("DELETE FROM outbox WHERE node_id = ?", (node_id.raw,))
            conn.execute("DELETE FROM inbox WHERE node_id = ?", (node_id.raw,))
            return conn.execute("DELETE FROM device WHERE node_id = ?", (node_id.raw,)).rowcount == 1

    # -- acknowledged delivery ------------------------------------------------------

    def next_send_epoch(self) -> int:
        """Raise the node's send epoch and return it: called once per start (protocol/delivery.py)."""
        with self._transaction("next_send_epoch") as conn:
            conn.execute(
                "INSERT INTO node_state (key, value) VALUES ('send_epoch', 1) "
                "ON CONFLICT (key) DO UPDATE SET value = value + 1"
            )
            row = conn.execute("SELECT value FROM node_state WHERE key = 'send_epoch'").fetchone()
            return int(row[0])

    def take(
        self, node_id: NodeId, pairing_id: bytes, payloads: Sequence[tuple[int, bytes]], now: float
    ) -> bool:
        """Take a batch of the device's payloads ``(seq, payload)``, in one durable transaction:
        into the inbox, and the receive mark up to the last one (it only grows). After this the
        batch may be acknowledged: it is neither lost nor taken twice. False (nothing written)
        when ``pairing_id`` is no longer the device's pairing in use."""
        with self._transaction("take") as conn:
            row = conn.execute(
                "SELECT 1 FROM device WHERE node_id = ? AND pairing_id = ?", (node_id.raw, pairing_id)
            ).fetchone()
            if row is None:
                return False
            conn.executemany(
                "INSERT OR IGNORE INTO inbox (node_id, seq, payload, received_at) VALUES (?, ?, ?, ?)",
                [(node_id.raw, seq, payload, now) for seq, payload in payloads],
            )
            if payloads:
                conn.execute(
                    "INSERT INTO receive_mark (node_id, mark) VALUES (?, ?) "
                    "ON CONFLICT (node_id) DO UPDATE SET mark = max(mark, excluded.mark)",
                    (node_id.raw, payloads[-1][0]),
                )
            return True

    def handed_over(self, taken: Sequence[tuple[NodeId, int]]) -> int:
        """The application took these ``(device, seq)`` payloads: out of the inbox; how many.

        Committed before the application gets them (at most once to the application, even
        across a crash); not fsynced: lost with the power, a payload is offered again, with
        its number (ReceivedMessage.seq) for an application that must not see it twice."""
        with self._transaction("handed_over", durable=False) as conn:
            return conn.executemany(
                "DELETE FROM inbox WHERE node_id = ? AND seq = ?", [(n.raw, seq) for n, seq in taken]
            ).rowcount

    def given_back(self, messages: Sequence[tuple[NodeId, int, bytes]]) -> int:
        """Payloads :meth:`handed_over` whose reader left before it got them: back in the inbox,
        ahead of what is there (they were the oldest), for the next reader; how many.

        Not fsynced, like :meth:`handed_over`: the rows it deleted come back the same way."""
        with self._transaction("given_back", durable=False) as conn:
            row = conn.execute("SELECT min(received_at) FROM inbox").fetchone()
            first = float(row[0]) - 1.0 if row[0] is not None else 0.0
            return conn.executemany(
                "INSERT OR IGNORE INTO inbox (node_id, seq, payload, received_at) VALUES (?, ?, ?, ?)",
                [(node.raw, seq, payload, first) for node, seq, payload in messages],
            ).rowcount

    def inbox(self) -> builtins.list[tuple[NodeId, int, bytes]]:
        """Payloads taken but not handed to the application, in the order they were taken."""
        with self._guard("inbox") as conn:
            rows = conn.execute(
                "SELECT node_id, seq, payload FROM inbox ORDER BY received_at, node_id, seq"
            ).fetchall()
        return [(NodeId(bytes(r[0])), int(r[1]), bytes(r[2])) for r in rows]

    def enqueue(self, message: QueuedMessage) -> None:
        """Queue a send durably (one transaction): it survives restarts until :meth:`dequeue`."""
        with self._transaction("enqueue") as conn:
            conn.execute(
                "INSERT INTO outbox (node_id, seq, payload, queued_at) VALUES (?, ?, ?, ?)",
                (message.node_id.raw, message.seq, message.payload, message.queued_at),
            )

    def dequeue(self, node_id: NodeId, upto: int) -> int:
        """The device acknowledged everything up to ``upto``: drop those queued sends; how many.

        Not fsynced: lost with the power, a send goes again after the restart and the device,
        which recorded its number, takes it as a duplicate."""
        with self._transaction("dequeue", durable=False) as conn:
            return conn.execute(
                "DELETE FROM outbox WHERE node_id = ? AND seq <= ?", (node_id.raw, upto)
            ).rowcount

    def queued(self, node_id: NodeId | None = None) -> builtins.list[QueuedMessage]:
        """Queued sends, of one device or all, by device then delivery number."""
        where, params = ("WHERE node_id = ?", (node_id.raw,)) if node_id is not None else ("", ())
        with self._guard("queued") as conn:
            rows = conn.execute(
                f"SELECT node_id, seq, payload, queued_at FROM outbox {where} ORDER BY node_id, seq", params
            ).fetchall()
        return [QueuedMessage(NodeId(bytes(r[0])), int(r[1]), bytes(r[2]), float(r[3])) for r in rows]

    def delivery_state(self, node_id: NodeId) -> DeliveryState:
        """The receive mark of the device's pairing in use, and its queued sends (for a link worker)."""
        with self._guard("delivery_state") as conn:
            row = conn.execute("SELECT mark FROM receive_mark WHERE node_id = ?", (node_id.raw,)).fetchone()
        return DeliveryState(receive_mark=int(row[0]) if row else 0, queued=tuple(self.queued(node_id)))

    # -- queries ----------------------------------------------------------------

    def get(self, node_id: NodeId) -> DeviceRecord | None:
        """The device's record in use (never a pairing stored apart)."""
        records = self._query("get", _DEVICE, "WHERE node_id = ?", (node_id.raw,))
        return records[0] if records else None

    def find_by_pairing_id(self, pairing_id: bytes) -> DeviceRecord | None:
        """The pairing (any state) with this transcript hash: the device's record, or a new
        pairing stored apart (PENDING, with its own secret, fingerprints and addresses)."""
        with self._guard("find_by_pairing_id") as conn:
            for tables in (_DEVICE, _PENDING):
                records = self._read(conn, tables, "WHERE pairing_id = ?", (pairing_id,))
                if records:
                    return records[0]
        return None

    def list(self, states: Iterable[DeviceState] | None = None) -> _Records:
        """Devices in ``states`` (all by default), oldest pairing first.

        With PENDING among the states, new pairings stored apart are listed too: a device
        being paired again then appears twice, its record in use and the new pairing."""
        wanted = tuple(DeviceState) if states is None else tuple(DeviceState(s) for s in states)
        if not wanted:
            return []
        with self._guard("list") as conn:
            records = self._read(conn, _DEVICE, f"WHERE state IN ({', '.join('?' * len(wanted))})", wanted)
            if DeviceState.PENDING in wanted:
                records += self._read(conn, _PENDING, "", ())
        # Stable: on a tie the record in use comes before the new pairing.
        return sorted(records, key=lambda r: (r.paired_at, r.node_id.raw))

    def pending_unpairs(self) -> _Records:
        """Revoked devices that must still be told they were unpaired."""
        return self._query("pending_unpairs", _DEVICE, "WHERE state = 'revoked' AND unpair_pending = 1", ())

    def allowed_link_peers(self) -> set[bytes]:
        """Raw NodeIds a link listener accepts: confirmed and not revoked."""
        with self._guard("allowed_link_peers") as conn:
            rows = conn.execute("SELECT node_id FROM device WHERE state = 'confirmed'").fetchall()
        return {bytes(row[0]) for row in rows}

    # -- internals -----------------------------------------------------------------

    @contextmanager
    def _guard(self, op: str) -> Iterator[sqlite3.Connection]:
        """Turn every sqlite3 error of ``op`` into a RegistryError."""
        if self._conn is None:
            raise RegistryError(f"registry {self._path} is closed ({op})")
        if self._lost is None:
            self._lost = self._file.problem()
        if self._lost is not None:
            raise RegistryError(
                f"registry {self._path} {self._lost} while the node was running; nothing more is "
                f"written to it ({op} refused). Stop the node: what is valid is then kept aside"
            )
        try:
            yield self._conn
        except SQLITE_ERRORS as exc:
            raise RegistryError(f"registry {self._path}: {op} failed: {exc}") from exc

    @contextmanager
    def _transaction(self, op: str, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of ``op`` is committed, or none of it.

        ``durable``: the commit fsyncs the WAL (``synchronous=FULL``) and survives a power
        loss once this returns. Otherwise (``NORMAL``) it survives the process's death but
        not the machine's power until the next durable commit or checkpoint, which makes it
        durable too: the WAL is one log, fsynced up to its end, so a durable commit never
        outlives a non-durable one made before it.
        """
        with self._guard(op) as conn:
            if durable != self._durable:
                conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
                self._durable = durable
            with atomic(conn):
                yield conn

    def _change(self, op: str, sql: str, params: Sequence[object]) -> bool:
        """One statement as one transaction; True when it changed one device."""
        with self._transaction(op) as conn:
            return conn.execute(sql, params).rowcount == 1

    @staticmethod
    def _touch(conn: sqlite3.Connection, node_id: NodeId, now: float) -> bool:
        cursor = conn.execute("UPDATE device SET updated_at = ? WHERE node_id = ?", (now, node_id.raw))
        return cursor.rowcount == 1

    @staticmethod
    def _trim_observed(conn: sqlite3.Connection, node_id: NodeId) -> None:
        conn.execute(
            "DELETE FROM address WHERE node_id = ? AND source = 'observed' AND last_worked IS NOT NULL "
            "AND address NOT IN (SELECT address FROM address WHERE node_id = ? AND source = 'observed' "
            "AND last_worked IS NOT NULL ORDER BY last_worked DESC LIMIT ?)",
            (node_id.raw, node_id.raw, MAX_OBSERVED_ADDRESSES),
        )

    def _query(self, op: str, tables: _Tables, where: str, params: Sequence[object]) -> _Records:
        with self._guard(op) as conn:
            return self._read(conn, tables, where, params)

    def _read(
        self, conn: sqlite3.Connection, tables: _Tables, where: str, params: Sequence[object]
    ) -> _Records:
        """The records in ``tables`` matching ``where``, with their addresses."""
        rows = conn.execute(
            f"SELECT {', '.join(DEVICE_COLUMNS)} FROM {tables.pairings} {where} ORDER BY paired_at, node_id",
            params,
        ).fetchall()
        if not rows:
            return []
        ids = [row[0] for row in rows]
        addresses: dict[bytes, builtins.list[str]] = {bytes(i): [] for i in ids}
        for raw, address in conn.execute(
            f"SELECT node_id, address FROM {tables.addresses} WHERE node_id IN ({', '.join('?' * len(ids))}) "
            f"ORDER BY node_id, {tables.order}",
            ids,
        ):
            addresses[bytes(raw)].append(address)
        try:
            return [
                DeviceRecord(
                    **{c: _FROM_SQL.get(c, _same)(v) for c, v in zip(DEVICE_COLUMNS, row, strict=True)},
                    addresses=tuple(addresses[bytes(row[0])]),
                )
                for row in rows
            ]
        except (ValueError, TypeError) as exc:
            raise RegistryError(
                f"registry {self._path} holds an invalid {tables.pairings} row: {exc}"
            ) from exc
