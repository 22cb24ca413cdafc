"""In Debian's chromium: support finds the customer whose renewal failed, opens the failure, sees its attempts and
next retry, retries after the card is fixed and sees it resolved and the subscription active; then resolves other
failures in bulk from the list, a missing note refused in place. Every page is saved as a screenshot."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from portal.billing.lifecycle import SubscriptionStatus
from portal.extensions import db
from portal.models import ErrorStatus, OperationError, Plan, RetryStrategy, User
from portal.services import retries
from portal.services.payments import cards
from portal.services.subscriptions import changes as plan_changes
from portal.services.subscriptions import live_subscription
from tests.conftest import add_card, browser_login, run_outbox_jobs
from worker import billing

pytestmark = pytest.mark.browser

DECLINED_LATER = "4000000000000341"  # attaches, then every off-session charge is declined


def _renewal_declined(alice: User, clock) -> OperationError:
    add_card(alice)
    plan = db.session.scalar(sa.select(Plan).where(Plan.code == "premium"))
    assert plan_changes.upgrade(alice, plan, token=uuid.uuid4().hex).status == "paid"
    db.session.commit()
    run_outbox_jobs()
    cards.set_default(add_card(alice, DECLINED_LATER))
    db.session.commit()
    clock.set(datetime(2026, 2, 28, 9, 0, tzinfo=timezone.utc))
    billing.renew_due()
    run_outbox_jobs()
    db.session.expire_all()
    return db.session.scalar(sa.select(OperationError).where(OperationError.operation_type == "renewal_payment"))


def _others(clock) -> list[OperationError]:
    """Failures of other kinds, so the list and the report have something to compare."""
    from portal.clock import now

    made = []
    for i, (kind, code, strategy, minutes) in enumerate((
        ("webhook", "network", RetryStrategy.EXPONENTIAL, 7),
        ("webhook", "rate_limited", RetryStrategy.EXPONENTIAL, 95),
        ("payment_check", "timeout", RetryStrategy.EXPONENTIAL, 30),
        ("dispute", "fraudulent", RetryStrategy.MANUAL, None),
        ("refund", "card_declined", RetryStrategy.IMMEDIATE, 2),
    )):
        made.append(retries.record_failure(
            kind, code, f"{kind.replace('_', ' ').capitalize()} failed: {code}", dedupe_key=f"browser:{i}",
            strategy=strategy, context={"amount": 1500 + 100 * i, "currency": "usd"} if kind != "webhook" else {},
            next_retry_at=now() + timedelta(minutes=minutes) if minutes else None, attempts=1))
    db.session.commit()
    return made


def test_support_retries_a_failed_renewal_and_resolves_others_in_bulk(catalog, stripe_server, clock, live_server,
                                                                      browser_page, shot):
    alice = db.session.scalar(sa.select(User).where(User.email == "demo@portal.test"))
    error = _renewal_declined(alice, clock)
    assert error is not None and error.status is ErrorStatus.PENDING
    error_id, others = error.id, [(e.id, e.operation_type) for e in _others(clock)]
    db.session.commit()  # SQLite: every transaction holds the write lock; the live server must not wait for ours
    page, base = browser_page, live_server
    browser_login(page, base, "staff@portal.test", "staff-password-1")

    # The list: the failed report with its chart on top, then every unresolved failure, soonest retry first.
    page.goto(f"{base}/staff/failures")
    page.wait_for_selector("canvas.failure-report-chart[data-drawn]")
    assert page.inner_text("[data-testid=unresolved-count]") == "6"
    shot(page, "list")

    # Find the customer whose renewal failed.
    page.fill("input[name=customer]", "demo@")
    page.click("text=Filter")
    page.wait_for_url("**customer=demo%40**")
    rows = page.locator("tr.failure-row")
    assert rows.count() == 1 and "card_declined" in rows.first.inner_text()
    shot(page, "filtered-by-customer")

    # Open it: the attempts, the next retry, the subscription past due, the invoice at stake.
    page.click(f"a[href='/staff/failures/{error_id}']")
    page.wait_for_selector("#failure-timeline")
    assert "01 Mar, 09:00" in page.inner_text("[data-testid=next-retry]")
    assert page.inner_text("[data-testid=failed-attempts]").startswith("1")
    assert "Past due" in page.inner_text("#failure-subscription")
    assert "Amount due" in page.inner_text("#failure-invoice")
    shot(page, "detail")

    # A missing note is refused in place; nothing changes.
    page.click("#resolve-form button")
    page.wait_for_selector("#resolve-error")
    assert "Say why in a note" in page.inner_text("#resolve-error")
    shot(page, "note-missing")

    # The customer adds a working card; support retries from the page: resolved, the subscription active.
    cards.set_default(add_card(alice, "5555555555554444"))
    db.session.commit()
    page.click("#retry-form button")
    page.wait_for_selector(".failure-result")
    assert "Resolved" in page.inner_text(".failure-result")
    assert "Succeeded" in page.inner_text("#failure-timeline")
    assert "Active" in page.inner_text("#failure-subscription")
    shot(page, "retried-resolved")
    db.session.expire_all()
    assert live_subscription(alice.id).status is SubscriptionStatus.ACTIVE
    db.session.commit()

    # Back to the list: resolve two others in bulk, with a note; each row changes in place.
    page.goto(f"{base}/staff/failures")
    (first, _), (second, _) = others[:2]
    for other in (first, second):
        page.check(f"#failure-row-{other} input[name=ids]")
    page.select_option("select[name=action]", "resolve")
    page.fill("input[name=note]", "Stripe had an outage; the events were replayed by hand.")
    page.click("#bulk-form button[type=submit]")
    page.wait_for_selector("#bulk-result .flash")
    assert "Resolve: 2 resolved." in page.inner_text("#bulk-result")
    assert "Resolved" in page.inner_text(f"#failure-row-{first}")
    page.wait_for_selector("canvas.failure-report-chart[data-drawn]")
    assert page.inner_text("[data-testid=unresolved-count]") == "3"
    shot(page, "bulk-resolved")

    # Retry one row in place: a dispute has no automatic retry, so it stays with a person.
    dispute, kind = others[3]
    assert kind == "dispute"
    page.click(f"#failure-row-{dispute} button:has-text('Retry now')")
    page.wait_for_selector(f"#failure-row-{dispute} .failure-row-result")
    assert "Failed again (no_handler); waits for a person" in page.inner_text(f"#failure-row-{dispute}")
    shot(page, "row-retried")
