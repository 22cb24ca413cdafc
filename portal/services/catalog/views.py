"""The plans page's read side: public plans as cards in words, and the price calculator. Writes nothing."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction

import sqlalchemy as sa
from sqlalchemy.orm import selectinload

from portal import display
from portal.billing.estimate import Allowance, PlanEstimate, PlanTerms, estimate_plan
from portal.billing.features import FeatureType
from portal.billing.pricing import PricingModel, bands
from portal.extensions import db
from portal.models import Plan, PlanFeature
from portal.services.subscriptions.changes import daily_rate
from portal.services.usage import pricing_for


@dataclass(frozen=True)
class TierRow:
    units: str
    price: str
    flat_fee: str | None


@dataclass(frozen=True)
class FeatureTerm:
    """One line of a plan card: what the plan grants of a feature, in words."""

    code: str
    name: str
    kind: str  #: the feature type in words ("Quota, resets every period", "Rate limit", ...)
    summary: str  #: "3 per month", "Unlimited", "Included", "$0.0005 per email after 1,000 free"
    enabled: bool = True
    note: str = ""  #: overage or top-up price
    tier_model: str = ""  #: "Graduated" or "Volume" when there is a tier table
    tiers: tuple[TierRow, ...] = ()


@dataclass(frozen=True)
class PlanCard:
    plan: Plan
    price: str
    period: str
    trial: str | None
    features: tuple[FeatureTerm, ...]
    terms: PlanTerms
    daily_rate: Fraction


_KIND = {
    FeatureType.QUOTA: "Quota, resets every period",
    FeatureType.RATE: "Rate limit",
    FeatureType.BOOLEAN: "On/off",
    FeatureType.USAGE: "Billed by use, at period end",
}


def _period(plan: Plan) -> str:
    return display.interval(plan.interval_unit.value, plan.interval_count)


def _price(plan: Plan) -> str:
    return display.price_per_period(plan.price_amount, plan.currency, plan.interval_unit.value, plan.interval_count)


def public_plans() -> list[Plan]:
    """Every public, non-archived plan with its features and tiers, in catalogue order."""
    return list(db.session.scalars(
        sa.select(Plan).where(Plan.is_public.is_(True), Plan.is_archived.is_(False))
        .options(selectinload(Plan.features).selectinload(PlanFeature.tiers))
        .order_by(Plan.sort_order, Plan.id)
    ))


def public_plan(code: str) -> Plan | None:
    """A plan customers may switch to, by code (None for unknown, hidden or archived plans)."""
    return db.session.scalar(
        sa.select(Plan).where(Plan.code == code, Plan.is_public.is_(True), Plan.is_archived.is_(False))
    )


def _tiers(pf: PlanFeature, currency: str) -> tuple[TierRow, ...]:
    rows = []
    for band in bands(pf.tiers) if pf.tiers else ():
        price = "Free" if band.unit_price == 0 else f"{display.unit_money(band.unit_price, currency)} each"
        fee = display.unit_money(band.flat_fee, currency) if band.flat_fee else None
        rows.append(TierRow(display.tier_span(band), price, fee))
    return tuple(rows)


def pricing_phrase(pf: PlanFeature, currency: str) -> str:
    """The price of a plan feature's priced use in words ("500 SMS for $20.00")."""
    unit = pf.feature.unit_name or "unit"
    free = f" after {pf.free_units:,} free" if pf.free_units else ""
    if pf.pricing_model is PricingModel.FLAT:
        return f"{display.unit_money(pf.unit_price, currency)} per {unit}{free}"
    if pf.pricing_model is PricingModel.PACKAGE:
        return f"{display.units(pf.package_size, unit)} for {display.unit_money(pf.package_price, currency)}{free}"
    if pf.pricing_model is PricingModel.TIERED:
        return "Graduated: each tier's units at its price"
    if pf.pricing_model is PricingModel.VOLUME:
        return "Volume: every unit at the price of the tier reached"
    return ""


def feature_term(pf: PlanFeature, plan: Plan) -> FeatureTerm:
    feature, currency = pf.feature, plan.currency
    kind = _KIND[feature.type]
    if feature.type is FeatureType.BOOLEAN:
        return FeatureTerm(feature.code, feature.name, kind, "Included" if pf.enabled else "Not included", pf.enabled)
    if not pf.enabled:
        return FeatureTerm(feature.code, feature.name, kind, "Not included", False)
    if feature.type is FeatureType.USAGE:
        model = pf.pricing_model
        tiered = model in (PricingModel.TIERED, PricingModel.VOLUME)
        return FeatureTerm(
            feature.code, feature.name, kind, pricing_phrase(pf, currency),
            tier_model=("Graduated" if model is PricingModel.TIERED else "Volume") if tiered else "",
            tiers=_tiers(pf, currency) if tiered else (),
        )
    if feature.type is FeatureType.RATE:
        summary = "Unlimited" if pf.limit is None else f"{pf.limit:,} per {pf.window.value}"
        return FeatureTerm(feature.code, feature.name, kind, summary)
    summary = "Unlimited" if pf.limit is None else f"{pf.limit:,} per {_period(plan)}"
    note = ""
    if pf.pricing_model is not None and pf.limit is not None:
        price = pricing_phrase(pf, currency)
        note = f"then {price} (overage)" if pf.overage_allowed else f"top up: {price}"
    tiers = _tiers(pf, currency) if pf.pricing_model in (PricingModel.TIERED, PricingModel.VOLUME) else ()
    return FeatureTerm(feature.code, feature.name, kind, summary, note=note, tiers=tiers)


def plan_terms(plan: Plan) -> PlanTerms:
    """The pure pricing view of a plan, for the estimator."""
    allowances = []
    for pf in plan.features:
        feature = pf.feature
        pricing = pricing_for(pf) if pf.enabled else None
        if feature.type is FeatureType.USAGE:
            kind, included = "usage", 0
        elif feature.type is FeatureType.QUOTA:
            kind = "overage" if pf.overage_allowed else "package"
            included = pf.limit
            if included is None:  # unlimited: nothing to price
                pricing = None
        else:
            kind, included, pricing = "usage", pf.limit, None
        allowances.append(Allowance(feature.code, feature.name, feature.unit_name, pf.enabled, included, pricing, kind))
    return PlanTerms(plan.code, plan.name, plan.price_amount, plan.currency, _period(plan), tuple(allowances))


def plan_cards(plans: Iterable[Plan]) -> list[PlanCard]:
    cards = []
    for plan in plans:
        trial = f"{plan.trial_days}-day free trial" if plan.trial_days else None
        features = tuple(feature_term(pf, plan) for pf in plan.features)
        cards.append(PlanCard(plan, _price(plan), _period(plan), trial, features, plan_terms(plan),
                              daily_rate(plan)))
    return cards


@dataclass(frozen=True)
class CalculatorInput:
    """A field of the price calculator: one feature some plan prices."""

    code: str
    name: str
    unit: str


def calculator_inputs(cards: Iterable[PlanCard]) -> list[CalculatorInput]:
    """Every feature that at least one plan prices, in order of first appearance."""
    seen: dict[str, CalculatorInput] = {}
    for card in cards:
        for allowance in card.terms.allowances:
            if allowance.enabled and allowance.pricing is not None and allowance.code not in seen:
                seen[allowance.code] = CalculatorInput(allowance.code, allowance.name, display.plural(allowance.unit))
    return list(seen.values())


def estimates(cards: Iterable[PlanCard], usage: Mapping[str, int]) -> list[PlanEstimate]:
    cards = list(cards)
    names = {i.code: i.name for i in calculator_inputs(cards)}
    return [estimate_plan(card.terms, usage, names) for card in cards]


