"""The registry's SQLite file: its schema, and opening it without ever damaging it.

:func:`open_registry` is how :class:`quicpair.actors.registry.store.RegistryStore` gets its
connection; nothing else touches the file's format.

* **Owner only.** Created 0600 before SQLite sees the path (SQLite gives ``-wal``/``-shm``
  the same mode); a registry other users can access is refused, like an identity key.
* **Durable.** WAL with ``synchronous=FULL`` (opened so) fsyncs the log at every commit,
  so an acknowledged change survives a crash or power loss. The store lowers it to
  NORMAL for the transactions that need not survive a power loss (PROTOCOL.md 10.5):
  they survive a crash of the process, and the next FULL commit makes them durable too
  (https://www.sqlite.org/pragma.html#pragma_synchronous).
* **Never damages a file it does not understand.** It must be SQLite, carry our
  ``application_id``, pass ``PRAGMA integrity_check`` and have a ``user_version`` we
  know; otherwise RegistryError before anything is written. An older version is
  migrated in one transaction (all steps or none). No sqlite3 exception escapes.

Schema history (:data:`MIGRATIONS`):

1. ``device`` (one row per NodeId: the pairing in use, or being made, or revoked) and
   its ``address`` rows.
2. ``pending_pairing`` and its ``pending_address`` rows: a new pairing with a device
   whose record must survive until that pairing commits (a re-pair of a confirmed
   device, or of one we still owe an unpair). Same columns as ``device``; at most one
   per device; deleted with the device row (``ON DELETE CASCADE``).
3. Acknowledged delivery: ``receive_mark`` (per device, deleted with its row),
   ``outbox`` (queued sends), ``inbox`` (received, not yet taken by the application)
   and ``node_state`` (the send epoch).
4. ``sas`` on ``device`` and ``pending_pairing`` (the SAS words, space-separated; ''
   for pairings made before), and ``address.source`` may be ``manual`` (added by a
   person with ``quicpair address``: neither the peer's announcements nor observations
   replace it).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from quicpair.protocol.errors import RegistryError

__all__ = [
    "APPLICATION_ID",
    "DEVICE_COLUMNS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SQLITE_ERRORS",
    "atomic",
    "open_registry",
]

#: ``PRAGMA application_id`` of a quicpair registry: ASCII "QPRG". This is what SQLite's
#: header field is for (https://www.sqlite.org/fileformat.html#application_id).
APPLICATION_ID = 0x51505247
#: Everything sqlite3 raises (``Warning`` is not an ``Error`` subclass in Python 3.11).
SQLITE_ERRORS = (sqlite3.Error, sqlite3.Warning)
_SQLITE_MAGIC = b"SQLite format 3\x00"
_HEADER_SIZE = 100  # the SQLite database header (fileformat.html, section 1.3)
#: A second writer (e.g. the CLI) waits this long for the lock instead of failing at once.
_BUSY_TIMEOUT_MS = 5000
_UNTOUCHED = "the file was left untouched"


def _pairing_id_is_new(table: str, other: str) -> str:
    # find_by_pairing_id must name one pairing: a pairing id is unique across both
    # tables, not only within each (their UNIQUE indexes). The store only INSERTs ids.
    return (
        f"CREATE TRIGGER {table}_pairing_id_is_new BEFORE INSERT ON {table} "
        f"WHEN EXISTS (SELECT 1 FROM {other} WHERE pairing_id = NEW.pairing_id) "
        f"BEGIN SELECT RAISE(ABORT, 'UNIQUE constraint failed: {other}.pairing_id'); END"
    )


#: ``MIGRATIONS[v - 1]`` turns a registry of version ``v - 1`` into version ``v``;
#: version 0 is an empty file. A released step is never edited: add one. The CHECKs
#: keep a buggy caller from storing what no reader could use.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
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
    (
        # A pending pairing can only exist beside the device row it is to replace.
        """CREATE TABLE pending_pairing (
            node_id BLOB NOT NULL PRIMARY KEY REFERENCES device (node_id) ON DELETE CASCADE
                CHECK (typeof(node_id) = 'blob' AND length(node_id) = 32),
            name TEXT NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('initiator', 'joiner')),
            state TEXT NOT NULL CHECK (state = 'pending'),
            pairing_id BLOB NOT NULL CHECK (typeof(pairing_id) = 'blob' AND length(pairing_id) = 32),
            pairing_secret BLOB NOT NULL
                CHECK (typeof(pairing_secret) = 'blob' AND length(pairing_secret) = 32),
            send_key_fp TEXT NOT NULL, receive_key_fp TEXT NOT NULL,
            paired_at REAL NOT NULL, updated_at REAL NOT NULL,
            unpair_pending INTEGER NOT NULL DEFAULT 0 CHECK (unpair_pending = 0),
            observed_address TEXT
        ) WITHOUT ROWID""",
        "CREATE UNIQUE INDEX pending_pairing_id ON pending_pairing (pairing_id)",
        # Only what the peer announced: nothing has been dialled with this pairing yet.
        """CREATE TABLE pending_address (
            node_id BLOB NOT NULL REFERENCES pending_pairing (node_id) ON DELETE CASCADE,
            address TEXT NOT NULL CHECK (length(address) > 0),
            rank INTEGER NOT NULL,
            PRIMARY KEY (node_id, address)
        ) WITHOUT ROWID""",
        _pairing_id_is_new("pending_pairing", "device"),
        _pairing_id_is_new("device", "pending_pairing"),
    ),
    (
        # Acknowledged delivery (docs/LINKS.md "Sends"). The highest delivery number taken
        # from the peer under the device's pairing in use: a new pairing (the device row
        # replaced) starts again at 0.
        """CREATE TABLE receive_mark (
            node_id BLOB NOT NULL PRIMARY KEY REFERENCES device (node_id) ON DELETE CASCADE,
            mark INTEGER NOT NULL CHECK (mark >= 0)
        ) WITHOUT ROWID""",
        # Sends queued durably (Node.send(queue=True)) until the peer acknowledges them. Not
        # tied to one pairing: a re-pair keeps them; an unpair drops them.
        """CREATE TABLE outbox (
            node_id BLOB NOT NULL CHECK (typeof(node_id) = 'blob' AND length(node_id) = 32),
            seq INTEGER NOT NULL CHECK (seq >= 0),
            payload BLOB NOT NULL CHECK (typeof(payload) = 'blob'),
            queued_at REAL NOT NULL,
            PRIMARY KEY (node_id, seq)
        ) WITHOUT ROWID""",
        # Payloads taken from a device (acknowledged to it) that the application has not taken
        # yet: an acknowledged message is never lost with this node's process. Not tied to a
        # pairing: what was acknowledged is delivered, re-pair or unpair.
        """CREATE TABLE inbox (
            node_id BLOB NOT NULL CHECK (typeof(node_id) = 'blob' AND length(node_id) = 32),
            seq INTEGER NOT NULL CHECK (seq >= 0),
            payload BLOB NOT NULL CHECK (typeof(payload) = 'blob'),
            received_at REAL NOT NULL,
            PRIMARY KEY (node_id, seq)
        ) WITHOUT ROWID""",
        # Node-wide counters; 'send_epoch' is raised at every start, so delivery numbers of
        # a run never repeat those of an earlier run (protocol/delivery.py).
        """CREATE TABLE node_state (
            key TEXT NOT NULL PRIMARY KEY,
            value INTEGER NOT NULL
        ) WITHOUT ROWID""",
    ),
    (
        "ALTER TABLE device ADD COLUMN sas TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE pending_pairing ADD COLUMN sas TEXT NOT NULL DEFAULT ''",
        # A CHECK cannot be altered in SQLite: the address table is rebuilt with 'manual'.
        """CREATE TABLE address_v4 (
            node_id BLOB NOT NULL REFERENCES device (node_id) ON DELETE CASCADE,
            address TEXT NOT NULL CHECK (length(address) > 0),
            last_worked REAL,
            source TEXT NOT NULL CHECK (source IN ('announced', 'observed', 'manual')),
            rank INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (node_id, address)
        ) WITHOUT ROWID""",
        "INSERT INTO address_v4 (node_id, address, last_worked, source, rank) "
        "SELECT node_id, address, last_worked, source, rank FROM address",
        "DROP TABLE address",
        "ALTER TABLE address_v4 RENAME TO address",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

#: The columns of ``device`` and ``pending_pairing``, named after DeviceRecord's fields.
DEVICE_COLUMNS = (
    *("node_id", "name", "role", "state", "pairing_id", "pairing_secret", "send_key_fp"),
    *("receive_key_fp", "paired_at", "updated_at", "unpair_pending", "observed_address", "sas"),
)
#: The columns the store's queries use; a registry without them is not one we can read.
_REQUIRED_COLUMNS: dict[str, frozenset[str]] = {
    "device": frozenset(DEVICE_COLUMNS),
    "address": frozenset(("node_id", "address", "last_worked", "source", "rank")),
    "pending_pairing": frozenset(DEVICE_COLUMNS),
    "pending_address": frozenset(("node_id", "address", "rank")),
    "receive_mark": frozenset(("node_id", "mark")),
    "outbox": frozenset(("node_id", "seq", "payload", "queued_at")),
    "inbox": frozenset(("node_id", "seq", "payload", "received_at")),
    "node_state": frozenset(("key", "value")),
}


@contextmanager
def atomic(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction on an autocommit connection: committed whole, or rolled back."""
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


def open_registry(path: Path, migrations: Sequence[Sequence[str]] = MIGRATIONS) -> sqlite3.Connection:
    """Open (creating, initialising or migrating) the registry at ``path``.

    The connection is in autocommit mode (use :func:`atomic`) with foreign keys on.
    Raises RegistryError, with the file unchanged, when it is not a registry we can use.
    """
    _create_if_missing(path)
    _check_file(path)
    try:
        conn = sqlite3.connect(
            # Never let SQLite create it. Python's sqlite3 cannot pass SQLITE_OPEN_NOFOLLOW:
            # _check_file refused symlinks just before, and the home belongs to us alone.
            path.absolute().as_uri() + "?mode=rw",
            uri=True,
            isolation_level=None,  # autocommit; transactions are explicit (BEGIN/COMMIT)
        )
    except SQLITE_ERRORS as exc:
        raise RegistryError(f"cannot open registry {path}: {exc}") from exc
    try:
        _prepare(conn, path, migrations)
    except SQLITE_ERRORS as exc:
        conn.close()
        raise RegistryError(f"{path} is not a usable quicpair registry ({exc}); {_UNTOUCHED}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _create_if_missing(path: Path) -> None:
    """Create an empty file, owner-only, before SQLite sees the path."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise RegistryError(f"cannot create registry {path}: {exc.strerror}") from exc
    os.close(fd)
    # Make the new directory entry itself durable, not only the file's data.
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _check_file(path: Path) -> None:
    """Refuse, before SQLite opens it, a file that is unsafe or not SQLite."""
    try:
        for suffix in ("", "-wal", "-shm", "-journal"):
            # SQLite opens these next to the file; none may lead outside the home.
            if os.path.islink(f"{path}{suffix}"):
                raise RegistryError(
                    f"registry {path}{suffix} is a symbolic link; refusing to follow it ({_UNTOUCHED})"
                )
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            raise RegistryError(f"registry {path} is not a regular file")
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise RegistryError(
                f"registry {path} is accessible by other users "
                f"(mode {stat.S_IMODE(st.st_mode):o}); run: chmod 600 {path}"
            )
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            header = os.pread(fd, _HEADER_SIZE, 0)
        finally:
            os.close(fd)
    except OSError as exc:
        raise RegistryError(f"cannot read registry {path}: {exc.strerror}") from exc
    # An empty file is one we created and never got to initialise: a new registry.
    if header and (len(header) < _HEADER_SIZE or not header.startswith(_SQLITE_MAGIC)):
        raise RegistryError(f"{path} is not a quicpair registry: not an SQLite database; {_UNTOUCHED}")


def _prepare(conn: sqlite3.Connection, path: Path, migrations: Sequence[Sequence[str]]) -> None:
    """Check what the file is, then initialise or migrate it, or refuse it untouched."""
    conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA synchronous = FULL")
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    tables = sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
    fresh = app_id == 0 and version == 0 and not conn.execute("SELECT 1 FROM sqlite_master").fetchone()
    latest = len(migrations)
    if not fresh:
        if app_id != APPLICATION_ID:
            what = f"tables: {', '.join(tables)}" if tables else "no tables"
            raise RegistryError(
                f"{path} is not a quicpair registry (SQLite application_id "
                f"0x{app_id:08x}, expected 0x{APPLICATION_ID:08x}; {what}); {_UNTOUCHED}"
            )
        if version > latest:
            raise RegistryError(
                f"registry {path} has schema version {version}, written by a newer "
                f"quicpair; this one reads up to version {latest}. Upgrade quicpair; {_UNTOUCHED}"
            )
        if version < 1:
            raise RegistryError(f"{path} is not a quicpair registry (no schema version); {_UNTOUCHED}")
        problems = [r[0] for r in conn.execute("PRAGMA integrity_check(5)")]
        if problems != ["ok"]:
            raise RegistryError(
                f"registry {path} is corrupt (integrity check: {'; '.join(problems)}); "
                f"{_UNTOUCHED}. Restore it from a backup or move it away to start over"
            )
    if fresh:
        _set_wal(conn, path)
    if version < latest:
        _migrate(conn, path, migrations, version)
    else:
        _verify_schema(conn, path)
    _set_wal(conn, path)
    conn.execute("PRAGMA foreign_keys = ON")


def _set_wal(conn: sqlite3.Connection, path: Path) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise RegistryError(
            f"registry {path}: SQLite cannot use its WAL journal here (got {mode!r}); "
            "put the node's home on a local file system"
        )


def _migrate(conn: sqlite3.Connection, path: Path, migrations: Sequence[Sequence[str]], version: int) -> None:
    """From ``version`` to the latest in ONE transaction; nothing on failure."""
    with atomic(conn):
        for steps in migrations[version:]:
            for statement in steps:
                conn.execute(statement)
        if version == 0:
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {len(migrations)}")
        _verify_schema(conn, path)
        if conn.execute("PRAGMA foreign_key_check").fetchall():
            raise RegistryError(f"registry {path}: migration left dangling rows")


def _verify_schema(conn: sqlite3.Connection, path: Path) -> None:
    for table, required in _REQUIRED_COLUMNS.items():
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        missing = required - present
        if missing:
            raise RegistryError(
                f"{path} is not a quicpair registry: table {table!r} "
                f"{'is missing' if not present else 'lacks ' + ', '.join(sorted(missing))}; {_UNTOUCHED}"
            )
