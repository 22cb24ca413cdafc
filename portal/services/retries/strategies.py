"""When the next try of a failed operation is due, by its strategy (DESIGN §4). Settings in config.

- exponential (transient: network, rate limit, Stripe 5xx): backoff with full jitter; the n-th
  try after the first waits a random time in [0, min(cap, base * 2^(n-1))];
- immediate (refunds): at once, a few times;
- fixed interval (a declined card, insufficient funds): every RETRY_FIXED_INTERVAL_HOURS;
- manual: never (a person decides).

A strategy's tries end at its maximum, and a try that would land at or after the operation's
deadline (a renewal's end of grace) is not scheduled: the error goes to a person instead.
"""
from __future__ import annotations

import random
from datetime import datetime, timedelta

from flask import current_app

from portal.models import OperationError, RetryStrategy

_random = random.SystemRandom()


def max_attempts(strategy: RetryStrategy) -> int:
    """Tries in all (the first, failed one included) before a person takes over."""
    cfg = current_app.config
    return {
        RetryStrategy.EXPONENTIAL: cfg["RETRY_BACKOFF_MAX_ATTEMPTS"],
        RetryStrategy.IMMEDIATE: cfg["RETRY_IMMEDIATE_MAX_ATTEMPTS"],
        RetryStrategy.FIXED_INTERVAL: cfg["RETRY_FIXED_MAX_ATTEMPTS"],
        RetryStrategy.MANUAL: 0,
    }[strategy]


def backoff_ceiling(attempts: int) -> timedelta:
    """The longest wait after the `attempts`-th failed try under exponential backoff."""
    cfg = current_app.config
    seconds = min(cfg["RETRY_BACKOFF_CAP_SECONDS"], cfg["RETRY_BACKOFF_BASE_SECONDS"] * 2 ** max(attempts - 1, 0))
    return timedelta(seconds=seconds)


def delay(strategy: RetryStrategy, attempts: int, rng: random.Random | None = None) -> timedelta | None:
    """How long to wait after the `attempts`-th failed try; None for manual."""
    if strategy is RetryStrategy.MANUAL:
        return None
    if strategy is RetryStrategy.IMMEDIATE:
        return timedelta(0)
    if strategy is RetryStrategy.FIXED_INTERVAL:
        return timedelta(hours=current_app.config["RETRY_FIXED_INTERVAL_HOURS"])
    ceiling = backoff_ceiling(attempts).total_seconds()
    return timedelta(seconds=round((rng or _random).uniform(0, ceiling), 3))


def schedule(strategy: RetryStrategy, attempts: int, at: datetime, deadline: datetime | None = None,
             rng: random.Random | None = None, limit: int | None = None) -> datetime | None:
    """When the next try is due after `attempts` failed tries, or None: a person takes over. `limit`: the
    error's own maximum of tries (staff may have allowed more), else the strategy's."""
    if attempts >= (max_attempts(strategy) if limit is None else limit):
        return None
    wait = delay(strategy, attempts, rng)
    if wait is None:
        return None
    due = at + wait
    if deadline is not None and due >= deadline:
        return None
    return due


def deadline_of(error: OperationError) -> datetime | None:
    """The instant after which a try is useless (context `retry_before`, e.g. a renewal's end of grace)."""
    value = (error.context or {}).get("retry_before")
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
