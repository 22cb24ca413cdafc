"""Money as an integer count of minor units plus an ISO 4217 currency code.

Unit prices may be fractional Decimals; an amount becomes money exactly once, through
``to_minor`` (half-up to the minor unit). Floats are refused everywhere: they cannot hold
0.1 exactly, and a silently wrong cent is the worst kind of billing bug.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from babel.numbers import format_currency, get_currency_precision, is_currency

__all__ = [
    "CurrencyMismatch",
    "InvalidAmount",
    "Money",
    "UnknownCurrency",
    "format_money",
    "from_minor",
    "minor_exponent",
    "normalize_currency",
    "parse_money",
    "round_half_up",
    "to_minor",
]


class UnknownCurrency(ValueError):
    """The currency code is not an ISO 4217 code babel knows."""


class InvalidAmount(ValueError):
    """A typed amount could not be read as money in the given currency."""


class CurrencyMismatch(ValueError):
    """Two amounts in different currencies were combined or compared."""


def normalize_currency(currency: str) -> str:
    """Return the upper-case ISO 4217 code, or raise UnknownCurrency."""
    if not isinstance(currency, str):
        raise TypeError(f"currency must be a str, not {type(currency).__name__}")
    code = currency.strip().upper()
    # babel answers precision 2 for any unknown code, so check the code really exists.
    if not is_currency(code):
        raise UnknownCurrency(f"unknown currency code {currency!r}")
    return code


def minor_exponent(currency: str) -> int:
    """Number of decimal places of the currency's minor unit (USD 2, JPY 0, KWD 3)."""
    return get_currency_precision(normalize_currency(currency))


def _exact_fraction(value: Fraction | Decimal | int, what: str) -> Fraction:
    # bool is an int subclass; True dollars is never meant.
    if isinstance(value, bool) or isinstance(value, float):
        raise TypeError(f"{what} must be a Decimal or int, not {type(value).__name__}")
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{what} must be finite, got {value}")
        return Fraction(value)  # exact: a Decimal is a finite binary-free fraction
    if isinstance(value, (Fraction, int)):
        return Fraction(value)
    raise TypeError(f"{what} must be a Decimal, Fraction or int, not {type(value).__name__}")


def round_half_up(value: Fraction | Decimal | int) -> int:
    """Round to the nearest integer, halves away from zero (Decimal's ROUND_HALF_UP)."""
    exact = _exact_fraction(value, "value")
    magnitude = abs(exact)
    rounded = (magnitude.numerator * 2 + magnitude.denominator) // (magnitude.denominator * 2)
    return -rounded if exact < 0 else rounded


def to_minor(amount: Decimal | int, currency: str) -> int:
    """Convert a major-unit amount to minor units: the one rounding rule (half-up)."""
    exact = _exact_fraction(amount, "amount")
    return round_half_up(exact * 10 ** minor_exponent(currency))


def from_minor(minor: int, currency: str) -> Decimal:
    """Convert minor units to an exact major-unit Decimal (1234 USD -> Decimal('12.34'))."""
    _require_int(minor, "minor")
    exponent = minor_exponent(currency)
    # Built from a string so the result is exact whatever the context precision.
    return Decimal(f"{minor}e-{exponent}") if exponent else Decimal(minor)


def format_money(minor: int, currency: str, locale: str = "en_US") -> str:
    """Format minor units for people, e.g. 123456 USD -> '$1,234.56'."""
    code = normalize_currency(currency)
    return format_currency(from_minor(minor, code), code, locale=locale)


_AMOUNT_RE = re.compile(
    r"""
    (?P<sign>[+-]?)
    (?P<whole>[0-9]{1,3}(?:,[0-9]{3})+|[0-9]*)   # thousands commas only in proper groups
    (?:\.(?P<frac>[0-9]*))?
    """,
    re.VERBOSE,
)
_NON_FINITE = {"nan", "snan", "inf", "infinity"}


def parse_money(text: str, currency: str) -> int:
    """Parse a typed amount such as '12.50' or '1,234.5' into minor units.

    Commas are accepted only as thousands separators in groups of three, so a European
    '1,23' is refused rather than read as 123. Trailing zeros beyond the currency's
    precision are fine ('12.500' USD); significant extra digits are refused.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, not {type(text).__name__}")
    code = normalize_currency(currency)
    cleaned = text.strip()
    if not cleaned:
        raise InvalidAmount("enter an amount")
    if cleaned.lstrip("+-").lower() in _NON_FINITE:
        raise InvalidAmount(f"{text.strip()!r} is not a finite amount")
    match = _AMOUNT_RE.fullmatch(cleaned)
    if match is None or not (match["whole"] or match["frac"]):
        raise InvalidAmount(f"{text.strip()!r} is not an amount; type digits like 12.50")
    frac = match["frac"] or ""
    exponent = minor_exponent(code)
    if len(frac.rstrip("0")) > exponent:
        allowed = "no decimal places" if exponent == 0 else f"at most {exponent} decimal places"
        raise InvalidAmount(f"{text.strip()!r} has too many decimals: {code} allows {allowed}")
    amount = Decimal(f"{match['sign']}{match['whole'].replace(',', '') or '0'}.{frac or '0'}")
    return to_minor(amount, code)


def _require_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int count of minor units, not {type(value).__name__}")
    return value


@dataclass(frozen=True)
class Money:
    """An amount in integer minor units of one currency; arithmetic refuses to mix currencies.

    Equality between different currencies is simply False (so Money can live in sets and
    dicts); ordering and arithmetic across currencies raise CurrencyMismatch.
    """

    amount: int
    currency: str

    def __post_init__(self) -> None:
        _require_int(self.amount, "amount")
        object.__setattr__(self, "currency", normalize_currency(self.currency))

    @classmethod
    def zero(cls, currency: str) -> Money:
        """Zero in the given currency."""
        return cls(0, currency)

    @classmethod
    def from_major(cls, amount: Decimal | int, currency: str) -> Money:
        """Build from a major-unit amount, rounding half-up once."""
        return cls(to_minor(amount, currency), currency)

    @property
    def major(self) -> Decimal:
        """The exact amount in major units."""
        return from_minor(self.amount, self.currency)

    def _same(self, other: object) -> Money:
        if not isinstance(other, Money):
            raise TypeError(f"cannot combine Money with {type(other).__name__}")
        if other.currency != self.currency:
            raise CurrencyMismatch(f"cannot combine {self.currency} with {other.currency}")
        return other

    def __add__(self, other: Money) -> Money:
        return Money(self.amount + self._same(other).amount, self.currency)

    def __sub__(self, other: Money) -> Money:
        return Money(self.amount - self._same(other).amount, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount, self.currency)

    def __lt__(self, other: Money) -> bool:
        return self.amount < self._same(other).amount

    def __le__(self, other: Money) -> bool:
        return self.amount <= self._same(other).amount

    def __gt__(self, other: Money) -> bool:
        return self.amount > self._same(other).amount

    def __ge__(self, other: Money) -> bool:
        return self.amount >= self._same(other).amount

    def __str__(self) -> str:
        return format_money(self.amount, self.currency)
