"""Calendar billing periods computed from an anchor, and fixed windows for RATE limits.

Every boundary is computed from the anchor (never by chaining period to period), so a
subscription anchored on Jan 31 renews on Feb 28/29, Mar 31, Apr 30 ... and never drifts
to the 28th for good.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from .clock import as_utc

__all__ = [
    "IntervalUnit",
    "Period",
    "WindowUnit",
    "add_intervals",
    "period_at",
    "window_bounds",
]


class IntervalUnit(str, Enum):
    """The unit of a plan's billing interval."""

    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    YEAR = "year"


class WindowUnit(str, Enum):
    """The length of a RATE feature's fixed window."""

    MINUTE = "minute"
    HOUR = "hour"
    DAY = "day"


def _require_aware(dt: datetime, what: str) -> None:
    if not isinstance(dt, datetime):
        raise TypeError(f"{what} must be a datetime, not {type(dt).__name__}")
    if dt.tzinfo is None or dt.tzinfo.utcoffset(dt) is None:
        raise ValueError(f"{what} must be timezone-aware, got naive {dt.isoformat()}")


def _require_int(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    return value


def _add_months(anchor: datetime, months: int) -> datetime:
    total = anchor.year * 12 + (anchor.month - 1) + months
    year, month = divmod(total, 12)
    month += 1
    # Clamp to the month's last day: Jan 31 + 1 month is Feb 28/29, and because we always
    # start from the anchor, the following boundary goes back to Mar 31.
    day = min(anchor.day, calendar.monthrange(year, month)[1])
    return anchor.replace(year=year, month=month, day=day)


def add_intervals(anchor: datetime, unit: IntervalUnit | str, count: int, n: int) -> datetime:
    """Return the boundary ``n`` intervals of ``count`` x ``unit`` after ``anchor``.

    Time of day and tzinfo are kept; with a zone like ZoneInfo the local wall time is kept
    across DST changes (calendar days, not 86,400-second blocks).
    """
    _require_aware(anchor, "anchor")
    unit = IntervalUnit(unit)
    _require_int(count, "count", 1)
    _require_int(n, "n", 0)
    if unit is IntervalUnit.DAY:
        return anchor + timedelta(days=count * n)
    if unit is IntervalUnit.WEEK:
        return anchor + timedelta(weeks=count * n)
    if unit is IntervalUnit.MONTH:
        return _add_months(anchor, count * n)
    return _add_months(anchor, 12 * count * n)


@dataclass(frozen=True)
class Period:
    """A half-open interval of time [start, end)."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        _require_aware(self.start, "start")
        _require_aware(self.end, "end")
        if as_utc(self.end) <= as_utc(self.start):
            raise ValueError(f"period end {self.end.isoformat()} is not after start {self.start.isoformat()}")

    # Compared in UTC: Python compares and subtracts datetimes sharing a tzinfo by wall
    # time, which is off by an hour around DST changes.
    def contains(self, at: datetime) -> bool:
        """True when start <= at < end."""
        return as_utc(self.start) <= as_utc(at) < as_utc(self.end)

    @property
    def duration(self) -> timedelta:
        """The elapsed (real) time from start to end."""
        return as_utc(self.end) - as_utc(self.start)


def period_at(
    anchor: datetime, unit: IntervalUnit | str, count: int, at: datetime
) -> tuple[int, Period]:
    """Return (n, period) for the n-th billing period after ``anchor`` that contains ``at``."""
    _require_aware(anchor, "anchor")
    _require_aware(at, "at")
    unit = IntervalUnit(unit)
    _require_int(count, "count", 1)
    at_utc = as_utc(at)
    if at_utc < as_utc(anchor):
        raise ValueError(f"{at.isoformat()} is before the anchor {anchor.isoformat()}")
    # Estimate n arithmetically, then correct by a step or two: DST shifts (day/week) and
    # month-end clamping (month/year) can put the estimate one period off either way.
    if unit in (IntervalUnit.DAY, IntervalUnit.WEEK):
        step = timedelta(days=count) if unit is IntervalUnit.DAY else timedelta(weeks=count)
        n = (at - anchor) // step
    else:
        months = (at.year - anchor.year) * 12 + (at.month - anchor.month)
        n = months // (count if unit is IntervalUnit.MONTH else 12 * count)
    n = max(n, 0)
    while n > 0 and as_utc(add_intervals(anchor, unit, count, n)) > at_utc:
        n -= 1
    while as_utc(add_intervals(anchor, unit, count, n + 1)) <= at_utc:
        n += 1
    return n, Period(add_intervals(anchor, unit, count, n), add_intervals(anchor, unit, count, n + 1))


def window_bounds(unit: WindowUnit | str, at: datetime) -> Period:
    """Return the fixed UTC window (minute, hour or day) that contains ``at``."""
    _require_aware(at, "at")
    unit = WindowUnit(unit)
    utc = as_utc(at)
    if unit is WindowUnit.MINUTE:
        start, length = utc.replace(second=0, microsecond=0), timedelta(minutes=1)
    elif unit is WindowUnit.HOUR:
        start, length = utc.replace(minute=0, second=0, microsecond=0), timedelta(hours=1)
    else:
        start, length = utc.replace(hour=0, minute=0, second=0, microsecond=0), timedelta(days=1)
    return Period(start, start + length)
