"""Paying: wallet first then card (localstripe through stripe-python), settled exactly once."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from portal.billing.lifecycle import SubscriptionStatus
from portal.extensions import db
from portal.models import (
    EntryKind, Invoice, InvoiceStatus, Payment, PaymentStatus, Plan, SubscriptionEvent, User,
    WalletEntry,
)
from portal.services import purchases, wallet
from portal.services.subscriptions import changes as plan_changes
from portal.services.subscriptions import live_subscription
from portal.services.wallet import topups
from tests.conftest import add_card, both_databases

DECLINING = "4000000000000341"


@pytest.fixture
def alice(catalog, stripe_server) -> User:
    return db.session.scalar(sa.select(User).where(User.email == "demo@portal.test"))


def _plan(code: str) -> Plan:
    return db.session.scalar(sa.select(Plan).where(Plan.code == code))


@both_databases
def test_upgrade_from_free_charges_the_card_and_applies_at_once(alice, clock):
    add_card(alice)
    preview = plan_changes.preview(alice, _plan("premium"))
    assert preview.is_upgrade and preview.amount_due == 999 and preview.card_part == 999
    outcome = plan_changes.upgrade(alice, _plan("premium"), token="t1")
    assert outcome.status == "paid", outcome.error
    db.session.expire_all()
    sub = live_subscription(alice.id)
    assert sub.plan.code == "premium" and sub.status is SubscriptionStatus.ACTIVE
    # From Free the paid period starts now: 31 Jan → 28 Feb.
    assert sub.current_period_start == clock.now() and sub.current_period_end.day == 28
    invoice = db.session.scalar(sa.select(Invoice).where(Invoice.reason == "upgrade"))
    assert invoice.status is InvoiceStatus.PAID and invoice.total == 999 and invoice.amount_paid == 999
    card = db.session.scalar(sa.select(Payment).where(Payment.provider == "stripe"))
    assert card.status is PaymentStatus.SUCCEEDED and card.stripe_payment_intent_id.startswith("pi_")
    change = db.session.scalar(sa.select(SubscriptionEvent).where(SubscriptionEvent.transition == "change_plan"))
    assert change.data["invoice"] == invoice.number


@both_databases
def test_wallet_pays_first_and_the_card_the_rest(alice):
    add_card(alice)
    wallet.credit(alice.id, 400, kind=EntryKind.CREDIT, reason="goodwill", idempotency_key="gw")
    db.session.commit()
    outcome = plan_changes.upgrade(alice, _plan("premium"), token="t1")
    assert outcome.status == "paid"
    db.session.expire_all()
    paid = {p.provider: p.amount for p in db.session.scalars(sa.select(Payment))}
    assert paid == {"wallet": 400, "stripe": 599}
    assert wallet.get_wallet(alice.id).balance == 0


@both_databases
def test_declined_card_changes_nothing(alice):
    add_card(alice, DECLINING)
    wallet.credit(alice.id, 300, kind=EntryKind.CREDIT, reason="goodwill", idempotency_key="gw")
    db.session.commit()
    outcome = plan_changes.upgrade(alice, _plan("premium"), token="t1")
    assert outcome.status == "failed" and outcome.error.code == "card_declined"
    assert "declined" in outcome.error.message
    db.session.expire_all()
    assert live_subscription(alice.id).plan.code == "free"
    assert wallet.get_wallet(alice.id).balance == 300  # the wallet part came back
    kinds = [e.kind for e in db.session.scalars(sa.select(WalletEntry).order_by(WalletEntry.id))]
    assert kinds == [EntryKind.CREDIT, EntryKind.PAYMENT, EntryKind.REFUND]
    assert db.session.scalar(sa.select(Invoice.status)) is InvoiceStatus.VOID
    card = db.session.scalar(sa.select(Payment).where(Payment.provider == "stripe"))
    assert card.status is PaymentStatus.FAILED and card.failure_code == "card_declined"


def test_no_card_and_too_little_in_the_wallet_is_refused_cleanly(alice):
    outcome = plan_changes.upgrade(alice, _plan("premium"), token="t1")
    assert outcome.status == "failed" and outcome.error.code == "no_payment_method"
    db.session.expire_all()
    assert live_subscription(alice.id).plan.code == "free"
    assert db.session.scalar(sa.select(Invoice.status)) is InvoiceStatus.VOID


def test_the_same_upgrade_form_twice_is_one_upgrade(alice):
    add_card(alice)
    assert plan_changes.upgrade(alice, _plan("premium"), token="same").status == "paid"
    db.session.commit()
    db.session.expire_all()
    # The same form again resumes the first upgrade: its answer, not a second charge.
    assert plan_changes.upgrade(alice, _plan("premium"), token="same").status == "paid"
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Invoice)) == 1
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Payment)) == 1


def test_mid_period_upgrade_between_paid_plans_is_prorated(alice, clock):
    add_card(alice)
    wallet.credit(alice.id, 10_000, kind=EntryKind.CREDIT, reason="credit", idempotency_key="c")
    db.session.commit()
    assert plan_changes.upgrade(alice, _plan("premium"), token="a").status == "paid"
    clock.advance(days=14)  # 14 of 28 days used: half the period remains
    preview = plan_changes.preview(alice, _plan("business"))
    assert preview.proration.credit == 500  # half of $9.99, rounded half-up
    assert preview.proration.charge == 2450  # half of $49.00
    assert preview.amount_due == 1950
    assert plan_changes.upgrade(alice, _plan("business"), token="b").status == "paid"
    db.session.expire_all()
    sub = live_subscription(alice.id)
    assert sub.plan.code == "business" and sub.current_period_end.day == 28  # same period kept


def test_settle_is_idempotent(alice):
    add_card(alice)
    outcome = topups.buy(alice, 2500, "USD", "t1", card_label="Visa •••• 4242")
    assert outcome.status == "paid"
    db.session.commit()
    assert purchases.settle(outcome.payment) == "unchanged"  # a late webhook finds it settled
    db.session.commit()
    assert wallet.get_wallet(alice.id).balance == 2500
    assert db.session.scalar(sa.select(sa.func.count()).select_from(WalletEntry)) == 1


def test_downgrade_and_cancel_wait_for_period_end_and_can_be_undone(alice):
    add_card(alice)
    plan_changes.upgrade(alice, _plan("business"), token="a")
    db.session.expire_all()
    sub = plan_changes.schedule_downgrade(alice, _plan("premium"))
    db.session.commit()
    assert sub.plan.code == "business" and sub.scheduled_plan.code == "premium"
    plan_changes.undo_scheduled_change(alice)
    plan_changes.cancel_at_period_end(alice, "too expensive")
    db.session.commit()
    sub = live_subscription(alice.id)
    assert sub.cancel_at_period_end and sub.cancel_reason == "too expensive" and sub.scheduled_plan_id is None
    assert sub.status is SubscriptionStatus.ACTIVE and sub.plan.code == "business"
    plan_changes.undo_scheduled_change(alice)
    db.session.commit()
    assert not live_subscription(alice.id).cancel_at_period_end
    with pytest.raises(plan_changes.PlanChangeError):
        plan_changes.undo_scheduled_change(alice)
