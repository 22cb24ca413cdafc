"""Every phrase the pages use for a concept, said one way (portal.display)."""
from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from portal import display
from portal.billing.pricing import Tier, bands


def test_money_has_the_currencys_digits():
    assert display.money(123456, "USD") == "$1,234.56"
    assert display.money(500, "JPY") == "¥500"
    assert display.money(-250, "EUR") == "-€2.50"


def test_unit_prices_keep_every_digit_and_at_least_the_currencys():
    assert display.unit_money(Decimal("0.0005"), "USD") == "$0.0005"
    assert display.unit_money(Decimal("20"), "USD") == "$20.00"
    assert display.unit_money(8, "USD") == "$8.00"


@pytest.mark.parametrize("unit, count, said", [
    ("token", 2, "tokens"), ("token", 1, "token"), ("token", 0, "tokens"), ("SMS", 2, "SMS"),
    ("seats", 2, "seats"), ("", 2, "units"), ("", 1, "unit"),
])
def test_plural(unit, count, said):
    assert display.plural(unit, count) == said


def test_units_counts_with_the_right_form():
    assert [display.units(n, "token") for n in (1, 1000)] == ["1 token", "1,000 tokens"]
    assert display.units(500, "SMS") == "500 SMS"


def test_billing_periods_and_prices_per_period():
    assert [display.interval("month"), display.interval("day", 30), display.interval("week", 2)] == [
        "month", "30 days", "2 weeks"]
    assert display.price_per_period(999, "USD", "month") == "$9.99 / month"
    assert display.price_per_period(1500, "USD", "day", 30) == "$15.00 / 30 days"


def test_a_tier_span_is_the_same_for_either_numbering():
    one_based = [Tier(1, 10_000, Decimal(0)), Tier(10_001, None, Decimal("0.001"))]
    zero_based = [Tier(0, 10_000, Decimal(0)), Tier(10_000, None, Decimal("0.001"))]
    expected = ["1–10,000", "10,001 and up"]
    assert [display.tier_span(b) for b in bands(one_based)] == expected
    assert [display.tier_span(b) for b in bands(zero_based)] == expected


@pytest.mark.parametrize("seconds, text", [
    (0, "0 s"), (1, "1 s"), (59, "59 s"), (60, "1 min"), (61, "2 min"), (240, "4 min"), (3599, "1 h"),
    (3600, "1 h"), (3660, "1 h 1 min"), (15 * 3600, "15 h"), (86400, "24 h"), (86401, "1 d"), (90000, "1 d 1 h"),
])
def test_time_until(seconds, text):
    assert display.time_until(timedelta(seconds=seconds)) == text
