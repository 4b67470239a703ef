"""A bound on how fast any one event can grow the log.

A failure that repeats in a loop (an ``accept`` failing with EMFILE, a peer
sending garbage as fast as it can) must not fill the disk with one line per
repetition. :class:`EventRateBound` is a structlog processor with a token
bucket per event name: :data:`BURST` lines at once, then :data:`RATE` per
second. An event over its bound is dropped and counted; the next one of that
name that passes carries ``suppressed=N``, how many were dropped before it.
Other events are untouched, so a flood of one cannot hide the rest, and the
log grows by at most ``RATE`` lines a second per event name (the names are a
fixed set, written in the code).

Places that know their failure repeats (the daemon's accept loop) log one
line per *episode* instead; this bound is the net under everything else.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

__all__ = ["BURST", "RATE", "EventRateBound"]

#: Lines of one event name logged at once before the rate applies.
BURST = 200
#: Lines of one event name per second beyond the burst.
RATE = 20.0
#: Event names remembered at most (a bug that builds names from data must not grow memory).
_MAX_NAMES = 4096


class EventRateBound:
    """structlog processor: at most ``burst`` lines at once and ``rate`` a second per event name."""

    def __init__(
        self, rate: float = RATE, burst: int = BURST, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not rate > 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, not {rate!r}, {burst!r}")
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._lock = threading.Lock()
        #: event name -> [tokens, time of the last refill, lines dropped since the last one logged]
        self._buckets: dict[str, list[float]] = {}

    def __call__(
        self, _logger: Any, _method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        name = str(event.get("event", ""))
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(name)
            if bucket is None:
                if len(self._buckets) >= _MAX_NAMES:
                    self._forget_idle(now)
                bucket = self._buckets[name] = [self._burst, now, 0.0]
            tokens = min(self._burst, bucket[0] + (now - bucket[1]) * self._rate)
            bucket[1] = now
            if tokens < 1.0:
                bucket[0] = tokens
                bucket[2] += 1
                raise structlog.DropEvent
            bucket[0] = tokens - 1.0
            dropped, bucket[2] = int(bucket[2]), 0.0
        if dropped:
            event["suppressed"] = dropped
        return event

    def _forget_idle(self, now: float) -> None:
        """Drop the buckets that refilled completely (they hold nothing worth keeping)."""
        full = [
            name
            for name, (tokens, when, dropped) in self._buckets.items()
            if not dropped and tokens + (now - when) * self._rate >= self._burst
        ]
        for name in full:
            del self._buckets[name]
        if len(self._buckets) >= _MAX_NAMES:
            self._buckets.clear()
