"""Finding the subscriptions a job must act on, each handed out once: a guarded update sets a lease on
the row (`renewal_lease_until`) and returns the ids it took, so two sweeps at once (the scheduler's
and `flask jobs run-due`, or two hosts) never hand out the same subscription twice. A lease passes
on its own: a job that died before finishing lets the next sweep hand the subscription out again.
"""
from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from portal.billing.lifecycle import SubscriptionStatus
from portal.clock import now
from portal.extensions import db
from portal.models import Subscription

#: Ids taken per statement; a sweep takes at most MAX_PER_SWEEP in all (the next sweep takes the rest).
CHUNK = 1000
MAX_PER_SWEEP = 50_000


def _claim(condition: sa.ColumnElement[bool], order: sa.ColumnElement, lease: timedelta) -> list[int]:
    at = now()
    table = Subscription.__table__
    free = sa.or_(table.c.renewal_lease_until.is_(None), table.c.renewal_lease_until <= at)
    taken: list[int] = []
    while len(taken) < MAX_PER_SWEEP:
        candidates = sa.select(table.c.id).where(condition, free).order_by(order, table.c.id).limit(CHUNK)
        # The conditions are repeated on the update itself: a row another sweep leased meanwhile is
        # re-checked after its lock is released (PostgreSQL) and skipped.
        ids = db.session.execute(
            sa.update(table).where(table.c.id.in_(candidates.scalar_subquery()), condition, free)
            .values(renewal_lease_until=at + lease).returning(table.c.id)
        ).scalars().all()
        taken.extend(sorted(ids))
        if len(ids) < CHUNK:
            break
    return taken


def claim_due_renewals(lease: timedelta) -> list[int]:
    """Active and trialing subscriptions whose period is over, oldest first."""
    table = Subscription.__table__
    due = sa.and_(table.c.status.in_([SubscriptionStatus.ACTIVE.value, SubscriptionStatus.TRIALING.value]),
                  table.c.current_period_end <= now())
    return _claim(due, table.c.current_period_end, lease)


def claim_ended_grace(lease: timedelta) -> list[int]:
    """Past-due subscriptions whose grace period is over."""
    table = Subscription.__table__
    ended = sa.and_(table.c.status == SubscriptionStatus.PAST_DUE.value, table.c.grace_until <= now())
    return _claim(ended, table.c.grace_until, lease)
