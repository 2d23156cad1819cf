"""Connections to PostgreSQL: where the database is and how to open a pool."""

from __future__ import annotations

import functools
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from manager.config import DatabaseSettings
from manager.errors import DatabaseError

log = logging.getLogger(__name__)

# The channel the API notifies when triggers change or a run is requested;
# the executor listens on it to wake up at once instead of at its next tick.
TRIGGERS_CHANNEL = "pfy_triggers"


@dataclass(frozen=True)
class DatabaseTarget:
    """Everything needed to connect; `host` may be a unix socket directory."""

    host: str
    port: int
    user: str
    password: str
    database: str
    sslmode: str = "disable"
    connect_timeout: float = 5.0
    command_timeout: float = 10.0

    @classmethod
    def from_settings(cls, settings: DatabaseSettings) -> DatabaseTarget:
        if settings.host is None:
            raise DatabaseError("no database host configured")
        return cls(
            host=settings.host,
            port=settings.port,
            user=settings.user,
            password=settings.password,
            database=settings.name,
            sslmode=settings.sslmode,
            connect_timeout=settings.connect_timeout,
            command_timeout=settings.command_timeout,
        )

    def connect_arguments(self) -> dict[str, Any]:
        """Keyword arguments for asyncpg.connect and asyncpg.create_pool."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password or None,
            "database": self.database,
            "ssl": _ssl_argument(self.sslmode, self.host),
            "timeout": self.connect_timeout,
            "command_timeout": self.command_timeout,
            # Transaction-pooling proxies cannot keep prepared statements.
            "statement_cache_size": 100,
        }

    def describe(self) -> str:
        """Where the database is, for logs: never the password."""
        return f"{self.user}@{self.host}:{self.port}/{self.database}"


def _ssl_argument(sslmode: str, host: str) -> Any:
    if host.startswith("/"):
        return False
    if sslmode in ("verify-ca", "verify-full"):
        context = ssl.create_default_context()
        context.check_hostname = sslmode == "verify-full"
        return context
    return sslmode


async def _setup_connection(connection: asyncpg.Connection) -> None:
    """Give every connection orjson codecs for json and jsonb."""
    for type_name in ("json", "jsonb"):
        await connection.set_type_codec(
            type_name,
            encoder=lambda value: orjson.dumps(value).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


async def connect(target: DatabaseTarget) -> asyncpg.Connection:
    """One connection outside any pool (leadership, migrations, listening)."""
    try:
        connection = await asyncpg.connect(**target.connect_arguments())
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        raise DatabaseError(
            f"cannot connect to {target.describe()}: {_reason(error)}"
        ) from error
    await _setup_connection(connection)
    return connection


async def create_pool(
    target: DatabaseTarget,
    min_size: int = 2,
    max_size: int = 10,
    session: Mapping[str, str] | None = None,
) -> asyncpg.Pool:
    """A pool whose connections all have the json codecs and a command timeout.

    `session` holds run-time parameters every connection of this pool sets
    for its whole life (with SET, not as startup parameters, which PgBouncer
    refuses).
    """
    try:
        pool = await asyncpg.create_pool(
            **target.connect_arguments(),
            min_size=min_size,
            max_size=max_size,
            init=functools.partial(_setup_pooled, session=dict(session or {})),
            reset=_release_connection,
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        raise DatabaseError(
            f"cannot connect to {target.describe()}: {_reason(error)}"
        ) from error
    assert pool is not None
    return pool


async def _setup_pooled(
    connection: asyncpg.Connection, session: dict[str, str]
) -> None:
    await _setup_connection(connection)
    for name, value in session.items():
        await connection.execute("SELECT set_config($1, $2, false)", name, value)


async def _release_connection(connection: asyncpg.Connection) -> None:
    """Return a connection to the pool without asyncpg's reset statement.

    Before calling this, asyncpg still rolls back a transaction left open and
    drops listeners. Its default reset would add a round trip to every pooled
    statement to undo session state (advisory locks, LISTEN, cursors, SET)
    that nothing in the package leaves on a pooled connection: leadership
    and LISTEN live on dedicated connections, and a session-wide SET comes
    only from the pool's own `session` parameters, the same on every
    connection.
    """


def _reason(error: BaseException) -> str:
    text = str(error).strip()
    return text or type(error).__name__
