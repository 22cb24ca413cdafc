"""One place for the wording shown to people: money, unit prices, plurals, billing periods, tier
spans and short durations. One phrase per concept, each tested in tests/test_display.py.

Plain functions with no database: the locale is the app's DEFAULT_LOCALE when an app is active
(else en_US), so the pure billing core may use them too.
"""
from __future__ import annotations

import math
from datetime import datetime, timedelta
from decimal import Decimal

from babel.numbers import format_currency

from portal.billing.money import format_money
from portal.billing.pricing import Band

__all__ = ["interval", "locale", "moment", "money", "plural", "price_per_period", "tier_span", "time_until",
           "unit_money", "units"]


def locale() -> str:
    from flask import current_app, has_app_context

    return current_app.config.get("DEFAULT_LOCALE", "en_US") if has_app_context() else "en_US"


def money(minor: int, currency: str) -> str:
    """An amount in minor units, to the currency's digits: "$1,234.56", "¥500"."""
    return format_money(minor, currency, locale())


def unit_money(value: Decimal | int, currency: str) -> str:
    """A price with all its digits, at least the currency's: "$0.0005", "$20.00"."""
    return format_currency(Decimal(value), currency, locale=locale(), decimal_quantization=False)


def plural(unit: str, count: int = 2) -> str:
    """The unit name that goes with `count`: "token" → "tokens"; abbreviations and words that are
    already plural stay as they are ("SMS", "seats"); a missing unit is a "unit"."""
    unit = unit or "unit"
    if count == 1 or unit.endswith("s") or unit.isupper():
        return unit
    return unit + "s"


def units(count: int, unit: str) -> str:
    """A count with its unit: "1 token", "1,000 tokens", "500 SMS"."""
    return f"{count:,} {plural(unit, count)}"


def interval(unit: str, count: int = 1) -> str:
    """One billing period in words: "month", "30 days", "2 weeks"."""
    return unit if count == 1 else f"{count} {unit}s"


def price_per_period(minor: int, currency: str, unit: str, count: int = 1) -> str:
    """A plan's price: "$9.99 / month", "$15.00 / 30 days"."""
    return f"{money(minor, currency)} / {interval(unit, count)}"


def tier_span(band: Band) -> str:
    """The units a tier covers (pricing.bands normalises either numbering): "1–10,000", "100,001 and up"."""
    return f"{band.first:,} and up" if band.last is None else f"{band.first:,}–{band.last:,}"


def moment(value: datetime) -> str:
    """An instant with its zone, as emails show it: "28 Feb 2026, 09:00 UTC", "28 Feb 2026, 10:00 CET"."""
    return value.strftime("%d %b %Y, %H:%M %Z").strip()


def time_until(delta: timedelta) -> str:
    """A short, rounded-up duration for "resets in …": "45 s", "4 min", "15 h", "2 h 5 min", "3 d"."""
    seconds = max(0, math.ceil(delta.total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    minutes = math.ceil(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24 or (hours, minutes) == (24, 0):  # a full day window reads "24 h"
        return f"{hours} h" + (f" {minutes} min" if minutes else "")
    days, hours = divmod(hours, 24)
    return f"{days} d" + (f" {hours} h" if hours else "")
