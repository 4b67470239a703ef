"""The device registry: which devices this node is paired with, kept durably in SQLite.

One file in the node's home (DESIGN.md, "Persistence"). :class:`RegistryStore` is a
plain single-threaded class; the node uses it through :class:`actors.registry.RegistryActor`.

* **Owner only.** Created 0600 (SQLite gives ``-wal``/``-shm`` the same mode); a registry
  other users can access is refused, like an identity key.
* **Durable, never half-written.** WAL with ``synchronous=FULL`` fsyncs the log at every
  commit, so an acknowledged change survives a crash or power loss (in WAL mode NORMAL
  may lose the last commits: https://www.sqlite.org/pragma.html#pragma_synchronous).
  Every public method that changes something is exactly one transaction.
* **Never damages a file it does not understand.** It must be SQLite, carry our
  ``application_id``, pass ``PRAGMA integrity_check`` and have a ``user_version`` we
  know; otherwise RegistryError before anything is written. An older version is
  migrated in one transaction. No sqlite3 exception escapes (``raise ... from exc``).

Re-pairing a device already present replaces its record and addresses in the one
transaction of :meth:`RegistryStore.add_pending`: the old pairing is gone from then on,
even if the new one aborts (re-pairing is a deliberate act by both owners).
"""

from __future__ import annotations

import builtins
import contextlib
import enum
import os
import sqlite3
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from protocol.errors import RegistryError
from protocol.identity import NodeId
from protocol.keys import Role

__all__ = [
    "APPLICATION_ID",
    "MAX_OBSERVED_ADDRESSES",
    "SCHEMA_VERSION",
    "DeviceRecord",
    "DeviceState",
    "RegistryStore",
]

#: ``PRAGMA application_id`` of a quicpair registry: ASCII "QPRG". This is what SQLite's
#: header field is for (https://www.sqlite.org/fileformat.html#application_id).
APPLICATION_ID = 0x51505247
#: Observed addresses (not announced by the peer) that worked, kept per device (the most
#: recent ones), besides the latest observation that has not been dialled yet.
MAX_OBSERVED_ADDRESSES = 4
_SQLITE_MAGIC = b"SQLite format 3\x00"
_HEADER_SIZE = 100  # the SQLite database header (fileformat.html, section 1.3)
_SECRET_SIZE = 32
#: Everything sqlite3 raises (``Warning`` is not an ``Error`` subclass in Python 3.11).
_SQLITE_ERRORS = (sqlite3.Error, sqlite3.Warning)
#: A second writer (e.g. the CLI) waits this long for the lock instead of failing at once.
_BUSY_TIMEOUT_MS = 5000


class DeviceState(enum.StrEnum):
    """Where a device stands with this node."""

    #: Pairing verified but not committed yet: never used as paired (2PC, PROTOCOL.md).
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


def _unique(addresses: Iterable[str]) -> tuple[str, ...]:
    """The addresses in order, without repeats (a peer may announce one twice)."""
    return tuple(dict.fromkeys(addresses))


# -- schema ------------------------------------------------------------------

# _MIGRATIONS[v - 1] turns a registry of version v - 1 into version v; version 0 is an
# empty file. The CHECKs keep a buggy caller from storing what no reader could use.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE device (
            node_id BLOB NOT NULL PRIMARY KEY CHECK (typeof(node_id) = 'blob' AND length(node_id) = 32),
            name TEXT NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('initiator', 'joiner')),
            state TEXT NOT NULL CHECK (state IN ('pending', 'confirmed', 'revoked')),
            pairing_id BLOB NOT NULL CHECK (typeof(pairing_id) = 'blob' AND length(pairing_id) = 32),
            pairing_secret BLOB NOT NULL
                CHECK (typeof(pairing_secret) = 'blob' AND length(pairing_secret) = 32),
            send_key_fp TEXT NOT NULL, receive_key_fp TEXT NOT NULL,
            paired_at REAL NOT NULL, updated_at REAL NOT NULL,
            unpair_pending INTEGER NOT NULL DEFAULT 0 CHECK (unpair_pending IN (0, 1)),
            observed_address TEXT
        ) WITHOUT ROWID""",
        "CREATE UNIQUE INDEX device_pairing_id ON device (pairing_id)",
        # rank: the position in the peer's announcement, the order among never-worked ones.
        """CREATE TABLE address (
            node_id BLOB NOT NULL REFERENCES device (node_id) ON DELETE CASCADE,
            address TEXT NOT NULL CHECK (length(address) > 0),
            last_worked REAL,
            source TEXT NOT NULL CHECK (source IN ('announced', 'observed')),
            rank INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (node_id, address)
        ) WITHOUT ROWID""",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

#: The columns the queries below use; a registry without them is not one we can read.
_DEVICE_COLUMNS = (
    *("node_id", "name", "role", "state", "pairing_id", "pairing_secret", "send_key_fp"),
    *("receive_key_fp", "paired_at", "updated_at", "unpair_pending", "observed_address"),
)
_REQUIRED_COLUMNS: dict[str, frozenset[str]] = {
    "device": frozenset(_DEVICE_COLUMNS),
    "address": frozenset(("node_id", "address", "last_worked", "source", "rank")),
}
# Most recently worked first; then announced in the peer's order; observed last.
_ADDRESS_ORDER = "last_worked IS NULL, last_worked DESC, source = 'observed', rank, address"

_Records = builtins.list[DeviceRecord]


def _same(value: Any) -> Any:
    return value


# Device columns are named after DeviceRecord's fields; these convert the ones that differ.
_TO_SQL: dict[str, Callable[[Any], Any]] = {
    "node_id": lambda v: v.raw,
    "role": lambda v: v.value,
    "state": lambda v: v.value,
    "unpair_pending": int,
}
_FROM_SQL: dict[str, Callable[[Any], Any]] = {
    "node_id": lambda v: NodeId(bytes(v)),
    "role": Role,
    "state": DeviceState,
    "pairing_id": bytes,
    "pairing_secret": bytes,
    "unpair_pending": bool,
}


@contextmanager
def _atomic(conn: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front, so a second process (the CLI) waits at
    # BEGIN instead of failing half-way through.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class RegistryStore:
    """The device registry in one SQLite file. Not thread-safe: one owner thread.

    Changes take the caller's clock as ``now``. Changes of one device return False when it
    (in the required state) is not there: a race with an unpair is an answer, not a crash.
    """

    #: The schema steps; a subclass may extend them (tests of the migration path).
    MIGRATIONS: ClassVar[tuple[tuple[str, ...], ...]] = _MIGRATIONS

    def __init__(self, path: Path | str) -> None:
        self._path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._conn = self._open()

    # -- lifecycle -------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        """The version this code writes (the file has it once opened)."""
        return len(self.MIGRATIONS)

    def close(self) -> None:
        """Close the file (folds the WAL into it). Idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except _SQLITE_ERRORS as exc:
                raise RegistryError(f"registry {self._path}: closing failed: {exc}") from exc

    def __enter__(self) -> RegistryStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- changes (one transaction each) -----------------------------------------

    def add_pending(self, record: DeviceRecord) -> None:
        """Store a device as PENDING, replacing any record it had (a re-pair)."""
        if record.state is not DeviceState.PENDING:
            raise RegistryError(f"add_pending needs a pending record, not a {record.state.value} one")
        with self._transaction("add_pending") as conn:
            conn.execute("DELETE FROM device WHERE node_id = ?", (record.node_id.raw,))
            conn.execute(
                f"INSERT INTO device ({', '.join(_DEVICE_COLUMNS)}) VALUES ({', '.join('?' * 12)})",
                [_TO_SQL.get(column, _same)(getattr(record, column)) for column in _DEVICE_COLUMNS],
            )
            conn.executemany(
                "INSERT INTO address (node_id, address, last_worked, source, rank) "
                "VALUES (?, ?, NULL, 'announced', ?)",
                [(record.node_id.raw, a, i) for i, a in enumerate(_unique(record.addresses))],
            )

    def confirm(self, node_id: NodeId, pairing_id: bytes, now: float) -> bool:
        """Mark pairing ``pairing_id`` CONFIRMED (``paired_at`` = ``now``); True if it is now.

        Idempotent (a retried commit); False when the device has another pairing or was revoked."""
        return self._change(
            "confirm",
            "UPDATE device SET state = 'confirmed', updated_at = ?, "
            "paired_at = CASE state WHEN 'pending' THEN ? ELSE paired_at END "
            "WHERE node_id = ? AND pairing_id = ? AND state IN ('pending', 'confirmed')",
            (now, now, node_id.raw, pairing_id),
        )

    def delete_pending(self, node_id: NodeId, pairing_id: bytes) -> bool:
        """Forget an aborted pairing: only if still PENDING with this ``pairing_id``."""
        return self._change(
            "delete_pending",
            "DELETE FROM device WHERE node_id = ? AND pairing_id = ? AND state = 'pending'",
            (node_id.raw, pairing_id),
        )

    def set_addresses(self, node_id: NodeId, addresses: Sequence[str], now: float) -> bool:
        """Replace the announced addresses: one that stays keeps its ``last_worked``, one that
        goes is dropped (observed ones stay), an observed one now announced becomes announced."""
        wanted = _unique(addresses)
        with self._transaction("set_addresses") as conn:
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
                "ON CONFLICT (node_id, address) DO UPDATE SET source = 'announced', rank = excluded.rank",
                [(raw, a, i) for i, a in enumerate(wanted)],
            )
            return True

    def mark_address_worked(self, node_id: NodeId, address: str, now: float) -> bool:
        """A dial to ``address`` reached the device: try it first next time (an unknown
        address, e.g. found by discovery, is kept as an observed one)."""
        with self._transaction("mark_address_worked") as conn:
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
        with self._transaction("record_observed") as conn:
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

    def revoke(self, node_id: NodeId, now: float, notify_peer: bool) -> bool:
        """Unpair: its links are refused from now on; the record stays until :meth:`remove`.
        ``notify_peer``: we must still tell it (False when the device told us)."""
        return self._change(
            "revoke",
            "UPDATE device SET state = 'revoked', unpair_pending = ?, updated_at = ? WHERE node_id = ?",
            (int(notify_peer), now, node_id.raw),
        )

    def mark_unpair_delivered(self, node_id: NodeId) -> bool:
        """The revoked device has been told; nothing more to deliver."""
        return self._change(
            "mark_unpair_delivered",
            "UPDATE device SET unpair_pending = 0 WHERE node_id = ? AND state = 'revoked'",
            (node_id.raw,),
        )

    def remove(self, node_id: NodeId) -> bool:
        """Erase the device and its addresses, whatever its state."""
        return self._change("remove", "DELETE FROM device WHERE node_id = ?", (node_id.raw,))

    # -- queries ----------------------------------------------------------------

    def get(self, node_id: NodeId) -> DeviceRecord | None:
        records = self._select("get", "WHERE node_id = ?", (node_id.raw,))
        return records[0] if records else None

    def find_by_pairing_id(self, pairing_id: bytes) -> DeviceRecord | None:
        """The device whose pairing (any state) has this transcript hash."""
        records = self._select("find_by_pairing_id", "WHERE pairing_id = ?", (pairing_id,))
        return records[0] if records else None

    def list(self, states: Iterable[DeviceState] | None = None) -> _Records:
        """Devices in ``states`` (all by default), oldest pairing first."""
        if states is None:
            return self._select("list", "", ())
        wanted = [DeviceState(s).value for s in states]
        if not wanted:
            return []
        return self._select("list", f"WHERE state IN ({', '.join('?' * len(wanted))})", wanted)

    def pending_unpairs(self) -> _Records:
        """Revoked devices that must still be told they were unpaired."""
        return self._select("pending_unpairs", "WHERE state = 'revoked' AND unpair_pending = 1", ())

    def allowed_link_peers(self) -> set[bytes]:
        """Raw NodeIds a link listener accepts: confirmed and not revoked."""
        with self._guard("allowed_link_peers") as conn:
            rows = conn.execute("SELECT node_id FROM device WHERE state = 'confirmed'").fetchall()
        return {bytes(row[0]) for row in rows}

    # -- internals: operations ----------------------------------------------------

    @contextmanager
    def _guard(self, op: str) -> Iterator[sqlite3.Connection]:
        """Turn every sqlite3 error of ``op`` into a RegistryError."""
        if self._conn is None:
            raise RegistryError(f"registry {self._path} is closed ({op})")
        try:
            yield self._conn
        except _SQLITE_ERRORS as exc:
            raise RegistryError(f"registry {self._path}: {op} failed: {exc}") from exc

    @contextmanager
    def _transaction(self, op: str) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of ``op`` is committed, or none of it."""
        with self._guard(op) as conn, _atomic(conn):
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

    def _select(self, op: str, where: str, params: Sequence[object]) -> _Records:
        with self._guard(op) as conn:
            rows = conn.execute(
                f"SELECT {', '.join(_DEVICE_COLUMNS)} FROM device {where} ORDER BY paired_at, node_id", params
            ).fetchall()
            if not rows:
                return []
            ids = [row[0] for row in rows]
            addresses: dict[bytes, builtins.list[str]] = {bytes(i): [] for i in ids}
            for raw, address in conn.execute(
                f"SELECT node_id, address FROM address WHERE node_id IN ({', '.join('?' * len(ids))}) "
                f"ORDER BY node_id, {_ADDRESS_ORDER}",
                ids,
            ):
                addresses[bytes(raw)].append(address)
        try:
            return [
                DeviceRecord(
                    **{c: _FROM_SQL.get(c, _same)(v) for c, v in zip(_DEVICE_COLUMNS, row, strict=True)},
                    addresses=tuple(addresses[bytes(row[0])]),
                )
                for row in rows
            ]
        except (ValueError, TypeError) as exc:
            raise RegistryError(f"registry {self._path} holds an invalid device row: {exc}") from exc

    # -- internals: opening ----------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        self._create_if_missing()
        self._check_file()
        try:
            conn = sqlite3.connect(
                self._path.resolve().as_uri() + "?mode=rw",  # never let SQLite create it
                uri=True,
                isolation_level=None,  # autocommit; transactions are explicit (BEGIN/COMMIT)
            )
        except _SQLITE_ERRORS as exc:
            raise RegistryError(f"cannot open registry {self._path}: {exc}") from exc
        try:
            self._prepare(conn)
        except _SQLITE_ERRORS as exc:
            conn.close()
            raise RegistryError(
                f"{self._path} is not a usable quicpair registry ({exc}); the file was left untouched"
            ) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _create_if_missing(self) -> None:
        """Create an empty file, owner-only, before SQLite sees the path."""
        try:
            fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return
        except OSError as exc:
            raise RegistryError(f"cannot create registry {self._path}: {exc.strerror}") from exc
        os.close(fd)
        # Make the new directory entry itself durable, not only the file's data.
        with contextlib.suppress(OSError):
            dir_fd = os.open(self._path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def _check_file(self) -> None:
        """Refuse, before SQLite opens it, a file that is unsafe or not SQLite."""
        try:
            st = os.stat(self._path)
            if not stat.S_ISREG(st.st_mode):
                raise RegistryError(f"registry {self._path} is not a regular file")
            if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise RegistryError(
                    f"registry {self._path} is accessible by other users "
                    f"(mode {stat.S_IMODE(st.st_mode):o}); run: chmod 600 {self._path}"
                )
            with open(self._path, "rb") as f:
                header = f.read(_HEADER_SIZE)
        except OSError as exc:
            raise RegistryError(f"cannot read registry {self._path}: {exc.strerror}") from exc
        # An empty file is one we created and never got to initialise: a new registry.
        if header and (len(header) < _HEADER_SIZE or not header.startswith(_SQLITE_MAGIC)):
            raise RegistryError(
                f"{self._path} is not a quicpair registry: not an SQLite database; "
                "the file was left untouched"
            )

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Check what the file is, then initialise or migrate it, or refuse it untouched."""
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA synchronous = FULL")
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
        fresh = app_id == 0 and version == 0 and not conn.execute("SELECT 1 FROM sqlite_master").fetchone()
        untouched = "the file was left untouched"
        if not fresh:
            if app_id != APPLICATION_ID:
                what = f"tables: {', '.join(tables)}" if tables else "no tables"
                raise RegistryError(
                    f"{self._path} is not a quicpair registry (SQLite application_id "
                    f"0x{app_id:08x}, expected 0x{APPLICATION_ID:08x}; {what}); {untouched}"
                )
            if version > self.schema_version:
                raise RegistryError(
                    f"registry {self._path} has schema version {version}, written by a newer "
                    f"quicpair; this one reads up to version {self.schema_version}. Upgrade "
                    f"quicpair; {untouched}"
                )
            if version < 1:
                raise RegistryError(
                    f"{self._path} is not a quicpair registry (no schema version); {untouched}"
                )
            problems = [r[0] for r in conn.execute("PRAGMA integrity_check(5)")]
            if problems != ["ok"]:
                raise RegistryError(
                    f"registry {self._path} is corrupt (integrity check: {'; '.join(problems)}); "
                    f"{untouched}. Restore it from a backup or move it away to start over"
                )
        if fresh:
            self._set_wal(conn)
        if version < self.schema_version:
            self._migrate(conn, version)
        else:
            self._verify_schema(conn)
        self._set_wal(conn)
        conn.execute("PRAGMA foreign_keys = ON")

    def _set_wal(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RegistryError(
                f"registry {self._path}: SQLite cannot use its WAL journal here (got {mode!r}); "
                "put the node's home on a local file system"
            )

    def _migrate(self, conn: sqlite3.Connection, version: int) -> None:
        """From ``version`` to the current one in ONE transaction; nothing on failure."""
        with _atomic(conn):
            for steps in self.MIGRATIONS[version:]:
                for statement in steps:
                    conn.execute(statement)
            if version == 0:
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {self.schema_version}")
            self._verify_schema(conn)
            if conn.execute("PRAGMA foreign_key_check").fetchall():
                raise RegistryError(f"registry {self._path}: migration left dangling addresses")

    def _verify_schema(self, conn: sqlite3.Connection) -> None:
        for table, required in _REQUIRED_COLUMNS.items():
            present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            missing = required - present
            if missing:
                raise RegistryError(
                    f"{self._path} is not a quicpair registry: table {table!r} "
                    f"{'is missing' if not present else 'lacks ' + ', '.join(sorted(missing))}; "
                    "the file was left untouched"
                )
