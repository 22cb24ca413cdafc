"""A new customer's first visit, in Debian's chromium: the walk of issue #3.

Register → compare plans → price calculator → add a card with Stripe.js (localstripe's) → a
declining card fails clearly and changes nothing → upgrade from Free with the preview → new
limits on /usage → top up the wallet → the ledger row and the invoice. Every page is saved as a
screenshot in test-artifacts/screenshots/.
"""
from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.models import Invoice, InvoiceStatus, Payment, PaymentStatus, User
from portal.services import wallet
from portal.services.subscriptions import live_subscription
from tests.conftest import fill_card

pytestmark = pytest.mark.browser

EMAIL, PASSWORD = "carol@example.com", "carol's long password"


def add_card_in_browser(page, base: str, number: str, last4: str) -> None:
    page.goto(f"{base}/payment-methods")
    fill_card(page, number)
    page.click("#card-submit")
    page.wait_for_selector(f"text=•••• {last4} saved.")


def carol() -> User:
    db.session.rollback()
    user = db.session.scalar(sa.select(User).where(User.email == EMAIL))
    return user


def test_a_new_customer_registers_compares_upgrades_and_tops_up(catalog, stripe_server, live_server, browser_page,
                                                                 shot):
    page, base = browser_page, live_server

    # Register: a new account starts on the Free plan.
    page.goto(f"{base}/register")
    shot(page, "register")
    page.fill("#name", "Carol")
    page.fill("#email", EMAIL)
    page.fill("#password", PASSWORD)
    page.fill("#confirm", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/home")
    assert "Welcome! You are on the Free plan." in page.inner_text(".flashes")
    shot(page, "home")

    # Compare plans: every public plan, the current one marked.
    page.goto(f"{base}/plans")
    text = page.inner_text("main")
    for name in ("Free", "Premium", "Basic", "Pro", "Business"):
        assert name in text
    assert "$9.99" in text and "Current plan" in text
    shot(page, "plans")

    # The price calculator answers in place (htmx), without leaving the page.
    page.fill("#seats", "150")
    page.click("#calculator button[type=submit]")
    page.wait_for_selector("#estimate-business")
    assert page.url.startswith(f"{base}/plans")
    assert "$1,200.00" in page.inner_text("#estimate-business")  # 150 seats × $8 (volume)
    shot(page, "calculator")

    # A card that attaches but declines when charged: the upgrade fails clearly and nothing changes.
    add_card_in_browser(page, base, "4000000000000341", "0341")
    shot(page, "declining-card-saved")
    page.goto(f"{base}/subscription/change/premium")
    page.click("text=Pay $9.99 and upgrade")
    page.wait_for_selector("#change-error")
    assert "declined" in page.inner_text("#change-error")
    shot(page, "upgrade-declined")
    user = carol()
    assert live_subscription(user.id).plan.code == "free"
    assert wallet.get_wallet(user.id).balance == 0
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Payment)
                             .where(Payment.status == PaymentStatus.SUCCEEDED)) == 0
    db.session.commit()

    # Replace it with a good card through Stripe.js, and remove the declining one.
    add_card_in_browser(page, base, "4242424242424242", "4242")
    page.click("a:has-text('Remove') >> nth=0")
    page.click("button:has-text('Remove card')")
    page.wait_for_selector("text=•••• 0341 removed.")
    shot(page, "payment-methods")

    # Upgrade from Free: the preview shows what is due now, then confirm.
    page.goto(f"{base}/subscription/change/premium")
    preview = page.inner_text("main")
    assert "$9.99" in preview and "4242" in preview
    shot(page, "upgrade-preview")
    page.click("text=Pay $9.99 and upgrade")
    page.wait_for_url(f"{base}/subscription")
    assert "Premium" in page.inner_text("main")
    shot(page, "subscription")

    # The new limits apply at once.
    page.goto(f"{base}/usage")
    usage_text = page.inner_text("main")
    assert "Premium" in usage_text and "Unlimited" in usage_text
    shot(page, "usage")

    # Top up the wallet by card: credited once the payment succeeds; the ledger shows the row.
    page.goto(f"{base}/wallet")
    page.fill("#amount", "25.00")
    page.click("button:has-text('Add funds')")
    page.wait_for_load_state()
    shot(page, "after-topup")
    page.wait_for_selector("[data-testid=balance]:has-text('$25.00')")
    ledger = page.inner_text("#ledger")
    assert re.search(r"Top.?up", ledger, re.I) and "+$25.00" in ledger.replace(" ", "")
    shot(page, "wallet")

    # The upgrade's invoice, paid, in the list (beside the top-up's receipt) and in detail.
    page.goto(f"{base}/invoices")
    assert "Paid" in page.inner_text("main") or "paid" in page.inner_text("main")
    assert "Wallet top-up" in page.inner_text("main")
    shot(page, "invoices")
    page.click("tr:has-text('Plan upgrade'):has-text('Paid') a:has-text('INV-')")
    assert "Premium" in page.inner_text("main") and "$9.99" in page.inner_text("main")
    shot(page, "invoice")

    user = carol()
    assert live_subscription(user.id).plan.code == "premium"
    assert wallet.get_wallet(user.id).balance == 2500
    invoice = db.session.scalar(sa.select(Invoice).where(Invoice.user_id == user.id, Invoice.reason == "upgrade",
                                                         Invoice.status == InvoiceStatus.PAID))
    assert invoice is not None and invoice.total == 999
    db.session.commit()
