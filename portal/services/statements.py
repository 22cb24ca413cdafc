"""Prebuilt Core statements: the helpers every hot-path module shares.

Building a SQLAlchemy statement costs far more Python than executing it, so the usage API's
statements (usage/sql.py, api_keys, idempotency) are built once with typed placeholders and run
with a parameter dict on the session's connection. Nothing here caches *data*.
"""
from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from portal.extensions import db


def connection(*, autocommit: bool = False) -> sa.Connection:
    """The session's connection, so these statements share the ORM's transaction.

    Flushes first (when the session autoflushes), as the ORM queries these replace did:
    pending objects, e.g. a new subscription, must be visible to the lookups.

    `autocommit=True` asks for a connection on which each statement commits by itself, saving
    the BEGIN and COMMIT round trips. Only for a request whose work is reads plus at most one
    writing statement (the usage API's unkeyed record on PostgreSQL, and check), where a
    transaction would add nothing. It applies only when the session has not begun a
    transaction yet, and only on PostgreSQL (SQLite's transactions are handled by the recipe in
    extensions.configure_sqlite_engines, which an isolation-level change would undo); otherwise
    the statements simply join the transaction.
    """
    session = db.session()  # the request's Session (in_transaction is not proxied by scoped_session)
    if session.autoflush:
        session.flush()
    if autocommit and not session.in_transaction() and session.get_bind().dialect.name == "postgresql":
        return session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
    return session.connection()


def param(name: str, column: sa.Column) -> sa.BindParameter:
    """A placeholder typed like `column`, so its TypeDecorator (UTC datetimes, enums) applies."""
    return sa.bindparam(name, type_=column.type)


def dialect_insert(dialect: str):
    """The `insert` with ON CONFLICT support for a dialect name: PostgreSQL's or SQLite's."""
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


def newest_first(query: sa.Select, id_column: sa.ColumnElement, *, before: int | None,
                 size: int) -> tuple[list, int | None]:
    """One keyset page of an ORM query, newest id first: (rows, `before` for the next page or None)."""
    if before is not None:
        query = query.where(id_column < before)
    rows = list(db.session.scalars(query.order_by(id_column.desc()).limit(size + 1)))
    return rows[:size], rows[size - 1].id if len(rows) > size else None
