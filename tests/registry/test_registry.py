"""The device registry's operations: a real SQLite file in tmp_path, then the actor around it.

Beside this module: ``test_registry_repair.py`` (pairing a device again),
``test_registry_files.py`` (files that are or are not a usable registry, migrations)
and ``test_registry_crash.py`` (failed transactions, a writer killed mid-write).
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from pathlib import Path
from typing import Any

import pykka
import pytest

from quicpair.actors.registry.actor import RegistryActor
from quicpair.actors.registry.store import MAX_OBSERVED_ADDRESSES, DeviceState, RegistryStore
from quicpair.protocol.errors import RegistryError
from quicpair.protocol.keys import Role
from support.registry_harness import SECRET, confirmed, node, pairing_id, pending, raw, repair
from support.registry_harness import db_fixture as db_fixture  # the ``db`` fixture
from support.registry_harness import store_fixture as store_fixture  # the ``store`` fixture

TIMEOUT = 5.0


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


def test_the_sas_is_kept_with_the_pairing(store: RegistryStore) -> None:
    words = ("element", "immense", "penalty", "dignity")
    store.add_pending(dataclasses.replace(pending(1), sas=words))
    assert store.confirm(node(1), pairing_id(1), 150.0)
    assert store.get(node(1)).sas == words  # type: ignore[union-attr]
    store.add_pending(dataclasses.replace(repair(1), sas=("a", "b", "c", "d")))  # stored apart first
    assert store.get(node(1)).sas == words  # type: ignore[union-attr]
    assert store.confirm(node(1), repair(1).pairing_id, 160.0)
    assert store.get(node(1)).sas == ("a", "b", "c", "d")  # type: ignore[union-attr]


def test_a_manual_address_stays_until_a_person_removes_it(store: RegistryStore) -> None:
    confirmed(store, 1, addresses=("a:1", "b:2"))
    assert store.add_manual_address(node(1), "m:9", 300.0)
    assert store.get(node(1)).addresses == ("m:9", "a:1", "b:2")  # type: ignore[union-attr]
    store.mark_address_worked(node(1), "b:2", 310.0)
    assert store.set_addresses(node(1), ["c:3", "m:9"], 320.0)  # the peer announces it too, then not
    assert store.set_addresses(node(1), ["c:3"], 330.0)
    store.record_observed(node(1), "o:5", 340.0)
    # b:2 went with the announcement that dropped it; the manual one stays, before the peer's.
    assert store.get(node(1)).addresses == ("m:9", "c:3", "o:5")  # type: ignore[union-attr]
    assert store.remove_address(node(1), "m:9", 350.0)
    assert not store.remove_address(node(1), "m:9", 360.0)
    assert store.get(node(1)).addresses == ("c:3", "o:5")  # type: ignore[union-attr]
    assert not store.add_manual_address(node(2), "m:9", 370.0)


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
