"""Executor tests' building blocks: settings, fixtures of the registry, an
in-process executor that reports leadership, and waiting on conditions."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg

from manager.config import Settings, load_settings
from manager.db.database import Database
from manager.db.pool import DatabaseTarget
from manager.executor.leader import LeaderLock
from manager.executor.service import LEADER, Executor
from manager.store import catalog
from manager.store.runs import Fence
from manager.store.triggers import Trigger, TriggerFields, create_trigger

# Small intervals keep the tests fast; the rescue grace still satisfies the
# rule that it covers a probe interval plus a probe timeout.
FAST_CRON = {
    "lock_retry_interval": "0.1",
    "lock_probe_interval": "0.2",
    "lock_probe_timeout": "1",
    "rescue_grace": "1.5",
    "retry_backoff": "0.05",
    "retry_backoff_max": "0.2",
    "drain_timeout": "2",
    "max_sleep": "0.5",
}


def cron_environment(**overrides: Any) -> dict[str, str]:
    """PFY_CRON_* variables: FAST_CRON with `overrides` on top."""
    values = {**FAST_CRON, **{key: str(value) for key, value in overrides.items()}}
    return {f"PFY_CRON_{key.upper()}": value for key, value in values.items()}


def executor_settings(**overrides: Any) -> Settings:
    return load_settings(
        {"PFY_ENV": "test", "PFY_RUN_MODE": "executor", **cron_environment(**overrides)}
    )


@dataclass(frozen=True)
class Application:
    id: uuid.UUID
    secret: str


async def create_application(
    pool: asyncpg.Pool, backend_url: str, name: str | None = None
) -> Application:
    """A project, tenant and application whose callbacks go to `backend_url`."""
    suffix = name or uuid.uuid4().hex[:8]
    project = await catalog.create_project(pool, f"project-{suffix}")
    tenant = await catalog.create_tenant(pool, project.id, f"tenant-{suffix}")
    application, secret = await catalog.create_application(
        pool, tenant.id, f"app-{suffix}", backend_url
    )
    return Application(application.id, secret)


async def add_trigger(
    pool: asyncpg.Pool, application: Application, **fields: Any
) -> Trigger:
    fields.setdefault("name", f"trigger-{uuid.uuid4().hex[:8]}")
    fields.setdefault("schedule", "* * * * * *")
    return await create_trigger(pool, application.id, TriggerFields(**fields))


class ExecutorHarness:
    """An Executor in this process, with an event per leadership change."""

    def __init__(self, settings: Settings, target: DatabaseTarget, pool: Any) -> None:
        self.statuses: list[str] = []
        self.leading = asyncio.Event()
        self.stood_down = asyncio.Event()
        self.executor = Executor(settings, Database(target, pool), self._status)

    def _status(self, status: str) -> None:
        self.statuses.append(status)
        if status == LEADER:
            self.leading.set()
            self.stood_down.clear()
        else:
            self.leading.clear()
            self.stood_down.set()

    async def wait_leading(self, within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            await self.leading.wait()


@asynccontextmanager
async def running_executor(
    settings: Settings, target: DatabaseTarget, pool: asyncpg.Pool
) -> AsyncIterator[ExecutorHarness]:
    """A started executor that leads; stopped (drained) on exit."""
    harness = ExecutorHarness(settings, target, pool)
    await harness.executor.start()
    try:
        await harness.wait_leading()
        yield harness
    finally:
        await harness.executor.stop()


@asynccontextmanager
async def held_lock(target: DatabaseTarget, settings: Settings) -> AsyncIterator[Fence]:
    """The executor lock, held by the test itself (for driving loops by hand)."""
    lock = LeaderLock(target, settings.cron)
    assert await lock.try_acquire()
    assert lock.fence is not None
    try:
        yield lock.fence
    finally:
        await lock.release()


async def eventually(
    check: Callable[[], Awaitable[Any]], within: float = 10.0, every: float = 0.05
) -> Any:
    """Ask `check` until it returns something truthy; that value, or a timeout."""
    async with asyncio.timeout(within):
        while True:
            result = await check()
            if result:
                return result
            await asyncio.sleep(every)


async def runs_of(pool: asyncpg.Pool, trigger_id: uuid.UUID) -> list[asyncpg.Record]:
    """Every run of a trigger, oldest slot first."""
    return await pool.fetch(
        """
        SELECT id, scheduled_at, status, attempt, http_status, error, manual,
               duration_ms, started_at, finished_at
        FROM trigger_runs WHERE trigger_id = $1 ORDER BY scheduled_at, created_at
        """,
        trigger_id,
    )
