"""Benchmark: full pairings between two nodes over QUIC on loopback.

    python -m quicpair.tools.bench_pairing --sequential 30 --concurrent 30

Two nodes in this process (each with its own loop thread, actors and SQLite
registry in a temporary home). Sequential: one pairing after the other,
reporting p50/p95 latency of ``join`` (QUIC handshake, SPAKE2, four
durable registry writes per side, the 2PC end). Concurrent: N joins started
at once from N threads, reporting the wall time for all of them.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from quicpair.actors import Node
from quicpair.actors.kernel.logs import configure_logging
from quicpair.config.settings import Settings, load_settings

__all__ = ["main"]


def _settings(name: str, concurrent: int) -> Settings:
    return load_settings(
        node={
            "listen_host": "127.0.0.1",
            "listen_port": 0,
            "name": name,
            "max_concurrent_pairings": max(concurrent, 1),
        },
        discovery={"mdns": False},
    )


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quicpair.tools.bench_pairing")
    parser.add_argument("--sequential", type=int, default=30)
    parser.add_argument("--concurrent", type=int, default=30, help="at most 32 (open codes per node)")
    args = parser.parse_args(argv)
    configure_logging(level="warning", fmt="json")
    with tempfile.TemporaryDirectory() as tmp:
        # Each pairing needs a fresh joiner identity (one device pairs once with another).
        latencies: list[float] = []
        with Node(Path(tmp) / "alice", _settings("alice", args.concurrent)) as alice:
            for i in range(args.sequential):
                with Node(Path(tmp) / f"s{i}", _settings(f"s{i}", 1)) as bob:
                    offer = alice.pair()
                    start = time.perf_counter()
                    bob.join(offer.uri, timeout=30)
                    latencies.append((time.perf_counter() - start) * 1000)
            if latencies:
                print(
                    f"sequential pairings: n={len(latencies)} p50={statistics.median(latencies):.1f} ms "
                    f"p95={_percentile(latencies, 0.95):.1f} ms max={max(latencies):.1f} ms"
                )
            if args.concurrent:
                joiners = [
                    Node(Path(tmp) / f"c{i}", _settings(f"c{i}", 1)).start() for i in range(args.concurrent)
                ]
                try:
                    offers = [alice.pair() for _ in joiners]
                    start = time.perf_counter()
                    with ThreadPoolExecutor(max_workers=len(joiners)) as pool:
                        results = list(
                            pool.map(
                                lambda pair: pair[0].join(pair[1].uri, timeout=60),
                                zip(joiners, offers, strict=True),
                            )
                        )
                    wall = time.perf_counter() - start
                finally:
                    for node in joiners:
                        node.stop()
                print(f"concurrent pairings: n={len(results)} all done in {wall * 1000:.0f} ms")
            print("alice counters:", alice.counters())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
