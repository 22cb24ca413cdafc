"""The seed's journey, lived day by day on real parts: an RQ worker process does the jobs, localstripe takes
the payments, the SMTP catcher collects the emails, and the billing clock is moved by `flask clock`
in its own process; the customer uses the pages and the API of an app that reads that same clock.

Day 1 sign up on Free; use the quiz twice (1 of 3 left), then up to the limit (403 with an upgrade
URL); day 11 upgrade to Premium with card 4242 (unlimited); a month later the renewal is paid, the
receipt emailed and the period extended by one calendar month; the card is replaced by
4000000000000341; the next renewal fails: past due, features still work, "renewal failed"; when
grace ends: expired, Free limits back, "expired" and "features restricted".
"""
from __future__ import annotations

import re
import shutil
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from devtools import mailcatcher
from devtools.embedded import EmbeddedMail, free_port
from portal import create_app
from portal.billing.lifecycle import SubscriptionStatus
from portal.extensions import db
from portal.models import Invoice, InvoiceStatus, PaymentMethod, Subscription, SubscriptionEvent, User
from portal.services import api_keys
from tests.conftest import AuthActions, PortalClient, add_card, base_config, csrf_from
from tests.worker.processes import Stack, wait_for

EMAIL = "learner@example.com"


@pytest.fixture
def stack(tmp_path, sqlite_template, redis_server, redis_conn, stripe_server):
    mail = EmbeddedMail(tmp_path / "mail", port=free_port()).start()
    path = tmp_path / "portal.db"
    shutil.copy(sqlite_template, path)
    stack = Stack(database_url=f"sqlite:///{path}", redis_url=redis_server.url, stripe_url=stripe_server.url,
                  mail_host=mail.host, mail_port=mail.port, instance=tmp_path)
    stack.mail = mail
    try:
        yield stack
    finally:
        stack.stop()
        mail.stop()


@pytest.fixture
def web(stack, tmp_path):
    """The customer's side: an app on the same database and services, reading the shared clock."""
    app = create_app({**base_config(stack.env["DATABASE_URL"], tmp_path), **stack.app_config()})
    app.test_client_class = PortalClient
    with app.app_context():
        from portal.seed import seed_demo

        seed_demo()
        db.session.commit()
        yield app
        db.session.remove()
        db.engine.dispose()


def _day(stack: Stack, when: str) -> None:
    db.session.commit()
    stack.flask("clock", "set", when, "--freeze")


def _run_due(stack: Stack) -> str:
    db.session.commit()
    out = stack.flask("jobs", "run-due", "--quiet").stdout
    assert "fanned-out jobs run by 1 worker(s)" in out, out  # the worker process did the work, not this one
    return out


def _mail(stack: Stack) -> list[tuple[str, str]]:
    return [(m["Subject"], m["To"]) for m in mailcatcher.read_messages(stack.mail.maildir)]


def _wait_for_mail(stack: Stack, count: int) -> list[tuple[str, str]]:
    return wait_for(lambda: len(_mail(stack)) >= count and _mail(stack), 30, f"{count} emails")


def _record(client, key: str, quantity: int = 1):
    return client.post("/api/v1/usage/record", json={"feature": "quiz", "quantity": quantity},
                       headers={"Authorization": f"Bearer {key}"})


def _sub() -> Subscription:
    db.session.expire_all()
    user = db.session.scalar(sa.select(User).where(User.email == EMAIL))
    return db.session.scalar(sa.select(Subscription).where(Subscription.user_id == user.id)
                             .order_by(Subscription.id.desc()).limit(1))


def _fields(html: str) -> dict[str, str]:
    return dict(re.findall(r'name="(csrf_token|token)"[^>]*value="([^"]*)"', html))


def test_the_seed_journey_on_real_workers_with_the_clock_moved_by_the_cli(stack, web):
    stack.start_workers(1)
    page = web.test_client()
    api = web.test_client()

    # Day 1: sign up, on the Free plan.
    _day(stack, "2027-01-01T09:00:00+00:00")
    assert AuthActions(page).register(EMAIL, "a long learner password", "Lee").status_code == 302
    user = db.session.scalar(sa.select(User).where(User.email == EMAIL))
    _, key = api_keys.create(user, "study app")
    db.session.commit()
    assert _sub().plan.code == "free"
    for _ in range(2):
        assert _record(api, key).status_code == 201
    left = api.get("/api/v1/usage", headers={"Authorization": f"Bearer {key}"}).get_json()
    quiz = next(f for f in left["features"] if f["feature"] == "quiz")
    assert (quiz["used"], quiz["limit"], quiz["remaining"]) == (2, 3, 1)
    assert _record(api, key).status_code == 201
    refused = _record(api, key)
    assert refused.status_code == 403 and refused.get_json()["upgrade_url"].endswith("/plans")

    # Day 11: upgrade to Premium with card 4242; unlimited from then on.
    _day(stack, "2027-01-11T09:00:00+00:00")
    add_card(user)
    fields = _fields(page.get("/subscription/change/premium").get_data(as_text=True))
    assert page.post("/subscription/change/premium", data=fields).status_code == 302
    sub = _sub()
    assert (sub.plan.code, sub.current_period_end) == ("premium", datetime(2027, 2, 11, 9, tzinfo=timezone.utc))
    assert _record(api, key, 10).status_code == 201
    _wait_for_mail(stack, 2)

    # Day 35: a week before the renewal, the reminder.
    _day(stack, "2027-02-04T09:00:00+00:00")
    assert "reminders 1" in _run_due(stack)

    # Day 42: the renewal is paid, the receipt emailed, the period extended by one calendar month.
    _day(stack, "2027-02-11T09:00:00+00:00")
    done = _run_due(stack)
    assert "renewed 1" in done and "failed 0" in done
    sub = _sub()
    assert (sub.status, sub.current_period_start, sub.current_period_end) == (
        SubscriptionStatus.ACTIVE, datetime(2027, 2, 11, 9, tzinfo=timezone.utc),
        datetime(2027, 3, 11, 9, tzinfo=timezone.utc))
    again = _run_due(stack)  # run again the same day: nothing charged, extended or emailed twice
    assert "renewed 0" in again and "invoices" not in again and "emails" not in again, again
    assert _sub().current_period_end == datetime(2027, 3, 11, 9, tzinfo=timezone.utc)

    # The card is replaced by one that will be declined.
    declining = add_card(user, "4000000000000341")
    old = db.session.scalar(sa.select(PaymentMethod).where(PaymentMethod.user_id == user.id,
                                                           PaymentMethod.id != declining.id))
    token = csrf_from(page, "/payment-methods")
    assert page.post(f"/payment-methods/{declining.id}/default", data={"csrf_token": token}).status_code == 303
    assert page.post(f"/payment-methods/{old.id}/remove", data={"csrf_token": token}).status_code == 303

    # Day 63: the next reminder; day 70: the renewal fails, past due, features still work.
    _day(stack, "2027-03-04T09:00:00+00:00")
    assert "reminders 1" in _run_due(stack)
    _day(stack, "2027-03-11T09:00:00+00:00")
    assert "failed 1" in _run_due(stack)
    sub = _sub()
    assert sub.status is SubscriptionStatus.PAST_DUE
    assert sub.grace_until == datetime(2027, 3, 14, 9, tzinfo=timezone.utc)
    assert _record(api, key, 5).status_code == 201  # Premium still works during grace
    assert "Pay $9.99 now" in page.get("/subscription").get_data(as_text=True)

    # Day 72: still in grace; the card is tried again (the try due on day 71, fixed interval), declined again;
    # the next would land when grace ends: none is scheduled, a person may look.
    _day(stack, "2027-03-13T09:00:00+00:00")
    done = _run_due(stack)
    assert "expired 0" in done and "retries 1" in done and "retries failed 1" in done
    # Day 73: grace ends unpaid: expired, the Free plan and its limits are back.
    _day(stack, "2027-03-14T09:00:00+00:00")
    assert "expired 1" in _run_due(stack)
    free = _sub()
    assert (free.plan.code, free.status) == ("free", SubscriptionStatus.ACTIVE)
    usage = api.get("/api/v1/usage", headers={"Authorization": f"Bearer {key}"}).get_json()
    quiz = next(f for f in usage["features"] if f["feature"] == "quiz")
    assert (quiz["limit"], quiz["remaining"]) == (3, 3)
    assert _record(api, key, 4).status_code == 403

    # The exact story, in the subscription events and in the mailbox.
    events = db.session.execute(
        sa.select(SubscriptionEvent.subscription_id, SubscriptionEvent.transition, SubscriptionEvent.from_status,
                  SubscriptionEvent.to_status)
        .join(Subscription, Subscription.id == SubscriptionEvent.subscription_id)
        .where(Subscription.user_id == user.id).order_by(SubscriptionEvent.id)).all()
    first, second = sorted({row.subscription_id for row in events})
    s = SubscriptionStatus
    assert [(row.subscription_id, row.transition, row.from_status, row.to_status) for row in events] == [
        (first, "activate", None, s.ACTIVE),
        (first, "change_plan", s.ACTIVE, s.ACTIVE),
        (first, "renew", s.ACTIVE, s.ACTIVE),
        (first, "payment_failed", s.ACTIVE, s.PAST_DUE),
        (first, "payment_failed", s.PAST_DUE, s.PAST_DUE),
        (first, "expire", s.PAST_DUE, s.EXPIRED),
        (second, "activate", None, s.ACTIVE),
    ]
    assert _wait_for_mail(stack, 8) == [
        ("You have used all your Quiz for this period", EMAIL),
        ("Your Premium plan is active", EMAIL),
        ("Your Premium plan renews on 11 Feb 2027", EMAIL),
        ("Receipt: your Premium plan is renewed", EMAIL),
        ("Your Premium plan renews on 11 Mar 2027", EMAIL),
        ("Your Premium renewal payment did not go through", EMAIL),
        ("Your Premium plan has ended", EMAIL),
        ("Your features are now those of the Free plan", EMAIL),
    ]
    invoices = db.session.execute(sa.select(Invoice.reason, Invoice.status, Invoice.total)
                                  .where(Invoice.user_id == user.id).order_by(Invoice.id)).all()
    assert [tuple(row) for row in invoices] == [
        ("upgrade", InvoiceStatus.PAID, 999), ("renewal", InvoiceStatus.PAID, 999),
        ("renewal", InvoiceStatus.UNCOLLECTIBLE, 999)]
    assert "Traceback" not in stack.worker_log()


def test_a_worker_killed_after_stripe_took_the_renewal_charge_renews_once_when_run_again(stack, web):
    """kill -9 of the work horse right after Stripe accepted the charge, before our commit (fault injected in
    the worker process: tests/faults/sitecustomize.py); then the jobs run again."""
    from portal.models import EmailLog, Payment, Wallet, WalletEntry
    from portal.services import wallet
    from tests.conftest import stripe_intents

    _day(stack, "2027-01-11T09:00:00+00:00")
    page = web.test_client()
    assert AuthActions(page).register(EMAIL, "a long learner password", "Lee").status_code == 302
    user = db.session.scalar(sa.select(User).where(User.email == EMAIL))
    add_card(user)
    fields = _fields(page.get("/subscription/change/premium").get_data(as_text=True))
    assert page.post("/subscription/change/premium", data=fields).status_code == 302
    wallet.credit(user.id, 300, reason="Goodwill", idempotency_key="goodwill")  # the renewal: $3 wallet + $6.99 card
    db.session.commit()
    stack.start_workers(1, fault="kill_after_stripe_charge")

    _day(stack, "2027-02-11T09:00:00+00:00")
    first = _run_due(stack)
    assert "renewed 0" in first  # the work horse died before it could record anything
    fired = stack.fault_marker("kill_after_stripe_charge")
    assert fired.exists(), stack.worker_log()
    killed_intent = fired.read_text().split()[1]
    [renewal] = db.session.scalars(sa.select(Invoice).where(Invoice.user_id == user.id, Invoice.reason == "renewal")).all()
    assert renewal.status is InvoiceStatus.OPEN
    assert [i.status for i in stripe_intents(user) if i.id == killed_intent] == ["succeeded"]  # Stripe has the money

    # Run again (after the job's lease and the in-flight window): Stripe is asked, the payment settled once.
    stack.flask("clock", "advance", "16m")
    assert "renewed 1" in _run_due(stack)
    assert "renewed 0" in _run_due(stack)
    db.session.expire_all()
    assert _sub().current_period_end == datetime(2027, 3, 11, 9, tzinfo=timezone.utc)
    assert db.session.scalar(sa.select(sa.func.count(Invoice.id)).where(
        Invoice.user_id == user.id, Invoice.reason == "renewal")) == 1
    db.session.refresh(renewal)
    assert renewal.status is InvoiceStatus.PAID
    card_parts = db.session.scalars(sa.select(Payment).where(Payment.invoice_id == renewal.id,
                                                             Payment.provider == "stripe")).all()
    assert [(p.status.value, p.amount, p.stripe_payment_intent_id) for p in card_parts] == [
        ("succeeded", 699, killed_intent)]
    renewal_intents = [i for i in stripe_intents(user)
                       if i.status == "succeeded" and i.metadata.to_dict().get("payment_id") == str(card_parts[0].id)]
    assert len(renewal_intents) == 1 and renewal_intents[0].amount == 699
    assert len([i for i in stripe_intents(user) if i.status == "succeeded"]) == 2  # the upgrade and the renewal
    ledger = db.session.scalars(sa.select(WalletEntry.amount).join(Wallet, Wallet.id == WalletEntry.wallet_id)
                                .where(Wallet.user_id == user.id, WalletEntry.reference == f"invoice:{renewal.number}")
                                ).all()
    assert ledger == [-300]
    receipts = db.session.scalars(sa.select(EmailLog.template).where(EmailLog.user_id == user.id,
                                                                     EmailLog.template == "renewal_succeeded")).all()
    assert len(receipts) == 1
    mail = wait_for(lambda: [m for m in _mail(stack) if m[0].startswith("Receipt: your Premium")], 30, "the receipt")
    assert mail == [("Receipt: your Premium plan is renewed", EMAIL)]
