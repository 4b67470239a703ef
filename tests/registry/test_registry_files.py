"""The registry file: how it is created, which files are refused untouched, how old ones migrate.

Refusing is the rule for anything that is not a registry this version can read:
the file is never modified, repaired or recreated.
"""

from __future__ import annotations

import dataclasses
import os
import random
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from quicpair.actors.registry.store import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    DeviceRecord,
    DeviceState,
    RegistryStore,
)
from quicpair.protocol.errors import RegistryError
from quicpair.protocol.keys import Role
from support.registry_harness import confirmed, node, pairing_id, pending, raw, repair
from support.registry_harness import db_fixture as db_fixture  # the ``db`` fixture
from support.registry_harness import store_fixture as store_fixture  # the ``store`` fixture

# -- the file ------------------------------------------------------------------------------


def test_new_registry_is_owner_only_wal_versioned_and_reopens(db: Path) -> None:
    with RegistryStore(db) as store:
        store.add_pending(pending(1))
        for name in (db.name, db.name + "-wal", db.name + "-shm"):
            assert stat.S_IMODE(os.stat(db.parent / name).st_mode) == 0o600, name
    assert sorted(os.listdir(db.parent)) == [db.name], "close folds the WAL back and removes it"
    conn = raw(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    conn.close()
    with RegistryStore(db) as store:
        assert store.list() == [pending(1)]


def test_a_registry_others_can_read_is_refused_untouched(db: Path) -> None:
    RegistryStore(db).close()
    os.chmod(db, 0o644)
    before = db.read_bytes()
    with pytest.raises(RegistryError, match=r"accessible by other users \(mode 644\); run: chmod 600"):
        RegistryStore(db)
    assert db.read_bytes() == before


def test_a_missing_directory_is_a_registry_error(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="cannot create registry"):
        RegistryStore(tmp_path / "no-such-dir" / "registry.db")


def test_a_closed_store_refuses_work(store: RegistryStore) -> None:
    store.close()
    store.close()  # idempotent
    with pytest.raises(RegistryError, match="is closed"):
        store.get(node(1))


# -- files that are not a usable registry --------------------------------------------------------


def registry_bytes(tmp_path: Path, devices: int = 40) -> bytes:
    source = tmp_path / "source.db"
    with RegistryStore(source) as store:
        for i in range(devices):
            store.add_pending(pending(i, tuple(f"[fe80::{i}:{k}%eth0]:{40000 + k}" for k in range(16))))
    data = source.read_bytes()
    source.unlink()
    return data


def sqlite_file(tmp_path: Path, setup: Callable[[sqlite3.Connection], object], base: bytes = b"") -> bytes:
    path = tmp_path / "scratch.db"
    path.write_bytes(base)
    conn = raw(path)
    setup(conn)
    conn.close()
    data = path.read_bytes()
    path.unlink()
    return data


def _garbage_pages(data: bytes) -> bytes:
    page = 4096
    junk = random.Random(7).randbytes(len(data) - page)
    return data[:page] + junk


BAD_FILES: dict[str, tuple[Callable[[Path], bytes], str]] = {
    "random bytes": (lambda t: random.Random(1).randbytes(8192), "not an SQLite database"),
    "a text file": (lambda t: b"[node]\nname = 'x'\n" * 20, "not an SQLite database"),
    "truncated header": (lambda t: registry_bytes(t)[:60], "not an SQLite database"),
    "truncated to half": (lambda t: (d := registry_bytes(t))[: len(d) // 2], "malformed|corrupt"),
    "garbage pages": (lambda t: _garbage_pages(registry_bytes(t)), "corrupt|malformed|not a database"),
    "another app's sqlite": (
        lambda t: sqlite_file(t, lambda c: c.execute("CREATE TABLE notes (x TEXT)")),
        r"not a quicpair registry \(SQLite application_id 0x00000000.*tables: notes",
    ),
    "newer schema": (
        lambda t: sqlite_file(t, lambda c: c.execute("PRAGMA user_version = 99"), registry_bytes(t)),
        f"schema version 99, written by a newer quicpair; this one reads up to version {SCHEMA_VERSION}",
    ),
    "our id, no schema version": (
        lambda t: sqlite_file(t, lambda c: c.execute(f"PRAGMA application_id = {APPLICATION_ID}")),
        r"not a quicpair registry \(no schema version\)",
    ),
    "a table missing": (
        lambda t: sqlite_file(t, lambda c: c.execute("DROP TABLE address"), registry_bytes(t)),
        "table 'address' is missing",
    ),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_an_unusable_file_is_refused_and_left_byte_for_byte(tmp_path: Path, kind: str) -> None:
    make, message = BAD_FILES[kind]
    data = make(tmp_path)
    db = tmp_path / "registry.db"
    db.write_bytes(data)
    os.chmod(db, 0o600)
    with pytest.raises(RegistryError, match=message) as info:
        RegistryStore(db)
    assert str(db) in str(info.value)
    assert db.read_bytes() == data, "the file must never be modified"
    assert sorted(os.listdir(tmp_path)) == ["registry.db"], "nothing left beside it"
    with pytest.raises(RegistryError):
        RegistryStore(db)  # and it stays refused: nothing was "repaired" or recreated


def test_an_empty_file_is_a_new_registry(db: Path) -> None:
    # What a crash between creating the file and initialising it leaves behind.
    db.touch(mode=0o600)
    with RegistryStore(db) as store:
        store.add_pending(pending(1))
    with RegistryStore(db) as store:
        assert len(store.list()) == 1


# -- migrations ----------------------------------------------------------------------------------


#: The schema of version 1, as quicpair wrote it (before pairings could be stored apart).
V1_SCHEMA = (
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
    """CREATE TABLE address (
        node_id BLOB NOT NULL REFERENCES device (node_id) ON DELETE CASCADE,
        address TEXT NOT NULL CHECK (length(address) > 0),
        last_worked REAL,
        source TEXT NOT NULL CHECK (source IN ('announced', 'observed')),
        rank INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (node_id, address)
    ) WITHOUT ROWID""",
)


def write_v1_registry(db: Path) -> list[DeviceRecord]:
    """A version-1 registry with a confirmed, a revoked and a pending device."""
    devices = [
        dataclasses.replace(pending(1, ()), state=DeviceState.CONFIRMED, paired_at=150.0, updated_at=300.0,
                            observed_address="203.0.113.9:5000",
                            addresses=("192.0.2.2:2", "192.0.2.1:1", "203.0.113.9:5000")),
        dataclasses.replace(pending(2, ()), state=DeviceState.REVOKED, unpair_pending=True, paired_at=160.0,
                            role=Role.JOINER, addresses=("a:1",)),
        pending(3, ("b:2", "c:3"), now=170.0),
    ]  # fmt: skip
    addresses = [
        (1, "192.0.2.1:1", None, "announced", 0),
        (1, "192.0.2.2:2", 300.0, "announced", 1),
        (1, "203.0.113.9:5000", None, "observed", 0),
        (2, "a:1", None, "announced", 0),
        (3, "b:2", None, "announced", 0),
        (3, "c:3", None, "announced", 1),
    ]
    conn = raw(db)
    conn.execute("PRAGMA journal_mode = WAL")
    for statement in V1_SCHEMA:
        conn.execute(statement)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 1")
    for d in devices:
        conn.execute(
            "INSERT INTO device VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (d.node_id.raw, d.name, d.role.value, d.state.value, d.pairing_id, d.pairing_secret,
             d.send_key_fp, d.receive_key_fp, d.paired_at, d.updated_at, int(d.unpair_pending),
             d.observed_address),
        )  # fmt: skip
    conn.executemany("INSERT INTO address VALUES (?, ?, ?, ?, ?)", [(node(i).raw, *a) for i, *a in addresses])
    conn.close()
    os.chmod(db, 0o600)
    return devices


def test_a_version_1_registry_is_migrated_keeping_its_devices_and_addresses(db: Path) -> None:
    devices = write_v1_registry(db)
    with RegistryStore(db) as store:
        assert store.list() == devices
        assert store.allowed_link_peers() == {node(1).raw}
        assert store.pending_unpairs() == [devices[1]]
        # What version 2 is for works on the migrated pairing: a re-pair that fails...
        store.add_pending(repair(1))
        assert store.get(node(1)) == devices[0]
        assert store.delete_pending(node(1), repair(1).pairing_id)
        assert store.get(node(1)) == devices[0]
        # ... and one that commits.
        store.add_pending(repair(1, generation=2))
        assert store.confirm(node(1), repair(1, generation=2).pairing_id, 500.0)
        assert store.get(node(1)).pairing_id == pairing_id(1, generation=2)  # type: ignore[union-attr]
        assert store.get(node(2)) == devices[1] and store.get(node(3)) == devices[2]
    conn = raw(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {
        *("device", "address", "pending_pairing", "pending_address"),  # versions 1 and 2 (4: address rebuilt)
        *("receive_mark", "outbox", "inbox", "node_state"),  # version 3: acknowledged delivery
    }
    assert {r[1] for r in conn.execute("PRAGMA table_info(device)")} >= {"sas"}  # version 4
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    conn.close()


def test_a_version_1_registry_whose_migration_fails_is_left_untouched(db: Path) -> None:
    write_v1_registry(db)
    conn = raw(db)
    conn.execute("CREATE TABLE pending_address (x)")  # in the way of step 2, which fails half-way
    conn.close()
    before = db.read_bytes()
    with pytest.raises(RegistryError, match=r"pending_address already exists.*left untouched"):
        RegistryStore(db)
    assert db.read_bytes() == before
    conn = raw(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert "pending_pairing" not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()


class StoreNext(RegistryStore):
    MIGRATIONS = (*RegistryStore.MIGRATIONS, ("ALTER TABLE device ADD COLUMN note TEXT",))


class BrokenStoreNext(RegistryStore):
    MIGRATIONS = (
        *RegistryStore.MIGRATIONS,
        ("ALTER TABLE device ADD COLUMN note TEXT", "INSERT INTO no_such_table VALUES (1)"),
    )


def test_an_older_registry_is_migrated_keeping_its_devices(db: Path) -> None:
    with RegistryStore(db) as store:
        confirmed(store, 1)
    with StoreNext(db) as store:
        assert store.schema_version == SCHEMA_VERSION + 1
        assert [r.node_id for r in store.list()] == [node(1)]
    conn = raw(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    assert "note" in {row[1] for row in conn.execute("PRAGMA table_info(device)")}
    conn.close()
    with pytest.raises(RegistryError, match="newer quicpair"):
        RegistryStore(db)


def test_a_failed_migration_changes_nothing(db: Path) -> None:
    with RegistryStore(db) as store:
        confirmed(store, 1)
    before = db.read_bytes()
    with pytest.raises(RegistryError, match=r"no_such_table.*left untouched") as info:
        BrokenStoreNext(db)
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    assert db.read_bytes() == before
    with RegistryStore(db) as store:  # the first step of the failed migration was rolled back too
        assert [r.node_id for r in store.list()] == [node(1)]
