"""tools/impairment.py, the lossy and slow UDP path of the loss tests, on real loopback sockets.

A client sends numbered datagrams through the forwarder to an echo socket,
which sends each back (through the forwarder again). What must hold: the drop
decisions are the seeded ones (the same datagrams are dropped on every run with
the same seed, about ``loss`` percent of them), nothing is reordered, nothing
arrives sooner than the delay each way, and the counts add up.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any, cast

import pytest

from quicpair.tools.impairment import Impairment, main

COUNT = 400
DELAY = 0.02
LOSS = 10.0


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)


class _Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: list[tuple[int, float]] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.got.append((int(data.split(b" ")[0]), time.monotonic()))


async def _through(seed: int) -> tuple[list[int], list[float], dict[str, int]]:
    loop = asyncio.get_running_loop()
    echo_transport, _ = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    path = Impairment(echo_transport.get_extra_info("sockname")[:2], loss=LOSS, delay=DELAY, seed=seed)
    host, port = await path.start("127.0.0.1", 0)
    client = _Client()
    transport, _ = await loop.create_datagram_endpoint(lambda: client, remote_addr=(host, port))
    sent_at = {}
    try:
        for i in range(COUNT):
            sent_at[i] = time.monotonic()
            transport.sendto(b"%d %s" % (i, b"x" * 100))
            await asyncio.sleep(0.001)
        # Bounded: everything not dropped is back after two delays; poll until the counts settle.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stats = path.stats
            decided = stats.up_forwarded + stats.up_dropped == COUNT
            returned = stats.down_forwarded + stats.down_dropped == stats.up_forwarded
            if decided and returned and len(client.got) == stats.down_forwarded:
                break
            await asyncio.sleep(0.01)
        order = [i for i, _ in client.got]
        trips = [at - sent_at[i] for i, at in client.got]
        return order, trips, path.stats.to_dict()
    finally:
        transport.close()
        path.close()
        echo_transport.close()


def test_drops_are_seeded_order_is_kept_and_each_way_is_delayed() -> None:
    order, trips, stats = asyncio.run(_through(seed=7))
    assert stats["up_forwarded"] + stats["up_dropped"] == COUNT
    assert stats["down_forwarded"] + stats["down_dropped"] == stats["up_forwarded"]
    assert len(order) == stats["down_forwarded"] and stats["clients"] == 1
    assert order == sorted(order), "a fixed delay keeps the order"
    assert min(trips) >= 2 * DELAY, "each way is delayed"
    # The up direction's decisions are random.Random(seed)'s, one per datagram, in order.
    up = random.Random(7)
    passed_up = [i for i in range(COUNT) if not up.random() < LOSS / 100]
    down = random.Random(8)
    expected = [i for i in passed_up if not down.random() < LOSS / 100]
    assert order == expected, "the seeded decisions, the same on every run"
    dropped = COUNT - len(order)
    assert 0 < dropped < COUNT * 2 * LOSS / 100 * 2, stats


def test_bad_arguments_are_refused_with_a_usage_error() -> None:
    with pytest.raises(SystemExit) as refused:
        main(["--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--loss", "100"])
    assert refused.value.code == 2
    with pytest.raises(ValueError, match="delay"):
        Impairment(("127.0.0.1", 9), loss=0, delay=-1, seed=1)
