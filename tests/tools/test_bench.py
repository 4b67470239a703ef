"""The benchmark tool's own pieces: statistics, the report, the sections' registry.

The sections themselves are measured by running ``python -m quicpair.tools.bench``;
tests/pairing/test_pairing_concurrent.py runs its ``pair_at_once``.
"""

from __future__ import annotations

import math
from pathlib import Path

from quicpair.tools import bench


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
    assert len(names) == len(set(names)) and {"pairing", "concurrent"} <= set(names)
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
