"""Failed operations, recorded for staff and for the retries (DESIGN §4, errors & retries).

`record_failure` writes one OperationError per failing operation (its dedupe key), or notes a
new failure on the open one; `resolve` closes it once the operation succeeded.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from portal.clock import now
from portal.extensions import db
from portal.models import ErrorStatus, OperationError, RetryStrategy

#: An error in these statuses is finished: nothing retries it any more.
CLOSED = (ErrorStatus.RESOLVED, ErrorStatus.GAVE_UP)


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
    """The open OperationError for `dedupe_key`, created or brought up to date (flushes)."""
    error = db.session.scalar(sa.select(OperationError).where(OperationError.dedupe_key == dedupe_key))
    if status is None:
        status = ErrorStatus.MANUAL if strategy is RetryStrategy.MANUAL else ErrorStatus.PENDING
    at = now()
    if error is None:
        error = OperationError(
            operation_type=operation_type, error_code=error_code[:64], message=message[:2000],
            context=context or {}, strategy=strategy, status=status, attempts=attempts, user_id=user_id,
            subscription_id=subscription_id, next_retry_at=next_retry_at, dedupe_key=dedupe_key,
            created_at=at, updated_at=at,
        )
        db.session.add(error)
    else:
        error.error_code, error.message, error.updated_at = error_code[:64], message[:2000], at
        error.strategy = strategy
        if strategy is RetryStrategy.MANUAL and error.status not in CLOSED:
            error.status = ErrorStatus.MANUAL
        if context:
            error.context = {**(error.context or {}), **context}
    db.session.flush()
    return error


def resolve(dedupe_key: str, *, by: int | None = None) -> bool:
    """Mark the open error for `dedupe_key` resolved; False when there is none."""
    return bool(db.session.execute(
        sa.update(OperationError)
        .where(OperationError.dedupe_key == dedupe_key, OperationError.status.notin_(CLOSED))
        .values(status=ErrorStatus.RESOLVED, resolved_at=now(), updated_at=now(), resolved_by_id=by,
                next_retry_at=None)
        .execution_options(synchronize_session=False)
    ).rowcount)


#: When the first retry of a new failure is due, by strategy (the retry processor schedules later ones).
FIRST_RETRY_AFTER: dict[RetryStrategy, timedelta | None] = {
    RetryStrategy.IMMEDIATE: timedelta(0),
    RetryStrategy.EXPONENTIAL: timedelta(minutes=5),
    # Predictable refusals (a declined card): once a day, so the 3-day grace period sees a few tries.
    RetryStrategy.FIXED_INTERVAL: timedelta(days=1),
    RetryStrategy.MANUAL: None,
}


def first_retry_at(strategy: RetryStrategy, at: datetime | None = None) -> datetime | None:
    delay = FIRST_RETRY_AFTER[strategy]
    return None if delay is None else (at or now()) + delay


def give_up(dedupe_key: str) -> bool:
    """Close the open error for `dedupe_key` as given up (the operation can no longer succeed)."""
    return bool(db.session.execute(
        sa.update(OperationError)
        .where(OperationError.dedupe_key == dedupe_key, OperationError.status.notin_(CLOSED))
        .values(status=ErrorStatus.GAVE_UP, updated_at=now(), next_retry_at=None)
        .execution_options(synchronize_session=False)
    ).rowcount)
