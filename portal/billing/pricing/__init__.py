"""Pricing models: one small class per model, a registry, and validated tier tables.

Prices and fees are Decimals in MAJOR currency units (Decimal("0.0005") is a twentieth of a
cent). A model returns the exact, unrounded total plus a breakdown for the invoice line;
rounding to minor units happens once, in ``PriceResult.amount_minor``.

Breakdown lines list only what is charged: a quantity of zero (or one that stays within the
free units) gives a zero total and no lines. Every line satisfies
``amount == units * unit_price + flat_fee`` and the total is exactly the sum of the lines.
"""

from .base import BreakdownLine, PriceResult, Pricing, PricingConfigError, PricingModel, TierTableError
from .models import PRICING_MODELS, FlatPricing, PackagePricing, build_pricing
from .tiers import Band, Tier, TieredPricing, VolumePricing, bands, validate_tiers

__all__ = [
    "Band",
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
    "bands",
    "build_pricing",
    "validate_tiers",
]
