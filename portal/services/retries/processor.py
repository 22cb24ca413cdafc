"""The retry processor: due errors claimed once, their handler run, every try written down (DESIGN §4).

`process_pending_retries` (every 5 minutes from the scheduler, and `flask jobs run-due`) claims due
errors with a guarded update that also sets a claim (`status = retrying`, `claimed_until`); on
PostgreSQL the candidates are picked `FOR UPDATE SKIP LOCKED`, so processors running at once take
disjoint rows without waiting on each other. Each claimed error is tried by its handler and ends
resolved, rescheduled by its strategy, or handed to a person (manual); one RetryAttempt row records
the try (its number is unique per error: a second processor running the same try could not write
it). A processor that dies leaves its claims to lapse; the next run takes them again.

It commits, the documented exception to one commit per request or job (as the email sender does):
the claim before any handler runs, so no other processor can take the same error while it is tried;
and each try after it, so one error's failure never rolls back another's (a payment handler commits
itself before it calls Stripe anyway).

Staff actions (retry now, switch strategy, resolve, give up) are here too: the staff pages call them.
"""
from __future__ import annotations

import logging
from collections import Counter
from datetime import timedelta

import sqlalchemy as sa
from flask import current_app

from portal.clock import now
from portal.extensions import db
from portal.models import ErrorStatus, OperationError, RetryAttempt, RetryOutcome, RetryStrategy
from portal.payments.errors import PaymentError
from portal.services import retries
from portal.services.retries.registry import HANDLERS, Result
from portal.services.retries.strategies import deadline_of, max_attempts, schedule

log = logging.getLogger(__name__)

#: Errors processed by one run at most (the next run goes on).
MAX_PER_RUN = 10_000


def _due(at) -> sa.ColumnElement[bool]:
    t = OperationError.__table__
    return sa.or_(
        sa.and_(t.c.status == ErrorStatus.PENDING.value, t.c.next_retry_at <= at),
        sa.and_(t.c.status == ErrorStatus.RETRYING.value, t.c.claimed_until <= at),  # a lapsed claim
    )


def claim_due(limit: int) -> list[int]:
    """Take up to `limit` due errors, soonest due first; commits the claim."""
    at = now()
    t = OperationError.__table__
    due = _due(at)
    candidates = sa.select(t.c.id).where(due).order_by(t.c.next_retry_at, t.c.id).limit(limit)
    if db.engine.dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    ids = db.session.execute(
        sa.update(t).where(t.c.id.in_(candidates.scalar_subquery()), due)
        .values(status=ErrorStatus.RETRYING.value, claimed_until=at + _claim_for(), updated_at=at)
        .returning(t.c.id)
    ).scalars().all()
    db.session.commit()
    return sorted(ids)


def claim_one(error_id: int, *, force: bool = False) -> bool:
    """Claim one error: when due (the immediate retry's job), or whenever it is open and not being tried
    (`force`: staff's "retry now"). Commits."""
    at = now()
    t = OperationError.__table__
    if force:
        claimable = sa.or_(t.c.status.in_([ErrorStatus.PENDING.value, ErrorStatus.MANUAL.value]),
                           sa.and_(t.c.status == ErrorStatus.RETRYING.value, t.c.claimed_until <= at))
    else:
        claimable = _due(at)
    taken = db.session.execute(
        sa.update(t).where(t.c.id == error_id, claimable)
        .values(status=ErrorStatus.RETRYING.value, claimed_until=at + _claim_for(), updated_at=at)
    ).rowcount
    db.session.commit()
    return bool(taken)


def _claim_for() -> timedelta:
    return timedelta(minutes=current_app.config["RETRY_CLAIM_MINUTES"])


def process_pending_retries(batch_size: int | None = None, limit: int = MAX_PER_RUN) -> dict[str, int]:
    """Every due error tried once (DESIGN §4); returns the outcomes counted."""
    batch_size = batch_size or current_app.config["RETRY_BATCH_SIZE"]
    counts: Counter[str] = Counter()
    done = 0
    while done < limit:
        ids = claim_due(min(batch_size, limit - done))
        if not ids:
            break
        for error_id in ids:
            outcome = run(error_id)
            counts[outcome.value if outcome else "skipped"] += 1
        done += len(ids)
    return dict(counts)


def run(error_id: int, *, actor_id: int | None = None) -> RetryOutcome | None:
    """Try a claimed error once by its handler and record the try; commits. None when it was not ours."""
    error = db.session.get(OperationError, error_id, populate_existing=True)
    if error is None or error.status is not ErrorStatus.RETRYING:
        return None
    started = now()
    fn = HANDLERS.get(error.operation_type)
    if fn is None:
        result = Result.failed("no_handler", f"Nothing retries {error.operation_type} automatically.",
                               RetryStrategy.MANUAL)
    else:
        token = retries.running.set(error_id)
        try:
            result = fn(error)
        except PaymentError as exc:
            db.session.rollback()
            result = Result.failed(exc.code, exc.message, exc.strategy)
        except Exception as exc:  # noqa: BLE001 - an unknown failure needs a person, with what it said
            log.exception("retry of operation error %s (%s) failed", error_id, error.operation_type)
            db.session.rollback()
            result = Result.failed(type(exc).__name__, str(exc) or type(exc).__name__, RetryStrategy.MANUAL)
        finally:
            retries.running.reset(token)
    error = db.session.get(OperationError, error_id, populate_existing=True)
    outcome = finish(error, result, started, actor_id=actor_id)
    db.session.commit()
    return outcome


def finish(error: OperationError, result: Result, started, *, actor_id: int | None = None) -> RetryOutcome:
    """Write the try down and move the error on: resolved, rescheduled, or to a person."""
    at = now()
    number = (db.session.scalar(sa.select(sa.func.max(RetryAttempt.attempt_number))
                                .where(RetryAttempt.operation_error_id == error.id)) or 1) + 1
    strategy_then = error.strategy
    outcome = result.outcome
    if error.status in retries.CLOSED and outcome is not RetryOutcome.FAILED:
        pass  # the operation closed it itself (a paid invoice resolves its error)
    elif outcome in (RetryOutcome.SUCCEEDED, RetryOutcome.MOOT):
        error.status, error.resolved_at, error.next_retry_at = ErrorStatus.RESOLVED, at, None
    elif outcome is RetryOutcome.WAITING:
        error.status = ErrorStatus.PENDING
        error.next_retry_at = at + timedelta(minutes=current_app.config["RETRY_WAIT_MINUTES"])
    else:
        if error.status in retries.CLOSED:  # closed meanwhile by another path (expiry gave it up)
            outcome = RetryOutcome.FAILED
        else:
            error.attempts += 1
            if result.code:
                error.error_code, error.message = result.code[:64], (result.message or error.message)[:2000]
            if result.strategy is RetryStrategy.MANUAL or error.strategy is RetryStrategy.MANUAL:
                error.strategy, error.max_attempts = RetryStrategy.MANUAL, error.attempts
            error.next_retry_at = schedule(error.strategy, error.attempts, at, deadline_of(error),
                                           limit=error.max_attempts)
            error.status = ErrorStatus.PENDING if error.next_retry_at is not None else ErrorStatus.MANUAL
    error.claimed_until, error.updated_at = None, at
    db.session.add(RetryAttempt(
        operation_error_id=error.id, attempt_number=number, succeeded=outcome is RetryOutcome.SUCCEEDED,
        outcome=outcome.value, strategy=strategy_then.value,
        error_code=(result.code or error.error_code)[:64] if outcome is RetryOutcome.FAILED else None,
        message=(result.message or (error.message if outcome is RetryOutcome.FAILED else ""))[:2000],
        started_at=started, at=at, next_retry_at=error.next_retry_at, actor_id=actor_id,
    ))
    db.session.flush()
    if error.status is ErrorStatus.PENDING and error.strategy is RetryStrategy.IMMEDIATE \
            and outcome is RetryOutcome.FAILED:
        from portal.services import outbox

        outbox.enqueue_after_commit("worker.retries.retry_error", error.id, queue_name="retries")
    return outcome


def retry_error(error_id: int) -> RetryOutcome | None:
    """One due error now (the immediate strategy's job); None when it is not due or another took it."""
    if not claim_one(error_id):
        return None
    return run(error_id)


# --- staff actions -------------------------------------------------------------------------------------

class NotRetryable(Exception):
    """The error is closed, or being tried this moment."""


def retry_now(error_id: int, *, actor_id: int) -> RetryOutcome:
    """Staff: try it now, whatever its schedule (a manual one too: one more try)."""
    if not claim_one(error_id, force=True):
        raise NotRetryable("This failure is closed or being retried right now.")
    outcome = run(error_id, actor_id=actor_id)
    return outcome or RetryOutcome.FAILED


def switch_strategy(error: OperationError, strategy: RetryStrategy, *, actor_id: int) -> None:
    """Staff: retry it by another strategy from now on (manual stops the tries; any other schedules the
    next try now, even past the strategy's maximum: staff asked for it). Flushes."""
    db.session.refresh(error, with_for_update=True)  # a processor may have claimed it since it was read
    if error.status in retries.CLOSED or error.status is ErrorStatus.RETRYING:
        raise NotRetryable("This failure is closed or being retried right now.")
    error.strategy = strategy
    error.max_attempts = max(max_attempts(strategy), error.attempts + 1) if strategy is not RetryStrategy.MANUAL \
        else error.attempts
    if strategy is RetryStrategy.MANUAL:
        error.status, error.next_retry_at = ErrorStatus.MANUAL, None
    else:
        error.status = ErrorStatus.PENDING
        error.next_retry_at = schedule(strategy, error.attempts, now(), deadline_of(error),
                                       limit=error.max_attempts) or now()
    error.updated_at = now()
    db.session.flush()


def close(error: OperationError, status: ErrorStatus, *, actor_id: int, note: str) -> None:
    """Staff: resolve it (the problem was fixed another way) or give it up, with a note. Flushes."""
    if status not in retries.CLOSED:
        raise ValueError(status)
    db.session.refresh(error, with_for_update=True)  # a processor may have claimed it since it was read
    if error.status in retries.CLOSED or error.status is ErrorStatus.RETRYING:
        raise NotRetryable("This failure is closed or being retried right now.")
    at = now()
    error.status, error.next_retry_at, error.updated_at = status, None, at
    error.resolved_at, error.resolved_by_id = at, actor_id
    error.context = {**(error.context or {}), "staff_note": note}
    db.session.flush()
