"""The registry file replaced, truncated or overwritten under an open store (actors/registry/guard.py).

Each test opens a real store, pairs a device (so the only copy of it is in the
WAL: the main file was checkpointed at the previous close), damages the file
the way a person or a tool would, and checks that the next operation refuses
with a clear RegistryError, that closing keeps a valid copy and the WAL aside,
and that the file now at the path is left exactly as it was put there.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from quicpair.actors.registry.store import DeviceState, RegistryStore
from quicpair.protocol.errors import RegistryError
from support.registry_harness import confirmed, node

GARBAGE = b"not a registry any more\n" * 300


def _open_with_a_pairing_in_the_wal(db: Path) -> RegistryStore:
    with RegistryStore(db) as store:
        confirmed(store, 1)  # checkpointed into the main file at this close
    store = RegistryStore(db)
    confirmed(store, 2)  # only in the WAL
    assert (db.parent / f"{db.name}-wal").stat().st_size > 0
    return store


def _replace(db: Path) -> None:
    other = db.with_name("other")
    other.write_bytes(GARBAGE)
    os.rename(other, db)


def _truncate(db: Path) -> None:
    os.truncate(db, 0)


def _overwrite(db: Path) -> None:
    with open(db, "r+b") as f:  # same inode, new bytes
        f.write(GARBAGE)


def _delete(db: Path) -> None:
    db.unlink()


CASES: list[tuple[Callable[[Path], None], str]] = [
    (_replace, "was replaced by another file"),
    (_truncate, "was truncated (to 0 bytes)"),
    (_overwrite, "is no longer an SQLite database"),
    (_delete, "was deleted"),
]


@pytest.mark.parametrize(("damage", "said"), CASES, ids=[c[0].__name__.strip("_") for c in CASES])
def test_damage_is_refused_at_the_next_operation_and_close_keeps_what_is_valid(
    tmp_path: Path, damage: Callable[[Path], None], said: str
) -> None:
    db = tmp_path / "registry.sqlite3"
    store = _open_with_a_pairing_in_the_wal(db)
    damage(db)
    after = db.read_bytes() if db.exists() else None

    with pytest.raises(RegistryError, match=re.escape(f"{said} while the node was running; nothing more")):
        store.get(node(2))
    with pytest.raises(RegistryError, match="add_pending refused"):  # and it stays refused
        confirmed(store, 3)
    with pytest.raises(RegistryError) as closed:
        store.close()
    message = str(closed.value)
    assert said in message and "put the copy in the registry's place" in message

    # The file at the path is exactly what was put there: SQLite's close did not touch it
    # (when it is another file) and nothing of ours replaced it.
    if damage is _replace or damage is _delete:
        assert (db.read_bytes() if db.exists() else None) == after
    # The WAL is never deleted: it is kept aside, and the message says where.
    kept = sorted(tmp_path.glob("registry.sqlite3-wal.kept-*"))
    assert len(kept) == 1 and kept[0].stat().st_size > 0 and str(kept[0]) in message
    assert not (tmp_path / "registry.sqlite3-wal").exists()
    # The copy holds both pairings: the checkpointed one and the one only the WAL had.
    (copy,) = tmp_path.glob("registry.sqlite3.rescued-*")
    assert str(copy) in message and oct(copy.stat().st_mode & 0o777) == "0o600"
    with RegistryStore(copy) as rescued:
        assert {(r.node_id, r.state) for r in rescued.list()} == {
            (node(1), DeviceState.CONFIRMED),
            (node(2), DeviceState.CONFIRMED),
        }


def test_an_undamaged_registry_closes_quietly_and_keeps_nothing_aside(tmp_path: Path) -> None:
    db = tmp_path / "registry.sqlite3"
    store = _open_with_a_pairing_in_the_wal(db)
    store.check()
    store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["registry.sqlite3"]
    with RegistryStore(db) as again:
        assert len(again.list()) == 2


def test_a_new_registry_is_not_mistaken_for_a_damaged_one(tmp_path: Path) -> None:
    # Until SQLite's first checkpoint a new file's header carries application_id 0.
    db = tmp_path / "registry.sqlite3"
    with RegistryStore(db) as store:
        for i in range(1, 40):
            confirmed(store, i)
            store.check()
    with RegistryStore(db) as store:
        assert len(store.list()) == 39
