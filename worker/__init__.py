"""Background jobs on RQ. A job is a function decorated with `job(queue)`; it takes ids, never ORM objects.

Each run gets a fresh app context (so a fresh database session) and commits once when the
function returns, or rolls back and re-raises when it raises. The app itself is created by
`create_app()` once per worker process, on first use, never at import time.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, current_app, has_app_context

#: Every queue, in the order a worker serves them (earlier ones first).
QUEUES = ["billing", "emails", "retries", "default"]

F = TypeVar("F", bound=Callable[..., Any])

_app: Flask | None = None
_app_pid: int | None = None
_pools_reset_in: int | None = None


def set_app(app: Flask | None) -> None:
    """Use `app` for jobs run in this process (the worker command calls it before working)."""
    global _app, _app_pid, _pools_reset_in
    _app, _app_pid, _pools_reset_in = app, os.getpid(), os.getpid()


def get_app() -> Flask:
    """The app jobs run in: the one set with `set_app`, else `create_app()` made once per process."""
    global _app
    if _app is None:
        from portal import create_app

        set_app(create_app())
    assert _app is not None
    return _app


def _job_app() -> Flask:
    # A job run in-process while an app is active (tests, `flask` commands) uses that app.
    if has_app_context():
        return current_app._get_current_object()  # type: ignore[attr-defined]
    return get_app()


def _reset_pools_after_fork(app: Flask) -> None:
    """RQ forks a work horse per job: never reuse the parent's pooled database sockets."""
    global _pools_reset_in
    pid = os.getpid()
    if app is _app and _app_pid != pid and _pools_reset_in != pid:
        from portal.extensions import db

        for engine in db.engines.values():
            engine.dispose(close=False)
        _pools_reset_in = pid


def job(queue: str) -> Callable[[F], F]:
    """Declare a job function served on `queue` (one of QUEUES).

    The decorated function keeps its name and module, so RQ can run it from its dotted path
    ("worker.maintenance.sweep_outbox"). It gains ``queue``, ``path`` and
    ``enqueue_after_commit(*args)``, which records it in the outbox of the current transaction.
    """
    if queue not in QUEUES:
        raise ValueError(f"unknown queue {queue!r}; use one of {QUEUES}")

    def decorator(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            app = _job_app()
            with app.app_context():
                _reset_pools_after_fork(app)
                from portal.clock import refresh as refresh_clock
                from portal.extensions import db

                refresh_clock()  # billing time as `flask clock` last set it (where it may be moved)

                try:
                    result = fn(*args, **kwargs)
                    db.session.commit()
                except BaseException:
                    db.session.rollback()
                    raise
            return result

        path = f"{fn.__module__}.{fn.__qualname__}"

        def enqueue_after_commit(*args: Any, job_id: str | None = None):
            from portal.services.outbox import enqueue_after_commit as outbox_enqueue

            return outbox_enqueue(path, *args, queue_name=queue, job_id=job_id)

        run.queue = queue  # type: ignore[attr-defined]
        run.path = path  # type: ignore[attr-defined]
        run.enqueue_after_commit = enqueue_after_commit  # type: ignore[attr-defined]
        return run  # type: ignore[return-value]

    return decorator
