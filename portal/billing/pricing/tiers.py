"""Tier tables (either numbering convention), validated, and the two models that price by them:
graduated (TIERED) and VOLUME."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .base import (
    _ZERO, Pricing, PriceResult, PricingConfigError, PricingModel, TierTableError, _line, _price, _quantity, _result,
    _show,
)


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
class Band:
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
    if all(hasattr(tier, name) for name in ("first_unit", "last_unit", "unit_price", "flat_fee")):
        return Tier(tier.first_unit, tier.last_unit, tier.unit_price, tier.flat_fee)  # a stored row
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
) -> tuple[tuple[Tier, ...], tuple[Band, ...]]:
    """Validate a tier table; return it with Decimal prices, and as 1-based inclusive bands."""
    if isinstance(tiers, (str, bytes, Mapping)):
        raise TierTableError("tiers must be a list of tiers")
    table = [_as_tier(t, i) for i, t in enumerate(tiers, start=1)]
    if not table:
        raise TierTableError("the tier table is empty: it needs at least one tier")
    zero_based = table[0].first_unit == 0
    clean: list[Tier] = []
    bands: list[Band] = []
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
        bands.append(Band(first + 1 if zero_based else first, last, unit_price, flat_fee))
    return tuple(clean), tuple(bands)


def bands(tiers: Iterable[Tier | Mapping[str, Any]]) -> tuple[Band, ...]:
    """A valid tier table as the units each tier covers, 1-based inclusive, whatever its numbering."""
    return _normalise_tiers(tiers)[1]


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
