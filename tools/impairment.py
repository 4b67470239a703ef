"""A lossy, slow UDP path between two nodes: a forwarder that drops and delays, for tests.

    python -m quicpair.tools.impairment --listen 10.231.0.12:0 --target 10.231.0.11:47470 \\
        --loss 5 --delay 0.05 --seed 1

This kernel (and CI's) has no ``sch_netem``, so ``tc qdisc ... netem loss 5% delay
50ms`` is not available; this does the same in user space, for UDP. Datagrams that
arrive on the listening socket from a client (a node dialing "the peer" at this
address) are forwarded to ``--target`` from a socket of their own, one per client
address (so the target sees one peer per client, as through a NAT), and the
target's answers go back to that client from the listening socket. Each direction
drops ``--loss`` percent of the datagrams and delays the rest by ``--delay`` seconds;
a fixed delay keeps the order (like netem without jitter). The drop decisions come
from one ``random.Random`` per direction seeded from ``--seed``: the same sequence
of decisions on every run (which packets they hit depends on the traffic).

Nothing is parsed: QUIC goes through encrypted and end to end, so the nodes at
both ends still authenticate each other; this is only a worse network.

Output on stdout, JSON lines: ``{"event": "ready", "host", "port"}`` first; one
``{"event": "stats", ...}`` line for each line read on stdin (datagrams forwarded
and dropped, per direction: ``up`` is client to target, ``down`` the way back;
``clients``); ``{"event": "stopped", ...}`` (the same counts) at the end. It runs
until stdin ends or SIGTERM/SIGINT; exit status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from quicpair.tools.helper_process import emit, host_port, run_until_stopped

__all__ = ["Impairment", "PathStats", "main"]

#: A client silent this long loses its upstream socket (its next datagram makes a new one).
CLIENT_IDLE = 120.0
#: Clients held at once; the least recently active one is dropped beyond this.
MAX_CLIENTS = 256

Address = tuple[Any, ...]


@dataclass
class PathStats:
    """What went through, per direction."""

    up_forwarded: int = 0
    up_dropped: int = 0
    down_forwarded: int = 0
    down_dropped: int = 0
    clients: int = 0

    def to_dict(self) -> dict[str, int]:
        return {
            "up_forwarded": self.up_forwarded,
            "up_dropped": self.up_dropped,
            "down_forwarded": self.down_forwarded,
            "down_dropped": self.down_dropped,
            "clients": self.clients,
        }


class _Listening(asyncio.DatagramProtocol):
    def __init__(self, owner: Impairment) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.owner.from_client(data, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP: the client is gone; nothing to do
        pass


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, owner: Impairment, client: Address) -> None:
        self.owner = owner
        self.client = client

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.owner.from_target(data, self.client)

    def error_received(self, exc: Exception) -> None:  # the target refused: QUIC sees silence
        pass


@dataclass
class _Client:
    transport: asyncio.DatagramTransport
    last: float = field(default_factory=time.monotonic)


class Impairment:
    """The forwarder; see the module docstring. Runs on the current asyncio loop."""

    def __init__(self, target: tuple[str, int], *, loss: float, delay: float, seed: int) -> None:
        if not 0 <= loss < 100:
            raise ValueError("loss is a percentage in [0, 100)")
        if delay < 0:
            raise ValueError("delay is a duration in seconds, >= 0")
        self.target = target
        self.loss = loss / 100.0
        self.delay = delay
        self.stats = PathStats()
        self._up_rng = random.Random(seed)
        self._down_rng = random.Random(seed + 1)
        self._listening: asyncio.DatagramTransport | None = None
        self._clients: dict[Address, _Client] = {}
        self._pending: dict[Address, list[bytes]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._loop = asyncio.get_running_loop()
        transport, _ = await self._loop.create_datagram_endpoint(
            lambda: _Listening(self), local_addr=(host, port)
        )
        self._listening = transport
        bound = transport.get_extra_info("sockname")
        return str(bound[0]), int(bound[1])

    # -- the two directions --------------------------------------------------------------

    def from_client(self, data: bytes, client: Address) -> None:
        if self._up_rng.random() < self.loss:
            self.stats.up_dropped += 1
            return
        self.stats.up_forwarded += 1
        assert self._loop is not None
        self._loop.call_later(self.delay, self._send_up, data, client)

    def from_target(self, data: bytes, client: Address) -> None:
        if self._down_rng.random() < self.loss:
            self.stats.down_dropped += 1
            return
        self.stats.down_forwarded += 1
        assert self._loop is not None
        self._loop.call_later(self.delay, self._send_down, data, client)

    def _send_up(self, data: bytes, client: Address) -> None:
        known = self._clients.get(client)
        if known is not None:
            known.last = time.monotonic()
            known.transport.sendto(data)
            return
        # A new client: its socket is made asynchronously; what comes meanwhile waits for it.
        waiting = self._pending.get(client)
        if waiting is not None:
            waiting.append(data)
            return
        self._pending[client] = [data]
        assert self._loop is not None
        self._loop.create_task(self._open(client))

    async def _open(self, client: Address) -> None:
        assert self._loop is not None and self._listening is not None
        local_host = self._listening.get_extra_info("sockname")[0]
        try:
            transport, _ = await self._loop.create_datagram_endpoint(
                lambda: _Upstream(self, client), local_addr=(local_host, 0), remote_addr=self.target
            )
        except OSError:
            self._pending.pop(client, None)
            return
        self._evict()
        self._clients[client] = _Client(transport)
        self.stats.clients += 1
        for data in self._pending.pop(client, []):
            transport.sendto(data)

    def _send_down(self, data: bytes, client: Address) -> None:
        if self._listening is not None and not self._listening.is_closing():
            self._listening.sendto(data, client)

    def _evict(self) -> None:
        now = time.monotonic()
        for client, held in list(self._clients.items()):
            if now - held.last > CLIENT_IDLE:
                held.transport.close()
                del self._clients[client]
        while len(self._clients) >= MAX_CLIENTS:
            oldest = min(self._clients, key=lambda c: self._clients[c].last)
            self._clients.pop(oldest).transport.close()

    def close(self) -> None:
        for held in self._clients.values():
            held.transport.close()
        self._clients.clear()
        if self._listening is not None:
            self._listening.close()


async def _run(listen_at: tuple[str, int], path: Impairment) -> None:
    host, port = await path.start(*listen_at)
    emit(event="ready", host=host, port=port)
    try:
        await run_until_stopped(on_line=lambda: emit(event="stats", **path.stats.to_dict()))
    finally:
        path.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quicpair.tools.impairment", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--listen", type=host_port, required=True, help="host:port (port 0: any)")
    parser.add_argument("--target", type=host_port, required=True, help="where datagrams go, host:port")
    parser.add_argument("--loss", type=float, default=0.0, help="percent dropped, each direction")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds added, each direction")
    parser.add_argument("--seed", type=int, default=1, help="of the drop decisions")
    args = parser.parse_args(argv)
    try:
        path = Impairment(args.target, loss=args.loss, delay=args.delay, seed=args.seed)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        asyncio.run(_run(args.listen, path))
    except OSError as exc:
        emit(event="failed", error=str(exc))
        return 1
    emit(event="stopped", **path.stats.to_dict())
    return 0


if __name__ == "__main__":
    sys.exit(main())
