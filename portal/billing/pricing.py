"""Pricing models: one small class per model, a registry, and validated tier tables.

Prices and fees are Decimals in MAJOR currency units (Decimal("0.0005") is a twentieth of a
cent). A model returns the exact, unrounded total plus a breakdown for the invoice line;
rounding to minor units happens once, in ``PriceResult.amount_minor``.

Breakdown lines list only what is charged: a quantity of zero (or one that stays within the
free units) gives a zero total and no lines. Every line satisfies
``amount == units * unit_price + flat_fee`` and the total is exactly the sum of the lines.
"""

from __future__ import annotations

import decimal
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from typing import Any, ClassVar

from .money import to_minor

__all__ = [
    "BreakdownLine",
    "FlatPricing",
    "PackagePricing",
    "PriceResult",
    "Pricing",
    "PricingConfigError",
    "PricingModel",
    "PRICING_MODELS",
    "Tier",
    "TierTableError",
    "TieredPricing",
    "VolumePricing",
    "build_pricing",
    "validate_tiers",
]

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


class FlatPricing(Pricing):
    """A flat price per unit, optionally only for units beyond ``free_units``."""

    model = PricingModel.FLAT
    params = frozenset({"unit_price", "free_units"})
    required = frozenset({"unit_price"})

    def __init__(self, unit_price: Decimal | int | str, free_units: int = 0) -> None:
        self.unit_price = _price(unit_price, "unit_price")
        self.free_units = _count(free_units, "free_units", 0)

    def price(self, quantity: int) -> PriceResult:
        """Charge max(0, quantity - free_units) x unit_price."""
        billable = max(0, _quantity(quantity) - self.free_units)
        if billable == 0:
            return _result(())
        label = f"{billable:,} units"
        if self.free_units:
            label += f" beyond {self.free_units:,} free"
        return _result([_line(f"{label} × {_show(self.unit_price)}", billable, self.unit_price)])

    def to_config(self) -> dict[str, Any]:
        """JSON-friendly params."""
        return {"unit_price": str(self.unit_price), "free_units": self.free_units}


@dataclass(frozen=True)
class Tier:
    """One row of a tier table, as configured (either numbering convention).

    1-based inclusive: [1, 100], [101, 300], [301, None].
    0-based boundaries: [0, 100], [100, 300], [300, None] -- covers units (first, last].
    Only the last tier is open-ended (last_unit None).
    """

    first_unit: int
    last_unit: int | None
    unit_price: Decimal
    flat_fee: Decimal = _ZERO

    def to_config(self) -> dict[str, Any]:
        """JSON-friendly form of this tier."""
        return {
            "first_unit": self.first_unit,
            "last_unit": self.last_unit,
            "unit_price": str(self.unit_price),
            "flat_fee": str(self.flat_fee),
        }


@dataclass(frozen=True)
class _Band:
    """A tier normalised to the units it covers, 1-based inclusive (last None = unbounded)."""

    first: int
    last: int | None
    unit_price: Decimal
    flat_fee: Decimal

    def label(self) -> str:
        return f"units {self.first:,}+" if self.last is None else f"units {self.first:,}–{self.last:,}"


def _as_tier(tier: Tier | Mapping[str, Any], position: int) -> Tier:
    if isinstance(tier, Tier):
        return tier
    if isinstance(tier, Mapping):
        unknown = set(tier) - {"first_unit", "last_unit", "unit_price", "flat_fee"}
        missing = {"first_unit", "last_unit", "unit_price"} - set(tier)
        if unknown or missing:
            problems = [f"unknown {sorted(unknown)}"] if unknown else []
            problems += [f"missing {sorted(missing)}"] if missing else []
            raise TierTableError(f"tier {position}: {' and '.join(problems)} keys")
        return Tier(**tier)
    raise TierTableError(f"tier {position}: expected a Tier or a mapping, not {type(tier).__name__}")


def _normalise_tiers(
    tiers: Iterable[Tier | Mapping[str, Any]],
) -> tuple[tuple[Tier, ...], tuple[_Band, ...]]:
    """Validate a tier table; return it with Decimal prices, and as 1-based inclusive bands."""
    if isinstance(tiers, (str, bytes, Mapping)):
        raise TierTableError("tiers must be a list of tiers")
    table = [_as_tier(t, i) for i, t in enumerate(tiers, start=1)]
    if not table:
        raise TierTableError("the tier table is empty: it needs at least one tier")
    zero_based = table[0].first_unit == 0
    clean: list[Tier] = []
    bands: list[_Band] = []
    for position, tier in enumerate(table, start=1):
        where = f"tier {position}"
        try:
            unit_price = _price(tier.unit_price, "unit_price")
            flat_fee = _price(tier.flat_fee, "flat_fee")
        except PricingConfigError as exc:
            raise TierTableError(f"{where}: {exc}") from None
        first, last = tier.first_unit, tier.last_unit
        if isinstance(first, bool) or not isinstance(first, int):
            raise TierTableError(f"{where}: first_unit must be an int, not {type(first).__name__}")
        if last is not None and (isinstance(last, bool) or not isinstance(last, int)):
            raise TierTableError(f"{where}: last_unit must be an int or None, not {type(last).__name__}")
        if position == 1:
            if first not in (0, 1):
                raise TierTableError(f"{where}: the first tier must start at 0 or 1, not {first}")
        else:
            # The previous tier has a last_unit: an open-ended one was refused on its turn.
            prev_last: int = bands[-1].last  # type: ignore[assignment]
            expected = prev_last if zero_based else prev_last + 1
            if first > expected:
                uncovered_to = first if zero_based else first - 1
                uncovered = (
                    f"unit {uncovered_to:,}" if uncovered_to == prev_last + 1
                    else f"units {prev_last + 1:,}–{uncovered_to:,}"
                )
                raise TierTableError(
                    f"{where}: gap after tier {position - 1}: it must start at {expected}, not {first}"
                    f" ({uncovered} would have no price)"
                )
            if first < expected:
                raise TierTableError(
                    f"{where}: overlaps tier {position - 1}: it must start at {expected}, not {first}"
                )
        if last is None:
            if position != len(table):
                raise TierTableError(f"{where}: only the last tier may be open-ended (last_unit None)")
        else:
            if zero_based and last <= first:
                raise TierTableError(f"{where}: last_unit {last} must be greater than first_unit {first}")
            if not zero_based and last < first:
                raise TierTableError(f"{where}: last_unit {last} must not be below first_unit {first}")
            if position == len(table):
                raise TierTableError(
                    f"{where}: the last tier must be open-ended (last_unit None)"
                    " so every quantity has a price"
                )
        clean.append(Tier(first, last, unit_price, flat_fee))
        # (first, last] in the 0-based convention is units first+1..last.
        bands.append(_Band(first + 1 if zero_based else first, last, unit_price, flat_fee))
    return tuple(clean), tuple(bands)


def validate_tiers(tiers: Iterable[Tier | Mapping[str, Any]]) -> None:
    """Raise TierTableError, naming the bad tier by 1-based position, if the table is invalid."""
    _normalise_tiers(tiers)


class _TierPricing(Pricing):
    params = frozenset({"tiers"})
    required = frozenset({"tiers"})

    def __init__(self, tiers: Iterable[Tier | Mapping[str, Any]]) -> None:
        self.tiers, self._bands = _normalise_tiers(tiers)

    def to_config(self) -> dict[str, Any]:
        """JSON-friendly params."""
        return {"tiers": [t.to_config() for t in self.tiers]}


class TieredPricing(_TierPricing):
    """Graduated pricing: each tier's units at that tier's price, plus its flat fee if touched."""

    model = PricingModel.TIERED

    def price(self, quantity: int) -> PriceResult:
        """One breakdown line per tier that at least one unit reaches."""
        quantity = _quantity(quantity)
        lines = []
        for band in self._bands:
            if quantity < band.first:
                break
            top = quantity if band.last is None else min(quantity, band.last)
            units = top - band.first + 1
            fee = f" + {_show(band.flat_fee)} flat fee" if band.flat_fee else ""
            description = f"Units {band.first:,}–{top:,} × {_show(band.unit_price)}{fee}"
            lines.append(_line(description, units, band.unit_price, band.flat_fee))
        return _result(lines)


class VolumePricing(_TierPricing):
    """Volume pricing: all units at the price of the tier the total quantity reaches."""

    model = PricingModel.VOLUME

    def price(self, quantity: int) -> PriceResult:
        """One breakdown line; a quantity of 0 reaches no tier and costs nothing (no lines)."""
        quantity = _quantity(quantity)
        if quantity == 0:
            return _result(())
        band = next(b for b in self._bands if b.last is None or quantity <= b.last)
        fee = f" + {_show(band.flat_fee)} flat fee" if band.flat_fee else ""
        description = f"{quantity:,} units × {_show(band.unit_price)} ({band.label()} tier){fee}"
        return _result([_line(description, quantity, band.unit_price, band.flat_fee)])


class PackagePricing(Pricing):
    """A price per started package of ``package_size`` units beyond ``free_units``."""

    model = PricingModel.PACKAGE
    params = frozenset({"package_size", "package_price", "free_units"})
    required = frozenset({"package_size", "package_price"})

    def __init__(self, package_size: int, package_price: Decimal | int | str, free_units: int = 0) -> None:
        self.package_size = _count(package_size, "package_size", 1)
        self.package_price = _price(package_price, "package_price")
        self.free_units = _count(free_units, "free_units", 0)

    def packages_for(self, quantity: int) -> int:
        """Number of packages needed for ``quantity`` units (partial packages round up)."""
        billable = max(0, _quantity(quantity) - self.free_units)
        return -(-billable // self.package_size)

    def price(self, quantity: int) -> PriceResult:
        """One line whose units are packages and whose unit price is the package price."""
        packages = self.packages_for(quantity)
        if packages == 0:
            return _result(())
        billable = quantity - self.free_units
        plural = "package" if packages == 1 else "packages"
        description = (
            f"{packages:,} {plural} of {self.package_size:,} units × {_show(self.package_price)}"
            f" ({billable:,} units{f' beyond {self.free_units:,} free' if self.free_units else ''})"
        )
        return _result([_line(description, packages, self.package_price)])

    def to_config(self) -> dict[str, Any]:
        """JSON-friendly params."""
        return {
            "package_size": self.package_size,
            "package_price": str(self.package_price),
            "free_units": self.free_units,
        }


PRICING_MODELS: dict[PricingModel, type[Pricing]] = {
    PricingModel.FLAT: FlatPricing,
    PricingModel.TIERED: TieredPricing,
    PricingModel.VOLUME: VolumePricing,
    PricingModel.PACKAGE: PackagePricing,
}


def build_pricing(model: PricingModel | str, **params: Any) -> Pricing:
    """Build a pricing model from stored config (tiers may be Tier objects or dicts)."""
    try:
        key = PricingModel(model)
    except ValueError:
        known = ", ".join(m.value for m in PricingModel)
        raise PricingConfigError(f"unknown pricing model {model!r}; expected one of {known}") from None
    cls = PRICING_MODELS[key]
    unknown = sorted(set(params) - cls.params)
    if unknown:
        raise PricingConfigError(f"{key.value} pricing does not take {', '.join(unknown)}")
    missing = sorted(cls.required - set(params))
    if missing:
        raise PricingConfigError(f"{key.value} pricing needs {', '.join(missing)}")
    return cls(**params)
