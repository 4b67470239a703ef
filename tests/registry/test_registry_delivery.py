"""The registry's part in acknowledged delivery: the send epoch, receive marks, queued sends."""

from __future__ import annotations

from pathlib import Path

from quicpair.actors.registry.store import DeliveryState, QueuedMessage, RegistryStore
from support.registry_harness import confirmed, node, pairing_id, raw, repair
from support.registry_harness import db_fixture as db_fixture  # the ``db`` fixture
from support.registry_harness import store_fixture as store_fixture  # the ``store`` fixture


def test_the_send_epoch_rises_at_every_start_and_survives_closing(db: Path) -> None:
    with RegistryStore(db) as store:
        assert [store.next_send_epoch() for _ in range(3)] == [1, 2, 3]
    with RegistryStore(db) as store:
        assert store.next_send_epoch() == 4


def test_taking_payloads_stores_them_with_the_mark_which_only_grows(store: RegistryStore) -> None:
    confirmed(store, 1)
    assert store.delivery_state(node(1)) == DeliveryState(receive_mark=0, queued=())
    assert store.take(node(1), pairing_id(1), [(5, b"five"), (7, b"seven")], 1.0)
    assert store.take(node(1), pairing_id(1), [(6, b"late")], 2.0)  # a retransmission's write, late
    assert store.delivery_state(node(1)).receive_mark == 7
    assert [(n, s) for n, s, _ in store.inbox()] == [(node(1), 5), (node(1), 7), (node(1), 6)]
    assert not store.take(node(1), pairing_id(1, generation=9), [(99, b"x")], 3.0)  # another pairing
    assert not store.take(node(2), pairing_id(2), [(1, b"x")], 3.0)  # no such device
    assert len(store.inbox()) == 3, "a refused take writes nothing"
    assert store.handed_over([(node(1), 5), (node(1), 6), (node(1), 99)]) == 2
    assert store.inbox() == [(node(1), 7, b"seven")]
    # A re-pair that commits starts the mark again: the new pairing has taken nothing yet.
    store.add_pending(repair(1))
    assert store.delivery_state(node(1)).receive_mark == 7  # not committed yet: still in use
    assert store.confirm(node(1), repair(1).pairing_id, 500.0)
    assert store.delivery_state(node(1)).receive_mark == 0
    assert store.inbox() == [(node(1), 7, b"seven")], "what was acknowledged is still delivered"


def test_payloads_given_back_are_first_in_the_inbox_again(store: RegistryStore, db: Path) -> None:
    confirmed(store, 1)
    assert store.take(node(1), pairing_id(1), [(1, b"one"), (2, b"two"), (3, b"three")], 10.0)
    assert store.handed_over([(node(1), 1), (node(1), 2)]) == 2
    assert store.given_back([(node(1), 1, b"one"), (node(1), 2, b"two")]) == 2
    assert store.inbox() == [(node(1), 1, b"one"), (node(1), 2, b"two"), (node(1), 3, b"three")]
    assert store.given_back([(node(1), 3, b"three")]) == 0, "what is still there is not doubled"
    store.close()
    with RegistryStore(db) as again:
        assert [s for _, s, _ in again.inbox()] == [1, 2, 3], "in their order after a restart too"


def test_queued_sends_wait_in_order_until_acknowledged(store: RegistryStore) -> None:
    confirmed(store, 1)
    confirmed(store, 2)
    messages = [QueuedMessage(node(1), seq, b"payload %d" % seq, 10.0 + seq) for seq in (5, 9, 12)]
    for message in reversed(messages):
        store.enqueue(message)
    store.enqueue(QueuedMessage(node(2), 3, b"other", 1.0))
    assert store.queued(node(1)) == messages
    assert store.delivery_state(node(1)).queued == tuple(messages)
    assert len(store.queued()) == 4
    assert store.dequeue(node(1), 9) == 2
    assert store.queued(node(1)) == messages[2:]
    assert store.dequeue(node(1), 9) == 0


def test_queued_sends_outlive_a_re_pair_and_an_unpair_drops_them(store: RegistryStore, db: Path) -> None:
    confirmed(store, 1)
    confirmed(store, 2)
    store.enqueue(QueuedMessage(node(1), 1, b"a", 1.0))
    store.enqueue(QueuedMessage(node(2), 1, b"b", 1.0))
    store.add_pending(repair(1))
    assert store.confirm(node(1), repair(1).pairing_id, 500.0)
    assert [m.payload for m in store.queued(node(1))] == [b"a"]
    assert store.revoke(node(1), 600.0, notify_peer=True)
    assert store.queued(node(1)) == []
    assert store.remove(node(2))
    assert store.queued() == []
    conn = raw(db)
    assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
    conn.close()
