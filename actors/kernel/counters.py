"""Counters a running node exposes (``Node.counters()``): cheap, thread-safe, monotonic.

Names are stable and documented in docs/ARCHITECTURE.md ("Counters"); the
two-process tests read them to prove, for example, that a pairing used one
connection and one stream on each side.
"""

from __future__ import annotations

import threading
from collections import Counter

__all__ = ["Counters"]


class Counters:
    """A set of named monotonic counters shared by the actors of one node."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: Counter[str] = Counter()

    def incr(self, name: str, amount: int = 1) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        with self._lock:
            self._values[name] += amount

    def get(self, name: str) -> int:
        with self._lock:
            return self._values[name]

    def snapshot(self) -> dict[str, int]:
        """A copy of every counter, sorted by name."""
        with self._lock:
            return dict(sorted(self._values.items()))
