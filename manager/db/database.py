"""The daemon's handle on its database: where it is, the pool, a health probe."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import asyncpg

from manager.db.pool import DatabaseTarget

log = logging.getLogger(__name__)

# How long /health waits for the database before calling it disconnected.
HEALTH_TIMEOUT = 1.0


@dataclass
class Database:
    """A target and an open pool; the API and the executor share one."""

    target: DatabaseTarget
    pool: asyncpg.Pool

    async def is_reachable(self, wait: float = HEALTH_TIMEOUT) -> bool:
        """True when `SELECT 1` answers within `wait` seconds."""
        try:
            async with asyncio.timeout(wait):
                async with self.pool.acquire() as connection:
                    await connection.fetchval("SELECT 1")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return False
        except Exception:
            # A broken pool connection can raise other driver errors; health
            # must answer, not fail, so it reports the database as gone.
            log.debug("health probe failed", exc_info=True)
            return False
        return True
