"""Subscription transitions: only through the table, always with an event row."""
from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.orm.attributes import set_committed_value

from portal.billing.lifecycle import TRANSITIONS, IllegalTransition, SubscriptionStatus, Transition
from portal.extensions import db
from portal.models import Plan, Subscription, SubscriptionEvent, User
from portal.services import subscriptions
from tests.conftest import START, both_databases


@pytest.fixture
def customer(catalog) -> User:
    return db.session.scalar(sa.select(User).where(User.email == "demo@portal.test"))


def _events(sub_id: int) -> list[SubscriptionEvent]:
    return list(db.session.scalars(sa.select(SubscriptionEvent).where(SubscriptionEvent.subscription_id == sub_id)
                                   .order_by(SubscriptionEvent.id)))


def test_sign_up_starts_on_the_free_plan_with_a_calendar_period(customer):
    sub = subscriptions.live_subscription(customer.id)
    assert sub.plan.code == "free" and sub.status is SubscriptionStatus.ACTIVE
    assert sub.current_period_start == START  # 31 Jan 09:00 UTC
    assert sub.current_period_end == START.replace(month=2, day=28)  # clamped, not 30 days
    [event] = _events(sub.id)
    assert event.transition == "activate" and event.from_status is None and event.to_status is SubscriptionStatus.ACTIVE


@both_databases
def test_every_illegal_move_raises_a_typed_error_and_writes_nothing(customer):
    sub = subscriptions.live_subscription(customer.id)
    db.session.commit()
    checked = 0
    for status in SubscriptionStatus:
        # Put the subscription in `status` directly (setup only), then try every forbidden event.
        db.session.execute(sa.update(Subscription).where(Subscription.id == sub.id).values(status=status))
        db.session.commit()
        before = len(_events(sub.id))
        for event, (allowed_from, _) in TRANSITIONS.items():
            if status in allowed_from:
                continue
            db.session.refresh(sub)
            with pytest.raises(IllegalTransition) as err:
                subscriptions.transition(sub, event, reason="test", actor_id=customer.id,
                                         cancel_reason="should not be written")
            assert err.value.current is status and err.value.event is event
            db.session.commit()
            db.session.expire_all()
            fresh = db.session.get(Subscription, sub.id)
            assert fresh.status is status and fresh.cancel_reason is None
            assert len(_events(sub.id)) == before
            checked += 1
    assert checked >= 20  # the table forbids far more than it allows


@both_databases
def test_legal_moves_write_one_event_each(customer):
    sub = subscriptions.live_subscription(customer.id)
    premium = db.session.scalar(sa.select(Plan).where(Plan.code == "premium"))
    path = [
        (Transition.CHANGE_PLAN, SubscriptionStatus.ACTIVE, {"plan_id": premium.id}),
        (Transition.PAYMENT_FAILED, SubscriptionStatus.PAST_DUE, {}),
        (Transition.PAYMENT_FAILED, SubscriptionStatus.PAST_DUE, {}),
        (Transition.RECOVER, SubscriptionStatus.ACTIVE, {}),
        (Transition.RENEW, SubscriptionStatus.ACTIVE, {}),
        (Transition.CANCEL, SubscriptionStatus.CANCELED, {"cancel_reason": "too expensive"}),
    ]
    for event, expected, changes in path:
        subscriptions.transition(sub, event, reason=event.value, actor_id=customer.id, **changes)
        db.session.commit()
        assert db.session.get(Subscription, sub.id).status is expected
    events = _events(sub.id)
    assert [e.transition for e in events] == ["activate"] + [e.value for e, _, _ in path]
    assert [e.from_status for e in events[1:]] == [SubscriptionStatus.ACTIVE, SubscriptionStatus.ACTIVE,
                                                   SubscriptionStatus.PAST_DUE, SubscriptionStatus.PAST_DUE,
                                                   SubscriptionStatus.ACTIVE, SubscriptionStatus.ACTIVE]
    assert db.session.get(Subscription, sub.id).plan_id == premium.id
    with pytest.raises(IllegalTransition):
        subscriptions.transition(sub, Transition.RECOVER, reason="too late")


@both_databases
def test_a_stale_status_is_a_concurrent_change_not_a_silent_overwrite(customer):
    sub = subscriptions.live_subscription(customer.id)
    db.session.commit()
    # Another transaction moves it first.
    db.session.execute(sa.update(Subscription).where(Subscription.id == sub.id)
                       .values(status=SubscriptionStatus.PAST_DUE))
    db.session.commit()
    set_committed_value(sub, "status", SubscriptionStatus.ACTIVE)  # our stale in-memory view
    with pytest.raises(subscriptions.ConcurrentChange):
        subscriptions.transition(sub, Transition.RENEW, reason="renewal")
    db.session.rollback()
    assert len(_events(sub.id)) == 1


@both_databases
def test_one_live_subscription_per_customer(customer):
    free = subscriptions.default_plan()
    with pytest.raises(subscriptions.SubscriptionError):
        subscriptions.start_subscription(customer, free, reason="again")
    # The database refuses it too, even past the service check.
    db.session.add(Subscription(user_id=customer.id, plan=free, status=SubscriptionStatus.ACTIVE,
                                billing_anchor=START, current_period_start=START,
                                current_period_end=START.replace(month=2, day=28)))
    with pytest.raises(sa.exc.IntegrityError):
        db.session.flush()
