"""The one source of billing time for the app, jobs and models (DESIGN §3.5).

Production reads the real clock. Where `CLOCK_ADJUSTABLE` is on (`make run`, tests), every
process (web, workers, the scheduler's jobs, the CLI) reads a `SharedClock`: the real time moved
by the setting stored in the database (`flask clock ...`), re-read at the start of every request,
job and command, so a move made in one process is seen by the next thing any process does.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from flask import current_app, has_app_context

from portal.billing.clock import Clock, SystemClock

_system = SystemClock()


class SharedClock(Clock):
    """The real time plus the offset (or the frozen instant) stored in `clock_settings`."""

    def __init__(self) -> None:
        self._offset = timedelta(0)
        self._frozen: datetime | None = None

    def refresh(self) -> None:
        """Read the stored setting (one small query); call inside an app context."""
        from portal.extensions import db
        from portal.models.clock import CLOCK_ROW, ClockSetting

        table = ClockSetting.__table__
        with db.engine.connect() as conn:
            row = conn.execute(table.select().where(table.c.id == CLOCK_ROW)).first()
        if row is None:
            self._offset, self._frozen = timedelta(0), None
        else:
            # Selected through the table, so the column's type made frozen_at aware UTC.
            self._offset, self._frozen = timedelta(microseconds=row.offset_us or 0), row.frozen_at

    def now(self) -> datetime:
        if self._frozen is not None:
            return self._frozen
        return datetime.now(timezone.utc) + self._offset

    @property
    def moved(self) -> bool:
        """Whether billing time differs from the real time."""
        return self._frozen is not None or bool(self._offset)

    @property
    def offset(self) -> timedelta:
        return self._offset

    @property
    def frozen(self) -> bool:
        return self._frozen is not None


def get_clock() -> Clock:
    """The app's clock when an app is active, else the system clock."""
    if has_app_context():
        return current_app.extensions.get("clock", _system)
    return _system


def now() -> datetime:
    """Current billing time, timezone-aware UTC."""
    return get_clock().now()


def refresh() -> None:
    """Pick up a move of the shared clock made by another process (no-op for other clocks)."""
    clock = get_clock()
    if isinstance(clock, SharedClock):
        clock.refresh()


def is_moved() -> bool:
    """Whether billing time is moved away from the real time (pages show a banner then)."""
    clock = get_clock()
    return isinstance(clock, SharedClock) and clock.moved
