"""What is failing: the failed report, and the staff alert when failures pile up (DESIGN §4).

`failed_report()` groups unresolved failures (pending, retrying, manual) by operation type: how many,
the oldest, the mean tries, how many wait for a person, and the money at stake per currency.
`check_alert()` (periodic) emails STAFF_ALERT_EMAIL when the unresolved count reaches
STAFF_ALERT_MIN_FAILURES or the oldest is STAFF_ALERT_MAX_AGE_HOURS old: once when the condition starts
to hold, again only after it stopped holding and holds again (AlertState remembers which).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from flask import current_app

from portal.clock import now
from portal.extensions import db
from portal.models import AlertState, ErrorStatus, OperationError
from portal.services import notifications
from portal.services.retries import OPEN

ALERT = "failures"


@dataclass(frozen=True)
class ReportRow:
    operation_type: str
    count: int
    oldest_at: datetime
    mean_attempts: float
    manual: int
    #: currency -> minor units at stake
    amounts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Report:
    rows: list[ReportRow]

    @property
    def count(self) -> int:
        return sum(row.count for row in self.rows)

    @property
    def oldest_at(self) -> datetime | None:
        return min((row.oldest_at for row in self.rows), default=None)

    def amounts(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for row in self.rows:
            for currency, amount in row.amounts.items():
                total[currency] = total.get(currency, 0) + amount
        return total


def failed_report() -> Report:
    """Unresolved failures by type, most first (two grouped queries on the status index)."""
    e = OperationError
    unresolved = e.status.in_(OPEN)
    rows = db.session.execute(
        sa.select(e.operation_type, sa.func.count(e.id), sa.func.min(e.created_at), sa.func.avg(e.attempts),
                  sa.func.sum(sa.case((e.status == ErrorStatus.MANUAL, 1), else_=0)))
        .where(unresolved).group_by(e.operation_type)
    ).all()
    amounts: dict[str, dict[str, int]] = {}
    for operation_type, currency, amount in db.session.execute(
        sa.select(e.operation_type, e.currency, sa.func.sum(e.amount))
        .where(unresolved, e.amount.is_not(None), e.currency.is_not(None))
        .group_by(e.operation_type, e.currency)
    ).all():
        amounts.setdefault(operation_type, {})[currency] = int(amount)
    report = [ReportRow(operation_type, int(count), oldest, round(float(mean or 0), 2), int(manual or 0),
                        amounts.get(operation_type, {}))
              for operation_type, count, oldest, mean, manual in rows]
    report.sort(key=lambda row: (-row.count, row.operation_type))
    return Report(report)


def alert_due(report: Report, at: datetime | None = None) -> bool:
    """The alert's condition: too many unresolved failures, or one unresolved too long."""
    cfg = current_app.config
    at = at or now()
    oldest = report.oldest_at
    return report.count >= cfg["STAFF_ALERT_MIN_FAILURES"] or (
        oldest is not None and at - oldest >= timedelta(hours=cfg["STAFF_ALERT_MAX_AGE_HOURS"]))


def check_alert() -> bool:
    """Email staff when the condition starts to hold (once per crossing); True when an alert was queued.
    Flushes; the job commits."""
    report = failed_report()
    holds = alert_due(report)
    state = db.session.get(AlertState, ALERT, with_for_update=True)
    if state is None:
        state = AlertState(name=ALERT, active=False, crossings=0)
        db.session.add(state)
    if holds == state.active:
        return False
    state.active, state.changed_at = holds, now()
    if not holds:
        db.session.flush()
        return False
    state.crossings += 1
    db.session.flush()
    notifications.notify_staff("staff_alert", {
        "count": report.count, "oldest_at": report.oldest_at,
        "types": [{"type": row.operation_type, "count": row.count, "manual": row.manual} for row in report.rows],
    }, key=f"staff_alert:{ALERT}:{state.crossings}")
    return True
