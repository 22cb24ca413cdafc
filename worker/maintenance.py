"""Housekeeping jobs the scheduler runs (see worker/schedule.py)."""
from __future__ import annotations

from datetime import timedelta

from worker import job

#: RATE counters are kept this long after their window closes (recent history stays visible).
RATE_COUNTER_RETENTION = timedelta(days=2)


@job("default")
def sweep_outbox() -> int:
    """Enqueue outbox messages whose after-commit dispatch was missed; return how many."""
    from portal.services.outbox import dispatch_pending

    return dispatch_pending()


@job("default")
def purge_expired() -> dict[str, int]:
    """Delete expired idempotency records and RATE counters of windows closed over 2 days ago."""
    from sqlalchemy import delete, select

    from portal.billing.features import FeatureType
    from portal.clock import now
    from portal.extensions import db
    from portal.models import Feature, IdempotencyRecord, UsageCounter

    current = now()
    records = db.session.execute(
        delete(IdempotencyRecord)
        .where(IdempotencyRecord.expires_at < current)
        .execution_options(synchronize_session=False)
    ).rowcount
    rate_features = select(Feature.id).where(Feature.type == FeatureType.RATE)
    counters = db.session.execute(
        delete(UsageCounter)
        .where(UsageCounter.feature_id.in_(rate_features))
        .where(UsageCounter.window_end < current - RATE_COUNTER_RETENTION)
        .execution_options(synchronize_session=False)
    ).rowcount
    return {"idempotency_records": records, "rate_counters": counters}
