"""Errors and retries (issue #12): failed operations retried by their strategy as the days pass, every try
written down, the failed report and the staff alert. Stripe is localstripe throughout; where a failure
it cannot produce is needed (no answer, a refused connection), the fault is injected in the HTTP layer
under stripe-python by the `faulty_stripe` fixture, and each such test says so.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from portal.billing.lifecycle import SubscriptionStatus
from portal.extensions import db
from portal.models import (
    AlertState, EmailLog, ErrorStatus, Invoice, InvoiceStatus, OperationError, Payment, Plan, Refund,
    RefundStatus, RetryAttempt, RetryOutcome, RetryStrategy, Subscription, SubscriptionEvent, User,
)
from portal.services import payments, retries
from portal.services.payments import cards
from portal.services.retries import processor, report
from portal.services.retries.strategies import backoff_ceiling
from portal.services.subscriptions import changes as plan_changes
from portal.services.subscriptions import live_subscription
from tests.conftest import AuthActions, add_card, assert_money_consistent, run_outbox_jobs, stripe_intents
from worker import billing
from worker import payments as payment_jobs
from worker import retries as retry_jobs

DECLINED_LATER = "4000000000000341"  # attaches, then every off-session charge is declined


@pytest.fixture
def alice(catalog, stripe_server) -> User:
    return db.session.scalar(sa.select(User).where(User.email == "demo@portal.test"))


def _at(month: int, day: int, hour: int = 9) -> datetime:
    return datetime(2026, month, day, hour, 0, tzinfo=timezone.utc)


def _sub(user: User) -> Subscription:
    db.session.expire_all()
    return live_subscription(user.id)


def _upgrade(user: User, code: str = "premium") -> None:
    plan = db.session.scalar(sa.select(Plan).where(Plan.code == code))
    assert plan_changes.upgrade(user, plan, token=uuid.uuid4().hex).status == "paid"
    db.session.commit()
    run_outbox_jobs()


def _run_due() -> None:
    """What the scheduler runs every 5 minutes, in its order: renewals (and expiry), then the retries."""
    db.session.commit()
    billing.renew_due()
    run_outbox_jobs()
    db.session.commit()  # a job runs in its own transaction (on SQLite ours would hold the write lock)
    retry_jobs.process_pending_retries()
    run_outbox_jobs()
    db.session.expire_all()


def _attempts(error: OperationError) -> list[tuple]:
    return [(a.attempt_number, a.outcome, a.error_code, a.at, a.next_retry_at) for a in db.session.scalars(
        sa.select(RetryAttempt).where(RetryAttempt.operation_error_id == error.id).order_by(RetryAttempt.attempt_number))]


def _renewal_error(sub: Subscription) -> OperationError:
    return db.session.scalar(sa.select(OperationError).where(OperationError.subscription_id == sub.id,
                                                             OperationError.operation_type == "renewal_payment"))


def _events(sub: Subscription) -> list[str]:
    return list(db.session.scalars(sa.select(SubscriptionEvent.transition)
                                   .where(SubscriptionEvent.subscription_id == sub.id).order_by(SubscriptionEvent.id)))


def _card_stops_working(alice, clock, grace_days: int = 3) -> Subscription:
    """Premium bought on 31 January with a good card; then the default card declines; 28 February renews."""
    add_card(alice)
    _upgrade(alice)
    cards.set_default(add_card(alice, DECLINED_LATER))
    db.session.commit()
    clock.set(_at(2, 28))
    _run_due()
    sub = _sub(alice)
    assert sub.status is SubscriptionStatus.PAST_DUE and sub.grace_until == _at(2, 28) + timedelta(days=grace_days)
    return sub


# --- a declining card --------------------------------------------------------------------------------------

def test_a_declined_renewal_is_retried_daily_and_the_retry_after_a_new_card_succeeds_once(alice, clock, app):
    sub = _card_stops_working(alice, clock)
    error = _renewal_error(sub)
    assert (error.strategy, error.status, error.attempts, error.next_retry_at) == (
        RetryStrategy.FIXED_INTERVAL, ErrorStatus.PENDING, 1, _at(3, 1))
    assert (error.amount, error.currency) == (999, "USD")

    clock.set(_at(3, 1) - timedelta(minutes=1))  # not yet
    _run_due()
    assert _attempts(error) == []
    client = app.test_client()
    AuthActions(client).login("demo@portal.test", "demo-password-1")
    assert "We will try your card again on <strong>01 Mar 2026" in client.get("/subscription").get_data(as_text=True)

    clock.set(_at(3, 1))  # the first retry, at the configured time: declined again
    _run_due()
    db.session.refresh(error)
    assert _attempts(error) == [(2, "failed", "card_declined", _at(3, 1), _at(3, 2))]
    assert (error.status, error.attempts, error.next_retry_at) == (ErrorStatus.PENDING, 2, _at(3, 2))
    page = client.get("/subscription").get_data(as_text=True)
    assert "We will try your card again on <strong>02 Mar 2026" in page and "(1 retry so far)" in page

    good = add_card(alice, "5555555555554444")  # replaced on the card page's service, without paying at once
    cards.set_default(good)
    db.session.commit()
    clock.set(_at(3, 2))
    _run_due()
    db.session.refresh(error)
    assert [a[:3] for a in _attempts(error)] == [(2, "failed", "card_declined"), (3, "succeeded", None)]
    assert (error.status, error.next_retry_at) == (ErrorStatus.RESOLVED, None)
    sub = _sub(alice)
    assert (sub.status, sub.grace_until) == (SubscriptionStatus.ACTIVE, None)
    assert (sub.current_period_start, sub.current_period_end) == (_at(2, 28), _at(3, 31))
    assert _events(sub)[-3:] == ["payment_failed", "payment_failed", "recover"]
    [invoice] = db.session.scalars(sa.select(Invoice).where(Invoice.reason == "renewal")).all()
    assert invoice.status is InvoiceStatus.PAID
    succeeded = [i for i in stripe_intents(alice) if i.status == "succeeded"]
    assert [i.amount for i in succeeded] == [999, 999]  # the upgrade, and the renewal once
    templates = list(db.session.scalars(sa.select(EmailLog.template).where(EmailLog.user_id == alice.id)))
    assert templates.count("renewal_failed") == 1 and templates.count("renewal_succeeded") == 1

    clock.set(_at(3, 3))  # nothing more: no try, no expiry
    _run_due()
    assert len(_attempts(error)) == 2 and _sub(alice).status is SubscriptionStatus.ACTIVE
    assert_money_consistent(alice)


def test_without_a_new_card_the_tries_run_out_before_grace_ends_and_a_person_takes_over(alice, clock, app):
    sub = _card_stops_working(alice, clock)
    error = _renewal_error(sub)
    for day in (1, 2):
        clock.set(_at(3, day))
        _run_due()
    db.session.refresh(error)
    tries = _attempts(error)
    assert [(n, outcome, at) for n, outcome, _, at, _ in tries] == [(2, "failed", _at(3, 1)), (3, "failed", _at(3, 2))]
    assert tries[-1][-1] is None  # the last try scheduled none: three tries in all (RETRY_FIXED_MAX_ATTEMPTS)
    assert max(at for *_, at, _ in tries) < sub.grace_until  # every try landed before grace ends
    assert (error.status, error.attempts, error.next_retry_at) == (ErrorStatus.MANUAL, 3, None)
    client = app.test_client()
    AuthActions(client).login("demo@portal.test", "demo-password-1")
    assert "We will not try your card again on our own" in client.get("/subscription").get_data(as_text=True)

    clock.set(_at(3, 3))  # grace ends: expired, the error given up
    _run_due()
    db.session.refresh(error)
    assert error.status is ErrorStatus.GAVE_UP and len(_attempts(error)) == 2
    assert _sub(alice).plan.code == "free"
    assert_money_consistent(alice)


def test_a_shorter_grace_period_leaves_out_the_try_that_would_land_after_it(alice, clock, app):
    app.config["GRACE_PERIOD_DAYS"] = 2
    error = _renewal_error(_card_stops_working(alice, clock, grace_days=2))
    clock.set(_at(3, 1))
    _run_due()
    db.session.refresh(error)
    # a third try would be due on 2 March 09:00, the moment grace ends: not made, a person decides
    assert (error.status, error.attempts, error.next_retry_at) == (ErrorStatus.MANUAL, 2, None)


# --- a transient failure --------------------------------------------------------------------------------

def test_a_charge_stripe_does_not_answer_is_checked_with_growing_jittered_delays_then_paid_once(alice, clock,
                                                                                              faulty_stripe):
    """Fault injected at the gateway (localstripe cannot refuse a connection): every PaymentIntent request
    fails to connect until the fault is lifted."""
    add_card(alice)
    _upgrade(alice)
    clock.set(_at(2, 28))
    faulty_stripe.fault = lambda method, path: "unsent" if path.startswith("/v1/payment_intents") else None
    _run_due()
    check = db.session.scalar(sa.select(OperationError).where(OperationError.operation_type == "payment_check"))
    assert (check.strategy, check.status, check.attempts) == (RetryStrategy.EXPONENTIAL, ErrorStatus.PENDING, 1)
    assert _sub(alice).current_period_end == _at(2, 28)  # neither renewed nor failed: the outcome is unknown

    waits = [(check.next_retry_at - _at(2, 28), backoff_ceiling(1))]
    for _ in range(4):
        at = check.next_retry_at
        clock.set(at)
        _run_due()
        db.session.refresh(check)
        assert check.status is ErrorStatus.PENDING
        waits.append((check.next_retry_at - at, backoff_ceiling(check.attempts)))
    ceilings = [ceiling for _, ceiling in waits]
    assert ceilings == [timedelta(minutes=m) for m in (1, 2, 4, 8, 16)]  # doubling from RETRY_BACKOFF_BASE_SECONDS
    assert all(timedelta(0) <= wait <= ceiling for wait, ceiling in waits)
    assert len({wait for wait, _ in waits}) == len(waits) and any(wait < ceiling for wait, ceiling in waits)
    assert [a[1] for a in _attempts(check)] == ["failed"] * 4 and check.attempts == 5

    faulty_stripe.fault = lambda method, path: None
    clock.set(check.next_retry_at)
    _run_due()
    db.session.refresh(check)
    assert check.status is ErrorStatus.RESOLVED and [a[1] for a in _attempts(check)][-1] == "succeeded"
    sub = _sub(alice)
    assert (sub.status, sub.current_period_end) == (SubscriptionStatus.ACTIVE, _at(3, 31))
    # the upgrade's charge, and one for the renewal whatever the number of tries
    assert [(i.status, i.amount) for i in stripe_intents(alice)] == [("succeeded", 999)] * 2
    keys = set(faulty_stripe.keys_sent("/v1/payment_intents")[1:])
    assert len(keys) == 1  # every resend of the renewal's charge carried its one key
    assert_money_consistent(alice)


# --- a failing refund ---------------------------------------------------------------------------------

def test_a_failing_refund_is_tried_immediately_a_few_times_then_goes_to_manual(alice, clock, faulty_stripe):
    """Fault injected at the gateway: Stripe's refunds endpoint cannot be reached until it is lifted."""
    add_card(alice)
    _upgrade(alice)
    payment = db.session.scalar(sa.select(Payment).where(Payment.provider == "stripe"))
    refund, _ = payments.request_refund(payment, 999, why="test", reason="The customer asked")
    db.session.flush()
    refund_id = refund.id
    db.session.commit()
    faulty_stripe.fault = lambda method, path: "unsent" if path == "/v1/refunds" else None
    payment_jobs.refund_payment(refund_id)  # the refund job's own try
    ran = run_outbox_jobs()  # the immediate retries it asked for, one after another
    assert ran.count("worker.retries.retry_error") == 2
    error = db.session.scalar(sa.select(OperationError).where(OperationError.operation_type == "refund"))
    assert (error.strategy, error.status, error.attempts, error.next_retry_at) == (
        RetryStrategy.IMMEDIATE, ErrorStatus.MANUAL, 3, None)
    assert [(n, outcome, at) for n, outcome, _, at, _ in _attempts(error)] == [
        (2, "failed", clock.now()), (3, "failed", clock.now())]  # at once, not later
    assert db.session.get(Refund, refund_id).status is RefundStatus.PENDING
    _run_due()
    assert len(_attempts(error)) == 2  # manual: the processor leaves it to a person

    faulty_stripe.fault = lambda method, path: None
    staff = db.session.scalar(sa.select(User).where(User.email == "staff@portal.test"))
    assert processor.retry_now(error.id, actor_id=staff.id) is RetryOutcome.SUCCEEDED
    db.session.expire_all()
    assert db.session.get(Refund, refund_id).status is RefundStatus.SUCCEEDED
    assert db.session.get(OperationError, error.id).status is ErrorStatus.RESOLVED
    last = db.session.scalar(sa.select(RetryAttempt).where(RetryAttempt.attempt_number == 4))
    assert (last.outcome, last.actor_id) == ("succeeded", staff.id)
    assert db.session.get(Payment, payment.id).amount_refunded == 999


# --- the processor ------------------------------------------------------------------------------------

def _failure(key: str, *, operation_type: str = "webhook", strategy=RetryStrategy.EXPONENTIAL, due=None,
             **kwargs) -> OperationError:
    error = retries.record_failure(operation_type, "network", "boom", dedupe_key=key, strategy=strategy,
                                   next_retry_at=due, **kwargs)
    db.session.commit()
    return error


def test_a_due_error_is_claimed_once_and_a_lapsed_claim_is_taken_again(app, clock):
    first = _failure("a", due=clock.now())
    _failure("b", due=clock.now() + timedelta(hours=1))
    assert processor.claim_due(10) == [first.id]
    assert processor.claim_due(10) == []  # claimed: nobody else takes it
    clock.advance(minutes=app.config["RETRY_CLAIM_MINUTES"])  # its processor died: the claim lapses
    assert processor.claim_due(10) == [first.id]


def test_an_operation_nothing_retries_goes_to_a_person_with_the_reason(app, clock):
    error = _failure("x", operation_type="mystery", due=clock.now())
    assert processor.process_pending_retries() == {"failed": 1}
    db.session.refresh(error)
    assert (error.status, error.strategy, error.error_code) == (ErrorStatus.MANUAL, RetryStrategy.MANUAL, "no_handler")


def test_staff_switch_the_strategy_and_close_with_a_note(app, clock):
    error = _failure("y", strategy=RetryStrategy.MANUAL)
    assert (error.status, error.next_retry_at) == (ErrorStatus.MANUAL, None)
    processor.switch_strategy(error, RetryStrategy.FIXED_INTERVAL, actor_id=None)
    assert (error.status, error.next_retry_at) == (ErrorStatus.PENDING, clock.now() + timedelta(hours=24))
    processor.close(error, ErrorStatus.RESOLVED, actor_id=None, note="refunded by hand in the Stripe dashboard")
    assert (error.status, error.context["staff_note"]) == (ErrorStatus.RESOLVED,
                                                            "refunded by hand in the Stripe dashboard")
    with pytest.raises(processor.NotRetryable):
        processor.switch_strategy(error, RetryStrategy.EXPONENTIAL, actor_id=None)


# --- the report and the alert -----------------------------------------------------------------------------

def _fixture(clock) -> None:
    """Hand-counted: renewal_payment 3 open (USD 999 + 999 + 4,900; tries 1, 2, 3; one manual), refund 2 open
    (USD 500, EUR 700; tries 1 and 2), dispute 1 (manual, no amount); one resolved and one given up left out."""
    def add(key, kind, attempts, status, amount=None, currency=None, days_ago=0):
        error = retries.record_failure(kind, "x", "x", dedupe_key=key, strategy=RetryStrategy.FIXED_INTERVAL,
                                       next_retry_at=clock.now(), attempts=attempts, status=status,
                                       context={"amount": amount, "currency": currency} if amount else {})
        error.created_at = clock.now() - timedelta(days=days_ago)

    add("r1", "renewal_payment", 1, ErrorStatus.PENDING, 999, "usd", days_ago=1)
    add("r2", "renewal_payment", 2, ErrorStatus.RETRYING, 999, "USD", days_ago=3)
    add("r3", "renewal_payment", 3, ErrorStatus.MANUAL, 4900, "USD", days_ago=2)
    add("r4", "renewal_payment", 1, ErrorStatus.RESOLVED, 10_000, "USD", days_ago=9)
    add("r5", "renewal_payment", 3, ErrorStatus.GAVE_UP, 10_000, "USD", days_ago=9)
    add("f1", "refund", 1, ErrorStatus.PENDING, 500, "USD")
    add("f2", "refund", 2, ErrorStatus.PENDING, 700, "EUR", days_ago=4)
    add("d1", "dispute", 0, ErrorStatus.MANUAL)
    db.session.commit()


def test_the_failed_report_matches_a_hand_counted_fixture(app, clock):
    _fixture(clock)
    got = report.failed_report()
    assert [(r.operation_type, r.count, r.oldest_at, r.mean_attempts, r.manual, r.amounts) for r in got.rows] == [
        ("renewal_payment", 3, clock.now() - timedelta(days=3), 2.0, 1, {"USD": 6898}),
        ("refund", 2, clock.now() - timedelta(days=4), 1.5, 0, {"USD": 500, "EUR": 700}),
        ("dispute", 1, clock.now(), 0.0, 1, {}),
    ]
    assert (got.count, got.oldest_at, got.amounts()) == (6, clock.now() - timedelta(days=4),
                                                         {"USD": 7398, "EUR": 700})


def _alerts() -> list[str]:
    return list(db.session.scalars(sa.select(EmailLog.idempotency_key).where(EmailLog.template == "staff_alert")
                                   .order_by(EmailLog.id)))


def test_the_alert_is_sent_once_per_crossing_of_the_threshold(app, clock):
    app.config.update(STAFF_ALERT_MIN_FAILURES=3, STAFF_ALERT_MAX_AGE_HOURS=24 * 365)

    def check() -> bool:
        db.session.commit()
        sent = retry_jobs.alert_on_failures()
        db.session.expire_all()
        return sent

    _failure("one", strategy=RetryStrategy.MANUAL)
    _failure("two", strategy=RetryStrategy.MANUAL)
    assert check() is False and _alerts() == []
    _failure("three", strategy=RetryStrategy.MANUAL)
    assert check() is True and check() is False  # crossed: one alert, not one per run
    _failure("four", strategy=RetryStrategy.MANUAL)
    assert check() is False
    assert _alerts() == ["staff_alert:failures:1"]
    email = db.session.scalar(sa.select(EmailLog).where(EmailLog.template == "staff_alert"))
    assert (email.to_address, email.context["count"]) == (app.config["STAFF_ALERT_EMAIL"], 3)
    retries.resolve("one")
    retries.resolve("two")
    assert check() is False and db.session.get(AlertState, "failures").active is False  # fell back below
    _failure("five", strategy=RetryStrategy.MANUAL)
    assert check() is True  # and crossed again: a second alert
    assert _alerts() == ["staff_alert:failures:1", "staff_alert:failures:2"]


def test_the_alert_also_fires_when_one_failure_is_left_too_long(app, clock):
    app.config.update(STAFF_ALERT_MIN_FAILURES=100, STAFF_ALERT_MAX_AGE_HOURS=24)
    _failure("old", strategy=RetryStrategy.MANUAL)
    db.session.commit()
    assert retry_jobs.alert_on_failures() is False
    clock.advance(hours=24)
    db.session.commit()
    assert retry_jobs.alert_on_failures() is True
    assert _alerts() == ["staff_alert:failures:1"]


def test_staff_act_on_failures_from_the_command_line_and_each_action_is_audited(alice, app, clock):
    from portal.models import AuditLog

    error = _failure("cli", operation_type="refund", strategy=RetryStrategy.MANUAL,
                     context={"amount": 1250, "currency": "USD"})
    runner = app.test_cli_runner()
    report_out = runner.invoke(args=["failures", "report"])
    assert report_out.exit_code == 0 and "refund" in report_out.output and "at stake $12.50" in report_out.output
    refused = runner.invoke(args=["failures", "strategy", str(error.id), "exponential", "--by", "demo@portal.test"])
    assert refused.exit_code == 2 and "not a support or admin account" in refused.output
    switched = runner.invoke(args=["failures", "strategy", str(error.id), "exponential", "--by", "staff@portal.test"])
    assert switched.exit_code == 0, switched.output
    assert f"#{error.id} refund pending (exponential" in switched.output
    closed = runner.invoke(args=["failures", "resolve", str(error.id), "--note", "refunded in the dashboard",
                                 "--by", "staff@portal.test"])
    assert closed.exit_code == 0 and "resolved" in closed.output
    again = runner.invoke(args=["failures", "retry", str(error.id), "--by", "staff@portal.test"])
    assert again.exit_code == 1 and "closed" in again.output
    db.session.expire_all()
    actions = list(db.session.scalars(sa.select(AuditLog.action).where(AuditLog.target_type == "operation_errors")
                                      .order_by(AuditLog.id)))
    assert actions == ["failure.strategy", "failure.resolve"]  # one row per action done, none for refusals


@pytest.mark.parametrize("db_backend", ["postgres"], indirect=True)
def test_staff_cannot_close_or_switch_a_failure_a_processor_claimed_after_the_page_read_it(app, clock):
    error = _failure("race", due=clock.now())
    assert error.status is ErrorStatus.PENDING  # what the staff page read
    with db.engine.connect() as other:  # meanwhile a processor (another process) claims it
        other.execute(sa.update(OperationError).where(OperationError.id == error.id).values(
            status=ErrorStatus.RETRYING.value, claimed_until=clock.now() + timedelta(minutes=10)))
        other.commit()
    with pytest.raises(processor.NotRetryable):
        processor.close(error, ErrorStatus.RESOLVED, actor_id=None, note="fixed by hand")
    with pytest.raises(processor.NotRetryable):
        processor.switch_strategy(error, RetryStrategy.MANUAL, actor_id=None)
    db.session.rollback()
    assert db.session.get(OperationError, error.id).status is ErrorStatus.RETRYING
