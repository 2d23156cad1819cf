"""The daemon's handle on its database: where it is, the pool, a health probe."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

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
    _probe: asyncio.Task[bool] | None = field(default=None, init=False, repr=False)

    async def is_reachable(self, wait: float = HEALTH_TIMEOUT) -> bool:
        """True when `SELECT 1` answers within `wait` seconds.

        Health checks that arrive while a probe is under way share its
        answer instead of each taking a pool connection: under a load
        balancer's checks the answer is never older than one probe, and the
        pool stays free for real work.
        """
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._select_one(wait))
        # Shielded: a client that hangs up must not cancel the shared probe.
        return await asyncio.shield(self._probe)

    async def _select_one(self, wait: float) -> bool:
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
