"""Plans and features: creating them with validated limits and pricing."""
from __future__ import annotations

from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from portal.billing.features import FeatureType, RateWindow
from portal.billing.periods import IntervalUnit
from portal.billing.pricing import PricingConfigError, PricingModel, Tier, build_pricing
from portal.extensions import db
from portal.models import Feature, Plan, PlanFeature, PricingTier


#: Limits are stored as 32-bit integers.
MAX_LIMIT = 2_147_483_647


class CatalogError(ValueError):
    """An invalid plan or feature definition; the message says which part."""


def get_or_create_feature(code: str, name: str, type: FeatureType, unit_name: str = "unit", description: str = "") -> Feature:
    feature = db.session.scalar(sa.select(Feature).where(Feature.code == code))
    if feature is None:
        feature = Feature(code=code, name=name, type=type, unit_name=unit_name, description=description)
        db.session.add(feature)
        db.session.flush()
    return feature


def create_plan(
    code: str,
    name: str,
    *,
    price_amount: int,
    currency: str = "USD",
    interval_unit: IntervalUnit = IntervalUnit.MONTH,
    interval_count: int = 1,
    trial_days: int = 0,
    description: str = "",
    is_default: bool = False,
    is_public: bool = True,
    sort_order: int = 0,
) -> Plan:
    if price_amount < 0:
        raise CatalogError("a plan's price cannot be negative")
    if interval_count < 1:
        raise CatalogError("the billing interval must be at least 1")
    if is_default and db.session.scalar(sa.select(Plan.id).where(Plan.is_default.is_(True))) is not None:
        raise CatalogError("there is already a default plan")
    plan = Plan(
        code=code, name=name, description=description, price_amount=price_amount, currency=currency,
        interval_unit=interval_unit, interval_count=interval_count, trial_days=trial_days,
        is_default=is_default, is_public=is_public, sort_order=sort_order,
    )
    db.session.add(plan)
    db.session.flush()
    return plan


def grant(
    plan: Plan,
    feature: Feature,
    *,
    enabled: bool = True,
    limit: int | None = None,
    window: RateWindow | None = None,
    overage_allowed: bool = False,
    pricing_model: PricingModel | None = None,
    unit_price: Decimal | None = None,
    free_units: int = 0,
    package_size: int | None = None,
    package_price: Decimal | None = None,
    tiers: list[Tier] | None = None,
) -> PlanFeature:
    """Attach `feature` to `plan` with its limit and pricing, validated before anything is written."""
    _validate_grant(feature, limit, window, overage_allowed, pricing_model)
    if pricing_model is not None:
        params: dict[str, Any] = {}
        if pricing_model is PricingModel.FLAT:
            params = {"unit_price": unit_price, "free_units": free_units}
        elif pricing_model is PricingModel.PACKAGE:
            params = {"package_size": package_size, "package_price": package_price, "free_units": free_units}
        else:
            params = {"tiers": tiers or []}
        try:
            build_pricing(pricing_model, **params)
        except (PricingConfigError, TypeError, ValueError) as exc:
            raise CatalogError(f"{feature.name}: {exc}") from exc
    plan_feature = PlanFeature(
        plan=plan, feature=feature, enabled=enabled, limit=limit, window=window, overage_allowed=overage_allowed,
        pricing_model=pricing_model, unit_price=unit_price, free_units=free_units,
        package_size=package_size, package_price=package_price,
    )
    for position, tier in enumerate(tiers or [], start=1):
        plan_feature.tiers.append(
            PricingTier(position=position, first_unit=tier.first_unit, last_unit=tier.last_unit,
                        unit_price=Decimal(tier.unit_price), flat_fee=Decimal(tier.flat_fee))
        )
    db.session.add(plan_feature)
    db.session.flush()
    return plan_feature


def _validate_grant(feature: Feature, limit, window, overage_allowed, pricing_model) -> None:
    if limit is not None and limit < 0:
        raise CatalogError(f"{feature.name}: the limit cannot be negative")
    if limit is not None and limit > MAX_LIMIT:
        raise CatalogError(f"{feature.name}: the limit can be at most {MAX_LIMIT:,} (leave it empty for unlimited)")
    if feature.type is FeatureType.RATE and window is None:
        raise CatalogError(f"{feature.name}: a RATE feature needs a window (minute, hour or day)")
    if feature.type is not FeatureType.RATE and window is not None:
        raise CatalogError(f"{feature.name}: only RATE features have a window")
    if overage_allowed and (feature.type is not FeatureType.QUOTA or pricing_model is None):
        raise CatalogError(f"{feature.name}: overage needs a QUOTA feature and a pricing model")
    if feature.type is FeatureType.USAGE and pricing_model is None:
        raise CatalogError(f"{feature.name}: a USAGE feature needs a pricing model")
    if feature.type in (FeatureType.BOOLEAN, FeatureType.RATE) and pricing_model is not None:
        raise CatalogError(f"{feature.name}: {feature.type.value} features are not priced")
