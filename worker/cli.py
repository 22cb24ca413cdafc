"""`flask --app wsgi jobs run-due`: every periodic job once, now (by billing time), and the work they fan out.

Registered as a Flask command plug-in (pyproject's `flask.commands` entry point), so the portal
package never imports the worker. The periodic jobs run here, in order; what they fan out goes to
the RQ workers when some are running (as under `make run`) and the command waits until they are
done, emails included; with no worker listening (or `--inline`) it runs those jobs itself. It then
prints what changed meanwhile: renewals, failures, expiries, reminders, emails.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import click
import sqlalchemy as sa
from flask.cli import with_appcontext


@click.group("jobs")
def jobs() -> None:
    """Periodic jobs (worker/schedule.py), run now by billing time."""


@dataclass(frozen=True)
class _Marks:
    event: int
    email: int
    invoice: int
    attempt: int


def _marks() -> _Marks:
    from portal.extensions import db
    from portal.models import EmailLog, Invoice, RetryAttempt, SubscriptionEvent

    def top(column) -> int:
        return db.session.scalar(sa.select(sa.func.coalesce(sa.func.max(column), 0)))

    marks = _Marks(top(SubscriptionEvent.id), top(EmailLog.id), top(Invoice.id), top(RetryAttempt.id))
    db.session.commit()
    return marks


@jobs.command("run-due")
@click.option("--timeout", default=900, show_default=True, help="Seconds to wait for the fanned-out jobs.")
@click.option("--inline", is_flag=True, help="Run the fanned-out jobs in this process even if workers are running.")
@click.option("--quiet", is_flag=True, help="Print only the summary line.")
@with_appcontext
def run_due(timeout: float, inline: bool, quiet: bool) -> None:
    """Run every periodic job once, now, and wait until their work is done; print what it did."""
    from portal.clock import now, refresh
    from worker.schedule import PERIODIC_JOBS

    refresh()
    started_at = now()
    marks = _marks()
    redis_up = _redis_up()
    failed = []
    for spec in PERIODIC_JOBS:
        func = spec["func"]
        if func.path == "worker.maintenance.sweep_outbox" and not redis_up:
            result = "skipped: no Redis (the outbox is run here instead)"
        else:
            try:
                result = func()
            except Exception as exc:  # one job failing does not stop the others, as under the scheduler
                failed.append(func.path)
                result = f"FAILED: {type(exc).__name__}: {exc}"
        if not quiet:
            click.echo(f"  {func.path}: {_brief(result)}")
    mode = _drain(timeout, inline, redis_up)
    summary = _summary(marks)
    click.echo(f"Ran the periodic jobs at {started_at.isoformat(timespec='seconds')} ({mode}): {summary}")
    if failed:
        raise click.ClickException(f"{len(failed)} periodic job(s) failed: {', '.join(failed)}")


def _redis_up() -> bool:
    from portal.services import outbox

    try:
        return bool(outbox.redis_connection().ping())
    except Exception:
        return False


def _brief(result) -> str:
    if isinstance(result, dict):
        shown = {k: v for k, v in result.items() if v}
        return ", ".join(f"{k} {v}" for k, v in shown.items()) or "nothing to do"
    return "nothing to do" if not result else str(result)


# --- waiting for the fanned-out jobs -----------------------------------------------------------------------

def _drain(timeout: float, inline: bool, redis_up: bool) -> str:
    """Until nothing is left to do: workers if some listen, else (or with `inline`) this process."""
    from flask import current_app

    from portal.services import outbox

    if not redis_up:  # the jobs wait in the outbox: run them from there
        _run_outbox_inline()
        return "no Redis: fanned-out jobs run here from the outbox"
    conn = outbox.redis_connection()
    from rq import Worker

    from worker import QUEUES

    listening = [w for w in Worker.all(connection=conn) if set(w.queue_names()) & set(QUEUES)]
    if inline or not listening:
        _work_inline(conn, timeout)
        return "fanned-out jobs run here"
    _wait_until_idle(conn, timeout)
    current_app.logger.debug("run-due: workers finished")
    return f"fanned-out jobs run by {len(listening)} worker(s)"


def _pending_outbox() -> int:
    from portal.extensions import db
    from portal.models import OutboxMessage

    count = db.session.scalar(sa.select(sa.func.count(OutboxMessage.id)).where(OutboxMessage.enqueued_at.is_(None)))
    db.session.commit()
    return count


def _idle(conn) -> bool:
    from rq import Queue, Worker
    from rq.registry import StartedJobRegistry

    from worker import QUEUES

    for name in QUEUES:
        queue = Queue(name, connection=conn)
        if queue.count or StartedJobRegistry(name, connection=conn).count:
            return False
    return all(w.get_state() != "busy" for w in Worker.all(connection=conn))


def _wait_until_idle(conn, timeout: float) -> None:
    from portal.services import outbox

    deadline = time.monotonic() + timeout
    quiet_checks = 0
    while quiet_checks < 3:  # idle three times in a row: a job between two queues is not missed
        if time.monotonic() > deadline:
            raise click.ClickException(f"the workers were still busy after {timeout:.0f} s")
        if _pending_outbox():
            outbox.dispatch_pending()
        quiet_checks = quiet_checks + 1 if _idle(conn) and not _pending_outbox() else 0
        time.sleep(0.2)


def _work_inline(conn, timeout: float) -> None:
    import signal

    from rq import Queue, SimpleWorker

    from portal.services import outbox
    from worker import QUEUES

    deadline = time.monotonic() + timeout
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            outbox.dispatch_pending()
            queues = [Queue(name, connection=conn) for name in QUEUES]
            if not any(q.count for q in queues) and not _pending_outbox():
                return
            if time.monotonic() > deadline:
                raise click.ClickException(f"jobs were still queued after {timeout:.0f} s")
            SimpleWorker(queues, connection=conn).work(burst=True, logging_level="WARNING")
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _run_outbox_inline() -> None:
    """Without Redis: run each job waiting in the outbox here, in order, marking it sent."""
    import importlib

    from portal.clock import now
    from portal.extensions import db
    from portal.models import OutboxMessage

    while True:
        message = db.session.scalar(sa.select(OutboxMessage).where(OutboxMessage.enqueued_at.is_(None))
                                    .order_by(OutboxMessage.id).limit(1).with_for_update())
        if message is None:
            db.session.commit()
            return
        message.enqueued_at = now()
        func, args = message.func, list(message.args)
        db.session.commit()
        module, name = func.rsplit(".", 1)
        getattr(importlib.import_module(module), name)(*args)


# --- what changed ------------------------------------------------------------------------------------------

_EVENT_WORDS = {"renew": "renewed", "activate": "trials converted", "payment_failed": "failed",
                "recover": "recovered", "expire": "expired", "cancel": "canceled"}


def _summary(marks: _Marks) -> str:
    from portal.extensions import db
    from portal.models import EmailLog, EmailStatus, Invoice, RetryAttempt, SubscriptionEvent

    counts: Counter[str] = Counter()
    events = db.session.execute(sa.select(SubscriptionEvent.transition, SubscriptionEvent.from_status,
                                          SubscriptionEvent.data).where(SubscriptionEvent.id > marks.event))
    for transition, from_status, data in events:
        if transition == "renew" and not (data or {}).get("invoice"):
            counts["free periods started"] += 1
        elif transition == "activate" and from_status is None:
            counts["free plans restored"] += 1
        elif transition in _EVENT_WORDS:
            counts[_EVENT_WORDS[transition]] += 1
    emails = db.session.execute(sa.select(EmailLog.template, EmailLog.status).where(EmailLog.id > marks.email))
    for template, status in emails:
        if template == "renewal_reminder":
            counts["reminders"] += 1
        counts["emails sent" if status is EmailStatus.SENT else "emails not sent yet"] += 1
    counts["invoices"] = db.session.scalar(sa.select(sa.func.count(Invoice.id)).where(Invoice.id > marks.invoice))
    for outcome, in db.session.execute(sa.select(RetryAttempt.outcome).where(RetryAttempt.id > marks.attempt)):
        counts["retries"] += 1
        counts[f"retries {outcome}"] += 1
    db.session.commit()
    order = ["renewed", "trials converted", "free periods started", "failed", "recovered", "expired", "canceled",
             "free plans restored", "reminders", "retries", "retries succeeded", "retries failed", "retries waiting",
             "retries moot", "invoices", "emails sent", "emails not sent yet"]
    always = ("renewed", "failed", "expired", "reminders")
    return ", ".join(f"{word} {counts[word]}" for word in order if counts[word] or word in always)
