"""Enqueue jobs only after the transaction that asked for them commits (DESIGN §3.7).

`enqueue_after_commit` writes an OutboxMessage in the caller's transaction. When that
transaction commits, the messages are pushed to RQ; if Redis is down, or the process dies in
between, they stay pending and `dispatch_pending` (run by the scheduler) pushes them later.
A rolled-back transaction leaves no message, so nothing is sent.
"""
from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

import redis
from flask import Flask, current_app
from rq import Queue
from rq.job import Job
from sqlalchemy import event, or_, select, update
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
    # A savepoint rolled back: its messages are gone with it (dispatch finds no row for their ids),
    # the transaction's earlier ones still wait for its commit.
    if not previous_transaction.nested:
        session.info.pop(_PENDING, None)


def _after_commit(session: Session) -> None:
    # SQLAlchemy signals a savepoint's release as a commit too: the transaction around it may still
    # roll back (and, on SQLite, holds the write lock the dispatcher needs). Only the outermost commit sends.
    if session.in_nested_transaction():
        return
    ids = session.info.pop(_PENDING, None)
    if not ids:
        return
    try:
        dispatch(ids)
    except Exception:  # Redis down: the scheduler's sweep will push them later
        log.warning("outbox: could not enqueue %d message(s) now; they stay pending", len(ids), exc_info=True)


#: A dispatcher that claimed a message has this long to enqueue it before another may.
CLAIM_FOR = timedelta(seconds=60)


def dispatch(ids: list[int] | None = None, limit: int = 500) -> int:
    """Push pending messages (the given ids, or the oldest `limit`) to RQ; returns how many.

    Each message is claimed first by a guarded update, so an after-commit dispatch and the sweep
    (or two sweeps) never both enqueue it; a claim that is never completed (the process died)
    lapses after CLAIM_FOR and the sweep takes the message again.
    """
    table = OutboxMessage.__table__
    with db.engine.begin() as conn:
        stmt = select(table).where(table.c.enqueued_at.is_(None))
        stmt = stmt.where(table.c.id.in_(ids)) if ids else stmt.order_by(table.c.id).limit(limit)
        rows = conn.execute(stmt).mappings().all()
    sent = 0
    for row in rows:
        if not _claim(row["id"]):
            continue  # another dispatcher has it
        try:
            connection = redis_connection()
            # A job id that already exists was pushed by a dispatcher that died before marking it.
            if not Job.exists(row["job_id"], connection=connection):
                Queue(row["queue"], connection=connection).enqueue(
                    row["func"], *row["args"], job_id=row["job_id"], result_ttl=86400, failure_ttl=7 * 86400
                )
        except Exception:
            _unclaim(row["id"])
            raise
        with db.engine.begin() as conn:
            conn.execute(update(table).where(table.c.id == row["id"]).values(enqueued_at=now()))
        sent += 1
    return sent


def _claim(message_id: int) -> bool:
    table = OutboxMessage.__table__
    at = now()
    with db.engine.begin() as conn:
        return conn.execute(
            update(table).where(table.c.id == message_id, table.c.enqueued_at.is_(None),
                                or_(table.c.claimed_until.is_(None), table.c.claimed_until < at))
            .values(claimed_until=at + CLAIM_FOR)
        ).rowcount == 1


def _unclaim(message_id: int) -> None:
    table = OutboxMessage.__table__
    with db.engine.begin() as conn:
        conn.execute(update(table).where(table.c.id == message_id, table.c.enqueued_at.is_(None))
                     .values(claimed_until=None))


def dispatch_pending(limit: int = 500) -> int:
    """The scheduler's sweep: enqueue whatever an after-commit dispatch missed."""
    return dispatch(None, limit=limit)
