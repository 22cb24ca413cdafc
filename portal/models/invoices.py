"""Invoices and their lines. Lines are copied values: editing a plan never rewrites them."""
from __future__ import annotations

import enum
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.clock import now
from portal.extensions import db
from portal.models.types import ExactDecimal, IdType, MinorUnits, UTCDateTime, enum_column


class InvoiceStatus(str, enum.Enum):
    DRAFT = "draft"
    OPEN = "open"
    PAID = "paid"
    VOID = "void"
    UNCOLLECTIBLE = "uncollectible"


class LineKind(str, enum.Enum):
    PLAN = "plan"
    USAGE = "usage"
    OVERAGE = "overage"
    PRORATION = "proration"
    CREDIT = "credit"
    PACKAGE = "package"


#: Reasons of purchases that must have at most one open invoice per subscription (DESIGN §3.10):
#: a second upgrade while one waits for the bank, a second renewal of an unpaid period.
ONE_OPEN_PER_SUBSCRIPTION = ("upgrade", "renewal")
_ONE_OPEN = "status = 'open' AND reason IN ({})".format(", ".join(f"'{r}'" for r in ONE_OPEN_PER_SUBSCRIPTION))


class Invoice(db.Model):
    __tablename__ = "invoices"
    __table_args__ = (
        sa.CheckConstraint("amount_paid >= 0", name="amount_paid_not_negative"),
        sa.CheckConstraint("amount_paid <= total", name="amount_paid_within_total"),
        # One open plan change (and one open renewal) per subscription: the database refuses a second.
        sa.Index("uq_invoices_open_purchase", "subscription_id", "reason", unique=True,
                 sqlite_where=sa.text(_ONE_OPEN), postgresql_where=sa.text(_ONE_OPEN)),
        sa.Index("ix_invoices_user_created", "user_id", "created_at"),
        # The invoice list pages by keyset on id, newest first.
        sa.Index("ix_invoices_user_id_desc", "user_id", "id"),
        sa.Index("ix_invoices_status_due", "status", "due_at"),
        sa.Index("ix_invoices_subscription", "subscription_id"),
        # Revenue by month of payment (the staff revenue page).
        sa.Index("ix_invoices_status_paid", "status", "paid_at"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    #: Human-facing number, unique and gap-free per portal ("INV-000123").
    number: Mapped[str] = mapped_column(sa.String(32), unique=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="RESTRICT"))
    #: The subscription it concerns (an upgrade, a renewal, a package on a live plan); NULL when none (top-ups).
    subscription_id: Mapped[int | None] = mapped_column(sa.ForeignKey("subscriptions.id", ondelete="SET NULL"))
    #: open: issued, awaiting payment; paid: amount_paid reached total (or nothing was due);
    #: void: ended unpaid (a refused or cancelled purchase, its wallet part returned).
    status: Mapped[InvoiceStatus] = mapped_column(enum_column(InvoiceStatus, "invoice_status"))
    #: Why it was issued, the purchase effect's reason: upgrade, renewal, package, topup, manual.
    reason: Mapped[str] = mapped_column(sa.String(32), default="manual")
    currency: Mapped[str] = mapped_column(sa.String(3))
    #: Sum of the lines, in minor units of `currency` (unused-time credits are negative lines).
    total: Mapped[int] = mapped_column(MinorUnits, default=0)
    #: Minor units paid so far, wallet and card parts together; paid in full when it reaches total.
    amount_paid: Mapped[int] = mapped_column(MinorUnits, default=0)
    #: Start of the period it bills (an upgrade's new plan period, a package's usage window);
    #: NULL for top-ups.
    period_start: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: End of that period (exclusive).
    period_end: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: When payment is due: the time of issue (invoices are due on receipt).
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: When it became paid in full (UTC).
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The purchase's natural key ("upgrade:{subscription}:{form token}",
    #: "renewal:{subscription}:{period_start}"): the same purchase is invoiced once.
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(200), unique=True)
    #: What paying it does: a typed purchase effect ({"type": "plan_change", ...}), applied once
    #: when the invoice is paid in full (portal.services.purchases.effects).
    purchase: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now)

    lines: Mapped[list[InvoiceLine]] = relationship(
        back_populates="invoice", cascade="all, delete-orphan", order_by="InvoiceLine.position"
    )

    @property
    def amount_due(self) -> int:
        return max(self.total - self.amount_paid, 0)


class InvoiceLine(db.Model):
    __tablename__ = "invoice_lines"
    __table_args__ = (
        sa.UniqueConstraint("invoice_id", "position"),
        sa.CheckConstraint("quantity >= 0", name="quantity_not_negative"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    invoice_id: Mapped[int] = mapped_column(sa.ForeignKey("invoices.id", ondelete="CASCADE"))
    #: 1-based order of the line on its invoice.
    position: Mapped[int] = mapped_column(sa.Integer)
    #: plan (a period's fee), proration (a prorated charge, or negative unused-time credit), package,
    #: usage and overage (billed in arrears), credit (money into the wallet: a top-up, leftover credit).
    kind: Mapped[LineKind] = mapped_column(enum_column(LineKind, "invoice_line_kind"))
    description: Mapped[str] = mapped_column(sa.String(255))
    #: How many are billed: packages on a package line, 1 on plan, proration and credit lines.
    quantity: Mapped[int] = mapped_column(sa.BigInteger, default=1)
    #: Exact unit price in major units, for display; the amount is what counts.
    unit_price: Mapped[Decimal | None] = mapped_column(ExactDecimal)
    #: Minor units of the invoice's currency, rounded once, half-up (DESIGN §3.1); negative for
    #: unused-time credit.
    amount: Mapped[int] = mapped_column(MinorUnits)
    #: The feature a package, usage or overage line bills; NULL for plan, proration and credit lines.
    feature_id: Mapped[int | None] = mapped_column(sa.ForeignKey("features.id", ondelete="SET NULL"))
    #: The pricing model's breakdown as shown on the invoice: [{"description", "units", "unit_price",
    #: "amount"}], prices as decimal strings in major units; [] when unpriced.
    breakdown: Mapped[list[dict[str, Any]]] = mapped_column(sa.JSON, default=list)
    #: Start of the time the line covers (a plan period, a prorated span, a package's window);
    #: NULL for credit lines.
    period_start: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: End of that span (exclusive).
    period_end: Mapped[datetime | None] = mapped_column(UTCDateTime)

    invoice: Mapped[Invoice] = relationship(back_populates="lines")


class NumberSequence(db.Model):
    """Counters for human-facing numbers; incremented in the transaction that uses the number."""

    __tablename__ = "number_sequences"

    #: The numbers' prefix ("INV").
    name: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    #: The last number issued under the prefix.
    value: Mapped[int] = mapped_column(sa.BigInteger, default=0)
