"""Subscription status changes, always through the transition table and always with an event row."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import joinedload, lazyload
from sqlalchemy.orm.attributes import set_committed_value

from portal.billing.lifecycle import IllegalTransition, SubscriptionError, SubscriptionStatus, Transition, next_status
from portal.billing.periods import add_intervals
from portal.clock import now
from portal.extensions import db
from portal.models import Plan, Subscription, SubscriptionEvent, User
from portal.services.statements import connection, insert_loaded, rows_cte


class ConcurrentChange(SubscriptionError):
    """The subscription changed under us (another request or job moved it first)."""


class NoDefaultPlan(SubscriptionError):
    """No plan is marked as the default (Free) plan."""


def default_plan() -> Plan:
    """The plan every customer starts on and falls back to."""
    plan = db.session.scalar(sa.select(Plan).where(Plan.is_default.is_(True), Plan.is_archived.is_(False)))
    if plan is None:
        raise NoDefaultPlan("no default plan: mark one plan as the default (Free) plan")
    return plan


def live_subscription(user_id: int) -> Subscription | None:
    """The customer's trialing, active or past-due subscription, if any."""
    from portal.billing.lifecycle import LIVE_STATUSES

    return db.session.scalar(
        sa.select(Subscription).where(Subscription.user_id == user_id, Subscription.status.in_(LIVE_STATUSES))
    )


def lock(subscription_id: int) -> Subscription | None:
    """The subscription, re-read and locked until the transaction ends (FOR UPDATE; SQLite's writer lock)."""
    return db.session.execute(
        sa.select(Subscription).where(Subscription.id == subscription_id)
        .options(lazyload(Subscription.plan)).with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()


def lock_with_owner(subscription_id: int) -> tuple[Subscription, User] | None:
    """`lock`, reading the subscription's plan and its customer in the same statement (neither is locked)."""
    row = db.session.execute(_LOCK_WITH_OWNER, {"subscription_id": subscription_id}).first()
    return None if row is None else (row[0], row[1])


_TABLE = Subscription.__table__
_UPDATES: dict[frozenset[str], sa.Update] = {}


def _guarded_update(columns: frozenset[str]) -> sa.Update:
    """UPDATE the given columns WHERE the status is still the old one, built once per set of columns."""
    stmt = _UPDATES.get(columns)
    if stmt is None:
        stmt = _UPDATES[columns] = (
            sa.update(_TABLE)
            .where(_TABLE.c.id == sa.bindparam("subscription_id"),
                   _TABLE.c.status == sa.bindparam("old_status", type_=_TABLE.c.status.type))
            .values({key: sa.bindparam(f"new_{key}", type_=_TABLE.c[key].type) for key in sorted(columns)})
        )
    return stmt


_LOCK_WITH_OWNER = (
    sa.select(Subscription, User).join(User, User.id == Subscription.user_id)
    .where(Subscription.id == sa.bindparam("subscription_id"))
    .options(joinedload(Subscription.plan)).with_for_update(of=Subscription.__table__)
    .execution_options(populate_existing=True)
)


def transition(
    subscription: Subscription,
    event: Transition,
    *,
    reason: str,
    actor_id: int | None = None,
    data: dict[str, Any] | None = None,
    **changes: Any,
) -> SubscriptionEvent:
    """Move `subscription` by `event`, applying `changes` in the same guarded update; write the event row.

    Raises IllegalTransition (nothing written) when the table forbids the move, and
    ConcurrentChange when another transaction changed the status first.
    """
    old = subscription.status
    new = next_status(old, event)
    values = {"status": new, "updated_at": now(), **changes}
    result = db.session.execute(_guarded_update(frozenset(values)),
                                {**{f"new_{key}": value for key, value in values.items()},
                                 "subscription_id": subscription.id, "old_status": old})
    if result.rowcount != 1:
        raise ConcurrentChange(f"subscription {subscription.id} is no longer {old.value}")
    # Keep the in-memory object in step with the row we just wrote (as loaded: nothing left to flush).
    for key, value in values.items():
        set_committed_value(subscription, key, value)
    record = SubscriptionEvent(
        subscription_id=subscription.id,
        transition=event.value,
        from_status=old,
        to_status=new,
        reason=reason,
        actor_id=actor_id,
        data=data or {},
        at=now(),
    )
    return insert_loaded(record)


@dataclass(frozen=True)
class Move:
    """One subscription's part of `transition_many`: its own column values, the event's reason and data."""

    subscription_id: int
    changes: dict[str, Any]
    reason: str
    data: dict[str, Any] = field(default_factory=dict)


_EVENTS = SubscriptionEvent.__table__


def transition_many(old: SubscriptionStatus, event: Transition, moves: list[Move], *, actor_id: int | None = None,
                    **common: Any) -> int:
    """`transition` for many subscriptions in `old` status at once (a batch of renewals): one guarded
    update gives each its own `changes` (the same columns for all) and the `common` values, one insert
    writes their event rows. Raises IllegalTransition (nothing written) when the table forbids the move,
    and ConcurrentChange when any of them is no longer `old` (the caller rolls the transaction back)."""
    new = next_status(old, event)
    if not moves:
        return 0
    at = now()
    columns = sorted(moves[0].changes)
    if any(sorted(move.changes) != columns for move in moves):
        raise ValueError("transition_many gives every subscription the same columns")
    values = rows_cte("moves", {"subscription_id": _TABLE.c.id.type, **{key: _TABLE.c[key].type for key in columns}},
                      [(move.subscription_id, *(move.changes[key] for key in columns)) for move in moves])
    moved = db.session.execute(
        sa.update(_TABLE).where(_TABLE.c.id == values.c.subscription_id, _TABLE.c.status == old.value)
        .values({"status": new.value, "updated_at": at, **common, **{key: values.c[key] for key in columns}})
        .returning(_TABLE.c.id)
    ).scalars().all()
    if len(moved) != len(moves):
        missing = sorted({move.subscription_id for move in moves} - set(moved))
        raise ConcurrentChange(f"subscriptions {missing[:5]} are no longer {old.value}")
    connection().execute(_EVENTS.insert(), [
        {"subscription_id": move.subscription_id, "transition": event.value, "from_status": old, "to_status": new,
         "reason": move.reason, "actor_id": actor_id, "data": move.data, "at": at} for move in moves])
    return len(moved)


def start_subscription(user: User, plan: Plan, *, reason: str, actor_id: int | None = None) -> Subscription:
    """Create the customer's live subscription on `plan`, starting now (trial first if the plan has one)."""
    if live_subscription(user.id) is not None:
        raise SubscriptionError(f"{user.email} already has a live subscription")
    started = now()
    event = Transition.START_TRIAL if plan.trial_days else Transition.ACTIVATE
    status = next_status(None, event)
    if status is SubscriptionStatus.TRIALING:
        period_end = started + timedelta(days=plan.trial_days)
    else:
        period_end = add_intervals(started, plan.interval_unit, plan.interval_count, 1)
    subscription = Subscription(
        user_id=user.id,
        plan=plan,
        status=status,
        billing_anchor=started,
        current_period_start=started,
        current_period_end=period_end,
        trial_end=period_end if status is SubscriptionStatus.TRIALING else None,
    )
    db.session.add(subscription)
    db.session.flush()
    db.session.add(
        SubscriptionEvent(
            subscription_id=subscription.id,
            transition=event.value,
            from_status=None,
            to_status=status,
            reason=reason,
            actor_id=actor_id,
            data={"plan": plan.code},
            at=started,
        )
    )
    db.session.flush()
    return subscription


__all__ = [
    "ConcurrentChange",
    "Move",
    "IllegalTransition",
    "NoDefaultPlan",
    "default_plan",
    "live_subscription",
    "lock",
    "lock_with_owner",
    "start_subscription",
    "transition",
    "transition_many",
]
