"""Racing and failing purchases over HTTP, as customers cause them: a double click, two tabs, the back
button at 3-D Secure, a bank that answers after the purchase closed, a Stripe that times out, and a
webhook arriving while the page settles the same payment.

The races run on PostgreSQL with threads (and on SQLite, whose writers queue). Stripe is slowed or
made to lose its answer at the HTTP layer under stripe-python (FaultyStripeHTTP), because localstripe
answers too fast to race and never times out. Every test ends with the money check: the charges
Stripe kept are exactly the paid purchases, and each wallet's ledger adds up to its balance.
"""
from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.models import Invoice, InvoiceStatus, Payment, PaymentStatus, Refund, Wallet, WalletEntry
from portal.payments import gateway
from tests.blueprints.customer.test_subscription import _fields, _preview, _sub, _text
from tests.blueprints.test_webhooks import SECRET, deliver, event
from tests.conftest import (
    AuthActions, add_card, assert_money_consistent, authenticate_3ds, both_databases, charge_at_stripe, open_topup,
    run_outbox_jobs, stripe_intents,
)

THREE_D_SECURE = "4000002500003155"
CHARGE = ("POST", "/v1/payment_intents")


@pytest.fixture
def app_config() -> dict:
    return {"STRIPE_WEBHOOK_SECRET": SECRET}


def _login(app):
    client = app.test_client()
    assert AuthActions(client).login("demo@portal.test", "demo-password-1").status_code == 302
    return client


def _slow_charges(faulty_stripe, seconds: float = 1.0) -> None:
    """Stripe takes its time to answer a charge, so a second request arrives while the first waits."""
    def slow(method, path):
        if (method, path) == CHARGE:
            time.sleep(seconds)
    faulty_stripe.after = slow


def _at_once(*calls):
    """Run the calls in threads released together; return their results in order."""
    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)

    def run(index, call):
        barrier.wait()
        results[index] = call()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


@both_databases
def test_a_double_click_on_the_same_confirm_is_one_charge_and_never_a_500(app, alice, stripe_server, faulty_stripe):
    add_card(alice)
    first = _login(app)
    _, fields = _preview(first, "premium")
    second = app.test_client()  # the same browser: the same session cookie, the same form
    second.set_cookie("session", first.get_cookie("session").value)
    _slow_charges(faulty_stripe)
    db.session.commit()
    answers = _at_once(lambda: first.post("/subscription/change/premium", data=fields),
                       lambda: second.post("/subscription/change/premium", data=fields))
    assert [a.status_code for a in answers] == [302, 302], [a.get_data(as_text=True)[:300] for a in answers]
    assert _sub(alice).plan.code == "premium"
    assert db.session.scalar(sa.select(sa.func.count(Invoice.id))) == 1
    assert len(stripe_intents(alice)) == 1
    assert_money_consistent(alice)


@both_databases
def test_two_tabs_confirming_upgrades_at_once_make_one_charge(app, alice, stripe_server, faulty_stripe):
    add_card(alice)
    tab_one, tab_two = _login(app), _login(app)
    _, premium = _preview(tab_one, "premium")
    _, business = _preview(tab_two, "business")
    _slow_charges(faulty_stripe)
    db.session.commit()
    answers = _at_once(lambda: tab_one.post("/subscription/change/premium", data=premium),
                       lambda: tab_two.post("/subscription/change/business", data=business))
    codes = sorted(a.status_code for a in answers)
    assert codes == [302, 409], [a.get_data(as_text=True)[:300] for a in answers]
    refused = _text(next(a for a in answers if a.status_code == 409).get_data(as_text=True))
    # Continue or cancel the first, never both; (on a machine slow enough that the first finished
    # before the second was priced, the second is re-priced from the new plan and shown again).
    assert "is still open" in refused or "The amounts changed since you opened this page" in refused
    assert _sub(alice).plan.code in ("premium", "business")
    assert len(stripe_intents(alice)) == 1
    assert_money_consistent(alice)


def test_confirming_the_same_3d_secure_upgrade_twice_asks_the_bank_once(alice_client, alice, stripe_server):
    """The back button from the bank's check, then Pay again: the same payment, not a second one."""
    add_card(alice, THREE_D_SECURE)
    _, fields = _preview(alice_client, "premium")
    first = alice_client.post("/subscription/change/premium", data=fields)
    again = alice_client.post("/subscription/change/premium", data=fields)
    assert first.status_code == again.status_code == 200
    [payment] = db.session.scalars(sa.select(Payment).where(Payment.provider == "stripe")).all()
    assert f'action="/payments/{payment.id}/confirm"' in again.get_data(as_text=True)
    [intent] = stripe_intents(alice)
    authenticate_3ds(stripe_server.url, intent.client_secret)
    done = alice_client.post(f"/payments/{payment.id}/confirm", data={"csrf_token": fields["csrf_token"]})
    assert done.status_code == 302 and _sub(alice).plan.code == "premium"
    assert len(stripe_intents(alice)) == 1
    assert_money_consistent(alice)


def test_the_confirm_page_never_answers_500_for_a_payment_on_a_closed_invoice(alice_client, alice, stripe_server):
    add_card(alice, THREE_D_SECURE)
    _, fields = _preview(alice_client, "premium")
    assert alice_client.post("/subscription/change/premium", data=fields).status_code == 200
    payment = db.session.scalar(sa.select(Payment).where(Payment.provider == "stripe"))
    # The invoice is closed while the bank still asks (staff voided it; the wallet paid it, before the fix).
    db.session.execute(sa.update(Invoice).values(status=InvoiceStatus.VOID))
    db.session.commit()
    [intent] = stripe_intents(alice)
    authenticate_3ds(stripe_server.url, intent.client_secret)  # ... and then the bank says yes
    response = alice_client.post(f"/payments/{payment.id}/confirm", data={"csrf_token": fields["csrf_token"]},
                                 follow_redirects=True)
    assert response.status_code == 200
    assert "is being refunded to your card" in _text(response.get_data(as_text=True))
    assert _sub(alice).plan.code == "free"
    assert run_outbox_jobs() == ["worker.payments.refund_payment", "worker.emails.send_email"]  # and its email
    db.session.expire_all()
    payment = db.session.get(Payment, payment.id)
    assert payment.status is PaymentStatus.REFUNDED
    assert db.session.scalar(sa.select(Refund.status)).value == "succeeded"
    assert_money_consistent(alice)


def test_a_timeout_is_not_a_decline_and_checking_again_charges_once(alice_client, alice, stripe_server,
                                                                    faulty_stripe):
    add_card(alice)
    faulty_stripe.fault = lambda method, path: "lost" if (method, path) == CHARGE else None
    _, fields = _preview(alice_client, "premium")
    response = alice_client.post("/subscription/change/premium", data=fields)
    page = _text(response.get_data(as_text=True))
    assert response.status_code == 202 and "Checking your payment" in page and "not be charged twice" in page
    payment = db.session.scalar(sa.select(Payment).where(Payment.provider == "stripe"))
    assert payment.status is PaymentStatus.PENDING
    assert db.session.scalar(sa.select(Invoice.status)) is InvoiceStatus.OPEN
    faulty_stripe.fault = lambda method, path: None
    checked = alice_client.post(f"/payments/{payment.id}/confirm", data={"csrf_token": fields["csrf_token"]})
    assert checked.status_code == 302 and _sub(alice).plan.code == "premium"
    assert "You are now on the Premium plan" in _text(alice_client.get("/subscription").get_data(as_text=True))
    assert len(stripe_intents(alice)) == 1
    assert_money_consistent(alice)


@both_databases
def test_the_page_and_the_webhook_settling_one_top_up_at_once_credit_it_once(app, alice, client, stripe_server):
    add_card(alice)
    payment = open_topup(alice, 4200)
    intent = charge_at_stripe(payment)  # Stripe charged; neither side has recorded it yet
    page = _login(app)
    csrf = _fields(page.get("/wallet").get_data(as_text=True))["csrf_token"]
    confirm_url = f"/wallet/topups/{payment.id}/confirm"
    db.session.commit()
    answers = _at_once(lambda: page.post(confirm_url, data={"csrf_token": csrf}),
                       lambda: deliver(app.test_client(), event("payment_intent.succeeded", intent)))
    assert [a.status_code for a in answers] == [303, 200]
    db.session.expire_all()
    assert db.session.scalar(sa.select(Wallet.balance).where(Wallet.user_id == alice.id)) == 4200
    assert db.session.scalar(sa.select(sa.func.count(WalletEntry.id))) == 1
    assert gateway.retrieve_intent(intent["id"]).status == "succeeded"
    assert_money_consistent(alice)


@both_databases
def test_two_refund_events_of_one_top_up_at_once_take_its_money_back_once(app, alice, stripe_server):
    add_card(alice)
    from portal.services.wallet import topups

    payment = topups.buy(alice, 3000, "USD", "t", card_label="Visa •••• 4242").payment
    db.session.commit()
    intent_id = payment.stripe_payment_intent_id
    db.session.commit()  # end the read before the threads write

    def refunded(total: int):
        charge = {"id": "ch_1", "object": "charge", "payment_intent": intent_id, "amount": 3000,
                  "amount_refunded": total}
        return lambda: deliver(app.test_client(), event("charge.refunded", charge))

    answers = _at_once(refunded(1000), refunded(3000), refunded(3000))
    assert [a.status_code for a in answers] == [200, 200, 200]
    db.session.expire_all()
    assert db.session.scalar(sa.select(Wallet.balance).where(Wallet.user_id == alice.id)) == 0
    taken = db.session.scalars(sa.select(WalletEntry.amount).where(WalletEntry.amount < 0)).all()
    assert sum(taken) == -3000
    assert db.session.get(Payment, payment.id).status is PaymentStatus.REFUNDED
