"""Where the test PostgreSQL is, how a daemon subprocess reaches it, and a
server of a test's own for scenarios that stop and restart it."""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from manager.db.migrations import apply_migrations
from manager.db.pool import DatabaseTarget, connect


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    admin_database: str
    data_dir: Path | None

    def target(self, database: str) -> DatabaseTarget:
        return DatabaseTarget(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=database,
        )


def database_environment(target: DatabaseTarget) -> dict[str, str]:
    """The documented environment names that point a daemon at `target`."""
    return {
        "PFY_DB_HOST": target.host,
        "PFY_DB_PORT": str(target.port),
        "PFY_DB_USER": target.user,
        "PFY_DB_PASSWORD": target.password,
        "PFY_DB_NAME": target.database,
        "PFY_DB_SSLMODE": "disable",
    }


class OwnPostgres:
    """A PostgreSQL server of one test's own, which the test may stop.

    It lives in a temporary data directory and listens on a unix socket in
    a directory that stays the same across restarts, so a daemon pointed at
    it reconnects by itself once it is back.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: Any = None

    async def start(self) -> OwnPostgres:
        """Start the server (creating it on first use) and wait until ready."""
        if self._server is None:
            self._server = await asyncio.to_thread(_pgserver, self.data_dir)
        else:
            await asyncio.to_thread(self._server.ensure_postgres_running)
        return self

    async def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop; `immediate` is a crash as far as clients can tell."""
        from pgserver._commands import pg_ctl

        await asyncio.to_thread(
            pg_ctl,
            ["-w", "-m", mode, "stop"],
            pgdata=self.data_dir,
            user=self._server.system_user,
        )

    async def close(self) -> None:
        """Stop the server for good (the data directory is the caller's)."""
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._server.cleanup)
            self._server = None

    def target(self, database: str = "postgres") -> DatabaseTarget:
        info = self._server.get_postmaster_info()
        return DatabaseTarget(
            host=str(info.socket_dir),
            port=info.port or 5432,
            user="postgres",
            password="",
            database=database,
        )

    async def create_database(self, name: str) -> DatabaseTarget:
        """A new database on this server, migrated, as a target."""
        admin = await connect(self.target())
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        target = self.target(name)
        connection = await connect(target)
        try:
            await apply_migrations(connection)
        finally:
            await connection.close()
        return target


def _pgserver(data_dir: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
    return pgserver.get_server(data_dir, cleanup_mode="stop")
