"""Prebuilt Core statements: the helpers every hot-path module shares.

Building a SQLAlchemy statement costs far more Python than executing it, so the usage API's
statements (usage/sql.py, api_keys, idempotency) are built once with typed placeholders and run
with a parameter dict on the session's connection. Nothing here caches *data*.
"""
from __future__ import annotations

from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from portal.extensions import db

T = TypeVar("T")


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


_INSERTS: dict[sa.Table, sa.Insert] = {}


def insert_loaded(obj: T) -> T:
    """Write a new ORM object's row with one prebuilt INSERT ... RETURNING id and put the object in the
    session as loaded, instead of `session.add(obj); session.flush()`.

    For the hot paths' plain rows (a ledger entry, a payment, an event, an outbox message): the unit of
    work's flush costs several times the INSERT itself. The row is the one a flush would write: the
    column defaults a flush would apply are applied here, and set on the object too. Objects with
    relationships set are not for this (their cascades are the unit of work's job).
    """
    mapper = sa.inspect(type(obj))
    table = mapper.local_table
    state = sa.inspect(obj)
    if not state.transient:
        raise ValueError("insert_loaded takes a new object")
    values = state.dict
    params: dict[str, Any] = {}
    for prop in mapper.column_attrs:
        column = prop.columns[0]
        if column.primary_key and prop.key not in values:
            continue
        if prop.key in values:
            params[column.key] = values[prop.key]
        elif column.default is not None:
            default = column.default
            if default.is_callable:
                value = default.arg(None)  # SQLAlchemy wraps a plain callable to take (and ignore) a context
            elif default.is_scalar:
                value = default.arg
            else:
                continue  # computed by the database: the attribute loads when it is read
            params[column.key] = value
            set_committed_value(obj, prop.key, value)
        elif column.server_default is None:
            params[column.key] = None
            set_committed_value(obj, prop.key, None)
    for rel in mapper.relationships:
        if values.get(rel.key):
            raise ValueError(f"insert_loaded does not write {type(obj).__name__}.{rel.key}")
    stmt = _INSERTS.get(table)
    if stmt is None:
        stmt = _INSERTS[table] = table.insert().returning(*table.primary_key.columns)
    pk = connection().execute(stmt, params).one()
    for column, value in zip(table.primary_key.columns, pk):
        set_committed_value(obj, mapper.get_property_by_column(column).key, value)
    make_transient_to_detached(obj)
    db.session.add(obj)
    return obj


def rows_cte(name: str, columns: dict[str, sa.types.TypeEngine], rows: list[tuple]) -> sa.CTE:
    """Rows of values as a named CTE, `WITH name(columns) AS (VALUES ...)`, for one UPDATE that gives many
    rows their own values (`UPDATE t SET ... FROM name WHERE t.id = name.id`). A CTE, not a VALUES list in
    FROM: SQLite takes no column names there. Each column is typed, so its TypeDecorator applies."""
    return sa.values(*(sa.column(key, type_) for key, type_ in columns.items()), name=name).data(rows).cte(name)
