"""The development database: a real PostgreSQL started from the pgserver wheel.

Used only when no database host is configured and the environment is not
production. The server keeps its data in `data_dir`, so triggers survive a
restart of the daemon, and it is stopped when the daemon exits.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from manager.config import DatabaseSettings
from manager.db.pool import DatabaseTarget
from manager.errors import ConfigError, DatabaseError

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "PFY_DB_HOST: not set and the embedded database is not installed; "
    "install productify-manager[embedded] or set PFY_DB_HOST"
)


class EmbeddedPostgres:
    """Starts and stops one pgserver-managed PostgreSQL in a data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: Any = None

    def start(self, settings: DatabaseSettings) -> DatabaseTarget:
        """Start the server (blocking) and make sure our database exists."""
        try:
            with warnings.catch_warnings():
                # platformdirs warns when XDG_RUNTIME_DIR is unset (containers,
                # systemd services) and falls back to /tmp, which is fine here.
                warnings.simplefilter("ignore")
                import pgserver
        except ImportError as error:
            raise ConfigError([INSTALL_HINT]) from error

        pgdata = self.data_dir / "postgres"
        pgdata.mkdir(parents=True, exist_ok=True)
        try:
            self._server = pgserver.get_server(pgdata, cleanup_mode="stop")
        except Exception as error:
            raise DatabaseError(
                f"embedded PostgreSQL did not start in {pgdata}: {error}"
            ) from error

        info = self._server.get_postmaster_info()
        exists = self._server.psql(
            f"SELECT 1 FROM pg_database WHERE datname = '{_quote(settings.name)}';"
        )
        if "(1 row)" not in exists:
            quoted = settings.name.replace('"', '""')
            self._server.psql(f'CREATE DATABASE "{quoted}";')
        log.info("embedded database started", extra={"data_dir": str(pgdata)})
        return DatabaseTarget(
            host=str(info.socket_dir),
            port=info.port or 5432,
            user="postgres",
            password="",
            database=settings.name,
            connect_timeout=settings.connect_timeout,
            command_timeout=settings.command_timeout,
        )

    def stop(self) -> None:
        """Stop the server if this process is its last user."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None
            log.info("embedded database stopped")


def _quote(name: str) -> str:
    return name.replace("'", "''")
