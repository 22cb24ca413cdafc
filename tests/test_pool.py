"""The connection pool: big enough for a web process's threads, pinging only idle connections."""
from __future__ import annotations

import threading

import psycopg
import pytest
import sqlalchemy as sa

from portal import extensions
from portal.extensions import db

postgres_only = pytest.mark.parametrize("db_backend", ["postgres"], indirect=True)


@pytest.fixture
def pings(monkeypatch) -> list[object]:
    """Count the pings (each still runs for real)."""
    seen: list[object] = []
    real = extensions.ping

    def counted(dbapi_connection) -> None:
        seen.append(dbapi_connection)
        real(dbapi_connection)

    monkeypatch.setattr(extensions, "ping", counted)
    return seen


def _backend_pid() -> int:
    pid = db.session.scalar(sa.text("SELECT pg_backend_pid()"))
    db.session.commit()  # back to the pool
    return pid


@postgres_only
def test_a_connection_reused_at_once_is_not_pinged(app, pings):
    first = _backend_pid()
    assert _backend_pid() == first  # the same pooled connection, handed out again
    assert pings == []


@postgres_only
def test_an_idle_connection_whose_server_went_away_is_replaced(app, pings, monkeypatch, database_url):
    stale = _backend_pid()
    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", [stale]).fetchone()[0]
    monkeypatch.setattr(extensions, "PING_AFTER_IDLE_SECONDS", 0.0)  # it has been idle "long enough"
    fresh = _backend_pid()  # no error: the ping failed, the pool connected again
    assert fresh != stale and len(pings) == 1


@postgres_only
def test_the_pool_keeps_a_connection_for_each_of_gunicorns_threads(app):
    """The README's gunicorn runs 8 threads a process: their 8 connections all go back to the pool.

    With SQLAlchemy's default pool of 5, three would be closed on return and opened again by
    the next requests (a new PostgreSQL server process each time).
    """
    db.session.commit()
    together = threading.Barrier(8)

    def request_like() -> None:
        with app.app_context(), db.engine.connect() as conn:
            together.wait(timeout=10)  # all 8 checked out at once
            conn.execute(sa.text("SELECT 1"))

    threads = [threading.Thread(target=request_like) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert db.engine.pool.checkedin() >= 8
