"""Money: the one rounding rule, currencies, parsing and formatting."""

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portal.billing.money import (
    CurrencyMismatch,
    InvalidAmount,
    Money,
    UnknownCurrency,
    format_money,
    from_minor,
    minor_exponent,
    parse_money,
    round_half_up,
    to_minor,
)


@pytest.mark.parametrize(("currency", "exponent"), [("USD", 2), ("EUR", 2), ("JPY", 0), ("KWD", 3), ("usd", 2)])
def test_minor_exponent(currency, exponent):
    assert minor_exponent(currency) == exponent


def test_unknown_currency_is_refused():
    with pytest.raises(UnknownCurrency, match="ABC"):
        minor_exponent("ABC")


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        (Decimal("0.005"), "USD", 1),
        (Decimal("0.0049"), "USD", 0),
        (Decimal("0.015"), "USD", 2),
        (Decimal("-0.005"), "USD", -1),  # half away from zero, like Decimal's ROUND_HALF_UP
        (Decimal("12.345"), "USD", 1235),
        (Decimal("1234.5"), "JPY", 1235),
        (Decimal("1234.4999"), "JPY", 1234),
        (Decimal("0.0005"), "KWD", 1),
        (7, "USD", 700),
        (Decimal("50.00"), "USD", 5000),
    ],
)
def test_to_minor_rounds_half_up_once(amount, currency, minor):
    assert to_minor(amount, currency) == minor


@pytest.mark.parametrize("bad", [0.1, 1.0, True])
def test_to_minor_refuses_float_and_bool(bad):
    with pytest.raises(TypeError):
        to_minor(bad, "USD")


@pytest.mark.parametrize("bad", [Decimal("NaN"), Decimal("Infinity")])
def test_to_minor_refuses_non_finite(bad):
    with pytest.raises(ValueError, match="finite"):
        to_minor(bad, "USD")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Fraction(1, 2), 1),
        (Fraction(-1, 2), -1),
        (Fraction(3, 2), 2),
        (Fraction(5, 2), 3),
        (Fraction(49, 100), 0),
        (Fraction(1, 3), 0),
        (Fraction(2, 3), 1),
        (Decimal("2.5"), 3),
        (4, 4),
    ],
)
def test_round_half_up(value, expected):
    assert round_half_up(value) == expected


@given(st.decimals(allow_nan=False, allow_infinity=False, places=6, min_value=-10**9, max_value=10**9))
def test_round_half_up_matches_decimal(value):
    from decimal import ROUND_HALF_UP

    assert round_half_up(value) == int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def test_from_minor_is_exact():
    assert from_minor(1234, "USD") == Decimal("12.34")
    assert str(from_minor(5, "USD")) == "0.05"
    assert str(from_minor(-5, "USD")) == "-0.05"
    assert from_minor(1234, "JPY") == Decimal(1234)
    assert str(from_minor(1, "KWD")) == "0.001"
    big = 10**40 + 1
    assert to_minor(from_minor(big, "USD"), "USD") == big


def test_from_minor_refuses_non_int():
    with pytest.raises(TypeError):
        from_minor(12.0, "USD")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("minor", "currency", "locale", "text"),
    [
        (123456, "USD", "en_US", "$1,234.56"),
        (5, "USD", "en_US", "$0.05"),
        (-500, "USD", "en_US", "-$5.00"),
        (1234, "JPY", "en_US", "¥1,234"),
        (1234, "KWD", "en_US", "KWD1.234"),
        (123456, "EUR", "de_DE", "1.234,56\xa0€"),
    ],
)
def test_format_money(minor, currency, locale, text):
    assert format_money(minor, currency, locale) == text


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [
        ("12.50", "USD", 1250),
        ("1,234.5", "USD", 123450),
        ("1,234,567.89", "USD", 123456789),
        ("  7 ", "USD", 700),
        ("0.05", "USD", 5),
        (".5", "USD", 50),
        ("12.", "USD", 1200),
        ("12.500", "USD", 1250),  # trailing zeros beyond the precision are harmless
        ("-3.25", "USD", -325),
        ("1234", "JPY", 1234),
        ("1.234", "KWD", 1234),
    ],
)
def test_parse_money(text, currency, minor):
    assert parse_money(text, currency) == minor


@pytest.mark.parametrize(
    ("text", "currency", "message"),
    [
        ("", "USD", "enter an amount"),
        ("   ", "USD", "enter an amount"),
        ("abc", "USD", "not an amount"),
        ("12.5.0", "USD", "not an amount"),
        ("1,23", "USD", "not an amount"),
        ("1,2345", "USD", "not an amount"),
        ("$12", "USD", "not an amount"),
        ("1e3", "USD", "not an amount"),
        (".", "USD", "not an amount"),
        ("١٢", "USD", "not an amount"),
        ("12.345", "USD", "USD allows at most 2 decimal places"),
        ("12.5", "JPY", "JPY allows no decimal places"),
        ("NaN", "USD", "not a finite amount"),
        ("Infinity", "USD", "not a finite amount"),
        ("-inf", "USD", "not a finite amount"),
    ],
)
def test_parse_money_errors(text, currency, message):
    with pytest.raises(InvalidAmount, match=message):
        parse_money(text, currency)


def test_invalid_amount_is_a_value_error():
    assert issubclass(InvalidAmount, ValueError)


@given(st.integers(min_value=0, max_value=10**12))
def test_parse_money_round_trips_formatted_amounts(minor):
    text = format_money(minor, "USD").removeprefix("$")
    assert parse_money(text, "USD") == minor


def test_money_arithmetic_and_comparison():
    a, b = Money(500, "USD"), Money(125, "usd")
    assert b.currency == "USD"
    assert a + b == Money(625, "USD")
    assert a - b == Money(375, "USD")
    assert -a == Money(-500, "USD")
    assert b < a and a > b and a >= a and b <= b
    assert str(a + b) == "$6.25"
    assert Money.zero("JPY") == Money(0, "JPY")
    assert Money.from_major(Decimal("0.005"), "USD") == Money(1, "USD")
    assert Money(1234, "USD").major == Decimal("12.34")


def test_money_refuses_mixed_currencies():
    usd, eur = Money(100, "USD"), Money(100, "EUR")
    with pytest.raises(CurrencyMismatch):
        usd + eur
    with pytest.raises(CurrencyMismatch):
        usd - eur
    with pytest.raises(CurrencyMismatch):
        usd < eur
    with pytest.raises(CurrencyMismatch):
        usd >= eur
    # Equality is just False so Money can sit in sets and dict keys.
    assert usd != eur


@pytest.mark.parametrize("bad", [1.5, True, Decimal("1")])
def test_money_amount_must_be_int(bad):
    with pytest.raises(TypeError):
        Money(bad, "USD")


def test_money_is_frozen():
    m = Money(1, "USD")
    with pytest.raises(AttributeError):
        m.amount = 2  # type: ignore[misc]
