"""Proration of plan changes: exact fractions, rounded half-up once."""

from datetime import datetime, timedelta, timezone
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portal.billing.proration import Proration, prorate_change

UTC = timezone.utc
START = datetime(2025, 4, 1, tzinfo=UTC)
END = datetime(2025, 5, 1, tzinfo=UTC)  # 30 days
MIDDLE = datetime(2025, 4, 16, tzinfo=UTC)


def test_mid_period_upgrade_halves_both_prices():
    result = prorate_change(999, 2999, START, END, MIDDLE, reset_period=False)
    assert result.fraction == Fraction(1, 2)
    assert result.credit == 500  # 499.5 rounds half-up
    assert result.charge == 1500  # 1499.5 rounds half-up
    assert result.net == 1000
    assert (result.period_start, result.period_end) == (START, END)


def test_at_period_start_credits_the_whole_old_price():
    result = prorate_change(1000, 3000, START, END, START, reset_period=False)
    assert (result.fraction, result.credit, result.charge, result.net) == (1, 1000, 3000, 2000)


def test_at_period_end_nothing_is_left():
    result = prorate_change(1000, 3000, START, END, END, reset_period=False)
    assert (result.fraction, result.credit, result.charge, result.net) == (0, 0, 0, 0)


def test_instants_outside_the_period_are_clamped():
    before = prorate_change(1000, 3000, START, END, START - timedelta(days=3), reset_period=False)
    after = prorate_change(1000, 3000, START, END, END + timedelta(days=3), reset_period=False)
    assert before.fraction == 1 and before.credit == 1000
    assert after.fraction == 0 and after.credit == 0


def test_reset_period_charges_the_full_new_price():
    result = prorate_change(999, 9999, START, END, MIDDLE, reset_period=True)
    assert result.credit == 500
    assert result.charge == 9999
    assert result.net == 9499
    assert result.period_start == MIDDLE
    assert result.period_end is None  # the caller computes it from the new interval


def test_downgrade_gives_a_negative_net():
    result = prorate_change(3000, 1000, START, END, MIDDLE, reset_period=False)
    assert (result.credit, result.charge, result.net) == (1500, 500, -1000)


@pytest.mark.parametrize(
    ("price", "at", "expected"),
    [
        (1, MIDDLE, 1),  # 0.5 -> 1
        (3, MIDDLE, 2),  # 1.5 -> 2
        (5, MIDDLE, 3),  # 2.5 -> 3 (not banker's 2)
        (1000, START + timedelta(days=20), 333),  # 333.33...
        (1000, START + timedelta(days=10), 667),  # 666.66...
        (1, END - timedelta(microseconds=1), 0),
    ],
)
def test_rounding_half_up(price, at, expected):
    result = prorate_change(price, price, START, END, at, reset_period=False)
    assert result.credit == expected
    assert result.charge == expected


def test_fraction_is_exact_to_the_microsecond():
    at = START + timedelta(seconds=1, microseconds=1)
    result = prorate_change(0, 0, START, END, at, reset_period=False)
    total = 30 * 86_400 * 1_000_000
    assert result.fraction == Fraction(total - 1_000_001, total)


def test_dst_is_measured_in_real_time():
    from zoneinfo import ZoneInfo

    ny = ZoneInfo("America/New_York")
    start, end = datetime(2025, 3, 9, 0, tzinfo=ny), datetime(2025, 3, 10, 0, tzinfo=ny)  # 23 hours
    result = prorate_change(2300, 0, start, end, datetime(2025, 3, 9, 12, tzinfo=ny), reset_period=False)
    assert result.fraction == Fraction(12, 23)  # 11 of the 23 real hours have passed
    assert result.credit == 1200


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((-1, 0, START, END, MIDDLE), ValueError),
        ((0, 1.5, START, END, MIDDLE), TypeError),
        ((True, 0, START, END, MIDDLE), TypeError),
        ((0, 0, END, START, MIDDLE), ValueError),
        ((0, 0, START, START, START), ValueError),
        ((0, 0, START, END, datetime(2025, 4, 16)), ValueError),
    ],
)
def test_validation(args, error):
    with pytest.raises(error):
        prorate_change(*args, reset_period=False)


@given(
    old=st.integers(min_value=0, max_value=10**9),
    new=st.integers(min_value=0, max_value=10**9),
    offset=st.timedeltas(min_value=timedelta(0), max_value=END - START),
    reset=st.booleans(),
)
def test_properties(old, new, offset, reset):
    result = prorate_change(old, new, START, END, START + offset, reset_period=reset)
    assert isinstance(result, Proration)
    assert 0 <= result.fraction <= 1
    assert 0 <= result.credit <= old
    assert 0 <= result.charge <= new
    assert result.net == result.charge - result.credit
    assert abs(result.credit - old * result.fraction) <= Fraction(1, 2)
    if reset:
        assert result.charge == new
    if old == new and not reset:
        assert result.net == 0
