"""Renewals and the rest of the lifecycle (DESIGN §3.3–3.5, §4): the renewal sweep and its jobs, run the
way the scheduler runs them (the sweep, then the jobs it fanned out), with the clock moved day by day.

The jobs run in this process from the outbox (tests/worker/test_lifecycle_journey.py runs them on
real RQ worker processes). Stripe is localstripe; card 4000000000000341 attaches and is then
declined off session, as a card that stopped working does.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from portal.billing.lifecycle import SubscriptionStatus
from portal.extensions import db
from portal.models import (
    EmailLog, ErrorStatus, Invoice, InvoiceStatus, LineKind, OperationError, Payment, Plan, RetryStrategy,
    Subscription, SubscriptionEvent, User, Wallet, WalletEntry,
)
from portal.services import usage, wallet
from portal.services.subscriptions import changes as plan_changes
from portal.services.subscriptions import live_subscription, renewals
from portal.services.subscriptions.views import next_invoice
from tests.conftest import (
    START, add_card, assert_money_consistent, both_databases, run_outbox_jobs, stripe_intents, trial_plan,
)
from worker import billing
from worker import retries as retry_jobs

DECLINED_LATER = "4000000000000341"


@pytest.fixture
def alice(catalog, stripe_server) -> User:
    return db.session.scalar(sa.select(User).where(User.email == "demo@portal.test"))


def _plan(code: str) -> Plan:
    return db.session.scalar(sa.select(Plan).where(Plan.code == code))


def _sub(user: User) -> Subscription:
    db.session.expire_all()
    return live_subscription(user.id)


def _fund(user: User, amount: int) -> None:
    wallet.credit(user.id, amount, reason="Test credit", idempotency_key=f"test:{uuid.uuid4()}")
    db.session.commit()


def _upgrade(user: User, code: str) -> None:
    outcome = plan_changes.upgrade(user, _plan(code), token=uuid.uuid4().hex)
    assert outcome.status == "paid", outcome
    db.session.commit()
    run_outbox_jobs()


def _job(func, *args):
    """Run a job as a worker would: in its own transaction (the test's is committed first: on SQLite it
    would hold the write lock the job needs)."""
    db.session.commit()
    return func(*args)


def _run_due() -> dict[str, int]:
    """What the scheduler does every 5 minutes: the sweep, then the jobs it fanned out, then the retries."""
    swept = _job(billing.renew_due)
    run_outbox_jobs()
    _job(retry_jobs.process_pending_retries)
    run_outbox_jobs()
    db.session.expire_all()
    return swept


def _events(sub: Subscription) -> list[str]:
    return list(db.session.scalars(sa.select(SubscriptionEvent.transition)
                                   .where(SubscriptionEvent.subscription_id == sub.id).order_by(SubscriptionEvent.id)))


def _emails(user: User) -> list[str]:
    return list(db.session.scalars(sa.select(EmailLog.template).where(EmailLog.user_id == user.id)
                                   .order_by(EmailLog.id)))


def _invoices(user: User, reason: str = "renewal") -> list[Invoice]:
    return list(db.session.scalars(sa.select(Invoice).where(Invoice.user_id == user.id, Invoice.reason == reason)
                                   .order_by(Invoice.id)))


def _at(month: int, day: int, year: int = 2026) -> datetime:
    return datetime(year, month, day, 9, 0, tzinfo=timezone.utc)


# --- paid renewals ----------------------------------------------------------------------------------------

@both_databases
def test_a_wallet_paid_renewal_extends_the_period_from_the_anchor_through_month_ends(alice, clock):
    """Anchored on 31 January: renews on 28 February, 31 March, 30 April, 31 May, by the sweep and its job."""
    _fund(alice, 10_000)
    _upgrade(alice, "premium")
    sub = _sub(alice)
    assert (sub.billing_anchor, sub.current_period_end) == (START, _at(2, 28))
    seen = []
    for when in (_at(2, 28), _at(3, 31), _at(4, 30), _at(5, 31)):
        clock.set(when - timedelta(minutes=1))
        assert _run_due() == {"renewals": 0, "expiries": 0}  # not due a minute before
        clock.set(when)
        assert _run_due()["renewals"] == 1
        sub = _sub(alice)
        seen.append((sub.current_period_start, sub.current_period_end))
    assert seen == [(_at(2, 28), _at(3, 31)), (_at(3, 31), _at(4, 30)), (_at(4, 30), _at(5, 31)),
                    (_at(5, 31), _at(6, 30))]
    assert sub.billing_anchor == START and sub.status is SubscriptionStatus.ACTIVE
    renewals_paid = _invoices(alice)
    assert [(i.status, i.total, i.period_start) for i in renewals_paid] == [
        (InvoiceStatus.PAID, 999, start) for start in (_at(2, 28), _at(3, 31), _at(4, 30), _at(5, 31))]
    assert [i.idempotency_key for i in renewals_paid][0] == f"renewal:{sub.id}:{_at(2, 28).isoformat()}"
    assert _events(sub)[-4:] == ["renew"] * 4
    assert _emails(alice).count("renewal_succeeded") == 4
    debits = db.session.scalars(sa.select(WalletEntry.amount).join(Wallet, Wallet.id == WalletEntry.wallet_id)
                                .where(Wallet.user_id == alice.id, WalletEntry.amount < 0)).all()
    assert debits == [-999] * 5  # the upgrade and four renewals
    assert_money_consistent(alice)


def test_the_plan_fee_is_the_plans_price_at_renewal_time(alice, clock):
    _fund(alice, 10_000)
    _upgrade(alice, "premium")
    _plan("premium").price_amount = 1299  # staff raised the price: the next renewal charges it
    db.session.commit()
    clock.set(_at(2, 28))
    _run_due()
    [invoice] = _invoices(alice)
    assert [(line.kind, line.amount, line.description) for line in invoice.lines] == [
        (LineKind.PLAN, 1299, "Premium plan, 28 Feb 2026 – 31 Mar 2026")]


def test_a_renewal_bills_the_closing_periods_use_by_each_pricing_model_as_the_page_promised(alice, clock):
    _fund(alice, 200_000)
    _upgrade(alice, "business")
    for code, quantity in (("api_calls", 25_000), ("sms", 1_200), ("seats", 120), ("emails", 3_000),
                           ("tokens", 2_600)):
        assert usage.record(alice.id, code, quantity).allowed, code
    db.session.commit()
    clock.advance(days=10)
    promised = next_invoice(_sub(alice))
    clock.set(_sub(alice).current_period_end)
    _run_due()
    [invoice] = _invoices(alice)
    lines = {line.description.split(":")[0]: line for line in invoice.lines}
    assert {name: (line.kind, line.amount, line.quantity) for name, line in lines.items()} == {
        "Business plan, 28 Feb 2026 – 31 Mar 2026": (LineKind.PLAN, 4900, 1),
        "API calls": (LineKind.USAGE, 1500, 25_000),  # graduated: 10,000 free, 15,000 at $0.001
        "SMS": (LineKind.USAGE, 6000, 1_200),  # 3 packages of 500 at $20
        "Seats": (LineKind.USAGE, 96000, 120),  # volume: all 120 at $8
        "Emails sent": (LineKind.USAGE, 100, 3_000),  # flat beyond 1,000 free at $0.0005
        "AI tokens": (LineKind.OVERAGE, 600, 600),  # 600 beyond the 2,000 included at $0.01
    }
    assert invoice.total == promised.total == 4900 + 1500 + 6000 + 96000 + 100 + 600
    usage_line = lines["API calls"]
    assert usage_line.feature_id is not None and usage_line.period_end == _at(2, 28)
    assert [row["units"] for row in usage_line.breakdown] == [10_000, 15_000]
    assert invoice.status is InvoiceStatus.PAID
    # The new period counts from zero.
    assert usage.check(alice.id, "tokens", 2000).allowed
    assert_money_consistent(alice)


def test_a_card_paid_renewal_charges_the_default_card_off_session_once(alice, clock):
    add_card(alice)
    _upgrade(alice, "premium")
    clock.set(_at(2, 28))
    _run_due()
    _run_due()  # a second sweep finds nothing due
    [invoice] = _invoices(alice)
    assert invoice.status is InvoiceStatus.PAID
    intents = [i for i in stripe_intents(alice) if i.status == "succeeded"]
    assert [i.amount for i in intents] == [999, 999]  # the upgrade and the renewal
    assert _sub(alice).current_period_end == _at(3, 31)
    assert_money_consistent(alice)


# --- failure, grace, expiry, recovery ----------------------------------------------------------------------

def _premium_then_card_stops_working(alice, clock) -> Subscription:
    add_card(alice)
    _upgrade(alice, "premium")
    from portal.services.payments import cards

    bad = add_card(alice, DECLINED_LATER)
    cards.set_default(bad)
    db.session.commit()
    clock.set(_at(2, 28))
    _run_due()
    return _sub(alice)


def test_a_refused_renewal_goes_past_due_with_grace_and_features_keep_working(alice, clock):
    sub = _premium_then_card_stops_working(alice, clock)
    assert sub.status is SubscriptionStatus.PAST_DUE
    assert sub.grace_until == _at(2, 28) + timedelta(days=3)
    assert (sub.current_period_start, sub.current_period_end) == (_at(2, 28), _at(3, 31))
    assert _events(sub)[-1] == "payment_failed"
    [invoice] = _invoices(alice)
    assert invoice.status is InvoiceStatus.OPEN and invoice.amount_due == 999
    assert _emails(alice)[-1] == "renewal_failed"
    error = db.session.scalar(sa.select(OperationError).where(OperationError.subscription_id == sub.id))
    assert (error.operation_type, error.error_code, error.strategy, error.status, error.attempts) == (
        "renewal_payment", "card_declined", RetryStrategy.FIXED_INTERVAL, ErrorStatus.PENDING, 1)
    assert error.next_retry_at == _at(3, 1)
    assert usage.record(alice.id, "quiz", 50).allowed  # Premium's unlimited quiz still works in grace
    clock.set(_at(3, 3) - timedelta(minutes=1))
    assert _run_due() == {"renewals": 0, "expiries": 0}  # grace not over yet
    assert _sub(alice).status is SubscriptionStatus.PAST_DUE
    assert_money_consistent(alice)


def test_when_grace_ends_unpaid_the_subscription_expires_and_the_free_plan_is_back(alice, clock):
    old = _premium_then_card_stops_working(alice, clock)
    _fund(alice, 500)  # the wallet has a little: it paid part of the renewal
    clock.set(_at(3, 3, 2026) + timedelta(hours=1))
    swept = _run_due()
    assert swept == {"renewals": 0, "expiries": 1}
    db.session.refresh(old)
    assert old.status is SubscriptionStatus.EXPIRED and old.ended_at == _at(3, 3) + timedelta(hours=1)
    assert _events(old)[-2:] == ["payment_failed", "expire"]
    [invoice] = _invoices(alice)
    assert invoice.status is InvoiceStatus.UNCOLLECTIBLE
    free = _sub(alice)
    assert free.plan.code == "free" and free.status is SubscriptionStatus.ACTIVE and free.id != old.id
    assert _emails(alice)[-2:] == ["subscription_expired", "features_restricted"]
    restricted = db.session.scalar(sa.select(EmailLog).where(EmailLog.template == "features_restricted"))
    assert "Quiz: 3 per month" in restricted.context["limits"]
    assert usage.record(alice.id, "quiz", 3).allowed and not usage.check(alice.id, "quiz").allowed
    error = db.session.scalar(sa.select(OperationError).where(OperationError.subscription_id == old.id))
    assert error.status is ErrorStatus.GAVE_UP
    assert _run_due() == {"renewals": 0, "expiries": 0}
    assert_money_consistent(alice)


def test_a_new_card_while_past_due_pays_at_once_and_keeps_the_period(alice, clock):
    sub = _premium_then_card_stops_working(alice, clock)
    clock.advance(days=1)
    good = add_card(alice, "5555555555554444")
    outcome = renewals.retry_with_new_card(good)
    db.session.commit()
    run_outbox_jobs()
    assert outcome.status == "paid"
    sub = _sub(alice)
    assert (sub.status, sub.grace_until) == (SubscriptionStatus.ACTIVE, None)
    assert (sub.current_period_start, sub.current_period_end) == (_at(2, 28), _at(3, 31))  # as if paid on time
    assert _events(sub)[-2:] == ["payment_failed", "recover"]
    db.session.refresh(good)
    assert good.is_default
    error = db.session.scalar(sa.select(OperationError).where(OperationError.subscription_id == sub.id))
    assert error.status is ErrorStatus.RESOLVED
    assert _emails(alice)[-1] == "renewal_succeeded"
    clock.set(_at(3, 31))
    _run_due()
    assert _sub(alice).current_period_end == _at(4, 30)  # and renews on its anchor after that
    assert_money_consistent(alice)


def test_pay_now_from_the_subscription_page_recovers_the_subscription(alice, clock, app):
    sub = _premium_then_card_stops_working(alice, clock)
    [invoice] = _invoices(alice)
    client = app.test_client()
    from tests.conftest import AuthActions, csrf_from

    assert AuthActions(client).login("demo@portal.test", "demo-password-1").status_code == 302
    page = client.get("/subscription").get_data(as_text=True)
    assert f"/invoices/{invoice.number}/pay" in page and "Pay $9.99 now" in page
    _fund(alice, 999)  # the wallet pays it
    response = client.post(f"/invoices/{invoice.number}/pay", data={"csrf_token": csrf_from(client, "/subscription")})
    assert response.status_code == 302
    page = client.get("/subscription").get_data(as_text=True)
    assert "Your Premium plan is active until 31 Mar 2026" in page
    assert _sub(alice).status is SubscriptionStatus.ACTIVE
    again = client.post(f"/invoices/{invoice.number}/pay", data={"csrf_token": csrf_from(client, "/subscription")})
    assert again.status_code == 303  # nothing left to pay: no second payment
    assert db.session.scalar(sa.select(sa.func.count(Payment.id)).where(Payment.invoice_id == invoice.id)) == 2
    assert_money_consistent(alice)


def test_nobody_pays_another_customers_invoice(alice, bob, clock, app):
    _premium_then_card_stops_working(alice, clock)
    [invoice] = _invoices(alice)
    client = app.test_client()
    from tests.conftest import AuthActions, csrf_from

    AuthActions(client).login("bob@example.com", "bob's long password")
    response = client.post(f"/invoices/{invoice.number}/pay", data={"csrf_token": csrf_from(client, "/subscription")})
    assert response.status_code == 404


# --- trials, scheduled changes, reminders ---------------------------------------------------------------

def test_a_trial_converts_at_its_end_with_the_first_invoice(alice, clock):
    plan = trial_plan()
    add_card(alice)
    plan_changes.start_trial(alice, plan)
    db.session.commit()
    sub = _sub(alice)
    assert sub.status is SubscriptionStatus.TRIALING and sub.current_period_end == START + timedelta(days=14)
    clock.set(START + timedelta(days=14))
    _run_due()
    sub = _sub(alice)
    assert sub.status is SubscriptionStatus.ACTIVE
    assert sub.billing_anchor == START + timedelta(days=14)
    assert sub.current_period_end == datetime(2026, 3, 14, 9, tzinfo=timezone.utc)
    assert _events(sub)[-2:] == ["try_plan", "activate"]
    [invoice] = _invoices(alice)
    assert (invoice.status, invoice.total) == (InvoiceStatus.PAID, 1999)
    assert _emails(alice)[-1] == "subscription_activated"
    assert_money_consistent(alice)


def test_a_failed_trial_conversion_behaves_like_a_failed_renewal(alice, clock):
    plan = trial_plan()
    plan_changes.start_trial(alice, plan)  # no card at all
    db.session.commit()
    clock.set(START + timedelta(days=14))
    _run_due()
    sub = _sub(alice)
    assert sub.status is SubscriptionStatus.PAST_DUE and sub.grace_until == START + timedelta(days=17)
    assert _events(sub)[-1] == "payment_failed"
    assert _emails(alice)[-1] == "renewal_failed"
    error = db.session.scalar(sa.select(OperationError).where(OperationError.subscription_id == sub.id))
    assert (error.error_code, error.strategy) == ("no_payment_method", RetryStrategy.MANUAL)


def test_a_scheduled_downgrade_takes_effect_with_the_renewal(alice, clock):
    _fund(alice, 20_000)
    _upgrade(alice, "business")
    assert usage.record(alice.id, "api_calls", 20_000).allowed
    plan_changes.schedule_downgrade(alice, _plan("premium"))
    db.session.commit()
    clock.set(_at(2, 28))
    _run_due()
    sub = _sub(alice)
    assert sub.plan.code == "premium" and sub.scheduled_plan_id is None
    [invoice] = _invoices(alice)
    assert [(line.kind, line.amount) for line in invoice.lines] == [(LineKind.PLAN, 999), (LineKind.USAGE, 1000)]
    event = db.session.scalar(sa.select(SubscriptionEvent).where(SubscriptionEvent.subscription_id == sub.id)
                              .order_by(SubscriptionEvent.id.desc()).limit(1))
    assert event.transition == "renew" and event.data["plan_id"] == sub.plan_id


def test_a_cancellation_takes_effect_at_period_end_and_bills_the_last_periods_use(alice, clock):
    _fund(alice, 20_000)
    _upgrade(alice, "business")
    assert usage.record(alice.id, "api_calls", 20_000).allowed
    plan_changes.cancel_at_period_end(alice, "It costs too much")
    db.session.commit()
    old = _sub(alice)
    clock.set(_at(2, 28))
    _run_due()
    db.session.refresh(old)
    assert old.status is SubscriptionStatus.CANCELED and old.ended_at == _at(2, 28)
    assert _sub(alice).plan.code == "free"
    [final] = _invoices(alice)
    assert [(line.kind, line.amount) for line in final.lines] == [(LineKind.USAGE, 1000)]
    assert final.status is InvoiceStatus.PAID and final.purchase["type"] == "final_use"
    assert "features_restricted" in _emails(alice)
    assert _run_due() == {"renewals": 0, "expiries": 0}
    assert_money_consistent(alice)


def test_the_free_plan_starts_a_new_period_without_an_invoice(alice, clock):
    sub = _sub(alice)
    assert usage.record(alice.id, "quiz", 3).allowed
    db.session.commit()
    clock.set(sub.current_period_end)
    _run_due()
    sub = _sub(alice)
    assert sub.current_period_start == START + timedelta(days=28) or sub.current_period_start > START
    assert _invoices(alice) == [] and _emails(alice) == ["usage_limit_reached"]  # from the 3 quizzes only
    assert usage.check(alice.id, "quiz", 3).allowed  # the quota starts again


def test_a_reminder_goes_seven_days_before_a_paid_renewal_once_with_the_estimate(alice, clock):
    _fund(alice, 20_000)
    _upgrade(alice, "business")
    assert usage.record(alice.id, "api_calls", 20_000).allowed
    db.session.commit()
    clock.set(_at(2, 21) - timedelta(hours=1))
    assert _job(billing.send_renewal_reminders) == {"reminders": 0}
    clock.set(_at(2, 21))
    assert _job(billing.send_renewal_reminders) == {"reminders": 1}
    assert _job(billing.send_renewal_reminders) == {"reminders": 0}
    reminder = db.session.scalar(sa.select(EmailLog).where(EmailLog.template == "renewal_reminder"))
    assert reminder.context["amount"] == 4900 + 1000 and reminder.context["plan"] == "Business"
    assert reminder.subject == "Your Business plan renews on 28 Feb 2026"
    clock.set(_at(2, 28))
    _run_due()
    assert _sub(alice).current_period_end == _at(3, 31)
    clock.set(_at(3, 24))
    assert _job(billing.send_renewal_reminders) == {"reminders": 1}  # the next period's


def test_no_reminder_for_a_cancelled_or_free_subscription(alice, bob, clock):
    _fund(alice, 10_000)
    _upgrade(alice, "premium")
    plan_changes.cancel_at_period_end(alice, "no")
    db.session.commit()
    clock.set(_at(2, 22))
    assert _job(billing.send_renewal_reminders) == {"reminders": 0}


# --- exactly once -----------------------------------------------------------------------------------------

def test_running_the_renewal_again_for_the_same_period_bills_nothing_twice(alice, clock):
    _fund(alice, 10_000)
    _upgrade(alice, "premium")
    sub = _sub(alice)
    clock.set(_at(2, 28))
    assert renewals.renew(sub.id) == "renewed"
    db.session.commit()
    assert renewals.renew(sub.id) == "not_due"
    assert _job(billing.renew_subscriptions, [sub.id, sub.id]) == {}
    assert len(_invoices(alice)) == 1
    assert_money_consistent(alice)


def test_a_sweep_hands_each_due_subscription_out_once_until_its_lease_passes(alice, clock):
    _fund(alice, 10_000)
    _upgrade(alice, "premium")
    clock.set(_at(2, 28))
    assert _job(billing.renew_due) == {"renewals": 1, "expiries": 0}
    assert _job(billing.renew_due) == {"renewals": 0, "expiries": 0}  # the first job has not run yet: not again
    clock.advance(minutes=16)  # its job died: the lease passes and the next sweep hands it out again
    assert _job(billing.renew_due) == {"renewals": 1, "expiries": 0}
    run_outbox_jobs()  # both jobs run: the renewal happens once
    assert len(_invoices(alice)) == 1 and _sub(alice).current_period_end == _at(3, 31)


def test_missed_periods_are_renewed_one_by_one(alice, clock):
    _fund(alice, 10_000)
    _upgrade(alice, "premium")
    clock.set(_at(5, 1))  # the worker was down for three months
    _run_due()
    assert [i.period_start for i in _invoices(alice)] == [_at(2, 28), _at(3, 31), _at(4, 30)]
    assert _sub(alice).current_period_end == _at(5, 31)


def test_an_unanswered_renewal_charge_is_neither_failed_nor_charged_twice(alice, clock, faulty_stripe):
    add_card(alice)
    _upgrade(alice, "premium")
    clock.set(_at(2, 28))
    faulty_stripe.fault = lambda method, path: "lost" if (method, path) == ("POST", "/v1/payment_intents") else None
    _run_due()
    sub = _sub(alice)
    assert sub.status is SubscriptionStatus.ACTIVE and sub.current_period_end == _at(2, 28)  # waiting, not failed
    [invoice] = _invoices(alice)
    assert invoice.status is InvoiceStatus.OPEN
    [check] = db.session.scalars(sa.select(OperationError)).all()  # the retries ask Stripe, with backoff
    assert (check.operation_type, check.strategy, check.status, check.attempts) == \
        ("payment_check", RetryStrategy.EXPONENTIAL, ErrorStatus.PENDING, 1)
    faulty_stripe.fault = lambda method, path: None
    clock.advance(minutes=16)  # the renewal's lease passes too: the sweep leaves the charge to its check
    _run_due()
    assert _sub(alice).current_period_end == _at(3, 31)
    db.session.refresh(check)
    assert check.status is ErrorStatus.RESOLVED
    db.session.refresh(invoice)
    assert invoice.status is InvoiceStatus.PAID
    assert len([i for i in stripe_intents(alice) if i.status == "succeeded"]) == 2
    assert_money_consistent(alice)
