"""Where the test PostgreSQL is, and how a daemon subprocess reaches it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from manager.db.pool import DatabaseTarget


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
