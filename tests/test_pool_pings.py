"""Pooled PostgreSQL connections are pinged only after sitting idle (extensions.configure_pool_pings)."""
from __future__ import annotations

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
