"""In Debian's chromium, as support would: find the customer whose renewal failed, read their account,
double-click a refund (one refund), extend the grace period, grant a credit, mistype a form, then read
the audit log. Screenshots of each page are saved under test-artifacts/screenshots/."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from portal.billing.lifecycle import SubscriptionStatus
from portal.extensions import db
from portal.models import AuditLog, Payment, Plan, Refund, User
from portal.services.payments import cards
from portal.services.subscriptions import changes as plan_changes
from portal.services.subscriptions import live_subscription
from tests.conftest import add_card, browser_login, run_outbox_jobs
from worker import billing

pytestmark = pytest.mark.browser

DECLINED_LATER = "4000000000000341"


def _past_due_customer(alice: User, clock) -> Payment:
    add_card(alice)
    premium = db.session.scalar(sa.select(Plan).where(Plan.code == "premium"))
    assert plan_changes.upgrade(alice, premium, token=uuid.uuid4().hex).status == "paid"
    db.session.commit()
    run_outbox_jobs()
    cards.set_default(add_card(alice, DECLINED_LATER))
    db.session.commit()
    clock.set(datetime(2026, 2, 28, 9, tzinfo=timezone.utc))
    billing.renew_due()
    run_outbox_jobs()
    db.session.expire_all()
    assert live_subscription(alice.id).status is SubscriptionStatus.PAST_DUE
    return db.session.scalar(sa.select(Payment).where(Payment.user_id == alice.id, Payment.provider == "stripe",
                                                      Payment.status == "succeeded"))


def test_support_walks_through_a_customers_account(alice, stripe_server, clock, live_server, browser_page, shot):
    payment_id = _past_due_customer(alice, clock).id
    db.session.commit()  # and no more queries here until the end: SQLite's write lock is the app's
    page = browser_page
    browser_login(page, live_server, "staff@portal.test", "staff-password-1")

    page.goto(f"{live_server}/staff/customers")
    shot(page, "customers")
    page.fill("input[name=q]", "ali")  # the search answers as it is typed (htmx)
    page.wait_for_selector("#customer-list >> text=demo@portal.test")
    shot(page, "search")
    page.click("#customer-list >> text=Alice Demo")
    page.wait_for_selector("#customer-subscription")
    assert "past due" in page.inner_text("#customer-subscription")
    shot(page, "customer")

    # A refund to the card, double-clicked: one refund.
    page.click(f"#payment-{payment_id} summary")
    page.fill(f"#refund-{payment_id}-reason", "Charged twice by mistake")
    shot(page, "refund-form")
    page.dblclick(f"#payment-{payment_id} button[type=submit]")
    page.wait_for_selector("#customer-payments .sc-result")
    assert "asked of Stripe" in page.inner_text("#customer-payments .sc-result")
    shot(page, "refunded")

    # Extend grace, in place.
    page.click("#customer-subscription summary:has-text('Extend grace')")
    page.fill("#grace-days", "5")
    page.fill("#grace-reason", "New card is on its way")
    page.click("#customer-subscription button:has-text('Extend grace')")
    page.wait_for_selector("#customer-subscription .sc-result-success")
    assert "The grace period now ends on 08 Mar 2026" in page.inner_text("#customer-subscription")

    # A credit without a reason: the error in place, nothing written; then with one.
    page.click("#customer-wallet summary")
    page.fill("#credit-amount", "7.50")
    page.click("#customer-wallet button[type=submit]")
    page.wait_for_selector("#customer-wallet .field-error")
    assert "Give a reason" in page.inner_text("#customer-wallet")
    shot(page, "credit-error")
    page.fill("#credit-reason", "Sorry for the trouble")
    page.click("#customer-wallet button[type=submit]")
    page.wait_for_selector("#customer-wallet .sc-result-success")
    assert "$7.50 credited" in page.inner_text("#customer-wallet")
    page.wait_for_selector("#customer-actions >> text=support.credit")  # the audit trail, swapped out of band
    shot(page, "after-actions")

    page.goto(f"{live_server}/staff/audit?action=support.")
    shot(page, "audit")
    page.goto(f"{live_server}/staff/audit?from=yesterday")
    shot(page, "audit-bad-filter")

    db.session.rollback()
    assert db.session.scalar(sa.select(sa.func.count(Refund.id))) == 1
    assert [a for (a,) in db.session.execute(sa.select(AuditLog.action).where(AuditLog.action.startswith("support."))
                                             .order_by(AuditLog.id))] == [
        "support.refund", "support.extend_grace", "support.credit"]


def test_support_schedules_a_plan_change_for_an_active_customer(alice, stripe_server, live_server, browser_page,
                                                               shot):
    add_card(alice)
    premium = db.session.scalar(sa.select(Plan).where(Plan.code == "premium"))
    assert plan_changes.upgrade(alice, premium, token=uuid.uuid4().hex).status == "paid"
    db.session.commit()
    run_outbox_jobs()
    alice_id = alice.id
    db.session.commit()
    page = browser_page
    browser_login(page, live_server, "staff@portal.test", "staff-password-1")
    page.goto(f"{live_server}/staff/customers/{alice_id}")
    page.click("#customer-subscription summary:has-text('Change plan')")
    page.click("#customer-subscription summary:has-text('Cancel')")
    page.select_option("#plan-plan", "basic")
    page.check("#plan-when-1")  # at the end of the period
    page.fill("#plan-reason", "Asked by email to move to Basic")
    shot(page, "subscription-forms")
    page.click("#customer-subscription button:has-text('Change plan')")
    page.wait_for_selector("#customer-subscription .sc-result-success")
    text = page.inner_text("#customer-subscription")
    assert "Basic starts with the renewal on 28 Feb 2026" in text and "Basic from 28 Feb 2026" in text
    assert "schedule_plan_change" in page.inner_text("#customer-events")  # swapped out of band
    shot(page, "plan-scheduled")
