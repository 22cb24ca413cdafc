"""The billing clock's setting, shared by every process through the database (DESIGN §3.5, §5)."""
from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from portal.extensions import db
from portal.models.types import UTCDateTime

#: The one row's id.
CLOCK_ROW = 1


class ClockSetting(db.Model):
    """How far billing time is moved from the real time (a demo or a test walking the days).

    Read only where `CLOCK_ADJUSTABLE` is on (`make run`, tests); production ignores it and uses
    the real clock. Written by `flask clock set | advance | reset`.
    """

    __tablename__ = "clock_settings"
    __table_args__ = (sa.CheckConstraint(f"id = {CLOCK_ROW}", name="one_row"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    #: Microseconds added to the real time (negative: the past); ignored while frozen_at is set.
    offset_us: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    #: When set, billing time stands still at this instant (UTC) until moved again.
    frozen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The real time of the last change (UTC).
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
