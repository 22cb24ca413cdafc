"""POST /webhooks/stripe: signature on the raw body, events stored by id and handled once, in any order."""
from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.parse
import urllib.request
import uuid

import pytest
import sqlalchemy as sa

from portal.extensions import db
from portal.models import (
    EntryKind, ErrorStatus, Invoice, InvoiceStatus, OperationError, Payment, PaymentMethod, PaymentStatus, Refund,
    RefundStatus, RetryStrategy, User, Wallet, WalletEntry, WebhookEvent,
)
from portal.payments import gateway
from portal.services import payments, wallet
from portal.services import webhooks as webhook_service
from portal.services.wallet import topups
from tests.conftest import add_card, assert_money_consistent, both_databases, charge_at_stripe, open_topup

SECRET = "whsec_test_secret"


@pytest.fixture
def app_config() -> dict:
    return {"STRIPE_WEBHOOK_SECRET": SECRET}


@pytest.fixture
def alice(catalog, stripe_server) -> User:
    return db.session.scalar(sa.select(User).where(User.email == "demo@portal.test"))


def sign(body: bytes, timestamp: int | None = None, secret: str = SECRET) -> str:
    """Stripe's scheme: t=<ts>,v1=<hex HMAC-SHA256(secret, "<ts>.<body>")>."""
    ts = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={digest}"


def event(event_type: str, obj: dict, event_id: str | None = None) -> dict:
    return {"id": event_id or f"evt_{uuid.uuid4().hex[:16]}", "object": "event", "type": event_type,
            "created": int(time.time()), "data": {"object": obj}}


def deliver(client, payload: dict, **sign_kwargs):
    body = json.dumps(payload).encode()
    return client.post("/webhooks/stripe", data=body, content_type="application/json",
                       headers={"Stripe-Signature": sign(body, **sign_kwargs)})


def stored_events() -> list[WebhookEvent]:
    db.session.expire_all()
    return list(db.session.scalars(sa.select(WebhookEvent).order_by(WebhookEvent.id)))


def balance(user_id: int) -> int:
    db.session.expire_all()
    return db.session.scalar(sa.select(Wallet.balance).where(Wallet.user_id == user_id)) or 0


def topup_charged_but_not_settled(user: User, amount: int = 2500) -> tuple[Payment, dict]:
    """A top-up whose charge succeeded at Stripe while our side never recorded it (as after a crash).

    Returns the payment and the PaymentIntent as Stripe reports it (what the event carries).
    """
    payment = open_topup(user, amount)
    intent = charge_at_stripe(payment)
    assert intent["status"] == "succeeded"
    return payment, intent


def paid_topup(user: User, amount: int) -> Payment:
    outcome = topups.buy(user, amount, "USD", uuid.uuid4().hex, card_label="Visa •••• 4242")
    db.session.commit()
    assert outcome.status == "paid"
    return outcome.payment


# --- the signature --------------------------------------------------------------------------------

def test_a_tampered_body_is_refused(client, app):
    body = json.dumps(event("customer.created", {"id": "cus_1"})).encode()
    signature = sign(body)
    tampered = body.replace(b"cus_1", b"cus_2")
    response = client.post("/webhooks/stripe", data=tampered, content_type="application/json",
                           headers={"Stripe-Signature": signature})
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "bad_signature"
    assert stored_events() == []


@pytest.mark.parametrize("headers", [
    {},
    {"Stripe-Signature": "garbage"},
    {"Stripe-Signature": "t=123,v1=deadbeef"},
])
def test_a_missing_or_wrong_signature_is_refused(client, app, headers):
    body = json.dumps(event("customer.created", {"id": "cus_1"})).encode()
    response = client.post("/webhooks/stripe", data=body, content_type="application/json", headers=headers)
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "bad_signature"
    assert stored_events() == []


def test_a_signature_from_another_secret_is_refused(client, app):
    body = json.dumps(event("customer.created", {"id": "cus_1"})).encode()
    response = client.post("/webhooks/stripe", data=body, content_type="application/json",
                           headers={"Stripe-Signature": sign(body, secret="whsec_someone_else")})
    assert response.status_code == 400 and stored_events() == []


def test_an_old_timestamp_is_refused(client, app):
    payload = event("customer.created", {"id": "cus_1"})
    response = deliver(client, payload, timestamp=int(time.time()) - 600)
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "bad_signature"
    assert stored_events() == []
    # The same body signed now is fine: it was the age that was refused.
    assert deliver(client, payload).status_code == 200


def test_a_signed_body_that_is_not_an_event_is_refused(client, app):
    body = b'{"hello": "world"}'
    response = client.post("/webhooks/stripe", data=body, content_type="application/json",
                           headers={"Stripe-Signature": sign(body)})
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "bad_payload"


def test_unknown_events_are_stored_as_ignored_and_answered_200(client, app):
    payload = event("customer.created", {"id": "cus_1"})
    response = deliver(client, payload)  # no CSRF token: the endpoint is exempt, the signature is the check
    assert response.status_code == 200 and response.get_json()["status"] == "ignored"
    [stored] = stored_events()
    assert (stored.stripe_event_id, stored.type, stored.status) == (payload["id"], "customer.created", "ignored")
    assert stored.payload["data"]["object"]["id"] == "cus_1" and stored.processed_at is not None


# --- payment intents --------------------------------------------------------------------------------

@both_databases
def test_the_same_succeeded_event_twice_credits_the_top_up_once(client, alice):
    add_card(alice)
    payment, intent = topup_charged_but_not_settled(alice)
    assert balance(alice.id) == 0
    payload = event("payment_intent.succeeded", intent)
    first = deliver(client, payload)
    assert first.status_code == 200 and first.get_json() == {
        "received": True, "event": payload["id"], "status": "processed", "duplicate": False}
    second = deliver(client, payload)
    assert second.status_code == 200 and second.get_json()["duplicate"] is True
    assert balance(alice.id) == 2500
    entries = list(db.session.scalars(sa.select(WalletEntry)))
    assert [(e.kind, e.amount) for e in entries] == [(EntryKind.TOPUP, 2500)]
    db.session.refresh(payment)
    assert payment.status is PaymentStatus.SUCCEEDED and payment.stripe_payment_intent_id == intent["id"]
    assert [e.status for e in stored_events()] == ["processed"]
    # A different event about the same intent (Stripe resends with new ids too) changes nothing either.
    assert deliver(client, event("payment_intent.succeeded", intent)).status_code == 200
    assert balance(alice.id) == 2500


def test_a_late_succeeded_event_after_the_request_settled_does_nothing(client, alice):
    add_card(alice)
    payment = paid_topup(alice, 1500)
    intent = gateway.retrieve_intent(payment.stripe_payment_intent_id).to_dict()
    assert deliver(client, event("payment_intent.succeeded", intent)).status_code == 200
    assert balance(alice.id) == 1500


def test_payment_failed_after_succeeded_leaves_it_succeeded(client, alice):
    add_card(alice)
    payment, intent = topup_charged_but_not_settled(alice)
    failed_intent = {**intent, "status": "requires_payment_method",
                     "last_payment_error": {"code": "card_declined", "message": "Your card was declined."}}
    assert deliver(client, event("payment_intent.succeeded", intent)).status_code == 200
    assert deliver(client, event("payment_intent.payment_failed", failed_intent)).status_code == 200
    db.session.expire_all()
    payment = db.session.get(Payment, payment.id)
    assert payment.status is PaymentStatus.SUCCEEDED and payment.failure_code is None
    assert balance(alice.id) == 2500


def test_payment_failed_marks_a_pending_payment_failed_with_the_customers_message(client, alice):
    add_card(alice)
    payment = open_topup(alice, 1000)
    intent = {"id": "pi_failed_1", "object": "payment_intent", "amount": 1000, "currency": "usd",
              "status": "requires_payment_method", "metadata": {"payment_id": str(payment.id),
                                                                "user_id": str(alice.id)},
              "last_payment_error": {"code": "card_declined", "decline_code": "insufficient_funds"}}
    assert deliver(client, event("payment_intent.payment_failed", intent)).status_code == 200
    db.session.expire_all()
    payment = db.session.get(Payment, payment.id)
    assert payment.status is PaymentStatus.FAILED and payment.failure_code == "card_declined"
    assert payment.failure_message == "Your card was declined. Use another card or contact your bank."
    assert payment.stripe_payment_intent_id == "pi_failed_1"
    assert db.session.get(Invoice, payment.invoice_id).status is InvoiceStatus.VOID
    # Stripe reporting success after the failure: the money is recorded, given back to the card (its
    # purchase is closed, so nothing is credited) and shown to staff, never silently kept.
    succeeded = {**intent, "status": "succeeded", "last_payment_error": None}
    assert deliver(client, event("payment_intent.succeeded", succeeded)).status_code == 200
    db.session.expire_all()
    assert db.session.get(Payment, payment.id).status is PaymentStatus.SUCCEEDED and balance(alice.id) == 0
    [refund] = db.session.scalars(sa.select(Refund)).all()
    assert (refund.payment_id, refund.amount, refund.status) == (payment.id, 1000, RefundStatus.PENDING)
    flagged = db.session.scalar(sa.select(OperationError))
    assert (flagged.operation_type, flagged.error_code, flagged.strategy) == (
        "refund", "payment_not_applied", RetryStrategy.IMMEDIATE)
    assert "was already void" in flagged.message


def test_an_intent_that_does_not_match_our_payment_is_ignored(client, alice):
    add_card(alice)
    payment = open_topup(alice, 1000)
    wrong_amount = {"id": "pi_other", "amount": 999_999, "currency": "usd", "status": "succeeded",
                    "metadata": {"payment_id": str(payment.id), "user_id": str(alice.id)}}
    response = deliver(client, event("payment_intent.succeeded", wrong_amount))
    assert response.status_code == 200 and response.get_json()["status"] == "ignored"
    db.session.expire_all()
    assert db.session.get(Payment, payment.id).status is PaymentStatus.PENDING and balance(alice.id) == 0


# --- refunds and saved cards ----------------------------------------------------------------------

def test_charge_refunded_sets_the_refunded_amount_and_never_double_counts(client, alice):
    add_card(alice)
    payment = paid_topup(alice, 3000)
    intent_id = payment.stripe_payment_intent_id

    def refunded_event(total: int) -> dict:
        return event("charge.refunded", {"id": "ch_1", "object": "charge", "payment_intent": intent_id,
                                         "amount": 3000, "amount_refunded": total})

    assert deliver(client, refunded_event(1000)).status_code == 200
    assert deliver(client, refunded_event(1000)).status_code == 200  # another event, same total
    db.session.expire_all()
    assert db.session.get(Payment, payment.id).amount_refunded == 1000
    assert balance(alice.id) == 2000  # the refunded part of the top-up left the wallet, once
    assert deliver(client, refunded_event(3000)).status_code == 200
    assert deliver(client, refunded_event(2000)).status_code == 200  # an older event arriving late
    db.session.expire_all()
    payment = db.session.get(Payment, payment.id)
    assert payment.amount_refunded == 3000 and payment.status is PaymentStatus.REFUNDED
    assert balance(alice.id) == 0
    refunds = [(e.kind, e.amount, e.idempotency_key) for e in db.session.scalars(
        sa.select(WalletEntry).where(WalletEntry.kind == EntryKind.REFUND).order_by(WalletEntry.id))]
    assert refunds == [(EntryKind.REFUND, -1000, f"topup-refund:{payment.id}:1000"),
                       (EntryKind.REFUND, -2000, f"topup-refund:{payment.id}:3000")]
    assert_money_consistent(alice)


def test_a_refund_the_wallet_no_longer_covers_takes_what_is_there_and_tells_staff(client, alice):
    add_card(alice)
    payment = paid_topup(alice, 3000)
    wallet.debit(alice.id, 2500, reason="Payment of INV-9", idempotency_key="spent")  # spent most of it
    db.session.commit()
    charge = {"id": "ch_2", "object": "charge", "payment_intent": payment.stripe_payment_intent_id,
              "amount": 3000, "amount_refunded": 3000}
    assert deliver(client, event("charge.refunded", charge)).status_code == 200
    assert deliver(client, event("charge.refunded", charge)).status_code == 200  # Stripe resends it
    assert balance(alice.id) == 0
    shortfall = db.session.scalar(sa.select(OperationError))
    assert (shortfall.operation_type, shortfall.strategy, shortfall.status) == (
        "refund_shortfall", RetryStrategy.MANUAL, ErrorStatus.MANUAL)
    assert shortfall.context == {"payment_id": payment.id, "refunded": 3000, "taken": 500, "short": 2500,
                                 "currency": "USD"}
    assert_money_consistent(alice)


def test_a_dispute_is_left_for_a_person_with_what_they_need(client, alice):
    add_card(alice)
    payment = paid_topup(alice, 2000)
    dispute = {"id": "dp_1", "object": "dispute", "charge": "ch_9", "payment_intent": payment.stripe_payment_intent_id,
               "amount": 2000, "currency": "usd", "reason": "fraudulent", "status": "needs_response"}
    assert deliver(client, event("charge.dispute.created", dispute)).get_json()["status"] == "processed"
    assert deliver(client, event("charge.dispute.created", dispute)).get_json()["status"] == "processed"
    [error] = db.session.scalars(sa.select(OperationError)).all()
    assert (error.operation_type, error.error_code, error.strategy, error.status) == (
        "dispute", "fraudulent", RetryStrategy.MANUAL, ErrorStatus.MANUAL)
    assert error.user_id == alice.id and error.context["payment_id"] == payment.id
    assert "disputes charge ch_9 (2000 USD): fraudulent" in error.message
    assert balance(alice.id) == 2000  # nothing automatic happens to the money
    assert_money_consistent(alice)


def test_setup_intent_succeeded_saves_the_card_once(client, alice):
    customer = payments.ensure_customer(alice)
    db.session.commit()
    pm = gateway.client().v1.payment_methods.create(params={"type": "card", "card": {
        "number": "4242424242424242", "exp_month": 12, "exp_year": 2031, "cvc": "123"}})
    setup = {"id": "seti_1", "object": "setup_intent", "status": "succeeded", "customer": customer,
             "payment_method": pm.id}
    assert deliver(client, event("setup_intent.succeeded", setup)).get_json()["status"] == "processed"
    assert deliver(client, event("setup_intent.succeeded", setup)).get_json()["status"] == "processed"
    db.session.expire_all()
    saved = list(db.session.scalars(sa.select(PaymentMethod)))
    assert [(m.user_id, m.stripe_payment_method_id, m.is_default) for m in saved] == [(alice.id, pm.id, True)]
    stranger = {**setup, "customer": "cus_not_ours"}
    assert deliver(client, event("setup_intent.succeeded", stranger)).get_json()["status"] == "ignored"


def test_a_failing_handler_is_recorded_answered_500_and_handled_on_redelivery(client, alice, monkeypatch):
    # Fault injection: localstripe cannot be made to fail mid-handler, so the handler raises once.
    add_card(alice)
    payment, intent = topup_charged_but_not_settled(alice)
    real = webhook_service.HANDLERS["payment_intent.succeeded"]
    calls = []

    def flaky(obj):
        calls.append(obj["id"])
        if len(calls) == 1:
            raise ConnectionError("database went away")
        return real(obj)

    monkeypatch.setitem(webhook_service.HANDLERS, "payment_intent.succeeded", flaky)
    payload = event("payment_intent.succeeded", intent)
    response = deliver(client, payload)
    assert response.status_code == 500 and response.get_json()["error"]["code"] == "handler_failed"
    [stored] = stored_events()
    assert stored.status == "failed" and balance(alice.id) == 0
    error = db.session.scalar(sa.select(OperationError))
    assert (error.operation_type, error.error_code, error.status) == ("webhook", "ConnectionError",
                                                                       ErrorStatus.PENDING)
    assert error.context["stripe_event_id"] == payload["id"]
    # Stripe delivers it again: now handled, once, and the error is resolved.
    assert deliver(client, payload).get_json()["status"] == "processed"
    assert balance(alice.id) == 2500
    db.session.expire_all()
    assert db.session.scalar(sa.select(OperationError)).status is ErrorStatus.RESOLVED
    assert deliver(client, payload).get_json()["duplicate"] is True and len(calls) == 2


# --- end to end: localstripe delivers the webhook -------------------------------------------------




def _register_webhook(stripe_url: str, name: str, url: str, secret: str) -> None:
    data = urllib.parse.urlencode({"url": url, "secret": secret}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{stripe_url}/_config/webhooks/{name}", data=data),
                                timeout=5) as response:
        assert response.status == 200


@pytest.fixture
def stripe_webhook(stripe_server, live_server):
    """localstripe sends its events to our live server for this test only."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    _register_webhook(stripe_server.url, name, f"{live_server}/webhooks/stripe", SECRET)
    yield
    # localstripe cannot forget a webhook; point it at a closed port so later tests are not disturbed.
    _register_webhook(stripe_server.url, name, "http://127.0.0.1:9/closed", SECRET)


def test_localstripe_delivers_a_signed_event_that_settles_the_top_up_once(alice, stripe_webhook):
    add_card(alice)
    payment, intent = topup_charged_but_not_settled(alice, amount=4200)
    db.session.commit()  # hold no SQLite lock while the server thread handles the delivery
    began = time.monotonic()
    deadline = began + 10
    status = None
    while time.monotonic() < deadline:
        status = db.session.scalar(sa.select(Payment.status).where(Payment.id == payment.id))
        db.session.commit()
        if status is PaymentStatus.SUCCEEDED:
            break
        time.sleep(0.2)
    assert status is PaymentStatus.SUCCEEDED, "the webhook did not settle the top-up within 10 s"
    print(f"\nsettled by localstripe's webhook {time.monotonic() - began:.2f} s after the charge")
    time.sleep(1.5)  # any further deliveries (other events of the same charge) land meanwhile
    assert balance(alice.id) == 4200
    assert db.session.scalar(sa.select(sa.func.count()).select_from(WalletEntry)) == 1
    # (localstripe also forwards events that earlier tests caused a moment ago; those are ignored here.)
    received = [e for e in db.session.scalars(sa.select(WebhookEvent).where(
        WebhookEvent.type == "payment_intent.succeeded")) if e.payload["data"]["object"]["id"] == intent["id"]]
    assert [e.status for e in received] == ["processed"]
    db.session.commit()
