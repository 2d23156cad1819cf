"""The executor's /metrics: every contracted name, the counts a test caused,
and an exposition that promtool accepts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiohttp import web

from manager.db.database import Database
from manager.db.pool import DatabaseTarget
from manager.executor.http import build_metrics_app
from manager.executor.service import Executor
from manager.store.triggers import update_trigger
from tests.support.backend import Behaviour, RecordingBackend
from tests.support.executor import (
    ExecutorHarness,
    add_trigger,
    create_application,
    eventually,
    executor_settings,
)
from tests.support.metrics import samples, scrape
from tests.support.ports import free_port

CONTRACT = (
    "pfy_executor_queue_all_total",
    "pfy_executor_queue_processed_total",
    "pfy_executor_queue_waiting",
    "pfy_executor_queue_process_time_seconds",
    "pfy_executor_active_triggers",
    "pfy_executor_backend_dispatch_total",
)


@pytest.fixture
async def served() -> AsyncIterator[list[web.AppRunner]]:
    runners: list[web.AppRunner] = []
    yield runners
    for runner in runners:
        await runner.cleanup()


async def serve_metrics(
    executor: Executor, database: Database, runners: list[web.AppRunner]
) -> int:
    port = free_port()
    runner = web.AppRunner(
        build_metrics_app(
            database, executor.registry, "executor", refresh=executor.metrics.fold
        )
    )
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    runners.append(runner)
    return port


async def test_metrics_show_what_the_executor_did(
    database: DatabaseTarget,
    pool: asyncpg.Pool,
    served: list[web.AppRunner],
) -> None:
    good = await RecordingBackend().start()
    bad = await RecordingBackend(Behaviour(status=500)).start()
    try:
        good_app = await create_application(pool, good.url)
        bad_app = await create_application(pool, bad.url)
        good_trigger = await add_trigger(pool, good_app)
        bad_trigger = await add_trigger(pool, bad_app, max_retries=1)
        paused = await add_trigger(pool, good_app, schedule="0 0 1 1 *")
        await update_trigger(pool, paused.id, enabled=False)

        harness = ExecutorHarness(executor_settings(), database, pool)
        executor = harness.executor
        port = await serve_metrics(executor, Database(database, pool), served)
        await executor.start()
        try:
            await harness.wait_leading()
            await good.wait_for(3, within=10)
            await bad.wait_for(4, within=10)
            await update_trigger(pool, good_trigger.id, enabled=False)
            await update_trigger(pool, bad_trigger.id, enabled=False)
        finally:
            await executor.stop()
        # One more refresh after the stop, so gauges match the database.
        await executor.refresh_metrics()
        text = await scrape(port)
    finally:
        await good.stop()
        await bad.stop()

    for name in CONTRACT:
        assert f"# TYPE {name} " in text
    values = samples(text)
    counts = await pool.fetch(
        """
        SELECT application_id,
               count(*) FILTER (WHERE status <> 'skipped') AS enqueued,
               count(*) FILTER (WHERE status IN ('succeeded', 'failed'))
                   AS processed,
               count(*) FILTER (WHERE status = 'queued') AS waiting,
               coalesce(sum(attempt), 0) AS attempts,
               count(*) FILTER (WHERE status = 'succeeded') AS successes
        FROM trigger_runs GROUP BY application_id
        """
    )
    by_app = {row["application_id"]: row for row in counts}
    successes = sum(row["successes"] for row in counts)
    attempts = sum(row["attempts"] for row in counts)
    for application in (good_app, bad_app):
        app = f'app="{application.id}"'
        row = by_app[application.id]
        assert values[("pfy_executor_queue_all_total", app)] == row["enqueued"]
        assert values[("pfy_executor_queue_processed_total", app)] == row["processed"]
        assert values[("pfy_executor_queue_waiting", app)] == row["waiting"]
        assert (
            values[("pfy_executor_queue_process_time_seconds_count", app)]
            == row["attempts"]
        )
    assert row["processed"] >= 1
    dispatched = {
        status: values[("pfy_executor_backend_dispatch_total", f'status="{status}"')]
        for status in ("success", "error")
    }
    assert dispatched["success"] == successes >= 3
    assert dispatched["error"] == attempts - successes >= 4
    assert values[("pfy_executor_active_triggers", "")] == 0
    assert values[("pfy_executor_leader", "")] == 0
    assert values[("pfy_executor_inflight_callbacks", "")] == 0
    assert values[("pfy_executor_schedule_lag_seconds_count", "")] >= 3


async def test_gauges_follow_the_database_while_leading(
    database: DatabaseTarget,
    pool: asyncpg.Pool,
    served: list[web.AppRunner],
) -> None:
    application = await create_application(pool, "http://127.0.0.1:9")
    for _ in range(3):
        await add_trigger(pool, application, schedule="0 0 1 1 *")
    await pool.execute(
        """
        INSERT INTO trigger_runs (trigger_id, application_id, scheduled_at,
                                  available_at)
        SELECT id, application_id, now(), now() + interval '1 hour'
        FROM triggers
        """
    )
    harness = ExecutorHarness(executor_settings(), database, pool)
    port = await serve_metrics(harness.executor, Database(database, pool), served)
    await harness.executor.start()
    try:
        await harness.wait_leading()

        async def refreshed() -> dict[tuple[str, str], float] | None:
            values = samples(await scrape(port))
            app = ("pfy_executor_queue_waiting", f'app="{application.id}"')
            return values if values.get(app) == 3 else None

        values = await eventually(refreshed, within=5)
        assert values[("pfy_executor_active_triggers", "")] == 3
        assert values[("pfy_executor_leader", "")] == 1
    finally:
        await harness.executor.stop()


async def test_exposition_passes_promtool(
    database: DatabaseTarget, pool: asyncpg.Pool
) -> None:
    backend = await RecordingBackend().start()
    try:
        application = await create_application(pool, backend.url)
        await add_trigger(pool, application)
        harness = ExecutorHarness(executor_settings(), database, pool)
        await harness.executor.start()
        try:
            await harness.wait_leading()
            await backend.wait_for(1, within=10)
        finally:
            await harness.executor.stop()
    finally:
        await backend.stop()

    from aioprometheus.renderer import render

    body, _ = render(harness.executor.registry, [])
    process = await asyncio.create_subprocess_exec(
        "promtool",
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate(body)
    assert process.returncode == 0, output.decode() + body.decode()
    assert output.decode().strip() == ""
