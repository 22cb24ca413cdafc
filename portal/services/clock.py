"""Moving the shared billing clock (`flask clock ...`): only where CLOCK_ADJUSTABLE is on.

Every process reads the setting stored here at the start of each request, job and command
(portal.clock.SharedClock). Time may move forward or back; a move back never undoes what
already happened (a renewal stays made), it only changes what is due next.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from flask import current_app

from portal.billing.clock import as_utc
from portal.clock import SharedClock, get_clock
from portal.extensions import db
from portal.models.clock import CLOCK_ROW, ClockSetting

_STEP = re.compile(r"^\s*([+-]?\d+)\s*([dhm])\s*$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


class ClockNotAdjustable(Exception):
    """The clock may not be moved here (CLOCK_ADJUSTABLE is off)."""


@dataclass(frozen=True)
class ClockState:
    now: datetime
    real: datetime
    frozen: bool
    adjustable: bool
    #: How far billing time runs from the real time (while not frozen).
    offset: timedelta = timedelta(0)

    def describe(self) -> str:
        """One line for the terminal: the billing time, and how it differs from the real time."""
        line = f"{self.now.isoformat(timespec='seconds')}"
        if not self.adjustable:
            return line + " (the real time; CLOCK_ADJUSTABLE is off, so the clock cannot be moved here)"
        if self.frozen:
            return line + f" (frozen; real time {self.real.isoformat(timespec='seconds')})"
        if abs(self.offset) >= timedelta(seconds=1):
            return line + f" (moved by {_span(self.offset)} from the real time)"
        return line + " (the real time)"


def _span(delta: timedelta) -> str:
    sign = "-" if delta < timedelta(0) else "+"
    seconds = round(abs(delta).total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    parts = [f"{days}d"] if days else []
    parts += [f"{hours}h"] if hours else []
    parts += [f"{minutes}m"] if minutes or not parts else []
    return sign + " ".join(parts)


def adjustable() -> bool:
    return bool(current_app.config.get("CLOCK_ADJUSTABLE")) and isinstance(get_clock(), SharedClock)


def state() -> ClockState:
    clock = get_clock()
    if isinstance(clock, SharedClock):
        clock.refresh()
    shared = isinstance(clock, SharedClock)
    return ClockState(clock.now(), datetime.now(timezone.utc), shared and clock.frozen, adjustable(),
                      clock.offset if shared else timedelta(0))


def parse_step(text: str) -> timedelta:
    """'30d', '12h', '90m' (or with a minus sign) as a timedelta; ValueError with a clear message."""
    match = _STEP.match(text or "")
    if match is None:
        raise ValueError(f"{text!r} is not a step: use a whole number followed by d, h or m (30d, 12h, 90m)")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def parse_instant(text: str) -> datetime:
    """An ISO 8601 instant; without a zone it is taken as UTC."""
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 date or time (2027-01-31 or 2027-01-31T14:00:00+00:00)") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return as_utc(at)


def _require_adjustable() -> SharedClock:
    if not adjustable():
        raise ClockNotAdjustable("the clock cannot be moved here: set CLOCK_ADJUSTABLE=1 (make run does; "
                                 "production never should)")
    clock = get_clock()
    assert isinstance(clock, SharedClock)
    return clock


def _store(offset: timedelta, frozen_at: datetime | None) -> None:
    table = ClockSetting.__table__
    values = {"offset_us": offset // timedelta(microseconds=1), "frozen_at": frozen_at,
              "updated_at": datetime.now(timezone.utc)}
    if db.session.execute(sa.update(table).where(table.c.id == CLOCK_ROW).values(**values)).rowcount == 0:
        db.session.execute(sa.insert(table).values(id=CLOCK_ROW, **values))


def set_to(at: datetime, *, freeze: bool = False) -> None:
    """Billing time reads `at` now, then runs on with the real time (or stands still with `freeze`)."""
    _require_adjustable()
    at = as_utc(at)
    if freeze:
        _store(timedelta(0), at)
    else:
        _store(at - datetime.now(timezone.utc), None)


def advance(step: timedelta) -> None:
    """Move billing time by `step` (frozen stays frozen)."""
    clock = _require_adjustable()
    clock.refresh()
    if clock.frozen:
        _store(timedelta(0), clock.now() + step)
    else:
        _store(clock.offset + step, None)


def reset() -> None:
    """Back to the real time."""
    _require_adjustable()
    _store(timedelta(0), None)
