"""A batch job's common renewals made together (portal.services.subscriptions.batch_renewals and
portal.services.purchases.bulk): the same rows, keys and emails as one by one, the others left to the
one-by-one path, all or nothing when a part fails, and never a subscription another process holds."""
from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from portal.billing.lifecycle import SubscriptionStatus
from portal.extensions import db
from portal.models import (
    EmailLog, Invoice, InvoiceLine, NumberSequence, OutboxMessage, Payment, Plan, Subscription, SubscriptionEvent,
    User, Wallet, WalletEntry,
)
from portal.services import subscriptions, usage, wallet
from portal.services.subscriptions import batch_renewals, renewals
from tests.conftest import START, assert_money_consistent, both_databases, trial_plan
from worker import billing

#: The first period (from START, 31 January) ends on 28 February.
FIRST_END = datetime(2026, 2, 28, 9, 0, tzinfo=timezone.utc)


def _plan(code: str) -> Plan:
    return db.session.scalar(sa.select(Plan).where(Plan.code == code))


def _customer(name: str, plan: str, *, funds: int = 0, use: dict[str, int] | None = None) -> int:
    """A customer on `plan` since START, with `funds` in the wallet and the period's `use`; the subscription id."""
    user = User(email=f"{name}@example.com", password_hash="x", name=name.title())
    db.session.add(user)
    db.session.flush()
    if funds:
        wallet.credit(user.id, funds, reason="Prepaid", idempotency_key=f"prepaid:{user.id}")
    sub = subscriptions.start_subscription(user, _plan(plan), reason="test")
    for code, quantity in (use or {}).items():
        assert usage.record(user.id, code, quantity).allowed, code
    db.session.commit()
    return sub.id


def _commit_then(func, *args):
    """Run a job's step as a worker would: the test's transaction committed first (SQLite's write lock)."""
    db.session.commit()
    return func(*args)


def _renew_together(ids: list[int]) -> batch_renewals.Result:
    db.session.commit()
    with renewals.batch():
        result = batch_renewals.renew_many(ids)
    db.session.commit()
    return result


def _written(subscription_id: int) -> dict:
    """Every row a renewal of this subscription wrote, with its own ids, number and names made generic."""
    db.session.expire_all()
    sub = db.session.get(Subscription, subscription_id)
    user = db.session.get(User, sub.user_id)
    invoice = db.session.scalar(sa.select(Invoice).where(Invoice.subscription_id == sub.id))
    account = db.session.scalar(sa.select(Wallet).where(Wallet.user_id == user.id))
    names = [(invoice.number, "INV"), (f"renewal:{sub.id}:", "renewal:SUB:"), (f"prepaid:{user.id}", "prepaid:USER"),
             (user.email, "EMAIL"), (user.name, "NAME")]

    def generic(value):
        if isinstance(value, str):
            for real, label in names:
                value = value.replace(real, label)
            return value
        if isinstance(value, dict):
            return {key: generic(item) for key, item in value.items() if key not in ("subscription_id",)}
        if isinstance(value, (list, tuple)):
            return [generic(item) for item in value]
        return value

    def row(obj, *skip):
        columns = [c.key for c in sa.inspect(type(obj)).column_attrs]
        return generic({key: getattr(obj, key) for key in columns
                        if key not in ("id", "user_id", "wallet_id", "invoice_id", "subscription_id", "message_id",
                                       "number", *skip)})

    emails = db.session.scalars(sa.select(EmailLog).where(EmailLog.user_id == user.id).order_by(EmailLog.id)).all()
    return {
        "invoice": row(invoice),
        "lines": [row(line) for line in db.session.scalars(
            sa.select(InvoiceLine).where(InvoiceLine.invoice_id == invoice.id).order_by(InvoiceLine.position))],
        "ledger": [row(entry) for entry in db.session.scalars(
            sa.select(WalletEntry).where(WalletEntry.wallet_id == account.id).order_by(WalletEntry.id))],
        "balance": account.balance,
        "payments": [row(p, "updated_at") for p in db.session.scalars(
            sa.select(Payment).where(Payment.invoice_id == invoice.id).order_by(Payment.id))],
        "subscription": row(sub, "created_at"),
        "events": [row(e) for e in db.session.scalars(sa.select(SubscriptionEvent).where(
            SubscriptionEvent.subscription_id == sub.id).order_by(SubscriptionEvent.id))],
        "emails": [row(e) for e in emails],
        "send jobs": sorted((m.queue, m.func, m.args == [e.id], m.job_id == f"email-{e.id}")
                            for e in emails for m in db.session.scalars(
                                sa.select(OutboxMessage).where(OutboxMessage.job_id == f"email-{e.id}"))),
    }


@both_databases
def test_a_renewal_made_together_writes_what_a_renewal_one_by_one_writes(catalog, clock):
    """Two customers alike in everything: one renewed by `renew`, the other by `renew_many`."""
    use = {"api_calls": 25_000, "seats": 12, "emails": 3_000}
    one = _customer("one", "business", funds=100_000, use=use)
    other = _customer("other", "business", funds=100_000, use=use)
    clock.set(FIRST_END + timedelta(minutes=5))

    assert _commit_then(renewals.renew, one) == "renewed"
    db.session.commit()
    result = _renew_together([other])

    assert (dict(result.counts), result.advanced, result.left) == ({"renewed": 1}, [other], [])
    alone, together = _written(one), _written(other)
    assert alone == together
    # what they are (not only alike): a paid invoice of the plan and three priced lines, one debit
    assert together["invoice"]["status"] == "paid" and together["invoice"]["total"] == 18_500
    assert [line["kind"] for line in together["lines"]] == ["plan", "usage", "usage", "usage"]
    assert [(e["kind"], e["amount"], e["balance_after"]) for e in together["ledger"]] == [
        ("credit", 100_000, 100_000), ("payment", -18_500, 81_500)]
    assert [e["transition"] for e in together["events"]] == ["activate", "renew"]
    assert [(e["template"], e["idempotency_key"]) for e in together["emails"]] == [("renewal_succeeded", "receipt:INV")]
    assert together["send jobs"] == [("emails", "worker.emails.send_email", True, True)]
    assert (together["subscription"]["current_period_start"], together["subscription"]["current_period_end"]) == (
        FIRST_END, datetime(2026, 3, 31, 9, tzinfo=timezone.utc))
    assert_money_consistent(*db.session.scalars(sa.select(User).where(User.email.in_(["one@example.com",
                                                                                       "other@example.com"]))))


@both_databases
def test_only_what_is_certain_is_renewed_together_and_the_job_renews_the_rest_one_by_one(catalog, clock):
    with_trial = trial_plan()
    paid = _customer("paid", "business", funds=100_000, use={"api_calls": 20_000})
    free = _customer("free", "free")
    short = _customer("short", "premium", funds=500)  # the wallet does not cover $9.99 and there is no card
    cancelled = _customer("cancelled", "premium", funds=5_000)
    downgrade = _customer("downgrade", "business", funds=100_000, use={"api_calls": 20_000})
    later = _customer("later", "premium", funds=5_000)
    trial_user = User(email="trial@example.com", password_hash="x")
    db.session.add(trial_user)
    db.session.flush()
    wallet.credit(trial_user.id, 5_000, reason="Prepaid", idempotency_key="prepaid:trial")
    trial = subscriptions.start_subscription(trial_user, with_trial, reason="test").id
    db.session.commit()
    db.session.get(Subscription, cancelled).cancel_at_period_end = True
    db.session.get(Subscription, downgrade).scheduled_plan_id = _plan("premium").id
    db.session.get(Subscription, later).current_period_end = FIRST_END + timedelta(days=3)
    db.session.commit()
    clock.set(FIRST_END + timedelta(minutes=5))
    ids = [paid, free, short, cancelled, downgrade, later, trial]

    together = _renew_together(ids)
    assert dict(together.counts) == {"renewed": 2, "free": 1, "converted": 1}
    assert together.advanced == sorted([paid, free, downgrade, trial])
    assert together.left == [short, cancelled, later]  # the card, the cancellation, not due: one by one

    counts = _commit_then(billing.renew_subscriptions, together.left)
    assert counts == {"failed": 1, "canceled": 1}
    db.session.expire_all()
    status = {sid: db.session.get(Subscription, sid).status for sid in ids}
    assert status == {paid: SubscriptionStatus.ACTIVE, free: SubscriptionStatus.ACTIVE,
                      short: SubscriptionStatus.PAST_DUE, cancelled: SubscriptionStatus.CANCELED,
                      downgrade: SubscriptionStatus.ACTIVE, later: SubscriptionStatus.ACTIVE,
                      trial: SubscriptionStatus.ACTIVE}
    down = db.session.get(Subscription, downgrade)
    assert (down.plan_id, down.scheduled_plan_id) == (_plan("premium").id, None)
    [down_invoice] = db.session.scalars(sa.select(Invoice).where(Invoice.subscription_id == downgrade)).all()
    # the next period at Premium's price, the closing period's use at Business's
    assert [(line.kind.value, line.amount) for line in down_invoice.lines][0] == ("plan", 999)
    assert any(line.kind.value == "usage" for line in down_invoice.lines)
    assert db.session.scalar(sa.select(sa.func.count(Invoice.id)).where(Invoice.subscription_id == free)) == 0
    converted = db.session.get(Subscription, trial)
    assert converted.billing_anchor == converted.current_period_start == START + timedelta(days=14)
    events = db.session.scalars(sa.select(SubscriptionEvent.transition)
                                .where(SubscriptionEvent.subscription_id == trial)).all()
    assert events[-1] == "activate"
    assert db.session.scalar(sa.select(EmailLog.template).where(EmailLog.user_id == trial_user.id)) == \
        "subscription_activated"
    # the job again: nothing is due any more
    assert _commit_then(billing.renew_subscriptions, ids) == {}


@both_databases
def test_when_a_batch_fails_nothing_of_it_stays_and_every_one_is_renewed_one_by_one(catalog, clock, monkeypatch):
    ids = [_customer(f"c{n}", "premium", funds=5_000) for n in range(3)]
    clock.set(FIRST_END + timedelta(minutes=5))

    def fails(*args, **kwargs):  # fault injection: the batch's last statement fails (no real part does on cue)
        raise RuntimeError("injected: the batch's subscription update failed")

    monkeypatch.setattr(subscriptions, "transition_many", fails)
    counts = _commit_then(billing.renew_subscriptions, ids)

    assert counts == {"renewed": 3}
    db.session.expire_all()
    numbers = sorted(db.session.scalars(sa.select(Invoice.number)))
    # the batch had taken three numbers before failing: rolled back with it, so no gap
    assert numbers == ["INV-000001", "INV-000002", "INV-000003"]
    assert db.session.scalar(sa.select(NumberSequence.value).where(NumberSequence.name == "INV")) == 3
    debits = db.session.scalars(sa.select(WalletEntry.amount).where(WalletEntry.amount < 0)).all()
    assert debits == [-999, -999, -999]
    assert db.session.scalar(sa.select(sa.func.count(EmailLog.id))) == 3
    assert db.session.scalar(sa.select(sa.func.count(SubscriptionEvent.id))
                             .where(SubscriptionEvent.transition == "renew")) == 3


@both_databases
def test_missed_periods_are_renewed_together_period_by_period_through_month_ends(catalog, clock):
    sub_id = _customer("late", "premium", funds=10_000)
    clock.set(datetime(2026, 5, 31, 9, 5, tzinfo=timezone.utc))  # four period ends passed meanwhile

    counts = _commit_then(billing.renew_subscriptions, [sub_id])

    assert counts == {"renewed": 4}
    db.session.expire_all()
    invoices = db.session.scalars(sa.select(Invoice).where(Invoice.subscription_id == sub_id).order_by(Invoice.id)).all()
    at = lambda month, day: datetime(2026, month, day, 9, tzinfo=timezone.utc)  # noqa: E731
    assert [(i.period_start, i.period_end) for i in invoices] == [
        (at(2, 28), at(3, 31)), (at(3, 31), at(4, 30)), (at(4, 30), at(5, 31)), (at(5, 31), at(6, 30))]
    sub = db.session.get(Subscription, sub_id)
    assert (sub.billing_anchor, sub.current_period_end) == (START, at(6, 30))


postgres_only = pytest.mark.parametrize("db_backend", ["postgres"], indirect=True)


@postgres_only
def test_a_subscription_another_transaction_holds_is_left_to_the_one_by_one_path(catalog, clock):
    """A customer paying now holds their subscription: the batch does not wait for them, it leaves them
    to `renew`, which does."""
    held, other_one = (_customer(n, "premium", funds=5_000) for n in ("held", "other1"))
    clock.set(FIRST_END + timedelta(minutes=5))
    db.session.commit()
    with db.engine.connect() as other:
        other.execute(sa.text("SELECT id FROM subscriptions WHERE id = :id FOR UPDATE"), {"id": held})
        result = _renew_together([held, other_one])
        other.rollback()
    assert (dict(result.counts), result.advanced, result.left) == ({"renewed": 1}, [other_one], [held])
    assert _commit_then(billing.renew_subscriptions, result.left) == {"renewed": 1}


def _in_thread(app, func, *args) -> tuple[threading.Thread, dict]:
    """Run func(*args) in another thread with its own app context and session; its result or error."""
    outcome: dict = {}

    def run():
        with app.app_context():
            try:
                outcome["result"] = func(*args)
                db.session.commit()
            except Exception as error:  # noqa: BLE001 - reported to the test
                db.session.rollback()
                outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def _until_a_backend_waits_on_a_lock(conn, outcome: dict) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        conn.execute(sa.text("SELECT pg_stat_clear_snapshot()"))  # the view is read once per transaction else
        if conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                "AND datname = current_database()")).scalar():
            return
        time.sleep(0.02)
    raise AssertionError(f"nothing waited on a lock: {outcome}")


@postgres_only
def test_a_batch_waiting_for_the_invoice_numbers_holds_no_wallet_a_top_up_needs(app, catalog, clock):
    """A top-up (flow.buy) takes the invoice number, then its wallet. A batch that locked its wallets before
    the numbers deadlocked with it (PostgreSQL aborted one of the two); it reads them and debits after."""
    sub_id = _customer("payer", "premium", funds=5_000)
    clock.set(FIRST_END + timedelta(minutes=5))
    wallet_id = db.session.scalar(sa.select(Wallet.id).join(Subscription, Subscription.user_id == Wallet.user_id)
                                  .where(Subscription.id == sub_id))
    db.session.add(NumberSequence(name="INV", value=0))
    db.session.commit()
    with db.engine.connect() as top_up:
        top_up.execute(sa.text("UPDATE number_sequences SET value = value + 1 WHERE name = 'INV'"))
        thread, outcome = _in_thread(app, batch_renewals.renew_many, [sub_id])
        _until_a_backend_waits_on_a_lock(top_up, outcome)  # the batch, on the numbers
        top_up.execute(sa.text("SET LOCAL lock_timeout = '10s'"))
        top_up.execute(sa.text("UPDATE wallets SET updated_at = updated_at WHERE id = :id"), {"id": wallet_id})
        top_up.rollback()
        thread.join(30)
    assert "error" not in outcome, outcome
    assert dict(outcome["result"].counts) == {"renewed": 1}


@postgres_only
def test_an_upgrade_takes_the_subscription_before_an_invoice_number_as_a_renewal_does(app, catalog, clock):
    """A renewal holds the subscription and waits for the numbers; an upgrade of the same subscription that
    took a number first and then waited for the subscription deadlocked with it."""
    from portal.services.subscriptions import changes as plan_changes

    sub_id = _customer("upgrader", "premium", funds=100_000)
    user_id = db.session.get(Subscription, sub_id).user_id
    clock.set(START + timedelta(days=10))
    db.session.add(NumberSequence(name="INV", value=0))
    db.session.commit()
    with db.engine.connect() as renewal:
        renewal.execute(sa.text("SELECT id FROM subscriptions WHERE id = :id FOR UPDATE"), {"id": sub_id})
        thread, outcome = _in_thread(app, lambda: plan_changes.upgrade(
            db.session.get(User, user_id), _plan("business"), token="t1").status)
        _until_a_backend_waits_on_a_lock(renewal, outcome)  # the upgrade, on the subscription
        renewal.execute(sa.text("SET LOCAL lock_timeout = '10s'"))
        renewal.execute(sa.text("UPDATE number_sequences SET value = value WHERE name = 'INV'"))
        renewal.rollback()
        thread.join(30)
    assert outcome == {"result": "paid"}
