"""The registry test harness: device records, the ``db``/``store`` fixtures, raw SQLite access.

Shared by the ``test_registry*.py`` modules, which import the fixtures explicitly::

    from support.registry_harness import db_fixture as db_fixture  # the ``db`` fixture
    from support.registry_harness import store_fixture as store_fixture  # the ``store`` fixture

Every record is derived from a device number ``i`` (and a pairing ``generation``),
so a test and the writer process that test_registry_crash.py kills mid-write
(which imports this module as ``support.registry_harness``) build the same records.
This module must therefore import nothing from the tests directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from quicpair.actors.registry.store import DeviceRecord, DeviceState, RegistryStore
from quicpair.protocol.identity import NodeId
from quicpair.protocol.keys import Role

__all__ = [
    "SECRET",
    "confirmed",
    "db_fixture",
    "gen1",
    "gen2",
    "gen3",
    "in_use",
    "node",
    "pairing_id",
    "pending",
    "raw",
    "repair",
    "store_fixture",
]


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


@pytest.fixture(name="db")
def db_fixture(tmp_path: Path) -> Path:
    return tmp_path / "registry.db"


@pytest.fixture(name="store")
def store_fixture(db: Path) -> Iterator[RegistryStore]:
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


# -- the addresses the crash writer process gives device i, one set per step -------------


def gen1(i: int) -> tuple[str, ...]:
    return tuple(f"[2001:db8:{i:x}::{k}]:{40000 + k}" for k in range(8))


def gen2(i: int) -> tuple[str, ...]:
    return tuple(f"198.51.{i % 256}.{k}:{50000 + k}" for k in range(8))


def gen3(i: int) -> tuple[str, ...]:
    return tuple(f"[2001:db8:ffff:{i:x}::{k}]:{60000 + k}" for k in range(8))
