"""Card payments, refunds, saved payment methods and received Stripe webhook events."""
from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.clock import now
from portal.extensions import db
from portal.models.types import IdType, MinorUnits, UTCDateTime, enum_column


class PaymentStatus(str, enum.Enum):
    PENDING = "pending"
    REQUIRES_ACTION = "requires_action"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REFUNDED = "refunded"


class PaymentPurpose(str, enum.Enum):
    INVOICE = "invoice"
    TOPUP = "topup"
    PACKAGE = "package"


_OPEN_CARD = "provider = 'stripe' AND status IN ('pending', 'requires_action')"


class Payment(db.Model):
    __tablename__ = "payments"
    __table_args__ = (
        sa.CheckConstraint("amount > 0", name="amount_positive"),
        sa.CheckConstraint("amount_refunded >= 0 AND amount_refunded <= amount", name="amount_refunded_within_amount"),
        # At most one card attempt in flight per invoice: a second one could charge twice.
        sa.Index("uq_payments_open_card_per_invoice", "invoice_id", unique=True,
                 sqlite_where=sa.text(_OPEN_CARD), postgresql_where=sa.text(_OPEN_CARD)),
        sa.Index("ix_payments_user_created", "user_id", "created_at"),
        sa.Index("ix_payments_invoice", "invoice_id"),
        sa.Index("ix_payments_status_created", "status", "created_at"),
        # The failed card payment rate by month (the staff revenue page).
        sa.Index("ix_payments_provider_created", "provider", "created_at"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="RESTRICT"))
    #: The invoice it pays toward; NULL on top-ups made before top-ups had invoices.
    invoice_id: Mapped[int | None] = mapped_column(sa.ForeignKey("invoices.id", ondelete="SET NULL"))
    #: topup: a wallet top-up (settling it credits the wallet, a card refund takes it back);
    #: invoice: any other purchase.
    purpose: Mapped[PaymentPurpose] = mapped_column(enum_column(PaymentPurpose, "payment_purpose"))
    #: Minor units of `currency` charged to the card or taken from the wallet.
    amount: Mapped[int] = mapped_column(MinorUnits)
    currency: Mapped[str] = mapped_column(sa.String(3))
    #: Card: pending (written before Stripe is called; kept when no answer came) → requires_action (3-D Secure)
    #: → succeeded or failed. Wallet parts are written succeeded. refunded: amount_refunded reached amount.
    status: Mapped[PaymentStatus] = mapped_column(enum_column(PaymentStatus, "payment_status"))
    #: "stripe" for cards, "wallet" for wallet debits.
    provider: Mapped[str] = mapped_column(sa.String(16))
    #: Stripe's PaymentIntent id; NULL until known (Stripe's answer, the reconciler) and for wallet payments.
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(sa.String(64), unique=True)
    #: Our natural key for this attempt ("invoice:INV-000012:card:1"): the same attempt is one row.
    idempotency_key: Mapped[str] = mapped_column(sa.String(200), unique=True)
    #: The Idempotency-Key sent to Stripe, fixed when the row is written and reused by every retry:
    #: the installation's prefix, our key and a random part, so keys never collide across
    #: installations sharing a Stripe account or after a database restore. NULL for wallet payments.
    stripe_idempotency_key: Mapped[str | None] = mapped_column(sa.String(255), unique=True)
    #: Why it failed, a classified code ("card_declined", "not_submitted", "canceled", ...).
    failure_code: Mapped[str | None] = mapped_column(sa.String(64))
    #: The explanation shown to the customer.
    failure_message: Mapped[str | None] = mapped_column(sa.Text)
    #: Minor units given back so far (to the card, or to the wallet for wallet payments).
    amount_refunded: Mapped[int] = mapped_column(MinorUnits, default=0)
    #: Our saved card it was charged to, if any.
    payment_method_id: Mapped[int | None] = mapped_column(sa.ForeignKey("payment_methods.id", ondelete="SET NULL"))
    #: Shown on the invoice and payment pages ("Card → INV-000012", "Wallet → INV-000012").
    description: Mapped[str] = mapped_column(sa.String(255), default="")
    #: Extra facts: {"unanswered": <error code>} once a charge got no answer from Stripe; older rows also hold
    #: the purchase they paid for (now on the invoice).
    data: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now, onupdate=now)


class RefundStatus(str, enum.Enum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Refund(db.Model):
    __tablename__ = "refunds"
    __table_args__ = (
        sa.CheckConstraint("amount > 0", name="amount_positive"),
        sa.Index("ix_refunds_payment", "payment_id"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    payment_id: Mapped[int] = mapped_column(sa.ForeignKey("payments.id", ondelete="RESTRICT"))
    #: Minor units of the payment's currency given back to the card.
    amount: Mapped[int] = mapped_column(MinorUnits)
    #: pending until the refund job gets Stripe's refund (it stays pending while that fails), then succeeded.
    status: Mapped[RefundStatus] = mapped_column(enum_column(RefundStatus, "refund_status"))
    #: Why the money goes back, in words ("INV-000012 was already void when the payment arrived").
    reason: Mapped[str] = mapped_column(sa.String(255), default="")
    #: Stripe's refund id, set when the refund succeeds.
    stripe_refund_id: Mapped[str | None] = mapped_column(sa.String(64), unique=True)
    #: "refund:payment:{payment id}:{why}": one refund per payment and cause; Stripe's key builds on it.
    idempotency_key: Mapped[str] = mapped_column(sa.String(200), unique=True)
    #: The user who asked for the refund; NULL for the system (a payment that could not be applied).
    actor_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now)

    payment: Mapped[Payment] = relationship()


class PaymentMethod(db.Model):
    """A card saved at Stripe; we keep what the pages show, never the number."""

    __tablename__ = "payment_methods"
    __table_args__ = (sa.Index("ix_payment_methods_user", "user_id", "created_at"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    stripe_payment_method_id: Mapped[str] = mapped_column(sa.String(64), unique=True)
    #: Stripe's card brand ("visa", "mastercard"), "card" when Stripe gives none.
    brand: Mapped[str] = mapped_column(sa.String(24), default="card")
    last4: Mapped[str] = mapped_column(sa.String(4))
    exp_month: Mapped[int] = mapped_column(sa.Integer)
    exp_year: Mapped[int] = mapped_column(sa.Integer)
    #: The card purchases and renewals are charged to (one per customer, kept so by set_default).
    is_default: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now)


class WebhookEvent(db.Model):
    """A Stripe event, stored by its id so it is handled once whatever Stripe resends."""

    __tablename__ = "webhook_events"
    __table_args__ = (sa.Index("ix_webhook_events_status_received", "status", "received_at"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    stripe_event_id: Mapped[str] = mapped_column(sa.String(64), unique=True)
    #: Stripe's event type ("payment_intent.succeeded"); it picks the handler.
    type: Mapped[str] = mapped_column(sa.String(64))
    #: The whole event as Stripe sent it (a JSON object; the subject is payload["data"]["object"]).
    payload: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    #: received, processed, failed, ignored
    status: Mapped[str] = mapped_column(sa.String(16), default="received")
    #: When the first delivery was stored (UTC); redeliveries do not change it.
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now)
    #: When it was last handled (UTC), whatever the outcome (processed, ignored or failed).
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
