"""The one source of billing time for the app, jobs and models (DESIGN §3.5)."""
from __future__ import annotations

from datetime import datetime

from flask import current_app, has_app_context

from portal.billing.clock import Clock, SystemClock

_system = SystemClock()


def get_clock() -> Clock:
    """The app's clock when an app is active, else the system clock."""
    if has_app_context():
        return current_app.extensions.get("clock", _system)
    return _system


def now() -> datetime:
    """Current billing time, timezone-aware UTC."""
    return get_clock().now()
