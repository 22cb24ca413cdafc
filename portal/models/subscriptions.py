"""Subscriptions and the event trail of every status change."""
from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.billing.lifecycle import LIVE_STATUSES, SubscriptionStatus
from portal.clock import now
from portal.extensions import db
from portal.models.plans import Plan
from portal.models.types import IdType, UTCDateTime, enum_column

_LIVE = "status IN ({})".format(", ".join(f"'{s.value}'" for s in sorted(LIVE_STATUSES, key=lambda s: s.value)))


class Subscription(db.Model):
    __tablename__ = "subscriptions"
    __table_args__ = (
        # A customer has at most one live subscription at a time.
        sa.Index(
            "uq_subscriptions_live_user",
            "user_id",
            unique=True,
            sqlite_where=sa.text(_LIVE),
            postgresql_where=sa.text(_LIVE),
        ),
        # The renewal and grace-period jobs scan by status and due time.
        sa.Index("ix_subscriptions_status_period_end", "status", "current_period_end"),
        sa.Index("ix_subscriptions_status_grace", "status", "grace_until"),
        sa.Index("ix_subscriptions_user_created", "user_id", "created_at"),
        sa.CheckConstraint("current_period_end > current_period_start", name="period_ordered"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    plan_id: Mapped[int] = mapped_column(sa.ForeignKey("plans.id", ondelete="RESTRICT"))
    #: trialing, active, past_due (live) or canceled, expired; changed only through the transition
    #: table of portal.billing.lifecycle (services.subscriptions.transition).
    status: Mapped[SubscriptionStatus] = mapped_column(enum_column(SubscriptionStatus, "subscription_status"))
    #: Periods are counted from this instant (DESIGN §3.5: calendar periods from an anchor).
    billing_anchor: Mapped[datetime] = mapped_column(UTCDateTime)
    #: Start of the period being served (inclusive); while trialing, of the trial.
    current_period_start: Mapped[datetime] = mapped_column(UTCDateTime)
    #: End of that period (exclusive), when it is due to renew; while trialing, equals trial_end.
    current_period_end: Mapped[datetime] = mapped_column(UTCDateTime)
    #: End of the free trial it had, if any (set at sign-up or by a plan trial).
    trial_end: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Cancel (back to the default plan) when the current period ends; undoable until then.
    cancel_at_period_end: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    #: The reason the customer gave with cancel_at_period_end; cleared when that is undone.
    cancel_reason: Mapped[str | None] = mapped_column(sa.Text)
    #: A downgrade waiting for the period end.
    scheduled_plan_id: Mapped[int | None] = mapped_column(sa.ForeignKey("plans.id", ondelete="SET NULL"))
    #: past_due only: features keep working until then; afterwards the subscription expires.
    grace_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: When it stopped being live (canceled or expired).
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: A renewal job holds the due subscription until then, so the sweep hands it out once; a job that
    #: died lets it go when this passes (RENEWAL_LEASE_MINUTES).
    renewal_lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The period end the renewal reminder was sent for (one reminder per period).
    reminded_for: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now, onupdate=now)

    plan: Mapped[Plan] = relationship(foreign_keys=[plan_id], lazy="joined")
    scheduled_plan: Mapped[Plan | None] = relationship(foreign_keys=[scheduled_plan_id])
    events: Mapped[list[SubscriptionEvent]] = relationship(
        back_populates="subscription", order_by="SubscriptionEvent.id", lazy="raise_on_sql"
    )

    @property
    def is_live(self) -> bool:
        return self.status in LIVE_STATUSES


class SubscriptionEvent(db.Model):
    """One row per status change or plan change: from, to, why, who, when."""

    __tablename__ = "subscription_events"
    __table_args__ = (
        sa.Index("ix_subscription_events_subscription", "subscription_id", "id"),
        # New and churned subscriptions by month (the staff revenue page).
        sa.Index("ix_subscription_events_transition_at", "transition", "at"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    subscription_id: Mapped[int] = mapped_column(sa.ForeignKey("subscriptions.id", ondelete="CASCADE"))
    #: A Transition value of portal.billing.lifecycle (activate, renew, cancel, ...), or a note that
    #: keeps the status (schedule_downgrade, schedule_cancel, undo_scheduled_change).
    transition: Mapped[str] = mapped_column(sa.String(32))
    #: NULL for the event that created the subscription.
    from_status: Mapped[SubscriptionStatus | None] = mapped_column(
        enum_column(SubscriptionStatus, "subscription_event_from")
    )
    to_status: Mapped[SubscriptionStatus] = mapped_column(enum_column(SubscriptionStatus, "subscription_event_to"))
    reason: Mapped[str] = mapped_column(sa.Text, default="")
    #: The user who caused it; NULL for the system (jobs).
    actor_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id", ondelete="SET NULL"))
    #: Details, a JSON object: {"plan": code} at the start, {"from_plan_id", "plan_id", "invoice"}
    #: on a plan change.
    data: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=now)

    subscription: Mapped[Subscription] = relationship(back_populates="events")
