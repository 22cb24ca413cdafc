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


class Payment(db.Model):
    __tablename__ = "payments"
    __table_args__ = (
        sa.CheckConstraint("amount > 0", name="amount_positive"),
        sa.Index("ix_payments_user_created", "user_id", "created_at"),
        sa.Index("ix_payments_invoice", "invoice_id"),
        sa.Index("ix_payments_status_created", "status", "created_at"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="RESTRICT"))
    invoice_id: Mapped[int | None] = mapped_column(sa.ForeignKey("invoices.id", ondelete="SET NULL"))
    purpose: Mapped[PaymentPurpose] = mapped_column(enum_column(PaymentPurpose, "payment_purpose"))
    amount: Mapped[int] = mapped_column(MinorUnits)
    currency: Mapped[str] = mapped_column(sa.String(3))
    status: Mapped[PaymentStatus] = mapped_column(enum_column(PaymentStatus, "payment_status"))
    #: "stripe" for cards, "wallet" for wallet debits.
    provider: Mapped[str] = mapped_column(sa.String(16))
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(sa.String(64), unique=True)
    #: Our key, also sent to Stripe as its Idempotency-Key.
    idempotency_key: Mapped[str] = mapped_column(sa.String(200), unique=True)
    failure_code: Mapped[str | None] = mapped_column(sa.String(64))
    failure_message: Mapped[str | None] = mapped_column(sa.Text)
    amount_refunded: Mapped[int] = mapped_column(MinorUnits, default=0)
    #: Our saved card it was charged to, if any.
    payment_method_id: Mapped[int | None] = mapped_column(sa.ForeignKey("payment_methods.id", ondelete="SET NULL"))
    description: Mapped[str] = mapped_column(sa.String(255), default="")
    #: What settling this payment must do (e.g. the plan change it pays for); applied once.
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
    amount: Mapped[int] = mapped_column(MinorUnits)
    status: Mapped[RefundStatus] = mapped_column(enum_column(RefundStatus, "refund_status"))
    reason: Mapped[str] = mapped_column(sa.String(255), default="")
    stripe_refund_id: Mapped[str | None] = mapped_column(sa.String(64), unique=True)
    idempotency_key: Mapped[str] = mapped_column(sa.String(200), unique=True)
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
    brand: Mapped[str] = mapped_column(sa.String(24), default="card")
    last4: Mapped[str] = mapped_column(sa.String(4))
    exp_month: Mapped[int] = mapped_column(sa.Integer)
    exp_year: Mapped[int] = mapped_column(sa.Integer)
    is_default: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now)


class WebhookEvent(db.Model):
    """A Stripe event, stored by its id so it is handled once whatever Stripe resends."""

    __tablename__ = "webhook_events"
    __table_args__ = (sa.Index("ix_webhook_events_status_received", "status", "received_at"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    stripe_event_id: Mapped[str] = mapped_column(sa.String(64), unique=True)
    type: Mapped[str] = mapped_column(sa.String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    #: received, processed, failed, ignored
    status: Mapped[str] = mapped_column(sa.String(16), default="received")
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
