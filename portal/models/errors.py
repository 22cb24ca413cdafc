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
        # One customer's failures (the failures page's customer filter, the customer page).
        sa.Index("ix_operation_errors_user_next_retry", "user_id", "next_retry_at"),
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
    #: While status is retrying: the retry processor that claimed it owns it until then; after that
    #: (the processor died) the next run claims it again.
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The money at stake in minor units (an unpaid invoice, a refund), for the failed report; NULL if none.
    amount: Mapped[int | None] = mapped_column(sa.BigInteger)
    currency: Mapped[str | None] = mapped_column(sa.String(3))
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


class RetryOutcome(str, enum.Enum):
    SUCCEEDED = "succeeded"  #: the operation went through: the error is resolved
    FAILED = "failed"  #: it failed again: rescheduled by its strategy, or manual when tries ran out
    WAITING = "waiting"  #: the outcome is not known yet (the bank is still working): asked again later
    MOOT = "moot"  #: nothing left to do (paid meanwhile, the subject is gone): resolved


class RetryAttempt(db.Model):
    """One retry of a failed operation, by the retry processor or a staff "retry now" (DESIGN §4)."""

    __tablename__ = "retry_attempts"
    # One row per try: the unique pair also refuses a second processor running the same try.
    __table_args__ = (sa.UniqueConstraint("operation_error_id", "attempt_number"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    operation_error_id: Mapped[int] = mapped_column(sa.ForeignKey("operation_errors.id", ondelete="CASCADE"))
    #: The try's number counting the original failure as 1 (the first retry is 2).
    attempt_number: Mapped[int] = mapped_column(sa.Integer)
    succeeded: Mapped[bool] = mapped_column(sa.Boolean)
    outcome: Mapped[str] = mapped_column(sa.String(16), default=RetryOutcome.FAILED.value)
    #: The strategy the error had when this try ran.
    strategy: Mapped[str | None] = mapped_column(sa.String(20))
    error_code: Mapped[str | None] = mapped_column(sa.String(64))
    message: Mapped[str] = mapped_column(sa.Text, default="")
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: When the try finished (UTC).
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=now)
    #: The next try this one scheduled; NULL when none (resolved, or handed to a person).
    next_retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The staff user who asked for this try; NULL for the retry processor.
    actor_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id", ondelete="SET NULL"))

    operation_error: Mapped[OperationError] = relationship(back_populates="attempts_log")


class AlertState(db.Model):
    """Whether a staff alert's condition holds, so the alert goes out once per crossing, not every run."""

    __tablename__ = "alert_states"

    #: The alert ("failures").
    name: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    #: The condition held at the last check.
    active: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    #: How many times the condition has started to hold (each crossing is one alert: its email key).
    crossings: Mapped[int] = mapped_column(sa.Integer, default=0)
    changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
