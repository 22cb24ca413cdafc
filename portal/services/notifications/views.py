"""The staff email log's read side: keyset pages of the log, newest first. Writes nothing."""
from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from portal.models import EmailLog
from portal.services.statements import newest_first

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
    return LogPage(*newest_first(query, EmailLog.id, before=before, size=size))
