"""The benchmark tool's own pieces: statistics, the report, the sections' registry.

The sections themselves are measured by running ``python -m quicpair.tools.bench``;
tests/pairing/test_pairing_concurrent.py runs its ``pair_at_once``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from quicpair.tools import bench, bench_links


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert bench.percentile(values, 50) == 50.0
    assert bench.percentile(values, 95) == 95.0
    assert bench.percentile(values, 99) == 99.0
    assert bench.percentile([7.0], 99) == 7.0
    assert math.isnan(bench.percentile([], 50))
    assert bench.summary([3.0, 1.0, 2.0]) == {"n": 3, "p50": 2.0, "p95": 3.0, "p99": 3.0, "max": 3.0}


def test_every_section_has_a_name_and_the_planned_ones_are_not_there_yet() -> None:
    names = [section.name for section in bench.SECTIONS]
    assert len(names) == len(set(names))
    assert {"pairing", "concurrent", "messages", "idle", "restart", "down"} <= set(names)
    assert not set(bench.PLANNED) & set(names)


def test_the_markdown_shows_every_row_the_command_the_machine_and_what_is_not_measured() -> None:
    report = {
        "command": "python -m quicpair.tools.bench --quick",
        "machine": {
            "cpu": "X",
            "cores": 2,
            "python": "3.11",
            "aioquic": "1.7.2",
            "pykka": "4.5.0",
            "pynacl": "1.6.2",
            "loadavg_at_start": (1.0, 0.5, 0.25),
        },
        "sections": {
            "pairing": {
                "title": "Pairing",
                "rows": [{"what": "floor", "n": 2, "p50": 1.5}, {"what": "ratio", "p50": 2.0}],
                "targets": {"p50_ratio": 1.5},
            }
        },
    }
    text = bench.markdown(report)
    assert "`python -m quicpair.tools.bench --quick`" in text and "2 cores" in text
    assert "| floor | 2 | 1.50 |" in text and "| ratio |  | 2.00 |" in text
    assert "p50_ratio: 1.5" in text
    for name in bench.PLANNED:
        assert f"`{name}`" in text


def test_the_floor_frames_are_split_however_the_bytes_arrive() -> None:
    frames = bench._Frames()
    data = bench._frame(48, 0) + bench._frame(200, 1)
    out = [f for i in range(0, len(data), 7) for f in frames.feed(data[i : i + 7])]
    assert [(f[0], len(f)) for f in out] == [(0, 49), (1, 201)]


def test_the_pake_section_runs(tmp_path: Path) -> None:
    options = bench.Options(quick=True, samples=1, concurrency=(), workers=1, workdir=tmp_path)
    rows = bench.run_pake(options)["rows"]
    assert rows[0]["n"] > 0 and rows[0]["p50"] > 0


def test_the_stream_floor_frames_are_counted_however_the_bytes_arrive() -> None:
    buffer = bytearray()
    data = bench_links._frame(100, 0) * 3 + bench_links._frame(60_000, 1)
    kinds = []
    for i in range(0, len(data), 1200):  # a packet's worth at a time
        buffer += data[i : i + 1200]
        kinds += list(bench_links._frames(buffer))
    assert kinds == [0, 0, 0, 1] and not buffer


def test_the_messages_table_gives_rates_ratios_cpu_and_packets_per_message() -> None:
    counts = {100: 1000, 60_000: 10}
    runs: dict[str, list[dict[str, Any]]] = {}
    for size, n in counts.items():
        runs[f"floor stream {size}"] = [{"elapsed": 0.1, "cpu_s": [0.05, 0.05], "packets": n}]
        runs[f"floor rtt {size}"] = [{"latencies_ms": [1.0, 2.0, 3.0]}]
        runs[f"send {size} x1"] = [{"elapsed": 1.0, "cpu_s": [0.1, 0.1], "latencies_ms": [4.0] * (n // 4)}]
        runs[f"send {size} x{bench_links.THREADS}"] = [{"elapsed": 0.5, "cpu_s": [0.1, 0.1]}]
        runs[f"send_many {size}"] = [{"elapsed": 0.4, "cpu_s": [0.2, 0.2], "packets": n // 2}]
    rows = bench_links._messages_table(runs, {"messages": 0}, counts)["rows"]
    floor, _, one, _, many = rows[:5]
    assert floor["msgs_s"] == 10_000 and floor["ratio"] == 1.0 and floor["cpu_us_per_msg"] == 100.0
    assert one["msgs_s"] == 250 and one["p50_ms"] == 4.0
    assert many["ratio"] == 0.25 and many["packets_per_msg"] == 0.5 and many["cpu_us_per_msg"] == 400.0


def test_udp_counters_and_cpu_are_read_for_this_process() -> None:
    import os

    out = bench_links.udp_out(os.getpid())
    assert out is None or out >= 0
    assert bench_links.cpu_seconds(os.getpid()) > 0 and bench_links.rss_mb(os.getpid()) > 1
