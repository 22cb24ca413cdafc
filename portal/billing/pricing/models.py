"""The models that need no tier table, FLAT and PACKAGE, and the registry that builds any model
from its stored configuration."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from .base import (
    Pricing, PriceResult, PricingConfigError, PricingModel, _count, _line, _price, _quantity, _result, _show,
)
from .tiers import TieredPricing, VolumePricing


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
