"""The registry under failure: one transaction per change, and a writer process killed mid-write.

SQLite itself is made to fail half-way through a change (a trigger), and a
real process is SIGKILLed while it writes: no acknowledged change is lost and
no record is ever half written.
"""

from __future__ import annotations

import dataclasses
import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quicpair.actors.registry.store import DeviceState, RegistryStore
from quicpair.protocol.errors import RegistryError
from support.registry_harness import (
    confirmed,
    gen1,
    gen2,
    gen3,
    in_use,
    node,
    pairing_id,
    pending,
    raw,
    repair,
)
from support.registry_harness import db_fixture as db_fixture  # the ``db`` fixture

ROOT = Path(__file__).resolve().parents[2]


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
from quicpair.actors.registry.store import RegistryStore
from support.registry_harness import node, pairing_id, pending, gen1, gen2, gen3
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
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}  # for support.*; quicpair is installed
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
