"""How many failed pairing claims one source address may make: a token bucket per address.

A stranger probing nameplates, or guessing at an open code, fails its claims
(NO_SUCH_CODE, expired, used up, cancelled, a wrong code or an attempt that
never finished); a person pairing succeeds. So only failures cost: each
source address holds a bucket of ``burst`` tokens, refilled at one per
``interval`` seconds, and a failed claim takes one. With an empty bucket the
address's PairRequests are refused with BUSY *before* the codebook is asked,
so they cannot count as attempts, and so cannot burn a code
(docs/PROTOCOL.md section 13 has the bound this gives). Successful claims
cost nothing, so any number of devices behind one address (a NAT, the
benchmarks' 200 joiners) pair freely.

Sans-I/O like the rest of protocol/: ``now`` is a parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import errors
from .codebook import CodeClaims
from .codes import PairingCode
from .errors import ErrorCode

__all__ = ["DEFAULT_BURST", "DEFAULT_INTERVAL", "ClaimLimiter", "LimitedClaims"]

#: Failed claims an address may make at once (a person mistyping a few times).
DEFAULT_BURST = 8
#: Then one more per this many seconds: 10 a minute.
DEFAULT_INTERVAL = 6.0
#: Addresses remembered at once; the fullest buckets are forgotten first (they cost nothing).
_MAX_SOURCES = 4096


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class ClaimLimiter:
    """Per-source buckets of failed claims (one per node; loop-confined in the runtime)."""

    def __init__(self, *, burst: int = DEFAULT_BURST, interval: float = DEFAULT_INTERVAL) -> None:
        if burst < 1 or not interval > 0:
            raise ValueError("burst must be at least 1 and interval positive")
        self.burst = burst
        self.interval = interval
        self._buckets: dict[str, _Bucket] = {}
        #: Claims refused because their source had no tokens left.
        self.refused = 0

    def allows(self, source: str, now: float) -> bool:
        """May ``source`` make a claim now (it has a token for a failure)?"""
        return self._level(source, now) >= 1.0

    def failed(self, source: str, now: float) -> None:
        """A claim from ``source`` failed: it costs one token."""
        bucket = self._buckets.get(source)
        level = self._level(source, now)
        if bucket is None:
            if len(self._buckets) >= _MAX_SOURCES:
                self._forget_full(now)
            bucket = self._buckets[source] = _Bucket(level, now)
        bucket.tokens, bucket.at = max(level - 1.0, 0.0), now

    def _level(self, source: str, now: float) -> float:
        bucket = self._buckets.get(source)
        if bucket is None:
            return float(self.burst)
        return min(self.burst, bucket.tokens + max(now - bucket.at, 0.0) / self.interval)

    def _forget_full(self, now: float) -> None:
        full = [s for s in self._buckets if self._level(s, now) >= self.burst]
        for source in full or sorted(self._buckets, key=lambda s: -self._level(s, now))[:1]:
            del self._buckets[source]


class LimitedClaims:
    """A codebook seen through one source's bucket (what an Initiator machine is given)."""

    def __init__(self, codebook: CodeClaims, limiter: ClaimLimiter, source: str, clock: float) -> None:
        self._codebook = codebook
        self._limiter = limiter
        self._source = source
        self._now = clock

    def claim(self, nameplate: int, now: float) -> PairingCode:
        self._now = now
        if not self._limiter.allows(self._source, now):
            self._limiter.refused += 1
            raise errors.PairingFailed(
                ErrorCode.BUSY, "too many failed pairing attempts from this address; wait a minute"
            )
        try:
            return self._codebook.claim(nameplate, now)
        except errors.PairingFailed as exc:
            if exc.code is not ErrorCode.BUSY:  # BUSY: another session holds it; not a guess
                self._limiter.failed(self._source, now)
            raise

    def release(self, nameplate: int) -> None:
        self._limiter.failed(self._source, self._now)
        self._codebook.release(nameplate)

    def record_failure(self, nameplate: int, code: ErrorCode) -> None:
        self._limiter.failed(self._source, self._now)
        self._codebook.record_failure(nameplate, code)

    def consume(self, nameplate: int) -> None:
        self._codebook.consume(nameplate)
