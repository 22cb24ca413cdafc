"""Enqueue after commit (DESIGN §3.7): a committed change enqueues its job; a rolled-back one sends nothing."""
from __future__ import annotations

import pytest
import sqlalchemy as sa
from rq import Queue
from rq.job import Job

from portal.extensions import db
from portal.models import OutboxMessage
from portal.services import outbox


@pytest.fixture
def app_config(request):
    if "redis_server" in request.fixturenames:
        return {"REDIS_URL": request.getfixturevalue("redis_server").url}
    return {}


def test_a_committed_transaction_enqueues_its_job(app, redis_server, redis_conn):
    message = outbox.enqueue_after_commit("worker.maintenance.purge_expired", queue_name="default", job_id="j-1")
    assert not Job.exists("j-1", connection=redis_conn)  # not before the commit
    db.session.commit()
    assert Job.exists("j-1", connection=redis_conn)
    assert Queue("default", connection=redis_conn).job_ids == ["j-1"]
    assert db.session.get(OutboxMessage, message.id).enqueued_at is not None


def test_a_rolled_back_transaction_enqueues_nothing(app, redis_server, redis_conn):
    outbox.enqueue_after_commit("worker.maintenance.purge_expired", job_id="j-2")
    db.session.rollback()
    db.session.commit()  # a later, unrelated commit must not send it either
    assert not Job.exists("j-2", connection=redis_conn)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(OutboxMessage)) == 0


def test_with_redis_down_the_message_waits_for_the_sweep(app, redis_server, redis_conn):
    app.config["REDIS_URL"] = "redis://127.0.0.1:1/0"  # nothing listens there
    app.extensions["redis"] = None
    outbox.enqueue_after_commit("worker.maintenance.purge_expired", job_id="j-3")
    db.session.commit()  # does not raise: the change is committed, the job waits
    pending = db.session.scalar(sa.select(OutboxMessage).where(OutboxMessage.job_id == "j-3"))
    assert pending.enqueued_at is None
    db.session.commit()  # end the read (on SQLite it would hold the lock the dispatcher needs)
    app.config["REDIS_URL"] = redis_server.url
    app.extensions["redis"] = None
    assert outbox.dispatch_pending() == 1
    assert Job.exists("j-3", connection=redis_conn)
    assert outbox.dispatch_pending() == 0  # sent once


def test_the_after_commit_dispatch_and_the_sweep_never_enqueue_one_message_twice(app, redis_server, redis_conn,
                                                                                   monkeypatch):
    """Two dispatchers on one message: the second runs at the worst moment, while the first is enqueueing.

    Fault injection of timing only: a Queue whose enqueue_many (the dispatcher pushes a chunk at once) first
    runs the sweep (the real one).
    Before messages were claimed, both pushed the job and it ran twice.
    """
    app.config["REDIS_URL"] = "redis://127.0.0.1:1/0"  # the after-commit dispatch fails: the message waits
    app.extensions["redis"] = None
    outbox.enqueue_after_commit("worker.maintenance.purge_expired", job_id="j-race")
    db.session.commit()
    db.session.commit()
    app.config["REDIS_URL"] = redis_server.url
    app.extensions["redis"] = None
    raced: list[bool] = []
    swept: list[int] = []

    class RacingQueue(Queue):
        def enqueue_many(self, *args, **kwargs):
            if not raced:
                raced.append(True)
                swept.append(outbox.dispatch_pending())  # the sweep, in the middle of our enqueue
            return super().enqueue_many(*args, **kwargs)

    monkeypatch.setattr(outbox, "Queue", RacingQueue)
    first = outbox.dispatch_pending()
    assert (first, swept) in ((1, [0]), (0, [1]))
    assert Queue("default", connection=redis_conn).job_ids == ["j-race"]  # once, not twice
    assert outbox.dispatch_pending() == 0


def test_a_claim_left_by_a_dead_dispatcher_lapses_and_the_sweep_sends_it(app, redis_server, redis_conn, clock):
    app.config["REDIS_URL"] = redis_server.url
    app.extensions["redis"] = None
    message_id = outbox.enqueue_after_commit("worker.maintenance.purge_expired", job_id="j-dead").id
    db.session.info.pop("outbox_pending", None)  # the dispatcher "dies" before dispatching
    db.session.commit()
    assert outbox._claim(message_id)  # it had claimed the message, then died
    assert outbox.dispatch_pending() == 0  # claimed by someone else: left alone
    clock.advance(seconds=61)
    assert outbox.dispatch_pending() == 1
    assert Queue("default", connection=redis_conn).job_ids == ["j-dead"]


def test_a_savepoint_released_inside_a_transaction_enqueues_nothing_yet(app, redis_server, redis_conn):
    """SQLAlchemy reports a savepoint's release as a commit; the job must still wait for the real one
    (the transaction may roll back, and on SQLite the dispatcher would wait for this very lock)."""
    app.config["REDIS_URL"] = redis_server.url
    app.extensions["redis"] = None
    with db.session.begin_nested():
        outbox.enqueue_after_commit("worker.maintenance.purge_expired", job_id="j-inner")
    assert not Job.exists("j-inner", connection=redis_conn)
    db.session.rollback()
    db.session.commit()
    assert not Job.exists("j-inner", connection=redis_conn)  # rolled back with its transaction: never sent
    with db.session.begin_nested():
        outbox.enqueue_after_commit("worker.maintenance.purge_expired", job_id="j-kept")
    db.session.commit()
    assert Job.exists("j-kept", connection=redis_conn)
