"""The subscription page's read side: the next invoice estimated from the counters, open renewal
invoices, an upgrade left open. Writes nothing."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from portal.billing.estimate import EstimateLine
from portal.billing.invoicing import Counted, billed_codes, usage_lines
from portal.extensions import db
from portal.models import Invoice, InvoiceStatus, Payment, Plan, Subscription, UsageCounter
from portal.services.catalog.views import plan_terms
from portal.services.subscriptions import default_plan


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
    codes = billed_codes(terms)
    counted: dict[str, Counted] = {}
    if codes:
        feature_ids = {pf.feature.code: pf.feature_id for pf in plan.features}
        codes_by_id = {feature_ids[code]: code for code in codes}
        counters = db.session.scalars(sa.select(UsageCounter).where(
            UsageCounter.user_id == sub.user_id, UsageCounter.feature_id.in_(codes_by_id),
            UsageCounter.window_start == sub.current_period_start,
        ))
        counted = {codes_by_id[c.feature_id]: Counted(c.used, c.bonus) for c in counters}
    upcoming = next_plan(sub)
    return NextInvoice(sub.current_period_end, upcoming, upcoming.price_amount, usage_lines(terms, counted),
                       plan.currency)


def open_renewal_invoices(user_id: int, subscription_id: int) -> list[Invoice]:
    """The subscription's unpaid renewal invoices, newest first (what makes it past due)."""
    return list(db.session.scalars(
        sa.select(Invoice).where(Invoice.user_id == user_id, Invoice.subscription_id == subscription_id,
                                 Invoice.status == InvoiceStatus.OPEN, Invoice.reason == "renewal")
        .order_by(Invoice.id.desc())
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
