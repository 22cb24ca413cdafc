"""Jobs run through real RQ against an embedded Redis and a temporary SQLite database."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from croniter import croniter
from redis import Redis
from rq import Queue, SimpleWorker
from rq.cron import CronScheduler
from rq.job import Job, JobStatus

from portal import create_app
from portal.billing.features import FeatureType
from portal.clock import now
from portal.extensions import db
from portal.models import Feature, IdempotencyRecord, OutboxMessage, UsageCounter, User
from worker import QUEUES, job

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def worker_app(tmp_path, redis_server, redis_conn):
    app = create_app(
        {
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/t.db",
            "REDIS_URL": redis_server.url,
            "INSTANCE_PATH": str(tmp_path),
        }
    )
    with app.app_context():
        db.create_all()
    yield app
    with app.app_context():
        db.engine.dispose()


@contextmanager
def keep_signal_handlers():
    """RQ installs SIGINT/SIGTERM handlers when it works; give pytest its own back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def work_burst(app, conn) -> None:
    """Run every queued job in this process, the way tests should: SimpleWorker, burst mode."""
    with keep_signal_handlers(), app.app_context():
        SimpleWorker([Queue(name, connection=conn) for name in QUEUES], connection=conn).work(burst=True)


def add_user(email: str = "ada@example.com") -> User:
    user = User(email=email, password_hash="x")
    db.session.add(user)
    db.session.flush()
    return user


def add_idempotency_record(user: User, key: str, expires_at: datetime) -> None:
    db.session.add(
        IdempotencyRecord(
            user_id=user.id, key=key, request_hash="0" * 64, response_status=201,
            response_body=b"{}", expires_at=expires_at,
        )
    )


def add_counter(user: User, feature: Feature, window_end: datetime) -> None:
    db.session.add(
        UsageCounter(
            user_id=user.id, feature_id=feature.id, window_start=window_end - timedelta(hours=1),
            window_end=window_end, used=1,
        )
    )


def test_purge_expired_runs_from_its_dotted_path(worker_app, redis_conn):
    current = now()
    with worker_app.app_context():
        user = add_user()
        api_calls = Feature(code="api_calls", name="API calls", type=FeatureType.RATE)
        quiz = Feature(code="quiz", name="Quiz", type=FeatureType.QUOTA)
        db.session.add_all([api_calls, quiz])
        db.session.flush()
        add_idempotency_record(user, "expired", current - timedelta(seconds=1))
        add_idempotency_record(user, "fresh", current + timedelta(hours=1))
        add_counter(user, api_calls, current - timedelta(days=3))  # RATE, long closed: purged
        add_counter(user, api_calls, current - timedelta(days=1))  # RATE, recent: kept
        add_counter(user, quiz, current - timedelta(days=30))  # QUOTA history: never purged here
        db.session.commit()

    queued = Queue("default", connection=redis_conn).enqueue("worker.maintenance.purge_expired")
    work_burst(worker_app, redis_conn)

    queued.refresh()
    assert queued.get_status() == JobStatus.FINISHED, queued.latest_result()
    assert queued.return_value() == {"idempotency_records": 1, "rate_counters": 1}
    with worker_app.app_context():
        assert [r.key for r in db.session.scalars(db.select(IdempotencyRecord))] == ["fresh"]
        kept = db.session.scalars(db.select(UsageCounter).order_by(UsageCounter.id)).all()
        assert [(c.feature_id, c.window_end < current - timedelta(days=2)) for c in kept] == [
            (1, False),
            (2, True),
        ]


def test_sweep_outbox_enqueues_what_an_after_commit_dispatch_missed(worker_app, redis_conn):
    with worker_app.app_context():
        # Written outside enqueue_after_commit, as if the process died before dispatching it.
        db.session.add(OutboxMessage(queue="default", func="worker.maintenance.purge_expired", args=[], job_id="missed-1"))
        db.session.commit()

    Queue("default", connection=redis_conn).enqueue("worker.maintenance.sweep_outbox")
    work_burst(worker_app, redis_conn)  # runs the sweep, then the job it enqueued

    assert Job.fetch("missed-1", connection=redis_conn).get_status() == JobStatus.FINISHED
    with worker_app.app_context():
        message = db.session.scalars(db.select(OutboxMessage)).one()
        assert message.enqueued_at is not None


@job("default")
def record_key(user_id: int, key: str, fail: bool = False) -> str:
    add_idempotency_record(db.session.get(User, user_id), key, now() + timedelta(hours=1))
    db.session.flush()
    if fail:
        raise RuntimeError("boom")
    return key


def test_a_job_commits_once_on_success_and_rolls_back_on_error(worker_app):
    with worker_app.app_context():
        user_id = add_user().id
        db.session.commit()

    with worker_app.app_context():
        assert record_key(user_id, "kept") == "kept"
        with pytest.raises(RuntimeError, match="boom"):
            record_key(user_id, "rolled-back", fail=True)

    with worker_app.app_context():
        assert [r.key for r in db.session.scalars(db.select(IdempotencyRecord))] == ["kept"]


def test_job_keeps_its_name_and_knows_its_queue():
    from worker import maintenance

    assert maintenance.sweep_outbox.__module__ == "worker.maintenance"
    assert maintenance.sweep_outbox.__name__ == "sweep_outbox"
    assert maintenance.sweep_outbox.path == "worker.maintenance.sweep_outbox"
    assert maintenance.purge_expired.queue == "default"
    with pytest.raises(ValueError, match="unknown queue"):
        job("nope")


def _fire_gaps(expression: str, count: int = 3) -> set[float]:
    it = croniter(expression, datetime(2026, 1, 1, 0, 0, 30))
    times = [it.get_next(datetime) for _ in range(count + 1)]
    return {(b - a).total_seconds() for a, b in zip(times, times[1:])}


def test_schedule_declares_the_periodic_jobs():
    scheduler = CronScheduler(connection=Redis())  # never connects: loading the config only
    scheduler.load_config_from_file("worker.schedule")
    jobs = {cron_job.func_name: cron_job for cron_job in scheduler.get_jobs()}

    assert set(jobs) == {"worker.maintenance.sweep_outbox", "worker.maintenance.purge_expired",
                         "worker.payments.reconcile_payments", "worker.emails.send_due", "worker.billing.renew_due",
                         "worker.billing.send_renewal_reminders", "worker.retries.process_pending_retries",
                         "worker.retries.alert_on_failures"}
    sweep = jobs["worker.maintenance.sweep_outbox"]
    assert sweep.queue_name == "default" and sweep.interval is None
    assert _fire_gaps(sweep.cron) == {60.0}
    assert _fire_gaps(jobs["worker.maintenance.purge_expired"].cron) == {3600.0}
    emails = jobs["worker.emails.send_due"]
    assert emails.queue_name == "emails" and _fire_gaps(emails.cron) == {60.0}
    reconcile = jobs["worker.payments.reconcile_payments"]
    assert reconcile.queue_name == "billing" and _fire_gaps(reconcile.cron) == {300.0}
    # Renewals every 5 minutes: a period ending at 14:00 is renewed by 14:05, not at the next 02:00.
    renewals = jobs["worker.billing.renew_due"]
    assert renewals.queue_name == "billing" and _fire_gaps(renewals.cron) == {300.0}
    assert _fire_gaps(jobs["worker.billing.send_renewal_reminders"].cron) == {3600.0}
    # The retries of failed operations every 5 minutes (the seeds' process_pending_retries), and the alert.
    for name in ("worker.retries.process_pending_retries", "worker.retries.alert_on_failures"):
        assert jobs[name].queue_name == "retries" and _fire_gaps(jobs[name].cron) == {300.0}


def test_worker_command_runs_jobs_and_stops_on_sigterm(tmp_path, worker_app, redis_server, redis_conn):
    """`python -m worker`: a forked RQ worker with its own app runs a job; SIGTERM stops all children."""
    with worker_app.app_context():
        user = add_user()
        add_idempotency_record(user, "expired", now() - timedelta(minutes=1))
        db.session.commit()
    env = {
        **os.environ,
        "DATABASE_URL": worker_app.config["SQLALCHEMY_DATABASE_URI"],
        "REDIS_URL": redis_server.url,
        "PORTAL_INSTANCE_PATH": str(tmp_path),
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "--workers", "2"], cwd=REPO, env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        queued = Queue("default", connection=redis_conn).enqueue("worker.maintenance.purge_expired")
        deadline = time.monotonic() + 30
        while queued.get_status(refresh=True) not in (JobStatus.FINISHED, JobStatus.FAILED):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the job was not run"
            time.sleep(0.1)
        assert queued.return_value() == {"idempotency_records": 1, "rate_counters": 0}
        # The scheduler registered itself, and so did both workers.
        deadline = time.monotonic() + 10
        while len(CronScheduler.all(redis_conn)) != 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(CronScheduler.all(redis_conn)) == 1

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = proc.stdout.read()
    proc.stdout.close()
    children = [int(pid) for pid in re.findall(r"started \S+ \(pid (\d+)\)", output)]
    assert len(children) == 3, output  # two workers and the scheduler
    # Each child led its own process group: none is left, nor any work horse in them.
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
