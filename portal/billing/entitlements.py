"""What a plan grants of a feature, and whether a use fits it: the usage decision, pure (DESIGN §3.6).

The entitlement is a handful of frozen values, one class per table it is read from. Their field
names are the columns' names, and the usage service builds its SELECT list from these fields, so a
new column is one new field here. The database enforces a limit (the conditional increment of
the counter); `decide` turns what the counter says into the answer the API and pages give.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from portal.billing.features import FeatureType, RateWindow
from portal.billing.periods import IntervalUnit, Period, period_at, window_bounds
from portal.billing.pricing import Pricing, PricingModel, build_pricing

__all__ = [
    "Entitlement", "FeatureValues", "PlanFeatureValues", "PlanValues", "SubscriptionValues", "UsageResult",
    "counter_window", "decide", "plan_refusal", "pricing_of", "unbounded",
]

#: Without a live subscription, counters run by calendar month from this anchor, so limits still reset.
_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class FeatureValues:
    id: int
    code: str
    name: str
    type: FeatureType
    unit_name: str


@dataclass(frozen=True)
class PlanValues:
    id: int
    code: str
    name: str
    currency: str


@dataclass(frozen=True)
class SubscriptionValues:
    id: int
    current_period_start: datetime
    current_period_end: datetime


@dataclass(frozen=True)
class PlanFeatureValues:
    id: int
    enabled: bool
    limit: int | None
    window: RateWindow | None
    overage_allowed: bool
    pricing_model: PricingModel | None
    unit_price: Decimal | None
    free_units: int
    package_size: int | None
    package_price: Decimal | None


def counter_window(feature_type: FeatureType, rate_window: RateWindow | None,
                   period: tuple[datetime, datetime] | None, at: datetime) -> Period:
    """The window a feature's counter covers at `at`: the rate window for RATE features, else the
    billing period (calendar months when there is no live period). A period that has ended keeps
    counting until its renewal runs, so use in those minutes is billed with the period it closes."""
    if feature_type is FeatureType.RATE:
        return window_bounds(rate_window, at)
    if period is not None and period[0] <= at:
        return Period(*period)
    return period_at(_EPOCH, IntervalUnit.MONTH, 1, at)[1]


@dataclass(frozen=True)
class Entitlement:
    """What the customer's current plan grants of one feature (plan_feature None: not in the plan)."""

    feature: FeatureValues
    plan: PlanValues
    plan_feature: PlanFeatureValues | None
    subscription: SubscriptionValues | None

    @property
    def enabled(self) -> bool:
        return self.plan_feature is not None and self.plan_feature.enabled

    @property
    def limit(self) -> int | None:
        return None if self.plan_feature is None else self.plan_feature.limit

    def window(self, at: datetime) -> Period:
        """The counter window: the billing period, or the rate window for RATE features."""
        sub = self.subscription
        period = None if sub is None else (sub.current_period_start, sub.current_period_end)
        return counter_window(self.feature.type, self.plan_feature.window if self.plan_feature else None, period, at)


def pricing_of(plan_feature: Any, tiers: Sequence[Any] = ()) -> Pricing | None:
    """The pricing model a plan feature (stored row or values) configures, or None when it is not priced.

    `tiers`: its tier table (rows with first_unit, last_unit, unit_price, flat_fee), for TIERED
    and VOLUME.
    """
    if plan_feature is None or plan_feature.pricing_model is None:
        return None
    model = plan_feature.pricing_model
    if model is PricingModel.FLAT:
        return build_pricing(model, unit_price=plan_feature.unit_price, free_units=plan_feature.free_units)
    if model is PricingModel.PACKAGE:
        return build_pricing(model, package_size=plan_feature.package_size, package_price=plan_feature.package_price,
                             free_units=plan_feature.free_units)
    return build_pricing(model, tiers=list(tiers))


@dataclass
class UsageResult:
    allowed: bool
    feature: str
    type: FeatureType
    quantity: int
    used: int | None = None
    limit: int | None = None
    remaining: int | None = None
    resets_at: datetime | None = None
    retry_after: int | None = None
    cost: int | None = None  #: USAGE: cost so far this period, minor units
    currency: str | None = None
    code: str | None = None  #: why it was refused
    message: str = ""
    event_id: int | None = None
    replayed: bool = False
    extra: dict = field(default_factory=dict)


def plan_refusal(ent: Entitlement, quantity: int) -> UsageResult | None:
    """The refusal when the plan does not include the feature at all, else None."""
    if ent.enabled:
        return None
    return UsageResult(
        allowed=False, feature=ent.feature.code, type=ent.feature.type, quantity=quantity,
        code="feature_not_in_plan", message=f"{ent.feature.name} is not included in the {ent.plan.name} plan",
    )


def unbounded(ent: Entitlement) -> bool:
    """Counted but never refused: unlimited limits, USAGE and BOOLEAN features, priced overage."""
    if ent.feature.type in (FeatureType.USAGE, FeatureType.BOOLEAN) or ent.limit is None:
        return True
    return ent.feature.type is FeatureType.QUOTA and ent.plan_feature.overage_allowed


def decide(ent: Entitlement, quantity: int, used: int, bonus: int, window: Period, at: datetime, *,
           would_add: bool, pricing: Pricing | None = None) -> UsageResult:
    """The answer for `quantity` units, given the window's counter (`used` so far, prepaid `bonus`).

    `would_add`: `used` does not include the quantity yet (a check, or a refused record).
    `pricing`: the feature's pricing, for a USAGE feature's cost so far.
    """
    limit = None if ent.feature.type in (FeatureType.USAGE, FeatureType.BOOLEAN) else ent.limit
    allowance = None if limit is None else limit + bonus
    projected = used + quantity if would_add else used
    allowed = unbounded(ent) or projected <= allowance
    result = UsageResult(
        allowed=allowed, feature=ent.feature.code, type=ent.feature.type, quantity=quantity, used=used,
        limit=allowance, remaining=None if allowance is None else max(allowance - used, 0), resets_at=window.end,
    )
    if ent.feature.type is FeatureType.USAGE:
        result.currency = ent.plan.currency
        result.cost = pricing.price(used).amount_minor(ent.plan.currency) if pricing else 0
    if not allowed:
        unit = ent.feature.unit_name
        if ent.feature.type is FeatureType.RATE:
            result.code = "rate_limited"
            result.retry_after = max(1, math.ceil((window.end - at) / timedelta(seconds=1)))
            result.message = (
                f"{ent.feature.name}: {allowance} {unit}s per {ent.plan_feature.window.value} used up; "
                f"try again in {result.retry_after} s"
            )
        else:
            result.code = "quota_exceeded"
            result.message = (
                f"{ent.feature.name}: {used} of {allowance} {unit}s used this period; "
                f"{quantity} more would pass the limit"
            )
    return result
