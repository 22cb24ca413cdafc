"""Enqueue jobs only after the transaction that asked for them commits (DESIGN §3.7).

`enqueue_after_commit` writes an OutboxMessage in the caller's transaction. When that
transaction commits, the messages are pushed to RQ; if Redis is down, or the process dies in
between, they stay pending and `dispatch_pending` (run by the scheduler) pushes them later.
A rolled-back transaction leaves no message, so nothing is sent.
"""
from __future__ import annotations

import logging
import uuid
from typing import Any

import redis
from flask import Flask, current_app
from rq import Queue
from rq.job import Job
from sqlalchemy import event, select, update
from sqlalchemy.orm import Session

from portal.clock import now
from portal.extensions import db
from portal.models import OutboxMessage

log = logging.getLogger(__name__)
_PENDING = "outbox_pending"


def init_app(app: Flask) -> None:
    """Hook the after-commit dispatch onto the app's sessions."""
    app.extensions["redis"] = None  # connected lazily, no I/O in the factory
    if not event.contains(Session, "after_commit", _after_commit):
        event.listen(Session, "after_commit", _after_commit)
        event.listen(Session, "after_soft_rollback", _after_rollback)


def redis_connection() -> redis.Redis:
    """The app's Redis connection (REDIS_URL), created on first use."""
    conn = current_app.extensions.get("redis")
    if conn is None:
        conn = redis.Redis.from_url(current_app.config["REDIS_URL"], socket_connect_timeout=2)
        current_app.extensions["redis"] = conn
    return conn


def queue(name: str) -> Queue:
    return Queue(name, connection=redis_connection())


def enqueue_after_commit(func: str, *args: Any, queue_name: str = "default", job_id: str | None = None) -> OutboxMessage:
    """Record a job (a dotted function path and JSON-able args) to enqueue once this transaction commits."""
    message = OutboxMessage(queue=queue_name, func=func, args=list(args), job_id=job_id or uuid.uuid4().hex)
    db.session.add(message)
    db.session.flush()
    db.session.info.setdefault(_PENDING, []).append(message.id)
    return message


def _after_rollback(session: Session, previous_transaction) -> None:
    session.info.pop(_PENDING, None)


def _after_commit(session: Session) -> None:
    ids = session.info.pop(_PENDING, None)
    if not ids:
        return
    try:
        dispatch(ids)
    except Exception:  # Redis down: the scheduler's sweep will push them later
        log.warning("outbox: could not enqueue %d message(s) now; they stay pending", len(ids), exc_info=True)


def dispatch(ids: list[int] | None = None, limit: int = 500) -> int:
    """Push pending messages (the given ids, or the oldest `limit`) to RQ; returns how many."""
    with db.engine.begin() as conn:
        stmt = select(OutboxMessage.__table__).where(OutboxMessage.enqueued_at.is_(None))
        stmt = stmt.where(OutboxMessage.id.in_(ids)) if ids else stmt.order_by(OutboxMessage.id).limit(limit)
        rows = conn.execute(stmt).mappings().all()
    sent = 0
    for row in rows:
        connection = redis_connection()
        # A job id that already exists was pushed by another dispatcher: do not run it twice.
        if not Job.exists(row["job_id"], connection=connection):
            Queue(row["queue"], connection=connection).enqueue(
                row["func"], *row["args"], job_id=row["job_id"], result_ttl=86400, failure_ttl=7 * 86400
            )
        with db.engine.begin() as conn:
            conn.execute(
                update(OutboxMessage.__table__)
                .where(OutboxMessage.__table__.c.id == row["id"])
                .values(enqueued_at=now())
            )
        sent += 1
    return sent


def dispatch_pending(limit: int = 500) -> int:
    """The scheduler's sweep: enqueue whatever an after-commit dispatch missed."""
    return dispatch(None, limit=limit)
