"""The pricing vocabulary every model shares: errors, exact Decimal coercion, breakdown lines,
the result and the base class. Prices and fees are Decimals in MAJOR units (see the package doc)."""

from __future__ import annotations

import decimal
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from typing import Any, ClassVar

from ..money import to_minor

# Money arithmetic must never round silently: a wide precision plus a trap on Inexact turns
# any lost digit into a loud error instead of a wrong invoice.
_EXACT = decimal.Context(
    prec=200, traps=[decimal.Inexact, decimal.InvalidOperation, decimal.Overflow]
)
_ZERO = Decimal(0)


class PricingConfigError(ValueError):
    """A pricing model was configured with invalid parameters."""


class TierTableError(PricingConfigError):
    """A tier table is invalid; the message names the offending tier (1-based)."""


def _price(value: object, what: str) -> Decimal:
    """Coerce a price or fee (Decimal, int or numeric str) to a finite, non-negative Decimal."""
    if isinstance(value, bool) or isinstance(value, float):
        raise PricingConfigError(
            f"{what} must be a Decimal, int or str, not {type(value).__name__} "
            "(floats cannot hold money exactly)"
        )
    if isinstance(value, (int, str)):
        try:
            value = Decimal(value.strip() if isinstance(value, str) else value)
        except decimal.InvalidOperation:
            raise PricingConfigError(f"{what} {value!r} is not a number") from None
    if not isinstance(value, Decimal):
        raise PricingConfigError(f"{what} must be a Decimal, int or str, not {type(value).__name__}")
    if not value.is_finite():
        raise PricingConfigError(f"{what} must be a finite number, got {value}")
    if value < 0:
        raise PricingConfigError(f"{what} must be >= 0, got {value}")
    return value


def _count(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PricingConfigError(f"{what} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise PricingConfigError(f"{what} must be >= {minimum}, got {value}")
    return value


def _quantity(quantity: object) -> int:
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        raise ValueError(f"quantity must be an int, not {type(quantity).__name__}")
    if quantity < 0:
        raise ValueError(f"quantity must be >= 0, got {quantity}")
    return quantity


def _show(value: Decimal) -> str:
    """Human-readable price: at least two decimals, more only when the price has them."""
    if value.as_tuple().exponent >= -2:  # type: ignore[operator]
        value = value.quantize(Decimal("0.01"), context=_EXACT)
    return f"{value:,f}"


@dataclass(frozen=True)
class BreakdownLine:
    """One line of a price breakdown: ``amount == units * unit_price + flat_fee``."""

    description: str
    units: int
    unit_price: Decimal
    flat_fee: Decimal
    amount: Decimal


@dataclass(frozen=True)
class PriceResult:
    """An exact, unrounded total in major units and the lines it is made of."""

    total: Decimal
    lines: tuple[BreakdownLine, ...]

    def amount_minor(self, currency: str) -> int:
        """The total in minor units of ``currency``, rounded half-up once."""
        return to_minor(self.total, currency)


def _line(
    description: str, units: int, unit_price: Decimal, flat_fee: Decimal = _ZERO
) -> BreakdownLine:
    amount = _EXACT.add(_EXACT.multiply(Decimal(units), unit_price), flat_fee)
    return BreakdownLine(description, units, unit_price, flat_fee, amount)


def _result(lines: Iterable[BreakdownLine]) -> PriceResult:
    lines = tuple(lines)
    total = _ZERO
    for line in lines:
        total = _EXACT.add(total, line.amount)
    return PriceResult(total, lines)


class Pricing(ABC):
    """A pricing model: turns a quantity of units into an exact price with a breakdown."""

    model: ClassVar[PricingModel]
    params: ClassVar[frozenset[str]]
    required: ClassVar[frozenset[str]]

    @abstractmethod
    def price(self, quantity: int) -> PriceResult:
        """Price ``quantity`` units (an int >= 0)."""

    @abstractmethod
    def to_config(self) -> dict[str, Any]:
        """JSON-friendly params (Decimals as str) that ``build_pricing`` turns back into a model."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Pricing) or type(other) is not type(self):
            return NotImplemented
        return self.to_config() == other.to_config()

    def __hash__(self) -> int:
        return hash((type(self), repr(self.to_config())))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_config().items())
        return f"{type(self).__name__}({args})"


class PricingModel(str, Enum):
    """The stored name of a pricing model."""

    FLAT = "flat"
    TIERED = "tiered"
    VOLUME = "volume"
    PACKAGE = "package"
