"""The plan editor in Debian's chromium, as an admin walks it (issue #13's acceptance): create a plan, give
it a graduated tier table, hit a tier-overlap error (live in the preview, then on Save), fix it, publish
the plan and see it on the customer's /plans. Every page is saved under test-artifacts/screenshots/."""
from __future__ import annotations

import re
import uuid

import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.models import AuditLog, Invoice, Plan
from portal.services import wallet
from portal.services.subscriptions import changes as plan_changes
from tests.conftest import browser_login

pytestmark = pytest.mark.browser


def _row(page, n: int, name: str) -> str:
    return f"#tier-table input[name='tiers-{n - 1}-{name}']"


def _wait_text(page, selector: str, text: str) -> None:
    """Wait until the element shows `text` (the preview answers a moment after the typing)."""
    page.wait_for_function("([s, t]) => (document.querySelector(s)?.innerText || '').includes(t)", arg=[selector, text])


def test_an_admin_creates_a_graduated_plan_fixes_a_tier_overlap_and_publishes_it(catalog, live_server, browser_page,
                                                                                  shot):
    page, base = browser_page, live_server
    browser_login(page, base, "admin@portal.test", "admin-password-1")

    # The list of plans, with prices, listing and subscribers; the feature catalogue.
    page.goto(f"{base}/staff/plans")
    assert "Business" in page.inner_text("#plan-list") and "$49.00 / month" in page.inner_text("#plan-list")
    shot(page, "plans")
    page.click("text=Feature catalogue")
    assert "API calls" in page.inner_text("#feature-list")
    shot(page, "features")
    page.goto(f"{base}/staff/plans")

    # A new plan: the card beside the form follows the typing.
    page.click("#plan-new")
    page.fill("#name", "Team")
    page.fill("#code", "team")
    page.fill("#price", "29")
    page.fill("#trial_days", "14")
    _wait_text(page, "#plan-preview", "$29.00")
    assert "14-day free trial" in page.inner_text("#plan-preview")
    shot(page, "new-plan")
    page.click("#plan-save")
    page.wait_for_url(re.compile(r".*/staff/plans/\d+$"))
    assert "Created Team (team), hidden until you publish it" in page.inner_text(".flashes")
    shot(page, "plan-created")

    # Grant API calls with a graduated tier table.
    page.click("#feature-add >> text=API calls")
    page.wait_for_selector("#feature-form")
    page.select_option("#pricing_model", "tiered")
    page.fill(_row(page, 1, "first_unit"), "1")
    page.fill(_row(page, 1, "last_unit"), "1000")
    page.fill(_row(page, 1, "unit_price"), "0")
    page.click("#tier-add")
    page.wait_for_selector("#tier-2")
    assert page.input_value(_row(page, 2, "first_unit")) == "1001"  # where tier 1 ends
    # An overlap: tier 2 starts inside tier 1. The preview says so as it is typed.
    page.fill(_row(page, 2, "first_unit"), "900")
    page.fill(_row(page, 2, "unit_price"), "0.002")
    _wait_text(page, "#plan-preview", "Tier 2: overlaps tier 1")
    assert "Tier 2: overlaps tier 1" in page.inner_text("#preview-errors")
    shot(page, "overlap-in-preview")
    page.click("#feature-save")
    page.wait_for_selector("#tier-error")
    assert "Tier 2: overlaps tier 1: it must start at 1001, not 900" in page.inner_text("#tier-error")
    assert "tier-bad" in page.get_attribute("#tier-2", "class")
    shot(page, "overlap-on-save")

    # Fix it; a third tier added and a stray fourth removed with htmx; a sample use priced as it is typed.
    page.fill(_row(page, 2, "first_unit"), "1001")
    page.fill(_row(page, 2, "last_unit"), "10000")
    page.click("#tier-add")
    page.wait_for_selector("#tier-3")
    assert page.input_value(_row(page, 3, "first_unit")) == "10001"
    page.fill(_row(page, 3, "unit_price"), "0.001")
    page.click("#tier-add")
    page.wait_for_selector("#tier-4")
    page.click("#tier-4 .tier-remove")
    page.wait_for_selector("#tier-4", state="detached")
    page.fill("#sample", "150000")
    # $29 plan fee + 9,000 × $0.002 + 140,000 × $0.001
    _wait_text(page, "#plan-preview", "$187.00")
    assert "#preview-errors" not in page.inner_html("#plan-preview")
    assert "Graduated tiers" in page.inner_text("#plan-preview .plan-card")
    shot(page, "tiers-fixed-with-preview")
    page.click("#feature-save")
    page.wait_for_url(re.compile(r".*/staff/plans/\d+#feature-api_calls$"))
    assert "Saved API calls on Team" in page.inner_text(".flashes")
    assert "3 tiers" in page.inner_text("#feature-api_calls")

    # Publish, and the customer sees it.
    page.click("#plan-publish")
    page.wait_for_selector("text=Published Team")
    shot(page, "published")

    page.context.clear_cookies()
    browser_login(page, base)  # the demo customer
    page.goto(f"{base}/plans")
    card = page.inner_text("#plan-team")
    assert "$29.00" in card and "14-day free trial" in card
    assert "1,001–10,000" in card and "$0.002 each" in card and "10,001 and up" in card
    page.locator("#plan-team").scroll_into_view_if_needed()
    shot(page, "customer-plans")

    db.session.rollback()
    plan = db.session.scalar(sa.select(Plan).where(Plan.code == "team"))
    assert plan.is_public and [t.last_unit for t in plan.features[0].tiers] == [1000, 10000, None]
    actions = [a for a in db.session.scalars(sa.select(AuditLog.action).order_by(AuditLog.id))
               if not a.startswith("auth.")]
    assert actions == ["plan.create", "plan_feature.create", "plan.publish"]
    db.session.commit()


def test_a_price_change_says_how_many_subscribers_it_reaches(alice, live_server, browser_page, shot):
    wallet.credit(alice.id, 5000, reason="Test credit", idempotency_key=f"test:{uuid.uuid4()}")
    premium = db.session.scalar(sa.select(Plan).where(Plan.code == "premium"))
    assert plan_changes.upgrade(alice, premium, token=uuid.uuid4().hex).status == "paid"
    invoice = db.session.scalar(sa.select(Invoice).where(Invoice.user_id == alice.id, Invoice.total > 0))
    paid, plan_id = invoice.total, premium.id
    db.session.commit()

    page, base = browser_page, live_server
    browser_login(page, base, "admin@portal.test", "admin-password-1")
    page.goto(f"{base}/staff/plans/{plan_id}")
    assert "1 live subscriber: a new price or interval applies from their next renewal" in page.inner_text(
        "#price-notice")
    page.fill("#price", "12.99")
    _wait_text(page, "#plan-preview", "$12.99")
    shot(page, "premium-price-typed")
    page.click("#plan-save")
    page.wait_for_selector(".flash-warning")
    assert ("1 subscriber is affected: the new price applies from their next renewal. Past invoices do not change."
            in page.inner_text(".flashes"))
    shot(page, "premium-price-saved")

    db.session.rollback()
    assert db.session.get(Invoice, invoice.id).total == paid
    db.session.commit()
