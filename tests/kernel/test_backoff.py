"""Backoff: Akka's formula, capped, jittered, reset after a stable period; pure and deterministic."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quicpair.actors.kernel.backoff import Backoff


def fixed(r: float) -> Backoff:
    return Backoff(0.5, 30.0, 0.2, reset_after=60.0, rand=lambda: r)


def test_delays_double_from_min_up_to_max_without_jitter() -> None:
    backoff = fixed(0.0)
    delays = [backoff.next_delay(now=float(t)) for t in range(9)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert backoff.attempts == 9


def test_jitter_scales_the_capped_delay_by_one_plus_factor_times_r() -> None:
    values = itertools.cycle([0.5, 0.25])
    backoff = Backoff(1.0, 4.0, 0.5, reset_after=60.0, rand=lambda: next(values))
    assert [backoff.next_delay(0.0) for _ in range(4)] == [
        1.0 * 1.25,
        2.0 * 1.125,
        4.0 * 1.25,  # capped at max, then jittered (as Akka does)
        4.0 * 1.125,
    ]


def test_base_delay_is_the_akka_formula() -> None:
    backoff = fixed(0.0)
    assert [backoff.base_delay(n) for n in range(3)] == [0.5, 1.0, 2.0]
    assert backoff.base_delay(10_000) == 30.0  # no overflow for absurd counts
    with pytest.raises(ValueError, match=">= 0"):
        backoff.base_delay(-1)


def test_a_stable_period_resets_the_count() -> None:
    backoff = fixed(0.0)
    assert backoff.next_delay(0.0) == 0.5
    backoff.succeeded(1.0)
    assert backoff.next_delay(2.0) == 1.0  # up for 1 s only: keeps backing off
    backoff.succeeded(3.0)
    assert backoff.next_delay(63.0) == 0.5  # up for exactly reset_after: starts over
    assert backoff.attempts == 1


def test_without_success_there_is_no_reset_however_long_it_fails() -> None:
    backoff = fixed(0.0)
    backoff.next_delay(0.0)
    assert backoff.next_delay(1_000_000.0) == 1.0


def test_reset_forgets_everything() -> None:
    backoff = fixed(0.0)
    for t in range(5):
        backoff.next_delay(float(t))
    backoff.succeeded(5.0)
    backoff.reset()
    assert backoff.attempts == 0
    assert backoff.next_delay(6.0) == 0.5


def test_same_randomness_gives_the_same_schedule() -> None:
    def schedule() -> list[float]:
        values = iter([0.1, 0.9, 0.3, 0.7, 0.0])
        backoff = Backoff(0.1, 5.0, 1.0, reset_after=10.0, rand=lambda: next(values))
        return [backoff.next_delay(float(t)) for t in range(5)]

    assert schedule() == schedule()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0.0, 1.0, 0.1, 1.0), "min_delay must be > 0"),
        ((2.0, 1.0, 0.1, 1.0), "max_delay"),
        ((1.0, 2.0, -0.1, 1.0), "random_factor must be >= 0"),
        ((1.0, 2.0, 0.1, 0.0), "reset_after must be > 0"),
        ((1.0, math.inf, 0.1, 1.0), "finite"),
        ((math.nan, 2.0, 0.1, 1.0), "finite"),
    ],
)
def test_invalid_settings_are_refused(args: tuple[float, float, float, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(*args)


@pytest.mark.parametrize("r", [1.0, -0.01, math.nan])
def test_a_rand_outside_the_unit_interval_is_refused(r: float) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        fixed(r).next_delay(0.0)


def test_the_default_rand_stays_within_bounds() -> None:
    backoff = Backoff(1.0, 8.0, 0.5, reset_after=60.0)
    for n in range(6):
        delay = backoff.next_delay(0.0)
        base = min(8.0, 2.0**n)
        assert base <= delay < base * 1.5


@given(
    min_delay=st.floats(0.001, 10.0),
    spread=st.floats(1.0, 1000.0),
    factor=st.floats(0.0, 2.0),
    rs=st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=1, max_size=40),
)
def test_every_delay_is_within_the_formulas_bounds(
    min_delay: float, spread: float, factor: float, rs: list[float]
) -> None:
    values = iter(rs)
    backoff = Backoff(min_delay, min_delay * spread, factor, reset_after=1.0, rand=lambda: next(values))
    previous_base = 0.0
    for n, r in enumerate(rs):
        delay = backoff.next_delay(0.0)
        base = backoff.base_delay(n)
        assert delay == pytest.approx(base * (1 + factor * r))
        assert min_delay <= delay <= min_delay * spread * (1 + factor)
        assert base >= previous_base  # never shrinks without a reset
        previous_base = base
