"""Failed operations and every attempt to retry them (DESIGN §4, errors & retries)."""
from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.clock import now
from portal.extensions import db
from portal.models.types import IdType, UTCDateTime, enum_column


class RetryStrategy(str, enum.Enum):
    EXPONENTIAL = "exponential"  #: transient: network, rate limit, 5xx
    IMMEDIATE = "immediate"  #: refunds: a few quick tries
    FIXED_INTERVAL = "fixed_interval"  #: predictable: declined card, insufficient funds
    MANUAL = "manual"  #: needs a person


class ErrorStatus(str, enum.Enum):
    PENDING = "pending"
    RETRYING = "retrying"
    RESOLVED = "resolved"
    MANUAL = "manual"
    GAVE_UP = "gave_up"


class OperationError(db.Model):
    __tablename__ = "operation_errors"
    __table_args__ = (
        # process_pending_retries: due rows by status and time.
        sa.Index("ix_operation_errors_status_next_retry", "status", "next_retry_at"),
        # failed_report: unresolved rows grouped by type.
        sa.Index("ix_operation_errors_type_status", "operation_type", "status"),
        sa.Index("ix_operation_errors_subscription", "subscription_id"),
        sa.CheckConstraint("attempts >= 0", name="attempts_not_negative"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    #: What failed: "refund", "refund_shortfall", "dispute", "webhook", ...
    operation_type: Mapped[str] = mapped_column(sa.String(40))
    #: Classified error code (card_declined, network, authentication_required, ...).
    error_code: Mapped[str] = mapped_column(sa.String(64))
    message: Mapped[str] = mapped_column(sa.Text, default="")
    #: Everything needed to retry and to explain it: ids, amounts, provider answers.
    context: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    strategy: Mapped[RetryStrategy] = mapped_column(enum_column(RetryStrategy, "retry_strategy"))
    #: pending: waiting for a retry (at next_retry_at); manual: staff must act; resolved and gave_up
    #: are closed, nothing retries them (retries.CLOSED).
    status: Mapped[ErrorStatus] = mapped_column(enum_column(ErrorStatus, "error_status"), default=ErrorStatus.PENDING)
    #: Failed attempts at the operation so far.
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    #: Attempts allowed before automatic retrying stops (DESIGN §4).
    max_attempts: Mapped[int] = mapped_column(sa.Integer, default=5)
    #: When the next retry is due (UTC); NULL when none is scheduled (manual or closed).
    next_retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    user_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id", ondelete="SET NULL"))
    subscription_id: Mapped[int | None] = mapped_column(sa.ForeignKey("subscriptions.id", ondelete="SET NULL"))
    #: One open error per failing operation ("renewal:12:2026-01-31T00:00:00+00:00").
    dedupe_key: Mapped[str | None] = mapped_column(sa.String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now, onupdate=now)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The staff user who resolved it; NULL when the operation succeeded on its own (a retry,
    #: a redelivery).
    resolved_by_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id", ondelete="SET NULL"))

    attempts_log: Mapped[list[RetryAttempt]] = relationship(
        back_populates="operation_error", order_by="RetryAttempt.attempt_number", lazy="raise_on_sql"
    )


class RetryAttempt(db.Model):
    __tablename__ = "retry_attempts"
    __table_args__ = (sa.UniqueConstraint("operation_error_id", "attempt_number"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    operation_error_id: Mapped[int] = mapped_column(sa.ForeignKey("operation_errors.id", ondelete="CASCADE"))
    attempt_number: Mapped[int] = mapped_column(sa.Integer)
    succeeded: Mapped[bool] = mapped_column(sa.Boolean)
    error_code: Mapped[str | None] = mapped_column(sa.String(64))
    message: Mapped[str] = mapped_column(sa.Text, default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=now)

    operation_error: Mapped[OperationError] = relationship(back_populates="attempts_log")
