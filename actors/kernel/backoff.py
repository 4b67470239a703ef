"""Exponential, capped, jittered restart delays, after Akka's BackoffSupervisor.

The formula is Akka's (``akka.pattern.BackoffSupervisor``, ``calculateDelay``)::

    delay(n) = min(max_delay, min_delay * 2**n) * (1 + random_factor * r),   r in [0, 1)

where ``n`` counts the restarts since the last reset. Like Akka, the jitter
is applied after the cap, so a delay may exceed ``max_delay`` by up to
``random_factor``; the jitter keeps many nodes that lost the same peer from
dialling it in lockstep.

Reset after a stable period (Akka's auto reset): when the supervised thing
came up (``succeeded(now)``) and then ran for at least ``reset_after``
seconds before failing again, the next delay starts over at ``n = 0``. A
flapping child therefore keeps backing off, a child that crashes once a day
restarts at once.

Pure: time (``now``) and randomness (``rand``) are parameters, so a test
replays any schedule exactly. Not thread-safe; one owner (a supervisor actor).
Users: actors/kernel/supervisor.py (``ChildSpec.backoff``) and the reconnection
supervisor.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

__all__ = ["Backoff"]

#: 2.0**1023 is the largest power of two a float holds; beyond it the
#: exponent only matters for overflow, and the cap has long applied.
_MAX_EXPONENT = 1023


class Backoff:
    """Restart delays for one supervised thing (a child actor, a peer's link).

    ``min_delay`` and ``max_delay`` are seconds (``0 < min_delay <= max_delay``);
    ``random_factor >= 0`` scales the jitter; ``reset_after > 0`` seconds of
    stable running resets the count. ``rand()`` returns a float in [0, 1).
    """

    def __init__(
        self,
        min_delay: float,
        max_delay: float,
        random_factor: float,
        reset_after: float,
        *,
        rand: Callable[[], float] = random.random,
    ) -> None:
        for label, value in (
            ("min_delay", min_delay),
            ("max_delay", max_delay),
            ("random_factor", random_factor),
            ("reset_after", reset_after),
        ):
            if not math.isfinite(value):
                raise ValueError(f"backoff {label} must be a finite number, not {value!r}")
        if min_delay <= 0:
            raise ValueError(f"backoff min_delay must be > 0 seconds, not {min_delay!r}")
        if max_delay < min_delay:
            raise ValueError(f"backoff max_delay ({max_delay!r}) must be >= min_delay ({min_delay!r})")
        if random_factor < 0:
            raise ValueError(f"backoff random_factor must be >= 0, not {random_factor!r}")
        if reset_after <= 0:
            raise ValueError(f"backoff reset_after must be > 0 seconds, not {reset_after!r}")
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.random_factor = random_factor
        self.reset_after = reset_after
        self._rand = rand
        self._attempts = 0
        self._up_since: float | None = None

    def __repr__(self) -> str:
        return (
            f"Backoff(min_delay={self.min_delay}, max_delay={self.max_delay}, "
            f"random_factor={self.random_factor}, reset_after={self.reset_after}, "
            f"attempts={self._attempts})"
        )

    @property
    def attempts(self) -> int:
        """Delays handed out since the last reset (the ``n`` of the next delay)."""
        return self._attempts

    def base_delay(self, n: int) -> float:
        """The delay before jitter for the ``n``-th restart since a reset: ``min(max, min * 2**n)``."""
        if n < 0:
            raise ValueError(f"restart number must be >= 0, not {n}")
        return min(self.max_delay, self.min_delay * 2.0 ** min(n, _MAX_EXPONENT))

    def next_delay(self, now: float) -> float:
        """The thing failed at ``now``: how long to wait before the next restart.

        Resets first if it had been up for ``reset_after`` seconds; counts this
        restart; draws one ``rand()`` value for the jitter.
        """
        if self._up_since is not None and now - self._up_since >= self.reset_after:
            self._attempts = 0
        self._up_since = None
        r = self._rand()
        if not 0.0 <= r < 1.0:
            raise ValueError(f"backoff rand() must return a float in [0, 1), not {r!r}")
        delay = self.base_delay(self._attempts) * (1.0 + self.random_factor * r)
        self._attempts += 1
        return delay

    def succeeded(self, now: float) -> None:
        """The thing is up again at ``now``: the stable period starts counting."""
        self._up_since = now

    def reset(self) -> None:
        """Forget every previous restart (e.g. an operator asked to retry now)."""
        self._attempts = 0
        self._up_since = None
