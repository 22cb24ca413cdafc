"""Failed operations, recorded for staff and retried by their strategy (DESIGN §4, errors & retries).

- `record_failure` writes one OperationError per failing operation (its dedupe key), or notes a new
  failure on the open one; `tried` counts a try made outside the retry processor and schedules the
  next; `resolve` / `give_up` close it.
- `schedule` (strategies.py) says when the next try is due, from the strategy's settings in config.
- Retry handlers are registered by operation type where their domain lives (`@retries.handler`), as
  purchase effects are; `processor.py` claims due errors, runs their handler, writes a RetryAttempt
  and resolves, reschedules or hands the error to a person.
- `report.py`: the failed report and the staff alert.
"""
from __future__ import annotations

from contextvars import ContextVar
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from portal.clock import now
from portal.extensions import db
from portal.models import ErrorStatus, OperationError, RetryStrategy
from portal.services.retries.registry import HANDLERS, Result, handler
from portal.services.retries.strategies import deadline_of, max_attempts, schedule

#: An error in these statuses is finished: nothing retries it any more.
CLOSED = (ErrorStatus.RESOLVED, ErrorStatus.GAVE_UP)
#: Unresolved: retried automatically, being retried, or waiting for a person.
OPEN = (ErrorStatus.PENDING, ErrorStatus.RETRYING, ErrorStatus.MANUAL)

#: The error whose handler the retry processor is running in this context (its tries are counted there).
running: ContextVar[int | None] = ContextVar("retry_running", default=None)


def record_failure(
    operation_type: str,
    error_code: str,
    message: str,
    *,
    dedupe_key: str,
    strategy: RetryStrategy,
    context: dict[str, Any] | None = None,
    user_id: int | None = None,
    subscription_id: int | None = None,
    next_retry_at: datetime | None = None,
    status: ErrorStatus | None = None,
    attempts: int = 0,
) -> OperationError:
    """The open OperationError for `dedupe_key`, created or brought up to date (flushes).

    On an existing error the code, message and context are updated; the strategy changes only to
    manual (the error class now says a person is needed): a strategy staff chose is kept otherwise.
    `attempts` and `next_retry_at` apply to a new error only.
    """
    error = db.session.scalar(sa.select(OperationError).where(OperationError.dedupe_key == dedupe_key))
    if status is None:
        status = ErrorStatus.MANUAL if strategy is RetryStrategy.MANUAL else ErrorStatus.PENDING
    at = now()
    context = context or {}
    amount = context.get("amount")
    if error is None:
        error = OperationError(
            operation_type=operation_type, error_code=error_code[:64], message=message[:2000],
            context=context, strategy=strategy, status=status, attempts=attempts, user_id=user_id,
            subscription_id=subscription_id, next_retry_at=None if status is ErrorStatus.MANUAL else next_retry_at,
            dedupe_key=dedupe_key, created_at=at, updated_at=at, max_attempts=max_attempts(strategy),
            amount=amount if isinstance(amount, int) and not isinstance(amount, bool) else None,
            currency=str(context["currency"]).upper()[:3] if context.get("currency") else None,
        )
        db.session.add(error)
    else:
        error.error_code, error.message, error.updated_at = error_code[:64], message[:2000], at
        if strategy is RetryStrategy.MANUAL and error.status not in CLOSED:
            error.strategy, error.max_attempts = strategy, error.attempts
            if error.status is not ErrorStatus.RETRYING:  # a running retry hands it over when it finishes
                error.status, error.next_retry_at = ErrorStatus.MANUAL, None
        if context:
            error.context = {**(error.context or {}), **context}
    db.session.flush()
    return error


def tried(error: OperationError) -> None:
    """A try of the operation failed outside the retry processor (the first try, a job's own): count it
    and schedule the next by the strategy. Inside the processor's run of this error it does nothing (the
    processor counts its own tries). An immediate retry is enqueued to run after the commit."""
    if running.get() == error.id or error.status in CLOSED:
        return
    error.attempts += 1
    if error.status is ErrorStatus.RETRYING:
        return
    error.next_retry_at = schedule(error.strategy, error.attempts, now(), deadline_of(error), limit=error.max_attempts)
    error.status = ErrorStatus.PENDING if error.next_retry_at is not None else ErrorStatus.MANUAL
    db.session.flush()
    if error.status is ErrorStatus.PENDING and error.strategy is RetryStrategy.IMMEDIATE:
        from portal.services import outbox

        outbox.enqueue_after_commit("worker.retries.retry_error", error.id, queue_name="retries")


def resolve(dedupe_key: str, *, by: int | None = None) -> bool:
    """Mark the open error for `dedupe_key` resolved; False when there is none."""
    return bool(db.session.execute(
        sa.update(OperationError)
        .where(OperationError.dedupe_key == dedupe_key, OperationError.status.notin_(CLOSED))
        .values(status=ErrorStatus.RESOLVED, resolved_at=now(), updated_at=now(), resolved_by_id=by,
                next_retry_at=None, claimed_until=None)
        .execution_options(synchronize_session=False)
    ).rowcount)


def give_up(dedupe_key: str) -> bool:
    """Close the open error for `dedupe_key` as given up (the operation can no longer succeed)."""
    return bool(db.session.execute(
        sa.update(OperationError)
        .where(OperationError.dedupe_key == dedupe_key, OperationError.status.notin_(CLOSED))
        .values(status=ErrorStatus.GAVE_UP, updated_at=now(), next_retry_at=None, claimed_until=None)
        .execution_options(synchronize_session=False)
    ).rowcount)


def open_error(dedupe_key: str) -> OperationError | None:
    """The unresolved error for `dedupe_key`, if any."""
    return db.session.scalar(sa.select(OperationError).where(
        OperationError.dedupe_key == dedupe_key, OperationError.status.in_(OPEN)))


__all__ = [
    "CLOSED", "HANDLERS", "OPEN", "Result", "deadline_of", "give_up", "handler", "open_error", "record_failure",
    "resolve", "running", "schedule", "tried",
]
