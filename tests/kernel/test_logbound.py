"""The bound on how fast one event name can grow the log (actors/kernel/logbound.py)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
import structlog

from quicpair.actors.kernel.logbound import EventRateBound
from quicpair.actors.kernel.logs import configure_logging, get_logger


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _passes(bound: EventRateBound, name: str) -> dict[str, Any] | None:
    try:
        return dict(bound(None, "info", {"event": name}))
    except structlog.DropEvent:
        return None


def test_a_flood_of_one_event_is_cut_to_the_burst_then_the_rate_and_says_how_many_it_dropped() -> None:
    clock = Clock()
    bound = EventRateBound(rate=10.0, burst=5, clock=clock)
    first = [_passes(bound, "control.accept_failed") for _ in range(1000)]
    assert sum(e is not None for e in first) == 5
    assert _passes(bound, "other.event") is not None  # another name is untouched

    clock.now += 1.0  # ten more lines allowed; the first says how many were dropped
    later = [_passes(bound, "control.accept_failed") for _ in range(100)]
    passed = [e for e in later if e is not None]
    assert len(passed) == 5  # refilled up to the burst
    assert passed[0]["suppressed"] == 995 and all("suppressed" not in e for e in passed[1:])


def test_a_steady_rate_below_the_bound_loses_nothing() -> None:
    clock = Clock()
    bound = EventRateBound(rate=20.0, burst=10, clock=clock)
    for _ in range(500):
        clock.now += 0.06  # ~16.7 a second
        event = _passes(bound, "link.dial")
        assert event is not None and "suppressed" not in event


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="rate must be > 0"):
        EventRateBound(rate=0.0)
    with pytest.raises(ValueError, match="burst >= 1"):
        EventRateBound(burst=0)


def test_the_configured_log_is_bounded_and_a_failing_stream_never_raises() -> None:
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError(5, "Input/output error")  # a terminal that hung up

    out = io.StringIO()
    try:
        configure_logging(level="info", fmt="json", stream=out)
        log = get_logger(component="test")
        for _ in range(5000):
            log.warning("test.flood")
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        assert 200 <= len(lines) < 300 and {line["event"] for line in lines} == {"test.flood"}

        configure_logging(level="info", fmt="json", stream=Broken())
        get_logger().error("test.lost")  # must not raise
    finally:
        import os

        configure_logging(level="debug", fmt="json", stream=open(os.devnull, "w"))  # noqa: SIM115 - as conftest
