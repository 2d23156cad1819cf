"""The executor as the daemon sees it: start, stop, leadership and metrics.

Every instance competes for the executor lock; the holder runs the claim
loops (scheduler, dispatcher, housekeeping) while the others wait as hot
standbys and retry every `cron.lock_retry_interval`. Losing the lock stops
the claim loops at once; callbacks already in flight finish and record their
outcome, which applies only if nobody took the run over in the meantime.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import asyncpg
from aioprometheus import Registry

from manager.config import Settings
from manager.db.database import Database
from manager.errors import DatabaseError
from manager.executor.dispatcher import Dispatcher
from manager.executor.leader import LeaderLock, PoolingProxyError
from manager.executor.metrics import ExecutorMetrics
from manager.executor.outcomes import OutcomeWriter
from manager.executor.scheduler import Scheduler
from manager.executor.waiting import wait_for_event
from manager.store.runs import (
    RETENTION_BATCH,
    Fence,
    count_enabled_triggers,
    count_queued,
    delete_expired_runs,
    requeue_own,
    rescue_expired,
)

log = logging.getLogger(__name__)

LEADER = "leader"
STANDBY = "standby"

# Housekeeping tick: refresh queue metrics and rescue expired leases.
HOUSEKEEPING_INTERVAL = 1.0

# The least time outcomes get to be written at stop, even after a full drain.
WRITE_GRACE = 1.0

# Retention runs this often on the leader; old runs are not urgent.
RETENTION_INTERVAL = 600.0

_DATABASE_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
    DatabaseError,
)

StatusListener = Callable[[str], None]


class Executor:
    """Runs the trigger executor inside the daemon's event loop."""

    def __init__(
        self,
        settings: Settings,
        database: Database,
        on_status: StatusListener | None = None,
    ) -> None:
        self.settings = settings
        self.cron = settings.cron
        self.database = database
        self.on_status = on_status
        self.registry = Registry()
        self.metrics = ExecutorMetrics(self.registry)
        self.lock = LeaderLock(database.target, settings.cron)
        self.writer = OutcomeWriter(database.pool, self.metrics)
        self.dispatcher = Dispatcher(
            settings, database.pool, self.metrics, self.writer.add, self.lock.is_fresh
        )
        self.scheduler = Scheduler(
            settings.cron,
            database.pool,
            self.metrics,
            self.dispatcher.wake.set,
            taker=self.dispatcher,
        )
        self._leading = False
        self._stopping = asyncio.Event()
        self._competing: asyncio.Task[None] | None = None
        self._next_retention = 0.0

    @property
    def is_leader(self) -> bool:
        return self._leading

    async def start(self) -> None:
        """Begin competing for leadership; returns once the loop is running."""
        await self.dispatcher.open()
        self.writer.start()
        self._competing = asyncio.create_task(self._compete(), name="executor")
        self._competing.add_done_callback(_log_crash)

    async def stop(self) -> None:
        """Stop claiming, release leadership, drain in-flight callbacks."""
        # 1. No new work: the claim loops end with the competition task.
        self._stopping.set()
        if self._competing is not None:
            await asyncio.gather(self._competing, return_exceptions=True)
            self._competing = None

        # 2. Give up the lock at once, so a standby leads within one retry
        #    interval instead of waiting out the drain. It leaves our runs
        #    alone: each is leased for its timeout plus the rescue grace,
        #    longer than its callback can take, and every write below
        #    applies only to the attempt it describes. Callbacks that have
        #    not been sent yet see the lock gone and are handed back.
        was_leader = self.lock.held
        await self.lock.release()
        if was_leader:
            log.info("leadership released")
        self._set_leading(False, announce=False)

        # 3. Callbacks in flight get the drain timeout to finish.
        deadline = time.monotonic() + self.cron.drain_timeout
        unfinished = await self.dispatcher.drain(self.cron.drain_timeout)

        # 4. Outcomes of finished callbacks are written, then what did not
        #    finish goes back to the queue under the same run id. Writing
        #    gets what is left of the drain timeout, and at least a moment.
        await self.writer.close(max(deadline - time.monotonic(), WRITE_GRACE))
        if unfinished:
            try:
                requeued = await requeue_own(self.database.pool, unfinished)
                log.info("runs requeued", extra={"count": requeued})
            except _DATABASE_ERRORS as error:
                # Their leases expire and the next leader requeues them.
                log.error("requeue failed", extra={"error": str(error)})
        await self.dispatcher.close()

    async def _compete(self) -> None:
        """Try for the lock until stopped; lead whenever it is held."""
        while not self._stopping.is_set():
            try:
                acquired = await self.lock.try_acquire()
            except PoolingProxyError as error:
                log.error("executor refuses to lead", extra={"error": str(error)})
                return
            except DatabaseError as error:
                log.warning("leader lock unavailable", extra={"error": str(error)})
                acquired = False
            if not acquired:
                await wait_for_event(self._stopping, self.cron.lock_retry_interval)
                continue

            reason = await self._lead()
            if reason is None:
                return
            if self._leading:
                log.warning("leadership lost", extra={"reason": reason})
            else:
                # The lock was granted but could not be put to work.
                log.warning("leadership not taken up", extra={"reason": reason})
            self.lock.abandon()
            self._set_leading(False)
            await wait_for_event(self._stopping, self.cron.lock_retry_interval)

    async def _lead(self) -> str | None:
        """Run the claim loops while the lock holds; why it ended, or None
        when the executor is stopping."""
        fence = self.lock.fence
        assert fence is not None
        try:
            await self.lock.listen(self._notified)
        except _DATABASE_ERRORS as error:
            return f"listen failed: {str(error) or type(error).__name__}"
        self._set_leading(True)
        log.info("leadership acquired", extra={"pid": fence.pid})

        watch = asyncio.create_task(self.lock.watch(), name="lock probe")
        stopping = asyncio.create_task(self._stopping.wait(), name="stop wait")
        loops = [
            asyncio.create_task(self.scheduler.run(fence), name="scheduler"),
            asyncio.create_task(self.dispatcher.run(fence), name="dispatcher"),
            asyncio.create_task(self._housekeeping(fence), name="housekeeping"),
        ]
        try:
            await asyncio.wait(
                [watch, stopping, *loops], return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            # Claiming stops first, before anything else happens.
            for task in (*loops, watch, stopping):
                task.cancel()
            await asyncio.gather(*loops, watch, stopping, return_exceptions=True)

        if self._stopping.is_set():
            return None
        if watch.done() and not watch.cancelled() and watch.exception() is None:
            return watch.result()
        crashed = next(
            (task for task in (*loops, watch) if task.done() and not task.cancelled()),
            None,
        )
        failure = crashed.exception() if crashed else None
        log.error(
            "executor loop failed",
            extra={"loop": crashed.get_name() if crashed else None},
            exc_info=failure,
        )
        return "a claim loop failed"

    def _notified(self) -> None:
        self.scheduler.wake.set()
        self.dispatcher.wake.set()

    def _set_leading(self, leading: bool, announce: bool = True) -> None:
        changed = leading != self._leading
        self._leading = leading
        self.metrics.set_leader(leading)
        if changed and announce and self.on_status is not None:
            self.on_status(LEADER if leading else STANDBY)

    async def _housekeeping(self, fence: Fence) -> None:
        """Rescue expired leases, refresh queue metrics, prune old runs."""
        self._next_retention = time.monotonic() + HOUSEKEEPING_INTERVAL
        while True:
            try:
                await self._rescue(fence)
                await self.refresh_metrics()
                if time.monotonic() >= self._next_retention:
                    await self.prune(fence)
                    self._next_retention = time.monotonic() + RETENTION_INTERVAL
            except _DATABASE_ERRORS as error:
                log.warning("housekeeping failed", extra={"error": str(error)})
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)

    async def _rescue(self, fence: Fence) -> None:
        own = [*self.dispatcher.in_flight(), *self.writer.pending_runs()]
        rescued = await rescue_expired(self.database.pool, fence, own)
        if not rescued:
            return
        for row in rescued:
            if row["status"] == "failed":
                self.metrics.count_processed(row["application_id"])
        self.metrics.fold()
        log.warning(
            "runs rescued",
            extra={
                "count": len(rescued),
                "failed": sum(row["status"] == "failed" for row in rescued),
            },
        )
        self.dispatcher.wake.set()

    async def refresh_metrics(self) -> None:
        """Queue depth per application and enabled triggers, from the database."""
        self.metrics.set_inflight(len(self.dispatcher.callbacks))
        pool = self.database.pool
        self.metrics.set_waiting(await count_queued(pool))
        self.metrics.set_active_triggers(await count_enabled_triggers(pool))

    async def prune(self, fence: Fence) -> int:
        """Delete runs finished longer ago than cron.run_retention."""
        deleted = 0
        while self._leading:
            count = await delete_expired_runs(
                self.database.pool, fence, self.cron.run_retention
            )
            deleted += count
            if count < RETENTION_BATCH:
                break
        if deleted:
            log.info("old runs deleted", extra={"count": deleted})
        return deleted


def _log_crash(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        log.error("executor stopped unexpectedly", exc_info=error)
