"""The staff email log's read side: keyset pages of the log, newest first. Writes nothing."""
from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from portal.extensions import db
from portal.models import EmailLog

PAGE_SIZE = 50


@dataclass(frozen=True)
class LogPage:
    emails: list[EmailLog]
    #: `before` for the next (older) page, or None on the last page.
    next_before: int | None


def log_page(*, status: str | None = None, kind: str | None = None, before: int | None = None,
             size: int = PAGE_SIZE) -> LogPage:
    query = sa.select(EmailLog)
    if status is not None:
        query = query.where(EmailLog.status == status)
    if kind is not None:
        query = query.where(EmailLog.template == kind)
    if before is not None:
        query = query.where(EmailLog.id < before)
    rows = list(db.session.scalars(query.order_by(EmailLog.id.desc()).limit(size + 1)))
    more = len(rows) > size
    rows = rows[:size]
    return LogPage(rows, rows[-1].id if more else None)
