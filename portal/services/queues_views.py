"""What the staff queues page shows, and its two actions on a failed job.

Per RQ queue (worker.QUEUES): jobs waiting, running, scheduled, deferred, and the failed jobs with
their errors; the `rq cron` scheduler (its heartbeats) and each periodic job of worker/schedule.py
with its last enqueue and the outcome of its latest run still kept by RQ; the outbox backlog
(messages committed but not yet pushed to RQ), read from the database so it shows when Redis is down.

Reading never changes Redis: registries are read without RQ's cleanup (which would move jobs).
Times from RQ are real (wall-clock) UTC, not billing time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
import sqlalchemy as sa
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Worker
from rq import cron_job_registry
from rq.cron import CronScheduler, get_cron_job_history_key, get_cron_job_ids
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.registry import (
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.results import Result

from portal.extensions import db
from portal.models import OutboxMessage
from portal.services.outbox import redis_connection
from worker import QUEUES

#: Failed jobs listed per queue, most recent first (the count shows them all).
FAILED_SHOWN = 25
#: Job ids of a periodic job's history looked at for its latest run and its latest failure.
HISTORY_LOOKED_AT = 20
#: A scheduler with no heartbeat for longer than this is shown as stale (RQ's own threshold).
SCHEDULER_STALE_AFTER = 120


class JobActionError(Exception):
    """A requeue or delete that cannot be done; the message is fit to show."""

    def __init__(self, message: str, status: int = 404) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RQJob:
    """An RQ job as an audit target (audit rows name the table; a job has none)."""

    id: str
    __tablename__ = "rq_job"


@dataclass(frozen=True)
class FailedJob:
    id: str
    queue: str
    func: str
    args: str
    #: The exception's last line ("ValueError: ..."), and the whole traceback.
    error: str
    traceback: str
    enqueued_at: datetime | None
    failed_at: datetime | None
    #: The registry still lists it but RQ no longer has its data (only delete makes sense).
    expired: bool = False


@dataclass(frozen=True)
class QueueState:
    name: str
    queued: int
    started: int
    scheduled: int
    deferred: int
    finished: int
    failed: int
    failed_jobs: list[FailedJob]


@dataclass(frozen=True)
class SchedulerState:
    name: str
    hostname: str
    pid: int
    started_at: datetime | None
    last_heartbeat: datetime | None
    stale: bool


@dataclass(frozen=True)
class JobRun:
    id: str
    status: str
    enqueued_at: datetime | None
    ended_at: datetime | None
    error: str = ""


@dataclass(frozen=True)
class PeriodicJob:
    name: str
    queue: str
    cron: str
    #: When the scheduler last enqueued it (RQ's cron job registry), and when it will next (a live scheduler's plan).
    last_enqueued: datetime | None
    next_enqueue: datetime | None
    #: The newest of its jobs RQ still keeps (finished results expire after result_ttl), and the newest failed one.
    latest: JobRun | None
    latest_failure: JobRun | None
    #: How many of its runs RQ remembers.
    runs_kept: int


@dataclass(frozen=True)
class Outbox:
    pending: int
    oldest: datetime | None
    by_queue: dict[str, int]


@dataclass(frozen=True)
class Board:
    outbox: Outbox
    #: "host:port/db" of REDIS_URL, without credentials.
    redis_at: str
    #: Set when Redis could not be read; everything below is then empty.
    redis_error: str | None = None
    queues: list[QueueState] = field(default_factory=list)
    workers: int = 0
    schedulers: list[SchedulerState] = field(default_factory=list)
    periodic: list[PeriodicJob] = field(default_factory=list)


def board() -> Board:
    """Everything the queues page shows; Redis being down is an answer (redis_error), never an exception."""
    backlog = outbox_backlog()
    conn = redis_connection()
    where = redis_address(conn)
    try:
        conn.ping()
        queues = [queue_state(conn, name) for name in QUEUES]
        workers = Worker.count(connection=conn)
        schedulers = CronScheduler.all(conn, cleanup=False)
        periodic = periodic_jobs(conn, schedulers)
    except RedisError as error:
        return Board(backlog, where, redis_error=f"{type(error).__name__}: {error}")
    return Board(backlog, where, None, queues, workers, scheduler_states(schedulers), periodic)


def redis_address(conn: Redis) -> str:
    kwargs = conn.connection_pool.connection_kwargs
    if kwargs.get("path"):
        return f"unix:{kwargs['path']}"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def outbox_backlog() -> Outbox:
    """Outbox messages not yet pushed to RQ: how many, the oldest, how many per queue."""
    rows = db.session.execute(
        sa.select(OutboxMessage.queue, sa.func.count(), sa.func.min(OutboxMessage.created_at))
        .where(OutboxMessage.enqueued_at.is_(None))
        .group_by(OutboxMessage.queue)
    ).all()
    oldest = [at for _, _, at in rows if at is not None]  # min() keeps the column's type: aware UTC
    return Outbox(sum(count for _, count, _ in rows), min(oldest) if oldest else None,
                  {queue: count for queue, count, _ in rows})


# --- queues and failed jobs ------------------------------------------------------------------------------

def queue_state(conn: Redis, name: str) -> QueueState:
    queue = Queue(name, connection=conn)
    failed = FailedJobRegistry(name, connection=conn)
    ids = failed.get_job_ids(0, FAILED_SHOWN - 1, desc=True, cleanup=False)
    jobs = Job.fetch_many(ids, connection=conn)
    return QueueState(
        name=name,
        queued=queue.count,
        started=StartedJobRegistry(name, connection=conn).get_job_count(cleanup=False),
        scheduled=ScheduledJobRegistry(name, connection=conn).get_job_count(cleanup=False),
        deferred=DeferredJobRegistry(name, connection=conn).get_job_count(cleanup=False),
        finished=FinishedJobRegistry(name, connection=conn).get_job_count(cleanup=False),
        failed=failed.get_job_count(cleanup=False),
        failed_jobs=[_failed_job(name, job_id, job) for job_id, job in zip(ids, jobs)],
    )


def _failed_job(queue: str, job_id: str, job: Job | None) -> FailedJob:
    if job is None:
        return FailedJob(job_id, queue, "?", "", "its data has expired", "", None, None, expired=True)
    traceback = _error_text(job)
    return FailedJob(job_id, queue, _func(job), _args(job), _last_line(traceback), traceback, job.enqueued_at,
                     job.ended_at)


def _func(job: Job) -> str:
    try:
        return job.func_name or "?"
    except Exception:  # data RQ cannot read (another serializer, a broken pickle)
        return "?"


def _args(job: Job) -> str:
    try:
        shown = ", ".join([*(repr(a) for a in job.args), *(f"{k}={v!r}" for k, v in job.kwargs.items())])
    except Exception:
        return "(unreadable)"
    return shown if len(shown) <= 120 else shown[:119] + "…"


def _error_text(job: Job) -> str:
    result = job.latest_result()
    if result is not None and result.type == Result.Type.FAILED:
        return result.exc_string or ""
    return ""


def _last_line(traceback: str) -> str:
    lines = [line for line in traceback.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no error recorded"


def _failed_registry(queue: str) -> FailedJobRegistry:
    if queue not in QUEUES:
        raise JobActionError(f"There is no queue named “{queue}”.")
    return FailedJobRegistry(queue, connection=redis_connection())


def _not_failed(queue: str, job_id: str) -> str:
    return f"Job {job_id} is not among the failed jobs of “{queue}” (requeued or deleted already?)."


def requeue_failed(queue: str, job_id: str) -> str:
    """Put a failed job back on its queue, to run again; returns its function's name."""
    registry = _failed_registry(queue)
    if job_id not in registry:
        raise JobActionError(_not_failed(queue, job_id))
    try:
        job = Job.fetch(job_id, connection=registry.connection)
    except NoSuchJobError:
        raise JobActionError(f"Job {job_id}'s data has expired, so it cannot run again; delete it.", 409) from None
    func = _func(job)
    try:
        registry.requeue(job)
    except InvalidJobOperation:  # another requeue or delete got there first
        raise JobActionError(f"Job {job_id} is not among the failed jobs of “{queue}” any more.") from None
    return func


def delete_failed(queue: str, job_id: str) -> str:
    """Delete a failed job for good (its data and its entry); returns its function's name."""
    registry = _failed_registry(queue)
    if job_id not in registry:
        raise JobActionError(_not_failed(queue, job_id))
    try:
        job = Job.fetch(job_id, connection=registry.connection)
    except NoSuchJobError:
        func = "?"
    else:
        func = _func(job)
        job.delete()
    registry.remove(job_id)
    return func


# --- the scheduler and the periodic jobs -----------------------------------------------------------------

def scheduler_states(schedulers: list[CronScheduler]) -> list[SchedulerState]:
    """Every registered `rq cron` scheduler, stale ones too (RQ forgets them only when cleaning up)."""
    out = []
    for scheduler in schedulers:
        beat = scheduler.last_heartbeat
        # Heartbeats are wall-clock times, so they are compared with the wall clock, not billing time.
        stale = beat is None or (datetime.now(timezone.utc) - beat).total_seconds() > SCHEDULER_STALE_AFTER
        out.append(SchedulerState(scheduler.name, scheduler.hostname, scheduler.pid, scheduler.created_at, beat,
                                  stale))
    return out


def periodic_jobs(conn: Redis, schedulers: list[CronScheduler]) -> list[PeriodicJob]:
    """Each job of worker/schedule.py: its last enqueue by the scheduler and its latest run RQ still keeps."""
    from worker.schedule import PERIODIC_JOBS

    planned: dict[str, datetime] = {}
    for scheduler in schedulers:
        for cron_job in scheduler.get_jobs():
            if cron_job.next_enqueue_time and (cron_job.name not in planned
                                               or cron_job.next_enqueue_time < planned[cron_job.name]):
                planned[cron_job.name] = cron_job.next_enqueue_time
    out = []
    for spec in PERIODIC_JOBS:
        func = spec["func"]
        name = spec.get("name") or f"{func.__module__}.{func.__name__}"
        score = conn.zscore(cron_job_registry.get_registry_key(), name)
        ids = get_cron_job_ids(name, conn, 0, HISTORY_LOOKED_AT - 1)
        jobs = [job for job in Job.fetch_many(ids, connection=conn) if job is not None] if ids else []
        runs = [_run(job) for job in jobs]
        out.append(PeriodicJob(
            name=name, queue=func.queue, cron=spec.get("cron") or f"every {spec.get('interval')} s",
            last_enqueued=datetime.fromtimestamp(score, timezone.utc) if score is not None else None,
            next_enqueue=planned.get(name),
            latest=runs[0] if runs else None,
            latest_failure=next((run for run in runs if run.status == "failed"), None),
            runs_kept=conn.zcard(get_cron_job_history_key(name)),
        ))
    return out


def _run(job: Job) -> JobRun:
    status = job.get_status(refresh=False)
    status_text = getattr(status, "value", str(status)) if status is not None else "unknown"
    error = _last_line(_error_text(job)) if status_text == "failed" else ""
    return JobRun(job.id, status_text, job.enqueued_at, job.ended_at, error)
