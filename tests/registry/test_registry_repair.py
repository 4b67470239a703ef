"""The registry when a device is paired again: the old pairing stays in use until the new one commits.

A re-pair is stored apart from the confirmed record; it replaces it whole on
commit and vanishes without a trace on failure. Revoked devices and unpairs in
flight keep their meaning across a re-pair.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from quicpair.actors.registry.store import DeviceState, RegistryStore
from support.registry_harness import confirmed, in_use, node, pairing_id, raw, repair
from support.registry_harness import db_fixture as db_fixture  # the ``db`` fixture
from support.registry_harness import store_fixture as store_fixture  # the ``store`` fixture

# -- pairing a device again ------------------------------------------------------------------


def table_rows(db: Path, table: str) -> int:
    conn = raw(db)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


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
