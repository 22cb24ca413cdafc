"""Extensions, created unbound; `create_app` binds them."""
import time

from flask.sessions import SecureCookieSessionInterface
from flask_htmx import HTMX
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager
from flask_mail import Mail
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

# Named constraints, so Alembic can drop and alter them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
login_manager = LoginManager()
csrf = CSRFProtect()
mail = Mail()
htmx = HTMX()
limiter = Limiter(key_func=get_remote_address, default_limits=[])


def configure_sqlite_engines() -> None:
    """SQLite: WAL, foreign keys, a busy timeout, and BEGIN IMMEDIATE for every transaction.

    pysqlite's own transaction handling breaks SAVEPOINTs and lets a read transaction fail
    when it later tries to write; taking the write lock at BEGIN makes concurrent writers
    wait their turn instead (the SQLAlchemy-documented recipe).
    """
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if event.contains(Engine, "connect", _sqlite_connect):
        return
    event.listen(Engine, "connect", _sqlite_connect)
    event.listen(Engine, "begin", _sqlite_begin)
    globals()["_sqlite3"] = sqlite3


#: A pooled server connection idle for longer than this is pinged before it is used again.
PING_AFTER_IDLE_SECONDS = 5.0


def configure_pool_pings() -> None:
    """Ping a pooled PostgreSQL connection before reuse only when it has sat idle.

    SQLAlchemy's `pool_pre_ping` costs a round trip on every checkout, i.e. on every request.
    Connections go stale while they sit unused in the pool (a server restart, an idle
    timeout); one that is handed out again within PING_AFTER_IDLE_SECONDS of its last use
    worked a moment ago. So only an idle connection is pinged, and a failed ping raises
    DisconnectionError, on which the pool drops it and connects afresh (SQLAlchemy's documented
    pessimistic-disconnect recipe). A server lost in the middle of a burst fails the
    statements in flight, as it would with pool_pre_ping, and the pool recovers the same way.
    """
    from sqlalchemy import event
    from sqlalchemy.pool import Pool

    if event.contains(Pool, "checkout", _ping_if_idle):
        return
    event.listen(Pool, "checkin", _note_idle)
    event.listen(Pool, "checkout", _ping_if_idle)


def _note_idle(dbapi_connection, connection_record) -> None:
    if connection_record is not None:
        connection_record.info["idle_since"] = time.monotonic()


def _ping_if_idle(dbapi_connection, connection_record, connection_proxy) -> None:
    idle_since = connection_record.info.get("idle_since")
    if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
        return  # new, or used a moment ago
    if not hasattr(dbapi_connection, "pgconn"):
        return  # not psycopg: SQLite files do not go stale
    ping(dbapi_connection)


def ping(dbapi_connection) -> None:
    """One `SELECT 1` outside any transaction; DisconnectionError if the server does not answer."""
    from sqlalchemy.exc import DisconnectionError

    autocommit = dbapi_connection.autocommit
    try:
        dbapi_connection.autocommit = True
        dbapi_connection.execute("SELECT 1")
        dbapi_connection.autocommit = autocommit
    except Exception as exc:
        raise DisconnectionError(f"pooled connection failed its ping: {exc}") from exc


def _sqlite_connect(dbapi_connection, connection_record) -> None:
    if not isinstance(dbapi_connection, globals()["_sqlite3"].Connection):
        return
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin(connection) -> None:
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")


class PortalSessionInterface(SecureCookieSessionInterface):
    """Signed-cookie sessions, except under /api/: the JSON API authenticates every request by
    its key, so it gets Flask's null session (reads find nothing, writes raise) and skips
    reading and re-signing a cookie on every call."""

    def open_session(self, app, request):
        if request.path.startswith("/api/"):
            return self.make_null_session(app)
        return super().open_session(app, request)
