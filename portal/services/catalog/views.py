"""Read-side queries and view models for the plans, subscription and invoices pages. Writes nothing."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

import sqlalchemy as sa
from babel.numbers import format_currency
from flask import current_app
from sqlalchemy.orm import selectinload

from portal.billing.estimate import Allowance, EstimateLine, PlanEstimate, PlanTerms, estimate_plan, price_use
from portal.billing.features import FeatureType
from portal.billing.pricing import PricingModel
from portal.extensions import db
from portal.models import Invoice, InvoiceStatus, Payment, PaymentMethod, Plan, PlanFeature, Subscription, UsageCounter
from portal.services.subscriptions.changes import daily_rate
from portal.services.subscriptions import default_plan
from portal.services.usage import pricing_for

#: Invoices per page of the list.
PAGE_SIZE = 20

# --- formatting ------------------------------------------------------------------------------


def _locale() -> str:
    return current_app.config.get("DEFAULT_LOCALE", "en_US")


def unit_money(value: Decimal | int, currency: str) -> str:
    """A price in major units with all its digits ("$0.0005", "$20.00")."""
    return format_currency(Decimal(value), currency, locale=_locale(), decimal_quantization=False)


def plural(unit: str, n: int = 2) -> str:
    if n == 1 or not unit or unit.endswith("s") or unit.isupper():
        return unit
    return unit + "s"


def interval_phrase(plan: Plan) -> str:
    """One billing period in words: "month", "30 days", "2 weeks"."""
    unit = plan.interval_unit.value
    return unit if plan.interval_count == 1 else f"{plan.interval_count} {unit}s"


def price_label(plan: Plan) -> str:
    """ "$9.99 / month", "$15.00 / 30 days"."""
    return f"{_money(plan.price_amount, plan.currency)} / {interval_phrase(plan)}"


def _money(minor: int, currency: str) -> str:
    from portal.billing.money import format_money

    return format_money(minor, currency, _locale())


# --- plans -----------------------------------------------------------------------------------


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
    if not pf.tiers:
        return ()
    zero_based = pf.tiers[0].first_unit == 0
    rows = []
    for tier in pf.tiers:
        first = tier.first_unit + 1 if zero_based else tier.first_unit
        units = f"{first:,} and up" if tier.last_unit is None else f"{first:,}–{tier.last_unit:,}"
        price = "Free" if tier.unit_price == 0 else f"{unit_money(tier.unit_price, currency)} each"
        fee = unit_money(tier.flat_fee, currency) if tier.flat_fee else None
        rows.append(TierRow(units, price, fee))
    return tuple(rows)


def pricing_phrase(pf: PlanFeature, currency: str) -> str:
    """The price of a plan feature's priced use in words ("500 SMS for $20.00")."""
    unit = pf.feature.unit_name or "unit"
    free = f" after {pf.free_units:,} free" if pf.free_units else ""
    if pf.pricing_model is PricingModel.FLAT:
        return f"{unit_money(pf.unit_price, currency)} per {unit}{free}"
    if pf.pricing_model is PricingModel.PACKAGE:
        return f"{pf.package_size:,} {plural(unit, pf.package_size)} for {unit_money(pf.package_price, currency)}{free}"
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
    summary = "Unlimited" if pf.limit is None else f"{pf.limit:,} per {interval_phrase(plan)}"
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
    return PlanTerms(plan.code, plan.name, plan.price_amount, plan.currency, interval_phrase(plan), tuple(allowances))


def plan_cards(plans: Iterable[Plan]) -> list[PlanCard]:
    cards = []
    for plan in plans:
        trial = f"{plan.trial_days}-day free trial" if plan.trial_days else None
        features = tuple(feature_term(pf, plan) for pf in plan.features)
        cards.append(PlanCard(plan, price_label(plan), interval_phrase(plan), trial, features, plan_terms(plan),
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
                seen[allowance.code] = CalculatorInput(allowance.code, allowance.name, plural(allowance.unit))
    return list(seen.values())


def estimates(cards: Iterable[PlanCard], usage: Mapping[str, int]) -> list[PlanEstimate]:
    cards = list(cards)
    names = {i.code: i.name for i in calculator_inputs(cards)}
    return [estimate_plan(card.terms, usage, names) for card in cards]


# --- subscription ----------------------------------------------------------------------------


@dataclass(frozen=True)
class NextInvoice:
    """What the next renewal would bill if the period ended now."""

    date: datetime
    plan: Plan
    plan_amount: int
    usage_lines: tuple[EstimateLine, ...]
    currency: str

    @property
    def total(self) -> int:
        return self.plan_amount + sum(line.amount for line in self.usage_lines)


def next_plan(sub: Subscription) -> Plan:
    """The plan the next period will be on (a scheduled downgrade, Free after a cancellation)."""
    if sub.cancel_at_period_end:
        return default_plan()
    return sub.scheduled_plan or sub.plan


def next_invoice(sub: Subscription) -> NextInvoice:
    """The next period's plan fee plus this period's billable use so far (from the counters)."""
    plan = sub.plan
    terms = plan_terms(plan)
    billed = {a.code: a for a in terms.allowances if a.pricing is not None and a.kind in ("usage", "overage")}
    lines: list[EstimateLine] = []
    if billed:
        feature_ids = {pf.feature.code: pf.feature_id for pf in plan.features}
        counters = {
            c.feature_id: c for c in db.session.scalars(sa.select(UsageCounter).where(
                UsageCounter.user_id == sub.user_id,
                UsageCounter.feature_id.in_([feature_ids[code] for code in billed]),
                UsageCounter.window_start == sub.current_period_start,
            ))
        }
        for code, allowance in billed.items():
            counter = counters.get(feature_ids[code])
            # Prepaid units (bonus) raise a quota before overage starts.
            used = 0 if counter is None else max(counter.used - counter.bonus, 0)
            line = price_use(allowance, used, plan.currency)
            if line is not None and (used or line.amount):
                lines.append(line)
    upcoming = next_plan(sub)
    return NextInvoice(sub.current_period_end, upcoming, upcoming.price_amount, tuple(lines), plan.currency)


def open_renewal_invoices(user_id: int, subscription_id: int) -> list[Invoice]:
    """The subscription's unpaid renewal invoices, newest first (what makes it past due)."""
    return list(db.session.scalars(
        sa.select(Invoice).where(Invoice.user_id == user_id, Invoice.subscription_id == subscription_id,
                                 Invoice.status == InvoiceStatus.OPEN, Invoice.reason == "renewal")
        .order_by(Invoice.id.desc())
    ))


# --- invoices --------------------------------------------------------------------------------

_VISIBLE = (InvoiceStatus.OPEN, InvoiceStatus.PAID, InvoiceStatus.VOID, InvoiceStatus.UNCOLLECTIBLE)


@dataclass(frozen=True)
class InvoicePage:
    invoices: list[Invoice]
    #: `before` for the next (older) page, or None on the last page.
    next_before: int | None


def invoice_page(user_id: int, before: int | None = None, size: int = PAGE_SIZE) -> InvoicePage:
    """The customer's invoices, newest first, `size` at a time, keyset-paginated on id."""
    query = sa.select(Invoice).where(Invoice.user_id == user_id, Invoice.status.in_(_VISIBLE))
    if before is not None:
        query = query.where(Invoice.id < before)
    rows = list(db.session.scalars(query.order_by(Invoice.id.desc()).limit(size + 1)))
    more = len(rows) > size
    rows = rows[:size]
    return InvoicePage(rows, rows[-1].id if more else None)


def owned_invoice(user_id: int, number: str) -> Invoice | None:
    """The customer's own invoice by number; another customer's number looks missing."""
    return db.session.scalar(
        sa.select(Invoice).where(Invoice.number == number, Invoice.user_id == user_id, Invoice.status.in_(_VISIBLE))
        .options(selectinload(Invoice.lines))
    )


def invoice_payments(invoice: Invoice) -> list[Payment]:
    """Payments made toward an invoice (wallet and card), oldest first."""
    return list(db.session.scalars(
        sa.select(Payment).where(Payment.invoice_id == invoice.id, Payment.user_id == invoice.user_id)
        .order_by(Payment.id)
    ))


@dataclass(frozen=True)
class PendingUpgrade:
    """An upgrade still open (waiting for the bank, or for an answer from Stripe)."""

    invoice: Invoice
    plan: Plan | None
    payment: Payment | None


def pending_upgrade(sub: Subscription) -> PendingUpgrade | None:
    invoice = db.session.scalar(
        sa.select(Invoice).where(Invoice.subscription_id == sub.id, Invoice.reason == "upgrade",
                                 Invoice.status == InvoiceStatus.OPEN).limit(1)
    )
    if invoice is None:
        return None
    plan_id = (invoice.purchase or {}).get("plan_id")
    payment = db.session.scalar(
        sa.select(Payment).where(Payment.invoice_id == invoice.id, Payment.provider == "stripe")
        .order_by(Payment.id.desc()).limit(1)
    )
    return PendingUpgrade(invoice, db.session.get(Plan, plan_id) if plan_id else None, payment)


def owned_payment(user_id: int, payment_id: int) -> Payment | None:
    return db.session.scalar(sa.select(Payment).where(Payment.id == payment_id, Payment.user_id == user_id))


@dataclass(frozen=True)
class BreakdownRow:
    description: str
    amount: str | None


def breakdown_rows(items: Iterable[Mapping[str, Any]] | None, currency: str) -> list[BreakdownRow]:
    """An invoice line's stored pricing breakdown, ready to show (amounts are exact major units)."""
    rows = []
    for item in items or []:
        if not isinstance(item, Mapping):
            continue
        amount = item.get("amount")
        shown = None
        if amount is not None:
            try:
                shown = unit_money(Decimal(str(amount)), currency)
            except ArithmeticError:  # decimal.InvalidOperation: show the description only
                shown = None
        rows.append(BreakdownRow(str(item.get("description", "")), shown))
    return rows


@dataclass
class InvoiceView:
    invoice: Invoice
    lines: list[tuple[Any, list[BreakdownRow]]] = field(default_factory=list)
    payments: list[Payment] = field(default_factory=list)
    #: The saved cards the payments used, by our id (a removed card is simply missing).
    cards: dict[int, PaymentMethod] = field(default_factory=dict)


def invoice_view(invoice: Invoice) -> InvoiceView:
    lines = [(line, breakdown_rows(line.breakdown, invoice.currency)) for line in invoice.lines]
    paid = invoice_payments(invoice)
    ids = {p.payment_method_id for p in paid if p.payment_method_id is not None}
    cards = {}
    if ids:
        cards = {m.id: m for m in db.session.scalars(
            sa.select(PaymentMethod).where(PaymentMethod.id.in_(ids), PaymentMethod.user_id == invoice.user_id))}
    return InvoiceView(invoice, lines, paid, cards)
