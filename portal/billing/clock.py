"""The injectable clock: billing time comes from here, never from datetime.now() directly."""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import datetime, timedelta, timezone


def as_utc(dt: datetime) -> datetime:
    """Return ``dt`` converted to UTC; naive datetimes are refused with ValueError."""
    if not isinstance(dt, datetime):
        raise TypeError(f"expected a datetime, got {type(dt).__name__}")
    if dt.tzinfo is None or dt.tzinfo.utcoffset(dt) is None:
        # A naive datetime is ambiguous; guessing its zone is how billing drifts by hours.
        raise ValueError(f"naive datetime {dt.isoformat()} refused: give it a timezone")
    return dt.astimezone(timezone.utc)


class Clock(ABC):
    """Source of the current time for everything billing-related."""

    @abstractmethod
    def now(self) -> datetime:
        """Return the current instant as a timezone-aware UTC datetime."""


class SystemClock(Clock):
    """The real wall clock."""

    def now(self) -> datetime:
        """Return the system time in UTC."""
        return datetime.now(timezone.utc)


class FrozenClock(Clock):
    """A clock that only moves when told to (tests, staff time-travel tools)."""

    def __init__(self, start: datetime) -> None:
        self._now = as_utc(start)

    def now(self) -> datetime:
        """Return the frozen instant."""
        return self._now

    def set(self, dt: datetime) -> None:
        """Jump to ``dt`` (must be timezone-aware)."""
        self._now = as_utc(dt)

    def advance(self, **timedelta_kwargs: float) -> datetime:
        """Move forward (or back, with negative values) by ``timedelta(**kwargs)``; return the new now."""
        self._now = self._now + timedelta(**timedelta_kwargs)
        return self._now
