"""Four RQ worker processes on PostgreSQL running process_pending_retries at the same moment over 1,000 due
errors: each error's handler runs exactly once (one attempt row each), and errors not yet due are left alone.

The errors are failed webhook deliveries whose retry is real: the stored event is handled again (a
setup_intent.succeeded for a customer we do not know: handled and ignored), so the handler's own effect
(the event's processed_at) is counted as well as the attempts.
"""
from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from rq import Queue
from rq.job import Job, JobStatus

from portal.clock import now
from portal.extensions import db
from portal.models import ErrorStatus, OperationError, RetryAttempt, RetryStrategy, WebhookEvent
from tests.worker.processes import pg_stack, stack_app, wait_for

DUE = 1000
LATER = 100


@pytest.fixture
def stack(request, tmp_path, redis_server):
    # small claims: the four processors interleave all the way
    with pg_stack(request, tmp_path, redis_server.url, "retryrace", RETRY_BATCH_SIZE="7") as stack:
        yield stack


@pytest.fixture
def app(stack, tmp_path):
    with stack_app(stack, tmp_path) as app:
        yield app


def _failed_deliveries(count: int, due_at, first: int = 0) -> None:
    events = WebhookEvent.__table__
    ids = db.session.execute(events.insert().returning(events.c.id, sort_by_parameter_order=True), [
        {"stripe_event_id": f"evt_race_{n}", "type": "setup_intent.succeeded", "status": "failed",
         "payload": {"id": f"evt_race_{n}", "type": "setup_intent.succeeded",
                     "data": {"object": {"id": f"seti_{n}", "customer": "cus_unknown", "payment_method": "pm_x"}}},
         "received_at": now()}
        for n in range(first, first + count)]).scalars().all()
    db.session.execute(OperationError.__table__.insert(), [
        {"operation_type": "webhook", "error_code": "network", "message": "the handler failed", "strategy":
         RetryStrategy.EXPONENTIAL.value, "status": ErrorStatus.PENDING.value, "attempts": 1, "max_attempts": 5,
         "next_retry_at": due_at, "dedupe_key": f"webhook:evt_race_{first + i}", "context": {"webhook_event_id": eid},
         "created_at": now(), "updated_at": now()}
        for i, eid in enumerate(ids)])


def test_four_workers_processing_retries_at_once_run_each_due_error_exactly_once(stack, app, redis_conn):
    from portal.services import clock as shared_clock

    shared_clock.set_to(now(), freeze=True)
    db.session.commit()
    _failed_deliveries(DUE, now() - timedelta(minutes=1))
    _failed_deliveries(LATER, now() + timedelta(hours=1), first=DUE)
    db.session.commit()
    stack.start_workers(4, queues=("retries",))

    queue = Queue("retries", connection=redis_conn)
    jobs = [queue.enqueue("worker.retries.process_pending_retries", result_ttl=600) for _ in range(4)]
    wait_for(lambda: all(Job.fetch(j.id, connection=redis_conn).get_status() in (JobStatus.FINISHED, JobStatus.FAILED)
                         for j in jobs), 300, "the retry processors")
    results = [Job.fetch(j.id, connection=redis_conn) for j in jobs]
    assert all(j.get_status() == JobStatus.FINISHED for j in results), stack.worker_log()[-3000:]
    per_job = [j.return_value().get("succeeded", 0) for j in results]
    assert sum(per_job) == DUE and sum(sum(j.return_value().values()) for j in results) == DUE
    assert sum(1 for n in per_job if n) >= 2, per_job  # they really ran side by side

    db.session.expire_all()
    attempts = dict(db.session.execute(
        sa.select(RetryAttempt.operation_error_id, sa.func.count(RetryAttempt.id))
        .group_by(RetryAttempt.operation_error_id)).all())
    due_ids = set(db.session.scalars(sa.select(OperationError.id).where(OperationError.next_retry_at.is_(None))))
    assert len(attempts) == DUE and set(attempts.values()) == {1} and set(attempts) == due_ids
    statuses = dict(db.session.execute(sa.select(OperationError.status, sa.func.count()).group_by(OperationError.status)).all())
    assert statuses == {ErrorStatus.RESOLVED: DUE, ErrorStatus.PENDING: LATER}
    handled = dict(db.session.execute(sa.select(WebhookEvent.status, sa.func.count()).group_by(WebhookEvent.status)).all())
    assert handled == {"ignored": DUE, "failed": LATER}
