"""The injectable clock."""

from datetime import datetime, timedelta, timezone

import pytest

from portal.billing.clock import FrozenClock, SystemClock, as_utc

UTC = timezone.utc


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_frozen_clock():
    clock = FrozenClock(utc(2025, 1, 31))
    assert clock.now() == utc(2025, 1, 31)
    assert clock.advance(days=1, hours=2) == utc(2025, 2, 1, 2)
    assert clock.now() == utc(2025, 2, 1, 2)
    clock.set(datetime(2025, 3, 1, 5, tzinfo=timezone(timedelta(hours=5))))
    assert clock.now() == utc(2025, 3, 1) and clock.now().tzinfo is UTC
    with pytest.raises(ValueError):
        clock.set(datetime(2025, 3, 1))
    with pytest.raises(ValueError):
        FrozenClock(datetime(2025, 3, 1))


def test_system_clock_is_aware_utc():
    now = SystemClock().now()
    assert now.tzinfo is UTC
    assert abs(now - datetime.now(UTC)) < timedelta(seconds=5)


def test_as_utc():
    assert as_utc(datetime(2025, 1, 1, 2, tzinfo=timezone(timedelta(hours=2)))) == utc(2025, 1, 1)
    with pytest.raises(ValueError, match="naive"):
        as_utc(datetime(2025, 1, 1))
