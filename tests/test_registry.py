"""The device registry: a real SQLite file in tmp_path, real crashes, real corruption."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import select
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from actors.registry import RegistryActor
from actors.registry_store import (
    APPLICATION_ID,
    MAX_OBSERVED_ADDRESSES,
    SCHEMA_VERSION,
    DeviceRecord,
    DeviceState,
    RegistryStore,
)
from protocol.errors import RegistryError
from protocol.identity import NodeId
from protocol.keys import Role

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 5.0


def node(i: int) -> NodeId:
    return NodeId(hashlib.sha256(b"node %d" % i).digest())


def pairing_id(i: int, generation: int = 0) -> bytes:
    return hashlib.sha256(b"pairing %d %d" % (i, generation)).digest()


SECRET = bytes(range(100, 132))


def pending(
    i: int,
    addresses: tuple[str, ...] = ("192.0.2.1:47470", "[2001:db8::1]:47470"),
    *,
    generation: int = 0,
    now: float = 100.0,
    role: Role = Role.INITIATOR,
) -> DeviceRecord:
    return DeviceRecord(
        node_id=node(i), name=f"device-{i}", role=role, state=DeviceState.PENDING,
        pairing_id=pairing_id(i, generation), pairing_secret=SECRET,
        send_key_fp="sendsendsendsend", receive_key_fp="recvrecvrecvrecv",
        paired_at=now, updated_at=now, addresses=addresses,
    )  # fmt: skip


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "registry.db"


@pytest.fixture
def store(db: Path) -> Iterator[RegistryStore]:
    with RegistryStore(db) as s:
        yield s


def raw(path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection, for setting up what a test needs behind the store's back."""
    return sqlite3.connect(path, isolation_level=None)


def confirmed(store: RegistryStore, i: int, addresses: tuple[str, ...] = ("192.0.2.1:1",)) -> DeviceRecord:
    store.add_pending(pending(i, addresses))
    assert store.confirm(node(i), pairing_id(i), 200.0)
    record = store.get(node(i))
    assert record is not None
    return record


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


# -- operations ----------------------------------------------------------------------------


def test_pending_then_confirmed(store: RegistryStore) -> None:
    record = pending(1, role=Role.JOINER)
    store.add_pending(record)
    assert store.get(node(1)) == record
    assert store.allowed_link_peers() == set(), "a pending device is never used as paired"
    assert not store.confirm(node(1), pairing_id(1, generation=9), 150.0), "another pairing's id"
    assert store.confirm(node(1), pairing_id(1), 150.0)
    stored = store.get(node(1))
    assert stored is not None
    assert (stored.state, stored.role, stored.paired_at, stored.updated_at) == (
        DeviceState.CONFIRMED, Role.JOINER, 150.0, 150.0)  # fmt: skip
    assert store.confirm(node(1), pairing_id(1), 160.0), "a retried commit is fine"
    assert store.get(node(1)).paired_at == 150.0  # type: ignore[union-attr]
    assert store.allowed_link_peers() == {node(1).raw}
    assert store.find_by_pairing_id(pairing_id(1)) == store.get(node(1))
    assert store.find_by_pairing_id(pairing_id(2)) is None


def test_delete_pending_only_deletes_that_pending_pairing(db: Path, store: RegistryStore) -> None:
    store.add_pending(pending(1))
    assert not store.delete_pending(node(1), pairing_id(1, generation=1))
    assert store.delete_pending(node(1), pairing_id(1))
    assert store.get(node(1)) is None
    confirmed(store, 2)
    assert not store.delete_pending(node(2), pairing_id(2)), "never deletes a confirmed record"
    assert store.get(node(2)) is not None
    conn = raw(db)
    assert conn.execute("SELECT count(*) FROM address WHERE node_id = ?", (node(1).raw,)).fetchone()[0] == 0
    conn.close()


def table_rows(db: Path, table: str) -> int:
    conn = raw(db)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


def in_use(store: RegistryStore) -> DeviceRecord:
    """A confirmed device 1 that has been used: an address worked, it was seen somewhere."""
    confirmed(store, 1, addresses=("192.0.2.1:1", "192.0.2.2:2"))
    store.mark_address_worked(node(1), "192.0.2.2:2", 300.0)
    store.record_observed(node(1), "203.0.113.9:5000", 310.0)
    record = store.get(node(1))
    assert record is not None
    assert record.addresses == ("192.0.2.2:2", "192.0.2.1:1", "203.0.113.9:5000")
    return record


def repair(i: int, generation: int = 1, now: float = 400.0) -> DeviceRecord:
    """Pairing device ``i`` again: a new pairing id, secret, key fingerprints and addresses."""
    return dataclasses.replace(
        pending(i, ("198.51.100.7:9", "198.51.100.8:9"), generation=generation, now=now),
        pairing_secret=bytes(range(200, 232)), send_key_fp="newsendnewsend12",
        receive_key_fp="newrecvnewrecv12", observed_address="198.51.100.7:9",
    )  # fmt: skip


def test_a_repair_keeps_the_old_pairing_in_use_until_it_commits(db: Path, store: RegistryStore) -> None:
    old = in_use(store)
    new = repair(1)
    store.add_pending(new)
    assert store.get(node(1)) == old, "the working pairing is untouched, addresses and all"
    assert store.allowed_link_peers() == {node(1).raw}, "and still accepted"
    assert store.list([DeviceState.CONFIRMED]) == [old]
    assert store.pending_unpairs() == []
    # The resolution lookup finds the new pairing, with its own secret and fingerprints.
    assert store.find_by_pairing_id(new.pairing_id) == new
    assert store.find_by_pairing_id(old.pairing_id) == old
    assert store.list([DeviceState.PENDING]) == [new]
    assert store.list() == [old, new], "a device being paired again is listed twice"
    assert table_rows(db, "pending_pairing") == 1


def test_a_repair_that_commits_replaces_the_old_pairing_and_addresses(db: Path, store: RegistryStore) -> None:
    old = in_use(store)
    new = repair(1)
    store.add_pending(new)
    assert store.confirm(node(1), new.pairing_id, 500.0)
    committed = dataclasses.replace(new, state=DeviceState.CONFIRMED, paired_at=500.0, updated_at=500.0)
    assert store.get(node(1)) == committed, "nothing of the old pairing is left, not even an address"
    assert store.find_by_pairing_id(old.pairing_id) is None
    assert store.find_by_pairing_id(new.pairing_id) == committed
    assert store.list() == [committed]
    assert store.allowed_link_peers() == {node(1).raw}
    assert (table_rows(db, "pending_pairing"), table_rows(db, "pending_address")) == (0, 0)
    # A retried commit is fine; the old pairing and a failure that comes late change nothing.
    assert store.confirm(node(1), new.pairing_id, 510.0)
    assert not store.confirm(node(1), old.pairing_id, 520.0)
    assert not store.delete_pending(node(1), new.pairing_id)
    assert store.get(node(1)) == dataclasses.replace(committed, updated_at=510.0)


def test_a_repair_that_fails_leaves_the_old_pairing_intact(db: Path, store: RegistryStore) -> None:
    old = in_use(store)
    new = repair(1)
    store.add_pending(new)
    assert not store.delete_pending(node(1), pairing_id(1, generation=7)), "another pairing's id"
    assert not store.delete_pending(node(1), old.pairing_id), "never the confirmed pairing"
    assert not store.delete_pending(node(2), new.pairing_id), "another device's"
    assert store.delete_pending(node(1), new.pairing_id)
    assert store.get(node(1)) == old
    assert store.allowed_link_peers() == {node(1).raw}
    assert store.find_by_pairing_id(new.pairing_id) is None
    assert store.list() == [old]
    assert (table_rows(db, "pending_pairing"), table_rows(db, "pending_address")) == (0, 0)
    assert not store.confirm(node(1), new.pairing_id, 500.0), "a deleted pairing does not come back"
    assert not store.delete_pending(node(1), new.pairing_id)
    assert store.get(node(1)) == old
    # The old pairing keeps working as before.
    assert store.set_addresses(node(1), ["192.0.2.3:3"], 600.0)
    assert store.get(node(1)).addresses == ("192.0.2.3:3", "203.0.113.9:5000")  # type: ignore[union-attr]


def test_a_second_repair_replaces_the_first_one_still_pending(store: RegistryStore) -> None:
    old = in_use(store)
    first, second = repair(1, generation=1), repair(1, generation=2, now=450.0)
    store.add_pending(first)
    store.add_pending(second)
    assert store.find_by_pairing_id(first.pairing_id) is None
    assert not store.confirm(node(1), first.pairing_id, 500.0), "the replaced session's commit is refused"
    assert store.get(node(1)) == old
    assert store.confirm(node(1), second.pairing_id, 510.0)
    assert store.get(node(1)).pairing_id == second.pairing_id  # type: ignore[union-attr]


def test_pairing_a_revoked_device_again(store: RegistryStore) -> None:
    # Revoked and the peer already knows: nothing to keep, the row is replaced (as a pending one is).
    confirmed(store, 1)
    store.revoke(node(1), 300.0, notify_peer=False)
    store.add_pending(repair(1))
    assert store.get(node(1)) == repair(1)
    assert store.delete_pending(node(1), repair(1).pairing_id)
    assert store.get(node(1)) is None
    # Revoked and we still owe the peer the unpair: that duty survives a new pairing that fails...
    confirmed(store, 2)
    store.revoke(node(2), 300.0, notify_peer=True)
    owed = store.get(node(2))
    assert owed is not None
    store.add_pending(repair(2))
    assert store.get(node(2)) == owed and store.pending_unpairs() == [owed]
    assert store.allowed_link_peers() == set()
    assert store.find_by_pairing_id(repair(2).pairing_id) == repair(2)
    assert store.delete_pending(node(2), repair(2).pairing_id)
    assert store.get(node(2)) == owed and store.pending_unpairs() == [owed]
    # ... and ends when a new pairing commits: both sides then hold the new secret.
    store.add_pending(repair(2, generation=3))
    assert store.confirm(node(2), repair(2, generation=3).pairing_id, 500.0)
    record = store.get(node(2))
    assert record is not None
    assert (record.state, record.unpair_pending, record.pairing_id) == (
        DeviceState.CONFIRMED, False, pairing_id(2, 3))  # fmt: skip
    assert store.pending_unpairs() == []
    assert store.allowed_link_peers() == {node(2).raw}


def test_an_unpair_during_a_repair_leaves_the_repair_to_its_session(store: RegistryStore) -> None:
    confirmed(store, 1)
    store.add_pending(repair(1))
    assert store.revoke(node(1), 300.0, notify_peer=True)
    assert store.allowed_link_peers() == set()
    # A joiner that voted must follow the initiator's decision (2PC): the commit still lands.
    assert store.confirm(node(1), repair(1).pairing_id, 310.0)
    assert store.get(node(1)).state is DeviceState.CONFIRMED  # type: ignore[union-attr]
    assert store.pending_unpairs() == []
    # remove() erases the device whatever it is, a pairing in progress included.
    store.add_pending(repair(1, generation=2))
    assert store.remove(node(1))
    assert store.find_by_pairing_id(repair(1, generation=2).pairing_id) is None
    assert not store.confirm(node(1), repair(1, generation=2).pairing_id, 320.0)


def test_list_filters_by_state_oldest_pairing_first(store: RegistryStore) -> None:
    store.add_pending(pending(3, now=300.0))
    store.add_pending(pending(1, now=100.0))
    store.add_pending(pending(2, now=200.0))
    store.confirm(node(2), pairing_id(2), 250.0)
    store.revoke(node(3), 350.0, notify_peer=False)
    assert [r.name for r in store.list()] == ["device-1", "device-2", "device-3"]
    assert [r.name for r in store.list([DeviceState.CONFIRMED])] == ["device-2"]
    both = (DeviceState.PENDING, DeviceState.REVOKED)
    assert [r.name for r in store.list(both)] == ["device-1", "device-3"]
    assert store.list([]) == []


def test_set_addresses_replaces_the_announced_set_keeping_what_worked(store: RegistryStore) -> None:
    confirmed(store, 1, addresses=("a:1", "b:2", "c:3", "a:1"))
    assert store.get(node(1)).addresses == ("a:1", "b:2", "c:3")  # type: ignore[union-attr]
    store.mark_address_worked(node(1), "b:2", 300.0)
    assert store.set_addresses(node(1), ["c:3", "b:2", "d:4"], 310.0)
    record = store.get(node(1))
    assert record is not None
    assert record.addresses == ("b:2", "c:3", "d:4"), "worked first, then the peer's order; a:1 dropped"
    assert record.updated_at == 310.0
    assert store.set_addresses(node(1), [], 320.0)
    assert store.get(node(1)).addresses == ()  # type: ignore[union-attr]


def test_addresses_that_worked_come_first_most_recent_first(store: RegistryStore) -> None:
    confirmed(store, 1, addresses=("a:1", "b:2", "c:3"))
    store.mark_address_worked(node(1), "c:3", 300.0)
    store.mark_address_worked(node(1), "b:2", 310.0)
    assert store.get(node(1)).addresses == ("b:2", "c:3", "a:1")  # type: ignore[union-attr]
    store.mark_address_worked(node(1), "c:3", 320.0)
    assert store.get(node(1)).addresses == ("c:3", "b:2", "a:1")  # type: ignore[union-attr]


def test_discovered_addresses_that_worked_are_kept_but_bounded(store: RegistryStore) -> None:
    confirmed(store, 1, addresses=("a:1",))
    found = [f"203.0.113.{k}:47470" for k in range(MAX_OBSERVED_ADDRESSES + 2)]
    for k, address in enumerate(found):
        assert store.mark_address_worked(node(1), address, 300.0 + k)
    record = store.get(node(1))
    assert record is not None
    assert record.addresses == (*reversed(found[2:]), "a:1"), "the oldest discoveries are forgotten"
    assert store.set_addresses(node(1), ["z:9"], 400.0)
    assert store.get(node(1)).addresses == (*reversed(found[2:]), "z:9")  # type: ignore[union-attr]


def test_observed_address_is_kept_after_the_announced_ones(store: RegistryStore) -> None:
    confirmed(store, 1, addresses=("a:1", "b:2"))
    assert store.record_observed(node(1), "192.0.2.50:51000", 300.0)
    record = store.get(node(1))
    assert record is not None
    assert record.observed_address == "192.0.2.50:51000"
    assert record.addresses == ("a:1", "b:2", "192.0.2.50:51000")
    assert store.record_observed(node(1), "192.0.2.50:51001", 310.0)
    record = store.get(node(1))
    assert record is not None
    assert record.addresses == ("a:1", "b:2", "192.0.2.50:51001"), "an untried one is replaced"
    assert store.record_observed(node(1), "a:1", 320.0)
    record = store.get(node(1))
    assert record is not None
    assert (record.observed_address, record.addresses) == ("a:1", ("a:1", "b:2")), "only the latest is kept"


def test_revoke_deliver_and_remove(store: RegistryStore) -> None:
    confirmed(store, 1)
    confirmed(store, 2)
    assert store.revoke(node(1), 300.0, notify_peer=True)
    record = store.get(node(1))
    assert record is not None
    assert (record.state, record.unpair_pending, record.updated_at) == (DeviceState.REVOKED, True, 300.0)
    assert store.allowed_link_peers() == {node(2).raw}
    assert [r.node_id for r in store.pending_unpairs()] == [node(1)]
    assert not store.confirm(node(1), pairing_id(1), 310.0), "a revoked pairing does not come back"
    assert store.mark_unpair_delivered(node(1))
    assert store.pending_unpairs() == []
    assert not store.mark_unpair_delivered(node(2)), "only revoked devices have an unpair to deliver"
    assert store.revoke(node(2), 320.0, notify_peer=False)
    assert store.pending_unpairs() == []
    assert store.remove(node(1))
    assert not store.remove(node(1))
    assert [r.node_id for r in store.list()] == [node(2)]


def test_changes_to_an_unknown_device_answer_false(store: RegistryStore) -> None:
    n = node(7)
    assert store.get(n) is None
    assert not store.confirm(n, pairing_id(7), 1.0)
    assert not store.delete_pending(n, pairing_id(7))
    assert not store.set_addresses(n, ["a:1"], 1.0)
    assert not store.mark_address_worked(n, "a:1", 1.0)
    assert not store.record_observed(n, "a:1", 1.0)
    assert not store.revoke(n, 1.0, notify_peer=True)
    assert not store.mark_unpair_delivered(n)
    assert not store.remove(n)
    assert store.list() == []


def test_add_pending_takes_only_pending_records(store: RegistryStore) -> None:
    record = pending(1)
    with pytest.raises(RegistryError, match="needs a pending record"):
        store.add_pending(dataclasses.replace(record, state=DeviceState.CONFIRMED))
    store.add_pending(record)
    with pytest.raises(RegistryError, match="UNIQUE") as info:
        store.add_pending(dataclasses.replace(pending(2), pairing_id=pairing_id(1)))
    assert isinstance(info.value.__cause__, sqlite3.IntegrityError), "converted with `from exc`"
    with pytest.raises(RegistryError, match="no unpair to deliver"):
        store.add_pending(dataclasses.replace(pending(3), unpair_pending=True))


def test_a_pairing_id_names_one_pairing_wherever_it_is_stored(store: RegistryStore) -> None:
    confirmed(store, 1)
    store.add_pending(repair(1))
    with pytest.raises(RegistryError, match="UNIQUE") as info:
        store.add_pending(dataclasses.replace(pending(2), pairing_id=repair(1).pairing_id))
    assert isinstance(info.value.__cause__, sqlite3.IntegrityError)
    with pytest.raises(RegistryError, match="UNIQUE"):
        store.add_pending(dataclasses.replace(repair(1, generation=2), pairing_id=pairing_id(1)))
    assert store.find_by_pairing_id(repair(1).pairing_id) == repair(1), "the failed add replaced nothing"
    assert store.get(node(2)) is None


def test_a_record_never_shows_its_secret() -> None:
    record = pending(1)
    for text in (repr(record), str(record), repr([record])):
        assert SECRET.hex() not in text and repr(SECRET) not in text and "pairing_secret" not in text
        assert node(1).fingerprint in text and "device-1" in text


@pytest.mark.parametrize(
    "change",
    [
        {"pairing_secret": b"short"},
        {"pairing_id": bytes(31)},
        {"role": "initiator"},
        {"state": "pending"},
        {"addresses": ["a:1"]},
        {"addresses": ("",)},
    ],
    ids=lambda c: next(iter(c)),
)
def test_a_malformed_record_is_refused(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(pending(1), **change)


# -- one transaction per change --------------------------------------------------------------


def fail_on_insert(db: Path, address: str, table: str = "address") -> None:
    """Make SQLite itself fail in the middle of a change: inserting this address aborts."""
    conn = raw(db)
    conn.execute(
        f"CREATE TRIGGER fail_insert_{table} BEFORE INSERT ON {table} WHEN NEW.address = '{address}' "
        "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
    )
    conn.close()


def test_a_failure_half_way_through_a_change_leaves_the_old_state(db: Path) -> None:
    with RegistryStore(db) as store:
        confirmed(store, 1, addresses=("a:1", "b:2"))
        store.mark_address_worked(node(1), "b:2", 300.0)
        before = store.get(node(1))
        store.add_pending(pending(2, ("a:1",)))
        before_2 = store.get(node(2))
    fail_on_insert(db, "boom:1", "address")
    fail_on_insert(db, "boom:1", "pending_address")
    with RegistryStore(db) as store:
        # set_addresses deletes a:1 first, then inserts: the insert fails.
        with pytest.raises(RegistryError, match="set_addresses failed: injected failure") as info:
            store.set_addresses(node(1), ["b:2", "boom:1"], 400.0)
        assert isinstance(info.value.__cause__, sqlite3.Error)
        assert store.get(node(1)) == before
        # Pairing a pending device again deletes its record (and addresses), then inserts: same.
        with pytest.raises(RegistryError, match="add_pending failed"):
            store.add_pending(pending(2, ("c:3", "boom:1"), generation=1))
        assert store.get(node(2)) == before_2
        # A re-pair of a confirmed device stores the pairing, then its addresses: same.
        with pytest.raises(RegistryError, match="add_pending failed"):
            store.add_pending(pending(1, ("c:3", "boom:1"), generation=1))
        assert store.get(node(1)) == before
        assert store.find_by_pairing_id(pairing_id(1, generation=1)) is None
        with pytest.raises(RegistryError, match="record_observed failed"):
            store.record_observed(node(1), "boom:1", 410.0)
        assert store.get(node(1)) == before
        # The store is still usable after a failed transaction.
        assert store.set_addresses(node(1), ["c:3"], 420.0)
        assert store.get(node(1)).addresses == ("c:3",)  # type: ignore[union-attr]


def test_a_repair_commit_failing_half_way_keeps_the_old_pairing_and_the_new_one_pending(db: Path) -> None:
    new = repair(1)
    with RegistryStore(db) as store:
        old = in_use(store)
        store.add_pending(new)
    # Committing deletes the old record (its addresses, the pending row), inserts the new
    # one, then its addresses: the second address fails.
    fail_on_insert(db, new.addresses[1], "address")
    with RegistryStore(db) as store:
        with pytest.raises(RegistryError, match="confirm failed: injected failure"):
            store.confirm(node(1), new.pairing_id, 500.0)
        assert store.get(node(1)) == old
        assert store.find_by_pairing_id(new.pairing_id) == new
        assert store.allowed_link_peers() == {node(1).raw}
    conn = raw(db)
    conn.execute("DROP TRIGGER fail_insert_address")
    conn.close()
    with RegistryStore(db) as store:  # the retried commit lands whole
        assert store.confirm(node(1), new.pairing_id, 510.0)
        assert store.get(node(1)) == dataclasses.replace(
            new, state=DeviceState.CONFIRMED, paired_at=510.0, updated_at=510.0
        )


# -- crash safety ------------------------------------------------------------------------------

WRITER = """
import sys
from pathlib import Path
from actors.registry_store import RegistryStore
from tests.test_registry import node, pairing_id, pending, gen1, gen2, gen3
store = RegistryStore(Path(sys.argv[1]))
i = int(sys.argv[2])
while True:
    store.add_pending(pending(i, gen1(i)))
    print("pending", i, flush=True)
    store.confirm(node(i), pairing_id(i), float(i))
    print("confirmed", i, flush=True)
    store.set_addresses(node(i), gen2(i), float(i))
    print("moved", i, flush=True)
    store.add_pending(pending(i, gen3(i), generation=1))
    print("repairing", i, flush=True)
    store.confirm(node(i), pairing_id(i, 1), float(i))
    print("repaired", i, flush=True)
    i += 1
"""
#: What the writer does to each device, in order.
STEPS = ("pending", "confirmed", "moved", "repairing", "repaired")


def gen1(i: int) -> tuple[str, ...]:
    return tuple(f"[2001:db8:{i:x}::{k}]:{40000 + k}" for k in range(8))


def gen2(i: int) -> tuple[str, ...]:
    return tuple(f"198.51.{i % 256}.{k}:{50000 + k}" for k in range(8))


def gen3(i: int) -> tuple[str, ...]:
    return tuple(f"[2001:db8:ffff:{i:x}::{k}]:{60000 + k}" for k in range(8))


def expected_after(i: int, step: str) -> tuple[object, ...]:
    """Device ``i`` after ``step``: (pairing generation in use, its state, its addresses,
    the addresses of a new pairing stored apart or None)."""
    return {
        "pending": (0, DeviceState.PENDING, gen1(i), None),
        "confirmed": (0, DeviceState.CONFIRMED, gen1(i), None),
        "moved": (0, DeviceState.CONFIRMED, gen2(i), None),
        "repairing": (0, DeviceState.CONFIRMED, gen2(i), gen3(i)),
        "repaired": (1, DeviceState.CONFIRMED, gen3(i), None),
    }[step]


def seen(store: RegistryStore, i: int) -> tuple[object, ...]:
    record = store.get(node(i))
    assert record is not None, f"device {i} lost"
    generation = [pairing_id(i, g) for g in (0, 1)].index(record.pairing_id)
    apart = store.find_by_pairing_id(pairing_id(i, 1)) if generation == 0 else None
    assert apart is None or apart.state is DeviceState.PENDING
    return (generation, record.state, record.addresses, None if apart is None else apart.addresses)


def run_writer_and_kill(db: Path, first: int, acks_wanted: int) -> list[tuple[str, int]]:
    """Start a writer process, SIGKILL it after ``acks_wanted`` acknowledged writes."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), str(first)], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
    )  # fmt: skip
    assert proc.stdout is not None
    data = b""
    deadline = time.monotonic() + 20.0
    try:
        while data.count(b"\n") < acks_wanted:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "the writer did not make progress"
            ready, _, _ = select.select([proc.stdout], [], [], remaining)
            chunk = proc.stdout.read(65536) if ready else b""
            assert chunk or not ready, f"the writer died: {proc.stderr.read().decode()}"  # type: ignore[union-attr]
            data += chunk
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10.0)
        data += proc.stdout.read()
        proc.stdout.close()
        proc.stderr.close()  # type: ignore[union-attr]
    assert proc.returncode == -signal.SIGKILL
    acks = []
    for line in data.decode().splitlines():
        what, i = line.split()
        acks.append((what, int(i)))
    return acks


def test_a_writer_killed_mid_write_loses_no_acknowledged_change_and_no_record_is_half_written(
    db: Path,
) -> None:
    acked: dict[int, str] = {}
    first = 0
    for acks_wanted in (30, 61, 95):  # three crashes of the same file, each at whatever write is running
        for what, i in run_writer_and_kill(db, first, acks_wanted):
            acked[i] = what
        first = max(acked) + 1
        with RegistryStore(db) as store:  # opens: passes the integrity check
            for i, what in acked.items():
                # Exactly the acknowledged state, or the next one: the write in flight at the
                # kill may have landed; nothing in between (a re-pair commits whole or not at all).
                following = STEPS[min(STEPS.index(what) + 1, len(STEPS) - 1)]
                assert seen(store, i) in (expected_after(i, what), expected_after(i, following)), (i, what)
            beyond = {r.node_id for r in store.list()} - {node(i) for i in acked}
            if beyond:
                assert beyond == {node(first)}, "at most the write in flight landed beyond the acks"
                assert seen(store, first) == expected_after(first, "pending")


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
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"device", "address", "pending_pairing", "pending_address"}
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


# -- the actor ---------------------------------------------------------------------------------------


def test_actor_round_trip_then_stop(db: Path) -> None:
    ref = RegistryActor.open(db, timeout=TIMEOUT)
    try:
        registry = ref.proxy()
        registry.add_pending(pending(1)).get(timeout=TIMEOUT)
        assert registry.confirm(node(1), pairing_id(1), 150.0).get(timeout=TIMEOUT) is True
        assert registry.allowed_link_peers().get(timeout=TIMEOUT) == {node(1).raw}
        assert registry.set_addresses(node(1), ["a:1"], 160.0).get(timeout=TIMEOUT)
        record = registry.get(node(1)).get(timeout=TIMEOUT)
        assert (record.state, record.addresses) == (DeviceState.CONFIRMED, ("a:1",))
        assert [r.node_id for r in registry.list([DeviceState.CONFIRMED]).get(timeout=TIMEOUT)] == [node(1)]
        # An error in one call goes to that caller; the actor carries on.
        with pytest.raises(RegistryError, match="needs a pending record"):
            registry.add_pending(record).get(timeout=TIMEOUT)
        assert registry.find_by_pairing_id(pairing_id(1)).get(timeout=TIMEOUT) == record
    finally:
        assert ref.stop(timeout=TIMEOUT)
    assert sorted(os.listdir(db.parent)) == [db.name], "on_stop closed the file"
    with RegistryStore(db) as store:
        assert store.get(node(1)) == record


def test_actor_open_raises_the_registry_error_and_leaves_no_actor(db: Path) -> None:
    db.write_bytes(b"not a registry at all" * 10)
    os.chmod(db, 0o600)
    with pytest.raises(RegistryError, match="not an SQLite database"):
        RegistryActor.open(db, timeout=TIMEOUT)
    assert pykka.ActorRegistry.get_all() == []


def test_actor_started_plainly_reports_the_open_failure_to_every_caller(db: Path) -> None:
    db.write_bytes(b"x" * 500)
    os.chmod(db, 0o600)
    ref = RegistryActor.start(db)
    try:
        for _ in range(2):  # the actor stays failed
            with pytest.raises(RegistryError, match="not an SQLite database"):
                ref.proxy().list().get(timeout=TIMEOUT)
    finally:
        assert ref.stop(timeout=TIMEOUT)
