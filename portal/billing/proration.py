"""Proration of a mid-period plan change, in exact fractions of the current period."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction

from .clock import as_utc
from .money import round_half_up

__all__ = ["Proration", "prorate_change", "unused_credit"]

_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class Proration:
    """The money side of a plan change, all amounts in integer minor units.

    ``net`` > 0 is owed by the customer now; ``net`` < 0 is owed to the customer (credit the
    wallet). ``period_start``/``period_end`` describe the period of the NEW plan: the current
    period unchanged, or, with ``reset_period``, a period starting at the change with
    ``period_end`` None -- the caller computes the end from the new plan's interval
    (``periods.add_intervals(period_start, unit, count, 1)``) and makes it the new anchor.
    """

    credit: int
    charge: int
    net: int
    fraction: Fraction
    period_start: datetime
    period_end: datetime | None


def _require_price(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int count of minor units, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{what} must be >= 0, got {value}")
    return value


def prorate_change(
    old_price: int,
    new_price: int,
    period_start: datetime,
    period_end: datetime,
    at: datetime,
    *,
    reset_period: bool,
) -> Proration:
    """Credit the unused part of the old plan and charge the new one from ``at``.

    Prices are for one full period, in minor units. The remaining fraction is measured in
    microseconds with ``at`` clamped into [period_start, period_end]. Each amount is rounded
    half-up once. With ``reset_period`` (the interval changes, or the new period starts now)
    the new plan is charged in full for a period starting at ``at``.
    """
    _require_price(old_price, "old_price")
    _require_price(new_price, "new_price")
    # In UTC because subtracting two datetimes that share a zone ignores DST shifts.
    start, end, now = as_utc(period_start), as_utc(period_end), as_utc(at)
    if end <= start:
        raise ValueError(f"period end {period_end.isoformat()} is not after start {period_start.isoformat()}")
    clamped = min(max(now, start), end)
    # Integer microseconds keep the fraction exact; total_seconds() would be a float.
    fraction = Fraction((end - clamped) // _MICROSECOND, (end - start) // _MICROSECOND)
    credit = round_half_up(old_price * fraction)
    if reset_period:
        charge, new_start, new_end = new_price, at, None
    else:
        charge, new_start, new_end = round_half_up(new_price * fraction), period_start, period_end
    return Proration(credit, charge, charge - credit, fraction, new_start, new_end)


def unused_credit(paid: int, covered_start: datetime, covered_end: datetime, at: datetime) -> int:
    """What is left at ``at`` of ``paid`` minor units bought for [covered_start, covered_end).

    The credit for unused time is based on what was invoiced for the span, not on a plan's
    current price (an edited price must not change it). Rounded half-up once.
    """
    _require_price(paid, "paid")
    start, end, now = as_utc(covered_start), as_utc(covered_end), as_utc(at)
    if end <= start:
        raise ValueError(f"covered end {covered_end.isoformat()} is not after start {covered_start.isoformat()}")
    clamped = min(max(now, start), end)
    return round_half_up(paid * Fraction((end - clamped) // _MICROSECOND, (end - start) // _MICROSECOND))
