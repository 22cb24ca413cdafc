"""The subscription page's read side: the next invoice estimated from the counters, open renewal
invoices, an upgrade left open. Writes nothing."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from portal.billing.invoicing import BilledLine
from portal.extensions import db
from portal.models import Invoice, InvoiceStatus, Payment, Plan, Subscription
from portal.services.subscriptions import default_plan


@dataclass(frozen=True)
class NextInvoice:
    """What the next renewal would bill if the period ended now: the renewal's own lines
    (renewals.draft, the invoice generator), so the page promises what the renewal charges."""

    date: datetime
    plan: Plan
    plan_amount: int
    #: The closing period's use so far (usage and overage lines).
    usage_lines: tuple[BilledLine, ...]
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
    from portal.services.subscriptions import renewals

    upcoming = next_plan(sub)
    if sub.cancel_at_period_end:  # the last invoice: the period's use only
        lines = renewals.draft(sub, None, None)
    else:
        lines = renewals.draft(sub, upcoming, renewals.next_period(sub, upcoming)[1])
    fee = sum(line.amount for line in lines if line.kind == "plan")
    return NextInvoice(sub.current_period_end, upcoming, fee, tuple(line for line in lines if line.kind != "plan"),
                       sub.plan.currency)


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
