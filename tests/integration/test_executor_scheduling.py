"""Scheduling: due triggers become runs once per slot, by misfire policy,
through DST changes, fenced by the leader lock, on the partial index."""

from __future__ import annotations

import itertools
import logging
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from manager.db.pool import DatabaseTarget
from manager.executor.metrics import ExecutorMetrics
from manager.executor.scheduler import Scheduler
from manager.store.runs import CLAIM_DUE_TRIGGERS, Fence
from tests.support.executor import (
    add_trigger,
    create_application,
    executor_settings,
    held_lock,
    runs_of,
)

BERLIN = ZoneInfo("Europe/Berlin")


def make_scheduler(pool: asyncpg.Pool, **overrides: str) -> Scheduler:
    from aioprometheus import Registry

    settings = executor_settings(**overrides)
    return Scheduler(settings.cron, pool, ExecutorMetrics(Registry()), lambda: None)


async def set_next_run(
    pool: asyncpg.Pool, trigger_id: uuid.UUID, instant: datetime
) -> None:
    await pool.execute(
        "UPDATE triggers SET next_run_at = $2 WHERE id = $1", trigger_id, instant
    )


async def minutes_ago(pool: asyncpg.Pool, minutes: int) -> datetime:
    """The start of the database's current minute, `minutes` earlier."""
    return await pool.fetchval(
        "SELECT date_trunc('minute', now()) - make_interval(mins => $1)", minutes
    )


@pytest.mark.parametrize("policy", ["fire_once", "skip", "catch_up"])
async def test_misfire_policy_after_downtime(
    policy: str,
    database: DatabaseTarget,
    pool: asyncpg.Pool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    application = await create_application(pool, "http://127.0.0.1:9")
    trigger = await add_trigger(
        pool, application, schedule="* * * * *", misfire_policy=policy
    )
    # The executor was down for ten minutes: eleven slots are due.
    missed_since = await minutes_ago(pool, 10)
    await set_next_run(pool, trigger.id, missed_since)
    scheduler = make_scheduler(pool, catch_up_limit="100")

    with caplog.at_level(logging.WARNING, logger="manager.executor.scheduler"):
        async with held_lock(database, executor_settings()) as fence:
            assert await scheduler.run_once(fence) == 1
            assert await scheduler.run_once(fence) == 0

    runs = await runs_of(pool, trigger.id)
    queued = [run["scheduled_at"] for run in runs if run["status"] == "queued"]
    skipped = [run["scheduled_at"] for run in runs if run["status"] == "skipped"]
    next_run_at, last_run_at = await pool.fetchrow(
        "SELECT next_run_at, last_run_at FROM triggers WHERE id = $1", trigger.id
    )
    # Eleven slots, or twelve if a minute began while the test ran.
    latest = next_run_at - timedelta(minutes=1)
    every_slot = []
    while not every_slot or every_slot[-1] < latest:
        every_slot.append(missed_since + timedelta(minutes=len(every_slot)))
    assert len(every_slot) in (11, 12)

    if policy == "fire_once":
        assert queued == [latest]
        assert skipped == []
    elif policy == "skip":
        assert set(queued) <= {latest}
        assert skipped == every_slot[:-1]
        assert all(
            run["status"] == "skipped" for run in runs if run["scheduled_at"] < latest
        )
    else:
        assert queued == every_slot
        assert skipped == []

    if queued:
        assert last_run_at == queued[-1]
    assert any(record.getMessage() == "misfire" for record in caplog.records)


async def simulate(
    scheduler: Scheduler,
    fence: Fence,
    start: datetime,
    end: datetime,
    step: timedelta,
) -> None:
    """Run the scheduler at simulated instants from start to end."""
    now = start
    while now <= end:
        while await scheduler.run_once(fence, now=now):
            pass
        now += step


async def test_fixed_hour_fires_once_on_both_dst_days(
    database: DatabaseTarget, pool: asyncpg.Pool
) -> None:
    application = await create_application(pool, "http://127.0.0.1:9")
    daily = await add_trigger(
        pool, application, schedule="30 2 * * *", timezone="Europe/Berlin"
    )
    quarterly = await add_trigger(
        pool, application, schedule="*/15 * * * *", timezone="Europe/Berlin"
    )
    scheduler = make_scheduler(pool)
    step = timedelta(minutes=5)

    async with held_lock(database, executor_settings()) as fence:
        for day in (datetime(2026, 3, 29), datetime(2026, 10, 25)):
            start = (day - timedelta(days=1)).replace(tzinfo=BERLIN).astimezone(UTC)
            end = start + timedelta(days=3)
            await set_next_run(pool, daily.id, _first_slot(start, "02:30"))
            await set_next_run(pool, quarterly.id, start)
            await simulate(scheduler, fence, start, end, step)

    daily_runs = [run["scheduled_at"] for run in await runs_of(pool, daily.id)]
    by_day: dict[str, int] = {}
    for instant in daily_runs:
        local_day = instant.astimezone(BERLIN).date().isoformat()
        by_day[local_day] = by_day.get(local_day, 0) + 1
    assert by_day["2026-03-29"] == 1
    assert by_day["2026-10-25"] == 1
    assert set(by_day.values()) == {1}
    # Spring: 02:30 does not exist; it fires at the next valid instant.
    spring = next(i for i in daily_runs if i.astimezone(BERLIN).day == 29)
    assert spring.astimezone(BERLIN).hour == 3

    quarter_runs = [run["scheduled_at"] for run in await runs_of(pool, quarterly.id)]
    for window in _windows(quarter_runs):
        gaps = {later - earlier for earlier, later in itertools.pairwise(window)}
        assert gaps == {timedelta(minutes=15)}, gaps
    assert all(run["status"] == "queued" for run in await runs_of(pool, quarterly.id))


def _first_slot(after: datetime, wall: str) -> datetime:
    hour, minute = map(int, wall.split(":"))
    local = after.astimezone(BERLIN)
    candidate = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if candidate <= local:
        candidate += timedelta(days=1)
    return candidate.astimezone(UTC)


def _windows(instants: list[datetime]) -> list[list[datetime]]:
    """Split at gaps longer than a day (the two simulated periods)."""
    windows: list[list[datetime]] = [[]]
    for instant in instants:
        if windows[-1] and instant - windows[-1][-1] > timedelta(days=1):
            windows.append([])
        windows[-1].append(instant)
    return windows


async def test_claims_in_batches_and_one_run_per_slot(
    database: DatabaseTarget, pool: asyncpg.Pool
) -> None:
    application = await create_application(pool, "http://127.0.0.1:9")
    trigger_ids = await pool.fetch(
        """
        INSERT INTO triggers (application_id, name, schedule, next_run_at)
        SELECT $1, 'bulk-' || n, '* * * * *', date_trunc('minute', now())
        FROM generate_series(1, 1200) AS n
        RETURNING id
        """,
        application.id,
    )
    scheduler = make_scheduler(pool, batch_size="500")

    async with held_lock(database, executor_settings()) as fence:
        claimed = [await scheduler.run_once(fence) for _ in range(4)]
        # A second pass over the same slots (as a new leader would after a
        # crash between insert and advance) adds nothing.
        await pool.execute(
            "UPDATE triggers SET next_run_at = date_trunc('minute', now())"
        )
        again = [await scheduler.run_once(fence) for _ in range(3)]

    assert claimed == [500, 500, 200, 0]
    assert again == [500, 500, 200]
    counts = await pool.fetchrow(
        """
        SELECT count(*) AS runs, count(DISTINCT trigger_id) AS triggers
        FROM trigger_runs
        """
    )
    assert (counts["runs"], counts["triggers"]) == (1200, len(trigger_ids))


async def test_claim_without_the_lock_claims_nothing(
    database: DatabaseTarget, pool: asyncpg.Pool
) -> None:
    application = await create_application(pool, "http://127.0.0.1:9")
    trigger = await add_trigger(pool, application)
    await set_next_run(pool, trigger.id, await minutes_ago(pool, 1))
    scheduler = make_scheduler(pool)

    async with held_lock(database, executor_settings()) as fence:
        impostor = Fence(pid=fence.pid + 100000, key=fence.key)
        assert await scheduler.run_once(impostor) == 0
    # The lock is released now: the real fence no longer holds either.
    assert await scheduler.run_once(fence) == 0
    assert await runs_of(pool, trigger.id) == []


async def test_due_trigger_claim_reads_the_partial_index(
    database: DatabaseTarget, pool: asyncpg.Pool
) -> None:
    async with (
        held_lock(database, executor_settings()) as fence,
        pool.acquire() as connection,
    ):
        await connection.execute("SET enable_seqscan = off")
        plan = await connection.fetch(
            "EXPLAIN " + CLAIM_DUE_TRIGGERS, *fence.arguments(), None, 500, 0.5
        )
        await connection.execute("RESET enable_seqscan")
    assert "triggers_due_idx" in "\n".join(row[0] for row in plan)
