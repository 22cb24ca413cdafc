"""Subscription page: upgrade (preview, card, 3-D Secure), downgrade, cancel and undo, past due."""
from __future__ import annotations

import re
from datetime import timedelta

import pytest
import sqlalchemy as sa

from portal.billing.lifecycle import SubscriptionStatus
from portal.extensions import db
from portal.models import EntryKind, Invoice, InvoiceStatus, LineKind, Payment, PaymentStatus, Plan, Subscription
from portal.services import invoices, usage, wallet
from portal.services.invoices import LineDraft
from portal.services.subscriptions import live_subscription
from tests.conftest import AuthActions, add_card, authenticate_3ds, both_databases, browser_login

DECLINING = "4000000000000341"
THREE_D_SECURE = "4000002500003155"


def _plan(code: str) -> Plan:
    return db.session.scalar(sa.select(Plan).where(Plan.code == code))


def _sub(user) -> Subscription:
    db.session.expire_all()
    return live_subscription(user.id)


def _put_on(user, code: str) -> Subscription:
    """Move the user's subscription to another plan directly (setup for downgrade/cancel tests)."""
    sub = live_subscription(user.id)
    sub.plan_id = _plan(code).id
    db.session.commit()
    return sub


def _text(html: str) -> str:
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).strip()


def _fields(html: str) -> dict[str, str]:
    return dict(re.findall(r'<input[^>]*name="(csrf_token|token)"[^>]*value="([^"]*)"', html))


def _preview(client, code: str) -> tuple[str, dict[str, str]]:
    response = client.get(f"/subscription/change/{code}")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    return html, _fields(html)


def test_overview_shows_plan_status_period_and_next_invoice(alice_client):
    html = alice_client.get("/subscription").get_data(as_text=True)
    text = _text(html)
    assert "Free Active" in text
    assert "Current period 31 Jan 2026 – 28 Feb 2026" in text
    assert "Next invoice On 28 Feb 2026" in text and "Estimated total $0.00" in text
    assert "Cancel subscription" not in text  # nothing to cancel on Free
    assert 'href="/plans"' in html


@both_databases
def test_upgrade_end_to_end_with_wallet_and_card(alice_client, alice, stripe_server):
    add_card(alice)
    wallet.credit(alice.id, 400, kind=EntryKind.CREDIT, reason="goodwill", idempotency_key="gw")
    db.session.commit()

    html, fields = _preview(alice_client, "premium")
    text = _text(html)
    assert "Upgrade to Premium" in text
    assert "Premium from 31 Jan 2026 to 28 Feb 2026 $9.99" in text
    assert "Due now $9.99" in text
    assert "From your wallet $4.00" in text
    assert "Charged to your card $5.99 (Visa •••• 4242)" in text
    assert "New period 31 Jan 2026 – 28 Feb 2026" in text
    assert re.fullmatch(r"[0-9a-f]{32}", fields["token"])

    response = alice_client.post("/subscription/change/premium", data=fields)
    assert response.status_code == 302 and response.headers["Location"] == "/subscription"
    page = _text(alice_client.get("/subscription").get_data(as_text=True))
    assert "You are now on the Premium plan" in page and "Premium Active" in page
    assert _sub(alice).plan.code == "premium"
    invoice = db.session.scalar(sa.select(Invoice).where(Invoice.user_id == alice.id, Invoice.reason == "upgrade"))
    assert invoice.status is InvoiceStatus.PAID and invoice.total == 999
    assert {p.provider: p.amount for p in db.session.scalars(sa.select(Payment))} == {"wallet": 400, "stripe": 599}
    detail = _text(alice_client.get(f"/invoices/{invoice.number}").get_data(as_text=True))
    assert f"Invoice {invoice.number} Paid" in detail
    assert "Wallet Succeeded $4.00" in detail and "Card (Visa •••• 4242) Succeeded $5.99" in detail

    # The same confirmation sent again (a double click) is not a second upgrade.
    again = alice_client.post("/subscription/change/premium", data=fields)
    assert again.status_code == 302
    assert db.session.scalar(sa.select(sa.func.count(Invoice.id))) == 1


def test_declined_card_shows_the_error_and_changes_nothing(alice_client, alice, stripe_server):
    add_card(alice, DECLINING)
    _, fields = _preview(alice_client, "premium")
    response = alice_client.post("/subscription/change/premium", data=fields)
    assert response.status_code == 402
    html = response.get_data(as_text=True)
    assert "Your card was declined. Use another card or contact your bank." in html
    assert _fields(html)["token"] != fields["token"]  # a fresh preview to try again
    assert _sub(alice).plan.code == "free"
    assert db.session.scalar(sa.select(Invoice.status)) is InvoiceStatus.VOID


def test_without_a_card_the_preview_says_to_add_one(alice_client, alice):
    html, fields = _preview(alice_client, "premium")
    assert "you have no card saved" in html and 'href="/payment-methods"' in html
    response = alice_client.post("/subscription/change/premium", data=fields)
    assert response.status_code == 402
    assert "Add a card first" in response.get_data(as_text=True)
    assert _sub(alice).plan.code == "free"


def test_missing_unknown_or_stale_token_and_missing_csrf_are_refused(alice_client, alice, clock):
    _, fields = _preview(alice_client, "premium")
    url = "/subscription/change/premium"
    assert alice_client.post(url, data={"csrf_token": fields["csrf_token"]}).status_code == 400
    assert alice_client.post(url, data={**fields, "token": "not-a-token"}).status_code == 400
    forged = alice_client.post(url, data={**fields, "token": "0" * 32})
    assert forged.status_code == 400 and "This preview has expired" in forged.get_data(as_text=True)
    # A token from the preview of another plan does not confirm this one.
    _, business = _preview(alice_client, "business")
    assert alice_client.post(url, data={**fields, "token": business["token"]}).status_code == 400
    clock.advance(minutes=31)
    stale = alice_client.post(url, data=fields)
    assert stale.status_code == 400 and "Check the amounts below" in stale.get_data(as_text=True)
    no_csrf = alice_client.post(url, data={"token": fields["token"]})
    assert no_csrf.status_code == 400 and "security token" in no_csrf.get_data(as_text=True)
    assert _sub(alice).plan.code == "free"
    assert db.session.scalar(sa.select(sa.func.count(Invoice.id))) == 0


def test_unknown_or_hidden_plan_is_404_and_the_current_plan_says_so(alice_client):
    assert alice_client.get("/subscription/change/platinum").status_code == 404
    token = _fields(alice_client.get("/subscription").get_data(as_text=True))["csrf_token"]
    assert alice_client.post("/subscription/change/platinum", data={"csrf_token": token}).status_code == 404
    db.session.execute(sa.update(Plan).where(Plan.code == "pro").values(is_public=False))
    assert alice_client.get("/subscription/change/pro").status_code == 404
    response = alice_client.get("/subscription/change/free")
    html = response.get_data(as_text=True)
    assert "You are already on the Free plan." in html
    assert 'name="token"' not in html  # nothing to confirm


def test_downgrade_is_scheduled_for_period_end_and_can_be_undone(alice_client, alice):
    _put_on(alice, "premium")
    html, fields = _preview(alice_client, "free")
    text = _text(html)
    assert "Downgrade to Free" in text and "You keep Premium until 28 Feb 2026" in text
    assert "Nothing is charged today" in text

    response = alice_client.post("/subscription/change/free", data=fields)
    assert response.status_code == 302
    assert _sub(alice).scheduled_plan.code == "free" and _sub(alice).plan.code == "premium"
    page = _text(alice_client.get("/subscription").get_data(as_text=True))
    assert "Done: you move to Free on 28 Feb 2026. You keep Premium until then." in page
    assert "Downgrade scheduled. You move to Free ($0.00) on 28 Feb 2026" in page
    assert "Next invoice On 28 Feb 2026 Free plan (from then on) $0.00" in page
    plans = alice_client.get("/plans").get_data(as_text=True)
    assert "Starts 28 Feb 2026" in plans

    csrf = _fields(alice_client.get("/subscription").get_data(as_text=True))["csrf_token"]
    undone = alice_client.post("/subscription/undo", data={"csrf_token": csrf})
    assert undone.status_code == 302
    assert _sub(alice).scheduled_plan_id is None
    assert "you stay on the Premium plan" in alice_client.get("/subscription").get_data(as_text=True)


def test_cancel_needs_a_reason_then_cancels_at_period_end_and_is_undoable(alice_client, alice):
    _put_on(alice, "premium")
    csrf = _fields(alice_client.get("/subscription").get_data(as_text=True))["csrf_token"]
    refused = alice_client.post("/subscription/cancel", data={"csrf_token": csrf, "reason": ""})
    assert refused.status_code == 422
    assert "Choose the reason closest to yours." in refused.get_data(as_text=True)
    assert "<details class=\"cancel-box\" open>" in refused.get_data(as_text=True)
    bogus = alice_client.post("/subscription/cancel", data={"csrf_token": csrf, "reason": "hacked"})
    assert bogus.status_code == 422 and not _sub(alice).cancel_at_period_end

    done = alice_client.post("/subscription/cancel", data={
        "csrf_token": csrf, "reason": "too_expensive", "detail": "  Students budget  "})
    assert done.status_code == 302
    sub = _sub(alice)
    assert sub.cancel_at_period_end and sub.cancel_reason == "It costs too much: Students budget"
    page = _text(alice_client.get("/subscription").get_data(as_text=True))
    assert "Your subscription is cancelled. Premium stays active until 28 Feb 2026" in page
    assert "Undo cancellation" in page and "Ends on 28 Feb 2026" in page
    assert "Cancel at period end" not in page  # the form is gone once cancelled

    alice_client.post("/subscription/undo", data={"csrf_token": csrf})
    assert not _sub(alice).cancel_at_period_end
    # Nothing left to undo: a clear message, not an error page.
    again = alice_client.post("/subscription/undo", data={"csrf_token": csrf}, follow_redirects=True)
    assert again.status_code == 200 and "There is no scheduled change to undo." in again.get_data(as_text=True)


def test_cancelling_the_free_plan_is_a_form_error(alice_client, alice):
    csrf = _fields(alice_client.get("/subscription").get_data(as_text=True))["csrf_token"]
    response = alice_client.post("/subscription/cancel", data={"csrf_token": csrf, "reason": "other"})
    assert response.status_code == 422
    assert "The Free plan has nothing to cancel." in response.get_data(as_text=True)


def test_past_due_shows_the_grace_period_and_how_to_fix_it(alice_client, alice, clock):
    sub = _put_on(alice, "premium")
    sub.status = SubscriptionStatus.PAST_DUE
    sub.grace_until = clock.now() + timedelta(days=3)
    invoice = invoices.create_invoice(alice.id, "USD", [LineDraft(LineKind.PLAN, "Premium renewal", 999)],
                                      reason="renewal", subscription_id=sub.id)
    db.session.commit()
    html = alice_client.get("/subscription").get_data(as_text=True)
    text = _text(html)
    assert "Premium Past due" in text
    assert "Your features keep working until 03 Feb 2026, 09:00 UTC" in text
    assert 'href="/payment-methods"' in html
    assert f'href="/invoices/{invoice.number}"' in html
    assert f'action="/invoices/{invoice.number}/pay"' in html and "Pay $9.99 now" in text
    # Changing plans waits until the payment is settled; said plainly, not a 500.
    preview = alice_client.get("/subscription/change/business")
    assert preview.status_code == 200
    assert "Settle the failed payment first, then change plans." in preview.get_data(as_text=True)


@both_databases
def test_next_invoice_adds_usage_so_far(alice_client, alice):
    _put_on(alice, "business")
    usage.record(alice.id, "seats", 150)
    usage.record(alice.id, "api_calls", 250_000)
    db.session.commit()
    text = _text(alice_client.get("/subscription").get_data(as_text=True))
    assert "Business plan $49.00" in text
    assert "Seats: 150 seats so far" in text and "$1,200.00" in text
    assert "API calls: 250,000 calls so far" in text and "$165.00" in text
    assert "Estimated total $1,414.00" in text


def _start_3ds_upgrade(client, alice):
    add_card(alice, THREE_D_SECURE)
    _, fields = _preview(client, "premium")
    response = client.post("/subscription/change/premium", data=fields)
    assert response.status_code == 200
    payment = db.session.scalar(sa.select(Payment).where(Payment.provider == "stripe"))
    assert payment.status is PaymentStatus.REQUIRES_ACTION
    return response.get_data(as_text=True), payment, fields["csrf_token"]


def test_3d_secure_page_loads_stripe_js_and_confirm_settles(alice_client, alice, stripe_server, app):
    html, payment, csrf = _start_3ds_upgrade(alice_client, alice)
    intent = app.extensions["stripe_client"].v1.payment_intents.retrieve(payment.stripe_payment_intent_id)
    assert f'<script src="{stripe_server.url}/js.stripe.com/v3/"></script>' in html
    assert f'"{intent.client_secret}"' in html and "confirmCardPayment" in html
    assert f'Stripe("{app.config["STRIPE_PUBLISHABLE_KEY"]}")' in html
    assert f'action="/payments/{payment.id}/confirm"' in html
    assert _sub(alice).plan.code == "free"  # not until the bank says yes

    # Confirming before the bank's check asks for it again and changes nothing.
    early = alice_client.post(f"/payments/{payment.id}/confirm", data={"csrf_token": csrf})
    assert early.status_code == 200 and "has not confirmed this payment yet" in early.get_data(as_text=True)
    assert _sub(alice).plan.code == "free"

    authenticate_3ds(stripe_server.url, intent.client_secret, success=True)
    done = alice_client.post(f"/payments/{payment.id}/confirm", data={"csrf_token": csrf})
    assert done.status_code == 302 and done.headers["Location"] == "/subscription"
    assert _sub(alice).plan.code == "premium"
    db.session.refresh(payment)
    assert payment.status is PaymentStatus.SUCCEEDED
    assert db.session.scalar(sa.select(Invoice.status)) is InvoiceStatus.PAID
    page = alice_client.get("/subscription").get_data(as_text=True)
    assert "Payment confirmed. You are now on the Premium plan." in page
    # Posting again is harmless (settling is idempotent).
    assert alice_client.post(f"/payments/{payment.id}/confirm", data={"csrf_token": csrf}).status_code == 302
    assert db.session.scalar(sa.select(sa.func.count(Payment.id)).where(Payment.status == PaymentStatus.SUCCEEDED)) == 1


def test_failed_3d_secure_records_the_failure(alice_client, alice, stripe_server, app):
    _, payment, csrf = _start_3ds_upgrade(alice_client, alice)
    intent = app.extensions["stripe_client"].v1.payment_intents.retrieve(payment.stripe_payment_intent_id)
    authenticate_3ds(stripe_server.url, intent.client_secret, success=False)
    response = alice_client.post(f"/payments/{payment.id}/confirm", data={"csrf_token": csrf}, follow_redirects=True)
    assert "The card&#39;s authentication failed" in response.get_data(as_text=True)
    db.session.refresh(payment)
    assert payment.status is PaymentStatus.FAILED
    assert _sub(alice).plan.code == "free"
    assert db.session.scalar(sa.select(Invoice.status)) is InvoiceStatus.VOID


def test_only_the_payments_owner_may_confirm_it(alice_client, alice, bob, stripe_server, app):
    _, payment, _ = _start_3ds_upgrade(alice_client, alice)
    bob_client = app.test_client()
    assert AuthActions(bob_client).login("bob@example.com", "bob's long password").status_code == 302
    csrf = _fields(bob_client.get("/subscription").get_data(as_text=True))["csrf_token"]
    assert bob_client.post(f"/payments/{payment.id}/confirm", data={"csrf_token": csrf}).status_code == 404
    assert bob_client.post("/payments/999999/confirm", data={"csrf_token": csrf}).status_code == 404
    db.session.refresh(payment)
    assert payment.status is PaymentStatus.REQUIRES_ACTION


@pytest.mark.parametrize("url", ["/subscription", "/subscription/change/premium"])
def test_subscription_pages_need_a_login(client, catalog, url):
    response = client.get(url)
    assert response.status_code == 302 and "/login" in response.headers["Location"]





@pytest.mark.browser
def test_in_a_browser_calculator_swaps_errors_and_3d_secure_upgrades(alice, stripe_server, live_server,
                                                                      browser_page):
    add_card(alice, THREE_D_SECURE)
    page = browser_page
    browser_login(page, live_server)
    # htmx swaps the 422 answer in, so the field error shows without leaving the page.
    page.goto(f"{live_server}/plans")
    page.fill("#seats", "-1")
    page.click("#calculator button[type=submit]")
    page.wait_for_selector("#seats-error", timeout=5000)
    assert page.url == f"{live_server}/plans"
    page.fill("#seats", "150")
    page.click("#calculator button[type=submit]")
    page.wait_for_selector("#estimate-business", timeout=5000)
    assert "$1,249.00" in page.inner_text("#estimate-business .estimate-total")
    # Upgrade with a card whose bank asks for 3-D Secure: localstripe's Stripe.js shows its dialog.
    page.goto(f"{live_server}/subscription/change/premium")
    page.click("text=Pay $9.99 and upgrade")
    page.click("text=Complete authentication", timeout=10_000)
    page.wait_for_url(f"{live_server}/subscription", timeout=10_000)
    assert "You are now on the Premium plan" in page.inner_text(".flashes")
    assert _sub(alice).plan.code == "premium"


def test_a_plan_with_a_free_trial_is_tried_without_a_charge(alice_client, alice, clock):
    db.session.execute(sa.update(Plan).where(Plan.code == "premium").values(trial_days=14))
    db.session.commit()
    html, fields = _preview(alice_client, "premium")
    text = _text(html)
    assert "Try Premium free" in text and "Your 14-day free trial of Premium starts now and ends on 14 Feb 2026" in text
    assert "Nothing is charged today." in text and "add a card" in text  # no card saved yet
    response = alice_client.post("/subscription/change/premium", data=fields)
    assert response.status_code == 302
    page = _text(alice_client.get("/subscription").get_data(as_text=True))
    assert "Your 14-day free trial of Premium has started. Nothing is charged until 14 Feb 2026." in page
    assert "Premium Trial" in page and "Trial ends 14 Feb 2026" in page
    sub = _sub(alice)
    assert sub.status is SubscriptionStatus.TRIALING and sub.trial_end == clock.now() + timedelta(days=14)
    assert db.session.scalar(sa.select(sa.func.count(Invoice.id))) == 0
    assert db.session.scalar(sa.select(sa.func.count(Payment.id))) == 0


def test_an_upgrade_waiting_for_the_bank_is_shown_with_continue_and_cancel(alice_client, alice, stripe_server):
    _start_3ds_upgrade(alice_client, alice)
    html = alice_client.get("/subscription").get_data(as_text=True)
    box = _text(re.search(r'<article class="alert alert-warning" id="pending-upgrade">.*?</article>', html, re.S)[0])
    assert "Your upgrade to Premium is not finished. Your bank asks you to confirm the payment of $9.99." in box
    payment = db.session.scalar(sa.select(Payment))
    assert f'href="/payments/{payment.id}"' in html
    invoice = db.session.scalar(sa.select(Invoice))
    detail = alice_client.get(f"/invoices/{invoice.number}").get_data(as_text=True)
    assert f'<a href="/payments/{payment.id}">Confirm with your bank</a>' in detail
    assert "Confirm your payment" in alice_client.get(f"/payments/{payment.id}").get_data(as_text=True)
    cancelled = alice_client.post(f"/purchases/{invoice.number}/cancel", data={"csrf_token": _fields(html)["csrf_token"]},
                                  follow_redirects=True)
    assert f"Cancelled: {invoice.number} will not be charged." in _text(cancelled.get_data(as_text=True))
    db.session.expire_all()
    assert db.session.get(Invoice, invoice.id).status is InvoiceStatus.VOID
    assert db.session.get(Payment, payment.id).status is PaymentStatus.FAILED
    assert "pending-upgrade" not in alice_client.get("/subscription").get_data(as_text=True)


def test_the_amounts_shown_are_the_amounts_charged(alice_client, alice, stripe_server):
    add_card(alice)
    _, fields = _preview(alice_client, "premium")
    db.session.execute(sa.update(Plan).where(Plan.code == "premium").values(price_amount=1299))
    db.session.commit()
    response = alice_client.post("/subscription/change/premium", data=fields)
    assert response.status_code == 409
    text = _text(response.get_data(as_text=True))
    assert "The amounts changed since you opened this page." in text and "Due now $12.99" in text
    assert db.session.scalar(sa.select(sa.func.count(Invoice.id))) == 0
