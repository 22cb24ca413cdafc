"""Usage: counters the meters read, the event log, and daily totals for history."""
from __future__ import annotations

from datetime import date, datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from portal.clock import now
from portal.extensions import db
from portal.models.types import IdType, UTCDateTime


class UsageCounter(db.Model):
    """Units used of one feature in one window: a billing period (QUOTA, USAGE) or a rate window (RATE).

    Enforcement increments it conditionally (`used + n <= limit + bonus`), so it cannot pass the limit
    under concurrency (DESIGN §3.6).
    """

    __tablename__ = "usage_counters"
    __table_args__ = (
        sa.UniqueConstraint("user_id", "feature_id", "window_start"),
        sa.CheckConstraint("used >= 0", name="used_not_negative"),
        sa.CheckConstraint("bonus >= 0", name="bonus_not_negative"),
        sa.Index("ix_usage_counters_window_end", "window_end"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    feature_id: Mapped[int] = mapped_column(sa.ForeignKey("features.id", ondelete="CASCADE"))
    #: Start of the counted window: the billing period (calendar months without a live subscription)
    #: or, for RATE, the fixed UTC minute, hour or day.
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)
    #: End of the window (exclusive): when the count resets.
    window_end: Mapped[datetime] = mapped_column(UTCDateTime)
    #: Units accepted in the window, the prepaid (bonus) units spent among them.
    used: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    #: Prepaid units bought as packages in this window; they raise the allowance.
    bonus: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now)


class UsageEvent(db.Model):
    """One accepted use of a feature. Append-only; meters never scan it."""

    __tablename__ = "usage_events"
    __table_args__ = (
        # The client's Idempotency-Key or event id: the same use is recorded once per customer.
        sa.UniqueConstraint("user_id", "idempotency_key"),
        sa.CheckConstraint("quantity > 0", name="quantity_positive"),
        sa.Index("ix_usage_events_user_feature_at", "user_id", "feature_id", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    feature_id: Mapped[int] = mapped_column(sa.ForeignKey("features.id", ondelete="CASCADE"))
    #: The live subscription at the time; NULL when the customer had none (default plan).
    subscription_id: Mapped[int | None] = mapped_column(sa.ForeignKey("subscriptions.id", ondelete="SET NULL"))
    #: Units used, in the feature's unit_name.
    quantity: Mapped[int] = mapped_column(sa.BigInteger)
    #: The client's Idempotency-Key header or event_id; NULL when neither was sent.
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(200))
    #: "api", "portal", "staff"
    source: Mapped[str] = mapped_column(sa.String(16), default="api")
    #: When it was recorded, by the server's billing clock (UTC); clients cannot set it.
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now)


class UsageDaily(db.Model):
    """Daily totals per feature, kept beside each event so history reads ≤ 90 rows."""

    __tablename__ = "usage_daily"
    __table_args__ = (
        sa.UniqueConstraint("user_id", "feature_id", "day"),
        sa.Index("ix_usage_daily_user_day", "user_id", "day"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    feature_id: Mapped[int] = mapped_column(sa.ForeignKey("features.id", ondelete="CASCADE"))
    #: The UTC calendar day.
    day: Mapped[date] = mapped_column(sa.Date)
    #: Units used that day: the sum of the day's accepted events.
    quantity: Mapped[int] = mapped_column(sa.BigInteger, default=0)
