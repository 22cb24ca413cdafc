"""Calendar periods from an anchor, and fixed RATE windows."""

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portal.billing.periods import IntervalUnit, Period, add_intervals, period_at, window_bounds

UTC = timezone.utc


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_twelve_monthly_renewals_from_31_january():
    anchor = utc(2025, 1, 31, 9, 30)
    boundaries = [add_intervals(anchor, IntervalUnit.MONTH, 1, n).date().isoformat() for n in range(1, 13)]
    assert boundaries == [
        "2025-02-28", "2025-03-31", "2025-04-30", "2025-05-31", "2025-06-30", "2025-07-31",
        "2025-08-31", "2025-09-30", "2025-10-31", "2025-11-30", "2025-12-31", "2026-01-31",
    ]


def test_leap_february():
    assert add_intervals(utc(2024, 1, 31), "month", 1, 1) == utc(2024, 2, 29)
    assert add_intervals(utc(2024, 1, 31), "month", 1, 2) == utc(2024, 3, 31)


def test_time_of_day_and_tzinfo_are_kept():
    tz = timezone(timedelta(hours=-5))
    anchor = datetime(2025, 1, 31, 23, 59, 58, 7, tzinfo=tz)
    boundary = add_intervals(anchor, IntervalUnit.MONTH, 1, 1)
    assert boundary == datetime(2025, 2, 28, 23, 59, 58, 7, tzinfo=tz)
    assert boundary.tzinfo is tz


def test_no_drift_over_ten_years():
    anchor = utc(2025, 1, 31)
    assert add_intervals(anchor, IntervalUnit.MONTH, 1, 120) == utc(2035, 1, 31)
    assert add_intervals(anchor, IntervalUnit.MONTH, 1, 121) == utc(2035, 2, 28)
    assert add_intervals(anchor, IntervalUnit.MONTH, 3, 40) == utc(2035, 1, 31)


def test_yearly_from_29_february():
    anchor = utc(2024, 2, 29, 12)
    assert add_intervals(anchor, IntervalUnit.YEAR, 1, 1) == utc(2025, 2, 28, 12)
    assert add_intervals(anchor, IntervalUnit.YEAR, 1, 4) == utc(2028, 2, 29, 12)
    assert add_intervals(anchor, IntervalUnit.YEAR, 1, 10) == utc(2034, 2, 28, 12)
    assert add_intervals(anchor, IntervalUnit.YEAR, 2, 2) == utc(2028, 2, 29, 12)


def test_weekly_and_daily_are_exact():
    anchor = utc(2025, 3, 1, 8)
    assert add_intervals(anchor, IntervalUnit.WEEK, 1, 1) == utc(2025, 3, 8, 8)
    assert add_intervals(anchor, IntervalUnit.WEEK, 2, 3) == utc(2025, 4, 12, 8)
    assert add_intervals(anchor, IntervalUnit.DAY, 1, 365) == utc(2026, 3, 1, 8)
    assert add_intervals(anchor, IntervalUnit.DAY, 3, 1) == utc(2025, 3, 4, 8)
    assert add_intervals(anchor, IntervalUnit.DAY, 1, 0) == anchor


def test_daily_keeps_local_wall_time_across_dst():
    ny = ZoneInfo("America/New_York")
    anchor = datetime(2025, 3, 8, 9, tzinfo=ny)  # DST starts on 9 March
    boundary = add_intervals(anchor, IntervalUnit.DAY, 1, 1)
    assert (boundary.hour, boundary.day) == (9, 9)
    assert boundary.astimezone(UTC) - anchor.astimezone(UTC) == timedelta(hours=23)
    n, period = period_at(anchor, IntervalUnit.DAY, 1, boundary)
    assert (n, period.start) == (1, boundary)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"count": 0}, ValueError),
        ({"count": -1}, ValueError),
        ({"n": -1}, ValueError),
        ({"count": 1.0}, TypeError),
        ({"unit": "fortnight"}, ValueError),
        ({"anchor": datetime(2025, 1, 1)}, ValueError),
    ],
)
def test_add_intervals_validates(kwargs, error):
    args = {"anchor": utc(2025, 1, 1), "unit": "month", "count": 1, "n": 1} | kwargs
    with pytest.raises(error):
        add_intervals(**args)


def test_period():
    period = Period(utc(2025, 1, 31), utc(2025, 2, 28))
    assert period.contains(utc(2025, 1, 31))
    assert period.contains(utc(2025, 2, 27, 23, 59, 59))
    assert not period.contains(utc(2025, 2, 28))
    assert not period.contains(utc(2025, 1, 30))
    assert period.duration == timedelta(days=28)
    with pytest.raises(ValueError):
        Period(utc(2025, 1, 2), utc(2025, 1, 1))
    with pytest.raises(ValueError):
        Period(utc(2025, 1, 1), utc(2025, 1, 1))


def test_period_at_examples():
    anchor = utc(2025, 1, 31)
    assert period_at(anchor, "month", 1, anchor) == (0, Period(anchor, utc(2025, 2, 28)))
    assert period_at(anchor, "month", 1, utc(2025, 2, 28)) == (1, Period(utc(2025, 2, 28), utc(2025, 3, 31)))
    assert period_at(anchor, "month", 1, utc(2025, 3, 30, 23)) == (1, Period(utc(2025, 2, 28), utc(2025, 3, 31)))
    assert period_at(anchor, "month", 1, utc(2035, 1, 31)) == (120, Period(utc(2035, 1, 31), utc(2035, 2, 28)))
    n, period = period_at(utc(2025, 1, 1), "day", 1, utc(2034, 12, 31, 12))
    assert n == 3651 and period == Period(utc(2034, 12, 31), utc(2035, 1, 1))


def test_period_at_refuses_instants_before_the_anchor():
    with pytest.raises(ValueError, match="before the anchor"):
        period_at(utc(2025, 1, 31), "month", 1, utc(2025, 1, 30))
    with pytest.raises(ValueError):
        period_at(utc(2025, 1, 31), "month", 0, utc(2025, 2, 1))


anchors = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC))


@given(
    anchor=anchors,
    unit=st.sampled_from(list(IntervalUnit)),
    count=st.integers(min_value=1, max_value=3),
    offset=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3660)),
)
def test_period_at_agrees_with_add_intervals(anchor, unit, count, offset):
    at = anchor + offset
    n, period = period_at(anchor, unit, count, at)
    assert period.start == add_intervals(anchor, unit, count, n)
    assert period.end == add_intervals(anchor, unit, count, n + 1)
    assert period.contains(at)


@given(
    anchor=anchors,
    unit=st.sampled_from([IntervalUnit.MONTH, IntervalUnit.YEAR]),
    n=st.integers(min_value=0, max_value=150),
)
def test_calendar_boundaries_never_drift(anchor, unit, n):
    boundary = add_intervals(anchor, unit, 1, n)
    assert boundary.time() == anchor.time()
    # The day is the anchor's day unless the month is too short for it.
    assert boundary.day == anchor.day or boundary.day < anchor.day and (boundary + timedelta(days=1)).day == 1


def test_window_bounds():
    at = utc(2025, 5, 17, 13, 45, 30, 123)
    assert window_bounds("minute", at) == Period(utc(2025, 5, 17, 13, 45), utc(2025, 5, 17, 13, 46))
    assert window_bounds("hour", at) == Period(utc(2025, 5, 17, 13), utc(2025, 5, 17, 14))
    assert window_bounds("day", at) == Period(utc(2025, 5, 17), utc(2025, 5, 18))
    assert window_bounds("day", utc(2025, 12, 31, 23, 59)).end == utc(2026, 1, 1)
    # Windows are aligned in UTC whatever zone the instant arrives in.
    local = datetime(2025, 5, 17, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    assert window_bounds("day", local) == Period(utc(2025, 5, 16), utc(2025, 5, 17))
    with pytest.raises(ValueError):
        window_bounds("week", at)
