"""Failed pairing claims per source address: a burst, then one per interval; successes are free."""

from __future__ import annotations

import pytest

from quicpair.protocol import errors
from quicpair.protocol.claims import DEFAULT_BURST, DEFAULT_INTERVAL, ClaimLimiter, LimitedClaims
from quicpair.protocol.codebook import Codebook, CodeState
from quicpair.protocol.errors import ErrorCode

NOW = 1000.0


def refused(claims: LimitedClaims, nameplate: int, now: float = NOW) -> ErrorCode:
    with pytest.raises(errors.PairingFailed) as info:
        claims.claim(nameplate, now)
    return info.value.code


def test_a_prober_gets_a_burst_then_one_claim_per_interval_and_cannot_touch_a_code() -> None:
    book, limiter = Codebook(), ClaimLimiter()
    code = book.open(NOW, lambda n: bytes(n))
    prober = LimitedClaims(book, limiter, "192.0.2.66", NOW)
    free = next(n for n in range(1, 10_000) if n != code.nameplate)
    assert [refused(prober, free) for _ in range(DEFAULT_BURST)] == [ErrorCode.NO_SUCH_CODE] * DEFAULT_BURST
    assert refused(prober, free) is ErrorCode.BUSY and limiter.refused == 1
    # Out of tokens, even the open code's nameplate is refused before the codebook sees it.
    assert refused(prober, code.nameplate) is ErrorCode.BUSY
    status = book.describe(code.nameplate, NOW)
    assert status is not None and (status.attempts, status.state) == (0, CodeState.OPEN)
    later = NOW + DEFAULT_INTERVAL
    assert refused(prober, free, later) is ErrorCode.NO_SUCH_CODE
    assert refused(prober, free, later) is ErrorCode.BUSY
    # Another address is not affected.
    other = LimitedClaims(book, limiter, "198.51.100.1", NOW)
    assert other.claim(code.nameplate, NOW) == code


def test_successful_claims_cost_nothing_and_failed_attempts_do() -> None:
    book, limiter = Codebook(max_open=64), ClaimLimiter(burst=2, interval=60)
    codes = [book.open(NOW, lambda n, i=i: i.to_bytes(8, "big")[:n].ljust(n, b"\x01")) for i in range(40)]
    crowd = LimitedClaims(book, limiter, "203.0.113.5", NOW)
    for code in codes:  # many devices behind one address, each with its own code
        assert crowd.claim(code.nameplate, NOW) == code
        crowd.consume(code.nameplate)
    assert limiter.allows("203.0.113.5", NOW)
    extra = book.open(NOW, lambda n: b"\x7f" * n)
    crowd.claim(extra.nameplate, NOW)
    crowd.record_failure(extra.nameplate, ErrorCode.WRONG_CODE)
    crowd.claim(extra.nameplate, NOW)
    crowd.release(extra.nameplate)  # the joiner vanished after the Challenge: a guess too
    assert not limiter.allows("203.0.113.5", NOW)


def test_busy_is_not_a_guess_and_the_table_is_bounded() -> None:
    book, limiter = Codebook(), ClaimLimiter(burst=1)
    code = book.open(NOW, lambda n: bytes(n))
    LimitedClaims(book, limiter, "a", NOW).claim(code.nameplate, NOW)
    assert refused(LimitedClaims(book, limiter, "b", NOW), code.nameplate) is ErrorCode.BUSY
    assert limiter.allows("b", NOW)
    for i in range(5000):
        limiter.failed(f"10.0.{i // 256}.{i % 256}", NOW)
    assert len(limiter._buckets) <= 4096
    with pytest.raises(ValueError):
        ClaimLimiter(burst=0)
