"""Leadership in one process: one leader, hand-over on stop, loss on a dead
lock connection, rescue of abandoned runs, drain on stop, retention."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import asyncpg

from manager.db.pool import DatabaseTarget, create_pool
from manager.executor.service import LEADER, STANDBY
from manager.store.runs import RESCUE_ERROR
from tests.support.backend import Behaviour, RecordingBackend
from tests.support.cluster import lock_holders
from tests.support.executor import (
    ExecutorHarness,
    add_trigger,
    create_application,
    eventually,
    executor_settings,
    running_executor,
    runs_of,
)
from tests.support.proxy import BLACKHOLE, RESET, ControlledProxy


async def test_one_leader_and_hand_over_on_stop(
    database: DatabaseTarget, pool: asyncpg.Pool
) -> None:
    settings = executor_settings()
    first = ExecutorHarness(settings, database, pool)
    second = ExecutorHarness(settings, database, pool)
    await first.executor.start()
    await first.wait_leading()
    await second.executor.start()
    try:
        assert first.executor.is_leader
        assert not second.executor.is_leader
        assert len(await lock_holders(pool)) == 1

        await first.executor.stop()
        await second.wait_leading(within=2)
        assert second.executor.is_leader
        assert await lock_holders(pool) == [second.executor.lock.fence.pid]
    finally:
        await second.executor.stop()
        await first.executor.stop()
    assert first.statuses == [LEADER]
    assert second.statuses == [LEADER]
    assert await lock_holders(pool) == []


async def test_dead_lock_connection_ends_leadership_at_once(
    database: DatabaseTarget, pool: asyncpg.Pool
) -> None:
    proxy = await ControlledProxy(database.host, database.port).start()
    through_proxy = replace(database, host="127.0.0.1", port=proxy.port)
    settings = executor_settings(lock_probe_interval="0.2", lock_probe_timeout="0.5")
    harness = ExecutorHarness(settings, through_proxy, pool)
    standby = ExecutorHarness(settings, database, pool)
    try:
        await harness.executor.start()
        await harness.wait_leading()
        await standby.executor.start()

        # The lock connection goes silent: the probe times out and the
        # leader steps down well before anyone else could lead.
        proxy.set_mode(BLACKHOLE)
        loop = asyncio.get_running_loop()
        silenced = loop.time()
        async with asyncio.timeout(3):
            await harness.stood_down.wait()
        # One probe interval plus one probe timeout, and a margin for a
        # busy machine.
        assert loop.time() - silenced < 0.2 + 0.5 + 1.0
        assert harness.statuses == [LEADER, STANDBY]
        assert harness.executor.metrics.leader.get({}) == 0
        # The server still sees the old session holding the lock, so the
        # standby waits until that session is really gone.
        assert not standby.executor.is_leader

        proxy.set_mode(RESET)
        await standby.wait_leading(within=5)
    finally:
        await standby.executor.stop()
        await harness.executor.stop()
        await proxy.stop()


async def test_abandoned_running_run_is_rescued_with_the_same_id(
    database: DatabaseTarget, pool: asyncpg.Pool, backend: RecordingBackend
) -> None:
    application = await create_application(pool, backend.url)
    trigger = await add_trigger(pool, application, schedule="0 0 1 1 *")
    # A run a dead leader had started: attempt 1, lease already expired.
    run_id = await pool.fetchval(
        """
        INSERT INTO trigger_runs (trigger_id, application_id, scheduled_at,
                                  status, attempt, started_at, lease_expires_at)
        VALUES ($1, $2, now() - interval '1 minute', 'running', 1,
                now() - interval '1 minute', now() - interval '1 second')
        RETURNING id
        """,
        trigger.id,
        application.id,
    )
    # A run still within its lease is not touched.
    live_id = await pool.fetchval(
        """
        INSERT INTO trigger_runs (trigger_id, application_id, scheduled_at,
                                  status, attempt, started_at, lease_expires_at)
        VALUES ($1, $2, now() - interval '2 minutes', 'running', 1, now(),
                now() + interval '1 hour')
        RETURNING id
        """,
        trigger.id,
        application.id,
    )

    async with running_executor(executor_settings(), database, pool):
        deliveries = await backend.wait_for(1, within=5)
        runs = await eventually(lambda: succeeded(pool, run_id))

    assert [delivery.webhook_id for delivery in deliveries] == [str(run_id)]
    assert deliveries[0].json["run"]["attempt"] == 2
    assert runs["attempt"] == 2
    live = await pool.fetchrow(
        "SELECT status, attempt FROM trigger_runs WHERE id = $1", live_id
    )
    assert (live["status"], live["attempt"]) == ("running", 1)


async def test_rescue_fails_a_run_without_attempts_left(
    database: DatabaseTarget, pool: asyncpg.Pool, backend: RecordingBackend
) -> None:
    application = await create_application(pool, backend.url)
    trigger = await add_trigger(pool, application, schedule="0 0 1 1 *", max_retries=0)
    run_id = await pool.fetchval(
        """
        INSERT INTO trigger_runs (trigger_id, application_id, scheduled_at,
                                  status, attempt, started_at, lease_expires_at)
        VALUES ($1, $2, now(), 'running', 1, now(), now() - interval '1 second')
        RETURNING id
        """,
        trigger.id,
        application.id,
    )

    async with running_executor(executor_settings(), database, pool):
        run = await eventually(lambda: finished(pool, run_id))

    assert (run["status"], run["error"]) == ("failed", RESCUE_ERROR)
    assert backend.deliveries == []


async def test_stop_drains_callbacks_and_requeues_the_rest(
    database: DatabaseTarget, pool: asyncpg.Pool
) -> None:
    slow = await RecordingBackend(Behaviour(delay=0.3)).start()
    stuck = await RecordingBackend(Behaviour(hang=True)).start()
    try:
        slow_app = await create_application(pool, slow.url)
        stuck_app = await create_application(pool, stuck.url)
        slow_trigger = await add_trigger(pool, slow_app, schedule="0 0 1 1 *")
        stuck_trigger = await add_trigger(
            pool, stuck_app, schedule="0 0 1 1 *", timeout_seconds=60
        )
        for trigger in (slow_trigger, stuck_trigger):
            await pool.execute(
                "UPDATE triggers SET next_run_at = now() WHERE id = $1", trigger.id
            )

        settings = executor_settings(drain_timeout="1")
        async with running_executor(settings, database, pool) as harness:
            await slow.wait_for(1, within=5)
            await stuck.wait_for(1, within=5)
            assert len(harness.executor.dispatcher.callbacks) == 2
        # The executor stopped: the slow callback finished, the stuck one
        # went back to the queue under the same run id.
        assert await lock_holders(pool) == []
    finally:
        stuck.release()
        await slow.stop()
        await stuck.stop()

    (slow_run,) = await runs_of(pool, slow_trigger.id)
    (stuck_run,) = await runs_of(pool, stuck_trigger.id)
    assert (slow_run["status"], slow_run["attempt"]) == ("succeeded", 1)
    assert (stuck_run["status"], stuck_run["attempt"]) == ("queued", 1)
    assert stuck.deliveries[0].webhook_id == str(stuck_run["id"])


async def test_retention_deletes_only_old_finished_runs(
    database: DatabaseTarget, pool: asyncpg.Pool
) -> None:
    application = await create_application(pool, "http://127.0.0.1:9")
    trigger = await add_trigger(pool, application, schedule="0 0 1 1 *")
    await pool.execute(
        """
        INSERT INTO trigger_runs (trigger_id, application_id, scheduled_at,
                                  status, finished_at)
        SELECT $1, $2, now() - make_interval(mins => n), 'succeeded',
               now() - make_interval(days => 3)
        FROM generate_series(1, 2500) AS n
        """,
        trigger.id,
        application.id,
    )
    await pool.execute(
        """
        INSERT INTO trigger_runs (trigger_id, application_id, scheduled_at,
                                  status, finished_at, available_at)
        VALUES ($1, $2, now() - interval '1 hour', 'failed', now(), now()),
               -- Old but unfinished, and not due for dispatch in this test.
               ($1, $2, now() - interval '1 year', 'queued', NULL,
                now() + interval '1 day')
        """,
        trigger.id,
        application.id,
    )
    settings = executor_settings(run_retention="2d")

    async with running_executor(settings, database, pool) as harness:
        fence = harness.executor.lock.fence
        assert fence is not None
        assert await harness.executor.prune(fence) == 2500

    remaining = await pool.fetch("SELECT status FROM trigger_runs ORDER BY status")
    assert [row["status"] for row in remaining] == ["failed", "queued"]


async def test_separate_pool_sees_the_same_leader(
    database: DatabaseTarget, pool: asyncpg.Pool
) -> None:
    other_pool = await create_pool(database, min_size=1, max_size=2)
    try:
        async with running_executor(executor_settings(), database, pool) as harness:
            fence = harness.executor.lock.fence
            assert fence is not None
            assert await lock_holders(other_pool) == [fence.pid]
    finally:
        await other_pool.close()


async def succeeded(pool: asyncpg.Pool, run_id: object) -> asyncpg.Record | None:
    row = await pool.fetchrow("SELECT * FROM trigger_runs WHERE id = $1", run_id)
    return row if row is not None and row["status"] == "succeeded" else None


async def finished(pool: asyncpg.Pool, run_id: object) -> asyncpg.Record | None:
    row = await pool.fetchrow("SELECT * FROM trigger_runs WHERE id = $1", run_id)
    return row if row is not None and row["finished_at"] is not None else None
