"""Loopback benchmark of actors/transport/dial.py and listener.py: handshake time and stream round trip.

    python -m quicpair.tools.bench_transport [-n 200] [--rtt 1000]

A handshake is timed from the call to ``dial`` to its return, i.e. mutual
TLS with both certificate checks, ``admit`` on the listener and the
listener's HANDSHAKE_DONE (socket creation and our certificate included).
The round trip is one small message echoed on an open stream. Everything
runs on one asyncio loop on 127.0.0.1; numbers go to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time

from quicpair.actors.kernel.logs import configure_logging
from quicpair.actors.transport.dial import dial
from quicpair.actors.transport.listener import listen
from quicpair.actors.transport.quic_link import QuicLink
from quicpair.protocol.errors import ErrorCode
from quicpair.protocol.identity import Identity
from quicpair.protocol.messages import ALPN_LINK

__all__ = ["main"]


class _Echo:
    """Listener side: send every chunk straight back."""

    def __init__(self, link: QuicLink) -> None:
        self.link = link

    def stream_data(self, stream_id: int, data: bytes, ended: bool) -> None:
        if data:
            self.link.send(stream_id, data)

    def stream_reset(self, stream_id: int, code: ErrorCode) -> None:
        pass

    def closed(self, code: ErrorCode, reason: str, by_peer: bool) -> None:
        pass


class _Waiter:
    """Dialer side: wake the benchmark when the echo is back."""

    def __init__(self) -> None:
        self.got: asyncio.Event = asyncio.Event()

    def stream_data(self, stream_id: int, data: bytes, ended: bool) -> None:
        self.got.set()

    def stream_reset(self, stream_id: int, code: ErrorCode) -> None:
        pass

    def closed(self, code: ErrorCode, reason: str, by_peer: bool) -> None:
        pass


def _report(name: str, samples: list[float]) -> None:
    if not samples:
        return
    ms = sorted(s * 1000 for s in samples)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    print(
        f"{name:<11} n={len(ms):<5} p50={statistics.median(ms):.3f} ms  p95={p95:.3f} ms  "
        f"mean={statistics.fmean(ms):.3f} ms  max={ms[-1]:.3f} ms"
    )


async def _bench(handshakes: int, round_trips: int) -> None:
    server_id, client_id = Identity.generate(), Identity.generate()
    listener = await listen(
        "127.0.0.1",
        0,
        server_id,
        alpns=[ALPN_LINK],
        admit=lambda peer, alpn: None,
        on_connection=lambda link: link.set_handler(_Echo(link)),
    )
    port = listener.address[1]
    times: list[float] = []
    for _ in range(handshakes):
        start = time.perf_counter()
        link = await dial("127.0.0.1", port, client_id, alpn=ALPN_LINK, expect=server_id.node_id, timeout=5.0)
        times.append(time.perf_counter() - start)
        link.close(ErrorCode.GOING_AWAY, "bench")
        await link.wait_closed()
    _report("handshake", times)

    link = await dial("127.0.0.1", port, client_id, alpn=ALPN_LINK, expect=server_id.node_id, timeout=5.0)
    waiter = _Waiter()
    link.set_handler(waiter)
    stream = link.open_stream()
    rtts: list[float] = []
    for _ in range(round_trips):
        waiter.got.clear()
        start = time.perf_counter()
        link.send(stream, b"ping-0123456789")
        await asyncio.wait_for(waiter.got.wait(), 5.0)
        rtts.append(time.perf_counter() - start)
    _report("stream rtt", rtts)
    link.close(ErrorCode.GOING_AWAY, "bench")
    listener.close()
    await listener.wait_closed()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", "--handshakes", type=int, default=200)
    parser.add_argument("--rtt", type=int, default=1000, help="stream round trips on one link")
    args = parser.parse_args(argv)
    configure_logging(level="warning", fmt="console", stream=sys.stderr)
    logging.getLogger("quic").setLevel(logging.ERROR)
    print(f"python {sys.version.split()[0]}, loopback 127.0.0.1, one asyncio loop")
    asyncio.run(_bench(args.handshakes, args.rtt))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
