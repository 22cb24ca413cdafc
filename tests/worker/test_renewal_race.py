"""Four RQ worker processes on PostgreSQL racing over the same 500 due subscriptions: each is renewed exactly
once (one invoice, one ledger debit, one event, one receipt), whatever the order the jobs reach them."""
from __future__ import annotations

import random
from datetime import timedelta

import pytest
import sqlalchemy as sa
from rq import Queue
from rq.job import Job, JobStatus

from portal.extensions import db
from portal.models import (
    EmailLog, Invoice, InvoiceStatus, Plan, Subscription, SubscriptionEvent, User, Wallet, WalletEntry,
)
from tests.worker.processes import pg_stack, stack_app, wait_for

CUSTOMERS = 500


@pytest.fixture
def stack(request, tmp_path, redis_server):
    with pg_stack(request, tmp_path, redis_server.url, "race") as stack:
        yield stack


@pytest.fixture
def app(stack, tmp_path):
    with stack_app(stack, tmp_path) as app:
        yield app


def _customers(count: int) -> list[int]:
    """`count` customers on Premium, each with a wallet that pays one renewal."""
    from portal.seed import seed_demo
    from portal.services import subscriptions, wallet

    seed_demo()
    premium = db.session.scalar(sa.select(Plan).where(Plan.code == "premium"))
    ids = []
    for n in range(count):
        user = User(email=f"racer{n}@example.com", password_hash="x")
        db.session.add(user)
        db.session.flush()
        wallet.credit(user.id, 1500, reason="Prepaid", idempotency_key=f"prepaid:{user.id}")
        ids.append(subscriptions.start_subscription(user, premium, reason="test").id)
    db.session.commit()
    return ids


def test_four_workers_racing_over_500_due_subscriptions_renew_each_exactly_once(stack, app, redis_conn):
    from portal.services import clock as shared_clock

    ids = _customers(CUSTOMERS)
    first_end = db.session.scalar(sa.select(sa.func.max(Subscription.current_period_end)))
    shared_clock.set_to(first_end + timedelta(minutes=1), freeze=True)
    db.session.commit()
    stack.start_workers(4, queues=("billing",))  # the receipts wait on the emails queue: counted as rows

    # Every subscription reaches four jobs, in four different orders: the races a lapsed lease, a
    # retried job or two sweeps at once would cause, all at the same time.
    queue = Queue("billing", connection=redis_conn)
    jobs = []
    for copy in range(4):
        order = ids[:]
        random.Random(copy).shuffle(order)
        jobs += [queue.enqueue("worker.billing.renew_subscriptions", order[i:i + 50], result_ttl=600)
                 for i in range(0, len(order), 50)]
    wait_for(lambda: all(Job.fetch(j.id, connection=redis_conn).get_status() in (JobStatus.FINISHED, JobStatus.FAILED)
                         for j in jobs), 300, "the renewal jobs")
    results = [Job.fetch(j.id, connection=redis_conn) for j in jobs]
    assert all(j.get_status() == JobStatus.FINISHED for j in results), stack.worker_log()[-3000:]
    outcomes: dict[str, int] = {}
    for job in results:
        for outcome, count in job.return_value().items():
            outcomes[outcome] = outcomes.get(outcome, 0) + count
    assert outcomes == {"renewed": CUSTOMERS}, outcomes  # the other three reached a renewed one: not due

    db.session.expire_all()
    per_subscription = dict(db.session.execute(
        sa.select(Invoice.subscription_id, sa.func.count(Invoice.id))
        .where(Invoice.reason == "renewal", Invoice.status == InvoiceStatus.PAID).group_by(Invoice.subscription_id)
    ).all())
    assert per_subscription == {sub_id: 1 for sub_id in ids}
    renews = dict(db.session.execute(
        sa.select(SubscriptionEvent.subscription_id, sa.func.count(SubscriptionEvent.id))
        .where(SubscriptionEvent.transition == "renew").group_by(SubscriptionEvent.subscription_id)).all())
    assert renews == {sub_id: 1 for sub_id in ids}
    debits = db.session.execute(
        sa.select(Wallet.user_id, sa.func.count(WalletEntry.id), sa.func.sum(WalletEntry.amount), Wallet.balance)
        .join(Wallet, Wallet.id == WalletEntry.wallet_id).where(WalletEntry.amount < 0)
        .group_by(Wallet.user_id, Wallet.balance)).all()
    assert len(debits) == CUSTOMERS and {(n, total, balance) for _, n, total, balance in debits} == {(1, -999, 501)}
    receipts = db.session.scalar(sa.select(sa.func.count(sa.distinct(EmailLog.user_id)))
                                 .where(EmailLog.template == "renewal_succeeded"))
    assert receipts == db.session.scalar(sa.select(sa.func.count(EmailLog.id))
                                         .where(EmailLog.template == "renewal_succeeded")) == CUSTOMERS
    periods = set(db.session.scalars(sa.select(Subscription.current_period_start).where(Subscription.id.in_(ids))))
    assert len(periods) >= 1 and all(p <= first_end for p in periods)
