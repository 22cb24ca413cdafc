"""Enqueue jobs only after the transaction that asked for them commits (DESIGN §3.7).

`enqueue_after_commit` writes an OutboxMessage in the caller's transaction. When that
transaction commits, the messages are pushed to RQ; if Redis is down, or the process dies in
between, they stay pending and `dispatch_pending` (run by the scheduler) pushes them later.
A rolled-back transaction leaves no message, so nothing is sent.
"""
from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
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
from portal.services.statements import connection, insert_loaded

log = logging.getLogger(__name__)
_PENDING = "outbox_pending"
_HELD = "outbox_held"
#: Messages claimed, enqueued and marked per statement by one dispatch.
DISPATCH_CHUNK = 500


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
    message = insert_loaded(OutboxMessage(queue=queue_name, func=func, args=list(args),
                                          job_id=job_id or uuid.uuid4().hex))
    db.session.info.setdefault(_PENDING, []).append(message.id)
    return message


_OUTBOX = OutboxMessage.__table__
_INSERT_MANY = _OUTBOX.insert().returning(_OUTBOX.c.id, sort_by_parameter_order=True)


def enqueue_many_after_commit(func: str, args_list: list[list[Any]], *, queue_name: str = "default",
                              job_ids: list[str] | None = None) -> list[int]:
    """`enqueue_after_commit` for many jobs of one function (one insert); returns the messages' ids."""
    if not args_list:
        return []
    job_ids = job_ids or [uuid.uuid4().hex for _ in args_list]
    at = now()
    ids = list(connection().execute(_INSERT_MANY, [
        {"queue": queue_name, "func": func, "args": list(args), "job_id": job_id, "created_at": at,
         "claimed_until": None, "enqueued_at": None}
        for args, job_id in zip(args_list, job_ids)]).scalars())
    db.session.info.setdefault(_PENDING, []).extend(ids)
    return ids


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
    held = session.info.get(_HELD)
    if held is not None:  # inside dispatch_after_all(): sent together when the block ends
        held.extend(ids)
        return
    _dispatch_now(ids)


def _dispatch_now(ids: list[int]) -> None:
    try:
        dispatch(ids)
    except Exception:  # Redis down: the scheduler's sweep will push them later
        log.warning("outbox: could not enqueue %d message(s) now; they stay pending", len(ids), exc_info=True)


@contextmanager
def dispatch_after_all() -> Iterator[None]:
    """Hold the after-commit dispatch of every transaction committed in this block, and send them all
    together when it ends (a job that commits once per subscription: one dispatch, not one per commit).

    Still enqueue after commit: only committed messages are held, and they are sent even when the block
    ends by an exception. If the process dies first, they are pending rows the sweep sends.
    """
    session = db.session()
    if _HELD in session.info:  # nested: the outer block sends
        yield
        return
    held: list[int] = []
    session.info[_HELD] = held
    try:
        yield
    finally:
        session.info.pop(_HELD, None)
        if held:
            _dispatch_now(held)


#: A dispatcher that claimed a message has this long to enqueue it before another may.
CLAIM_FOR = timedelta(seconds=60)


def dispatch(ids: list[int] | None = None, limit: int = 500) -> int:
    """Push pending messages (the given ids, or the oldest `limit`) to RQ; returns how many.

    Each message is claimed first by a guarded update, so an after-commit dispatch and the sweep
    (or two sweeps) never both enqueue it; a claim that is never completed (the process died)
    lapses after CLAIM_FOR and the sweep takes the message again. Claims and marks are written a
    chunk of messages per statement.
    """
    table = OutboxMessage.__table__
    sent = 0
    if ids:
        for start in range(0, len(ids), DISPATCH_CHUNK):
            sent += _dispatch_rows(select(table).where(table.c.enqueued_at.is_(None),
                                                       table.c.id.in_(ids[start:start + DISPATCH_CHUNK])))
        return sent
    return _dispatch_rows(select(table).where(table.c.enqueued_at.is_(None)).order_by(table.c.id).limit(limit))


def _dispatch_rows(stmt) -> int:
    table = OutboxMessage.__table__
    with db.engine.begin() as conn:
        rows = conn.execute(stmt).mappings().all()
    claimed = _claim_all([row["id"] for row in rows])
    rows = [row for row in rows if row["id"] in claimed]  # the others: another dispatcher has them
    if not rows:
        return 0
    try:
        connection = redis_connection()
        # A job id that already exists was pushed by a dispatcher that died before marking it. One round
        # trip asks about the whole chunk, one pipeline per queue pushes the rest.
        with connection.pipeline(transaction=False) as pipe:
            for row in rows:
                pipe.exists(Job.key_for(row["job_id"]))
            there = pipe.execute()
        by_queue: dict[str, list] = defaultdict(list)
        for row, exists in zip(rows, there):
            if not exists:
                by_queue[row["queue"]].append(row)
        for name, group in by_queue.items():
            Queue(name, connection=connection).enqueue_many([
                Queue.prepare_data(row["func"], row["args"], job_id=row["job_id"], result_ttl=86400,
                                   failure_ttl=7 * 86400) for row in group])
    except Exception:
        _unclaim([row["id"] for row in rows])
        raise
    with db.engine.begin() as conn:
        conn.execute(update(table).where(table.c.id.in_([row["id"] for row in rows])).values(enqueued_at=now()))
    return len(rows)


def _claim(message_id: int) -> bool:
    return bool(_claim_all([message_id]))


def _claim_all(message_ids: list[int]) -> set[int]:
    """Claim these messages for CLAIM_FOR (those still pending and not claimed by another); the ids taken."""
    if not message_ids:
        return set()
    table = OutboxMessage.__table__
    at = now()
    with db.engine.begin() as conn:
        return set(conn.execute(
            update(table).where(table.c.id.in_(message_ids), table.c.enqueued_at.is_(None),
                                or_(table.c.claimed_until.is_(None), table.c.claimed_until < at))
            .values(claimed_until=at + CLAIM_FOR).returning(table.c.id)
        ).scalars())


def _unclaim(message_ids: list[int]) -> None:
    if not message_ids:
        return
    table = OutboxMessage.__table__
    with db.engine.begin() as conn:
        conn.execute(update(table).where(table.c.id.in_(message_ids), table.c.enqueued_at.is_(None))
                     .values(claimed_until=None))


def dispatch_pending(limit: int = 500) -> int:
    """The scheduler's sweep: enqueue whatever an after-commit dispatch missed."""
    return dispatch(None, limit=limit)
