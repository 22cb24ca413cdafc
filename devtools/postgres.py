"""PostgreSQL for development and tests: pgserver (PyPI) runs a real postgres on a Unix socket."""
from __future__ import annotations

import os
from pathlib import Path

from devtools.embedded import EmbeddedServiceError, log_tail


class EmbeddedPostgres:
    """PostgreSQL via pgserver (a Unix socket under the data dir, no TCP port).

    pgserver daemonizes postgres itself, so this one is stopped by `stop()` or pgserver's own
    atexit hook rather than by a process group.
    """

    name = "postgres"

    def __init__(self, datadir: str | os.PathLike[str]) -> None:
        self.datadir = Path(datadir)
        self._server = None

    def start(self, timeout: float | None = None) -> EmbeddedPostgres:
        if self._server is not None:
            return self
        try:
            import pgserver
        except ImportError as exc:  # pragma: no cover
            raise EmbeddedServiceError("pgserver is not installed (pip install -e '.[embedded]')") from exc
        self.datadir.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._server = pgserver.get_server(self.datadir, cleanup_mode="stop")
        except Exception as exc:
            log = self.datadir / "log"
            raise EmbeddedServiceError(f"postgres did not start: {exc}; last lines of {log}:\n{log_tail(log)}") from exc
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def socket_dir(self) -> str:
        return str(self._require().get_postmaster_info().socket_dir)

    def uri(self, database: str = "postgres") -> str:
        """libpq URI (``postgresql://...``) of `database`."""
        return self._require().get_uri(database)

    def url_for(self, database: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg 3 driver) of `database`."""
        return self.uri(database).replace("postgresql://", "postgresql+psycopg://", 1)

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def create_database(self, name: str) -> str:
        """Create an empty database `name` (dropping one of that name first); return its SQLAlchemy URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.uri("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def _require(self):
        if self._server is None:
            raise EmbeddedServiceError("postgres is not started")
        return self._server

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
