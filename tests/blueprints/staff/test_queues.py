"""Staff queues page on a real Redis: depth and failed jobs per queue, requeue and delete (one audit row each),
the `rq cron` scheduler and the periodic jobs, the outbox backlog, and a page that still answers without Redis."""
from __future__ import annotations

import signal
from contextlib import contextmanager
from datetime import timedelta

import pytest
import sqlalchemy as sa
from rq import Queue, SimpleWorker
from rq.cron import CronScheduler
from rq.job import Job
from rq.registry import FailedJobRegistry

from portal.clock import now
from portal.extensions import db
from portal.models import AuditLog, OutboxMessage, User
from tests.conftest import csrf_from
from worker import QUEUES


@pytest.fixture
def app_config(request):
    """The test Redis for tests that ask for it; the others keep the default REDIS_URL, where nothing listens."""
    if "redis_conn" in request.fixturenames:
        return {"REDIS_URL": request.getfixturevalue("redis_server").url}
    return {}


@contextmanager
def keep_signal_handlers():
    """RQ installs SIGINT/SIGTERM handlers when it works; give pytest its own back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def work_burst(conn) -> None:
    with keep_signal_handlers():
        SimpleWorker([Queue(name, connection=conn) for name in QUEUES], connection=conn).work(burst=True)


def failing_jobs(conn, n: int = 2) -> list[str]:
    """`n` outbox sweeps given an argument they do not take: each fails with a TypeError."""
    queue = Queue("default", connection=conn)
    ids = [queue.enqueue("worker.maintenance.sweep_outbox", f"bogus-{i}").id for i in range(n)]
    work_burst(conn)
    assert sorted(FailedJobRegistry("default", connection=conn).get_job_ids()) == sorted(ids)
    return ids


def a_scheduler_ran_the_outbox_sweep(conn) -> CronScheduler:
    """An `rq cron` scheduler as `python -m worker cron` registers it, that enqueued the outbox sweep once
    (which a worker then ran)."""
    scheduler = CronScheduler(connection=conn, name="test-scheduler")
    scheduler.load_config_from_file("worker.schedule")
    scheduler.register_birth()
    sweep = next(job for job in scheduler.get_jobs() if job.name == "worker.maintenance.sweep_outbox")
    sweep.enqueue(conn)
    sweep.set_enqueue_time(sweep.next_enqueue_time - timedelta(minutes=1))
    scheduler.save()
    scheduler.heartbeat()
    work_burst(conn)
    return scheduler


def audit_rows(action: str) -> list[AuditLog]:
    db.session.rollback()
    return list(db.session.scalars(sa.select(AuditLog).where(AuditLog.action == action)))


def staff_id() -> int:
    return db.session.scalar(sa.select(User.id).where(User.email == "staff@portal.test"))


def test_failed_jobs_show_with_their_error_and_the_queue_depths(staff_client, redis_conn):
    first, second = failing_jobs(redis_conn)
    Queue("billing", connection=redis_conn).enqueue("worker.maintenance.purge_expired")  # waiting: no worker
    page = staff_client.get("/staff/queues").get_data(as_text=True)
    assert "Redis unreachable" not in page
    for job_id in (first, second):
        assert f'id="job-{job_id}"' in page
    section = page.split('id="queue-default"')[1].split("</article>")[0]
    assert "worker.maintenance.sweep_outbox" in section and "&#39;bogus-0&#39;" in section
    assert "TypeError: sweep_outbox() takes 0 positional arguments but 1 was given" in section
    assert "2 failed" in section and "Traceback" in section
    billing = page.split('id="depth-billing"')[1].split("</tr>")[0]
    assert '<td class="amount queued">1</td>' in billing
    default = page.split('id="depth-default"')[1].split("</tr>")[0]
    assert '<td class="amount queued">0</td>' in default and ">2</a>" in default


def test_requeue_and_delete_each_write_one_audit_row(staff_client, redis_conn):
    first, second = failing_jobs(redis_conn)
    token = csrf_from(staff_client, "/staff/queues")

    # Requeue (a plain form): back on its queue, out of the failed registry; back to the page with a notice.
    response = staff_client.post(f"/staff/queues/default/failed/{first}/requeue", data={"csrf_token": token})
    assert response.status_code == 303 and response.headers["Location"].endswith("/staff/queues#queue-default")
    assert first in Queue("default", connection=redis_conn).get_job_ids()
    assert first not in FailedJobRegistry("default", connection=redis_conn)
    [row] = audit_rows("job.requeue")
    assert (row.target_type, row.target_id, row.actor_id) == ("rq_job", first, staff_id())
    assert row.data == {"queue": "default", "func": "worker.maintenance.sweep_outbox"}
    page = staff_client.get("/staff/queues").get_data(as_text=True)
    assert f"Job {first} (worker.maintenance.sweep_outbox) is back on the “default” queue" in page

    # Delete (through htmx): the queue's section comes back, the job is gone for good.
    response = staff_client.post(f"/staff/queues/default/failed/{second}/delete",
                                 headers={"HX-Request": "true", "X-CSRFToken": token})
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert 'id="queue-default"' in body and "<html" not in body
    assert f"Job {second} (worker.maintenance.sweep_outbox) is deleted" in body
    assert second not in FailedJobRegistry("default", connection=redis_conn)
    assert not Job.exists(second, connection=redis_conn)
    [row] = audit_rows("job.delete")
    assert (row.target_type, row.target_id, row.actor_id) == ("rq_job", second, staff_id())

    # Acting again on a job that is no longer failed: a clear 404, nothing done, no audit row.
    again = staff_client.post(f"/staff/queues/default/failed/{second}/requeue", data={"csrf_token": token})
    assert again.status_code == 404 and "is not among the failed jobs" in again.get_data(as_text=True)
    in_place = staff_client.post(f"/staff/queues/default/failed/{second}/delete",
                                 headers={"HX-Request": "true", "X-CSRFToken": token})
    assert in_place.status_code == 404  # the page's htmx-config swaps 404s: the reason shows in the section
    assert 'id="queue-default"' in in_place.get_data(as_text=True)
    assert "is not among the failed jobs" in in_place.get_data(as_text=True)
    unknown = staff_client.post(f"/staff/queues/nope/failed/{second}/delete", data={"csrf_token": token})
    assert unknown.status_code == 404
    assert len(audit_rows("job.requeue")) == 1 and len(audit_rows("job.delete")) == 1

    # The requeued job runs again (and fails again, its argument being still bogus).
    work_burst(redis_conn)
    assert first in FailedJobRegistry("default", connection=redis_conn)


def test_actions_need_the_csrf_token(staff_client, redis_conn):
    [job_id] = failing_jobs(redis_conn, 1)
    assert staff_client.post(f"/staff/queues/default/failed/{job_id}/requeue").status_code == 400
    assert staff_client.post(f"/staff/queues/default/failed/{job_id}/delete").status_code == 400
    assert job_id in FailedJobRegistry("default", connection=redis_conn)
    assert audit_rows("job.requeue") == [] and audit_rows("job.delete") == []


def test_the_scheduler_and_each_periodic_jobs_latest_run(staff_client, redis_conn):
    page = staff_client.get("/staff/queues").get_data(as_text=True)
    assert 'id="no-scheduler"' in page  # none registered yet
    a_scheduler_ran_the_outbox_sweep(redis_conn)

    page = staff_client.get("/staff/queues").get_data(as_text=True)
    assert "test-scheduler" in page and "running" in page and 'id="no-scheduler"' not in page
    row = page.split('id="periodic-worker-maintenance-sweep_outbox"')[1].split("</tr>")[0]
    assert "finished" in row and "never" not in row and "1 run remembered" in row and "* * * * *" in row
    renew = page.split('id="periodic-worker-billing-renew_due"')[1].split("</tr>")[0]
    assert "never" in renew and "*/5 * * * *" in renew
    assert "What is shown" in page and "result_ttl" in page


def test_the_outbox_backlog(staff_client, redis_conn):
    at = now()
    db.session.add_all([
        OutboxMessage(queue="emails", func="worker.emails.send_email", args=[1], job_id="a",
                      created_at=at - timedelta(hours=2)),
        OutboxMessage(queue="billing", func="worker.billing.renew_due", args=[], job_id="b",
                      created_at=at - timedelta(minutes=5)),
        OutboxMessage(queue="emails", func="worker.emails.send_email", args=[2], job_id="c",
                      created_at=at - timedelta(days=1), enqueued_at=at - timedelta(days=1)),
    ])
    db.session.commit()
    page = staff_client.get("/staff/queues").get_data(as_text=True)
    assert '<strong class="big-number" id="outbox-pending">2</strong>' in page
    assert "31 Jan 2026, 07:00 UTC" in page and "2 h ago" in page and "billing 1 · emails 1" in page


def test_without_redis_the_page_says_so_and_still_shows_the_outbox(staff_client):
    db.session.add(OutboxMessage(queue="emails", func="worker.emails.send_email", args=[1], job_id="x"))
    db.session.commit()
    response = staff_client.get("/staff/queues")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert 'id="redis-unreachable"' in page and "Redis unreachable" in page and "127.0.0.1:1/0" in page
    assert '<strong class="big-number" id="outbox-pending">1</strong>' in page
    token = csrf_from(staff_client, "/staff/queues")
    refused = staff_client.post("/staff/queues/default/failed/abc/requeue", data={"csrf_token": token})
    assert refused.status_code == 503 and "Redis is unreachable, so nothing was done" in refused.get_data(as_text=True)
    htmx = staff_client.post("/staff/queues/default/failed/abc/delete",
                             headers={"HX-Request": "true", "X-CSRFToken": token})
    assert htmx.status_code == 503 and htmx.headers["HX-Refresh"] == "true"
    assert audit_rows("job.requeue") == [] and audit_rows("job.delete") == []


def test_customers_get_403_and_visitors_the_login(app, alice_client):
    token = csrf_from(alice_client, "/plans")
    assert alice_client.get("/staff/queues").status_code == 403
    for action in ("requeue", "delete"):
        url = f"/staff/queues/default/failed/abc/{action}"
        assert alice_client.post(url, data={"csrf_token": token}).status_code == 403
        assert alice_client.post(url, headers={"HX-Request": "true", "X-CSRFToken": token}).status_code == 403
    anonymous = app.test_client().get("/staff/queues")
    assert anonymous.status_code == 302 and "/login" in anonymous.headers["Location"]
