"""Recording callback outcomes in batches.

At a thousand callbacks a second, one UPDATE per outcome would cost more
than the callbacks themselves; outcomes are gathered for a few milliseconds
and written with one statement. Until written, a run stays `running`, so
nothing can claim it twice; if this process dies first, the run's lease
expires and the next leader delivers it again (at-least-once).
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import asyncpg

from manager.executor.metrics import ExecutorMetrics
from manager.store.runs import FAILED, SUCCEEDED, Outcome, record_outcomes

log = logging.getLogger(__name__)

# How long outcomes gather before a write, and the most one write carries.
GATHER_SECONDS = 0.005
MAX_BATCH = 1000

# Pause after a failed write before the next try.
RETRY_PAUSE = 0.5

_DATABASE_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)


class OutcomeWriter:
    """Buffers outcomes and writes them in the background."""

    def __init__(self, pool: asyncpg.Pool, metrics: ExecutorMetrics) -> None:
        self.pool = pool
        self.metrics = metrics
        self._pending: list[tuple[Outcome, uuid.UUID]] = []
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def add(self, outcome: Outcome, application_id: uuid.UUID) -> None:
        self._pending.append((outcome, application_id))
        self._arrived.set()

    def pending_runs(self) -> list[uuid.UUID]:
        return [outcome.run_id for outcome, _ in self._pending]

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outcome writer")

    async def close(self, timeout: float) -> None:
        """Stop the background task and write what is left, within `timeout`."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            async with asyncio.timeout(timeout):
                while self._pending:
                    if not await self.flush():
                        await asyncio.sleep(RETRY_PAUSE)
        except TimeoutError:
            log.error(
                "outcomes not recorded",
                extra={"count": len(self._pending)},
            )

    async def _run(self) -> None:
        while True:
            # One connection while writes succeed; a failed write gives it
            # back (the pool replaces a broken one) and pauses. While the
            # database is down even taking a connection fails: the writer
            # must outlive that, or no outcome is written again until a
            # restart and every later run is delivered twice (by rescue).
            await self._arrived.wait()
            try:
                async with self.pool.acquire() as connection:
                    while True:
                        await asyncio.sleep(GATHER_SECONDS)
                        if not await self.flush(connection):
                            break
                        await self._arrived.wait()
            except _DATABASE_ERRORS as error:
                log.warning(
                    "outcome write failed",
                    extra={"error": str(error), "count": len(self._pending)},
                )
            await asyncio.sleep(RETRY_PAUSE)

    async def flush(self, connection: asyncpg.Connection | None = None) -> bool:
        """Write one batch; False when the database refused it (kept)."""
        batch = self._pending[:MAX_BATCH]
        if not batch:
            self._arrived.clear()
            return True
        try:
            applied = await record_outcomes(
                connection or self.pool, [item[0] for item in batch]
            )
        except _DATABASE_ERRORS as error:
            log.warning(
                "outcome write failed",
                extra={"error": str(error), "count": len(batch)},
            )
            return False

        del self._pending[: len(batch)]
        if not self._pending:
            self._arrived.clear()
        for outcome, application_id in batch:
            if outcome.run_id not in applied:
                # A newer attempt or a rescue got there first: that one counts.
                log.debug("stale outcome dropped", extra={"run": str(outcome.run_id)})
            elif outcome.status in (SUCCEEDED, FAILED):
                self.metrics.count_processed(application_id)
        self.metrics.fold()
        return True
