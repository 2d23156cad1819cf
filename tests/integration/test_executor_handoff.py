"""The short path from slot to callback: runs the scheduler inserts already
running and hands to the dispatcher, runs the dispatcher claims ahead of free
slots and keeps ready, and the claim plan that stays on the queue's index."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from aioprometheus import Registry

from manager.config import Settings
from manager.db.pool import DatabaseTarget, create_pool
from manager.executor.dispatcher import (
    TERM_ENDED,
    WAITED_TOO_LONG,
    Dispatcher,
)
from manager.executor.metrics import ExecutorMetrics
from manager.executor.scheduler import Scheduler
from manager.store.runs import CLAIM_RUNS, EXECUTOR_SESSION, Fence, Outcome
from tests.support.backend import Behaviour, RecordingBackend
from tests.support.executor import (
    add_trigger,
    create_application,
    eventually,
    executor_settings,
    held_lock,
    runs_of,
)


class Parts:
    """A scheduler wired to a real dispatcher, driven by hand; the outcomes
    the dispatcher reports are kept in order."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool) -> None:
        self.outcomes: list[Outcome] = []
        self.outcome_seen = asyncio.Event()
        metrics = ExecutorMetrics(Registry())
        self.dispatcher = Dispatcher(settings, pool, metrics, self._record)
        self.scheduler = Scheduler(
            settings.cron, pool, metrics, lambda: None, taker=self.dispatcher
        )

    def _record(self, outcome: Outcome, application_id: uuid.UUID) -> None:
        self.outcomes.append(outcome)
        self.outcome_seen.set()

    async def outcome_of(self, run_id: uuid.UUID, within: float = 10.0) -> Outcome:
        async with asyncio.timeout(within):
            while True:
                for outcome in self.outcomes:
                    if outcome.run_id == run_id:
                        return outcome
                self.outcome_seen.clear()
                await self.outcome_seen.wait()


@asynccontextmanager
async def parts(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[Parts]:
    wired = Parts(settings, pool)
    await wired.dispatcher.open()
    try:
        yield wired
    finally:
        await wired.dispatcher.drain(0.1)
        await wired.dispatcher.close()


async def make_due(pool: asyncpg.Pool, *trigger_ids: uuid.UUID) -> None:
    await pool.execute(
        "UPDATE triggers SET next_run_at = now() WHERE id = ANY($1)", trigger_ids
    )


async def two_due_triggers(pool: asyncpg.Pool, url: str, **fields: Any) -> None:
    """One due trigger in each of two applications, so that each run may be
    claimed under an application limit of one."""
    triggers = [
        await add_trigger(
            pool, await create_application(pool, url), schedule="0 0 1 1 *", **fields
        )
        for _ in range(2)
    ]
    await make_due(pool, *(trigger.id for trigger in triggers))


async def queue_runs(settings: Settings, pool: asyncpg.Pool, fence: Fence) -> int:
    """Schedule with no dispatcher to hand runs to: every due slot is queued."""
    scheduler = Scheduler(
        settings.cron, pool, ExecutorMetrics(Registry()), lambda: None
    )
    return await scheduler.run_once(fence)


async def test_scheduled_run_is_inserted_running_and_delivered_without_a_claim(
    database: DatabaseTarget, pool: asyncpg.Pool, backend: RecordingBackend
) -> None:
    application = await create_application(pool, backend.url)
    trigger = await add_trigger(
        pool, application, schedule="0 0 1 1 *", timeout_seconds=7
    )
    await make_due(pool, trigger.id)
    settings = executor_settings()

    async with parts(settings, pool) as wired, held_lock(database, settings) as fence:
        assert await wired.scheduler.run_once(fence) == 1
        # Right after the scheduling transaction, with no claim of runs: the
        # dispatcher holds the run, which is running and leased. (Outcomes
        # go to a list here, so the row stays as the scheduler wrote it.)
        held = wired.dispatcher.in_flight()
        (run,) = await runs_of(pool, trigger.id)
        lease = await pool.fetchval(
            "SELECT lease_expires_at - started_at FROM trigger_runs WHERE id = $1",
            run["id"],
        )
        assert run["status"] == "running"
        assert run["attempt"] == 1
        assert run["started_at"] is not None
        assert lease.total_seconds() == 7 + settings.cron.rescue_grace
        assert held == {run["id"]: 1}

        (delivery,) = await backend.wait_for(1, within=10)
        outcome = await wired.outcome_of(run["id"])

    assert delivery.webhook_id == str(run["id"])
    assert delivery.json["run"]["attempt"] == 1
    assert (outcome.status, outcome.attempt, outcome.http_status) == (
        "succeeded",
        1,
        200,
    )
    assert wired.dispatcher.reserved == 0


async def test_runs_beyond_the_dispatchers_room_are_queued(
    database: DatabaseTarget, pool: asyncpg.Pool
) -> None:
    stuck = await RecordingBackend(Behaviour(hang=True)).start()
    try:
        application = await create_application(pool, stuck.url)
        triggers = [
            await add_trigger(pool, application, schedule="0 0 1 1 *") for _ in range(3)
        ]
        await make_due(pool, *(trigger.id for trigger in triggers))
        settings = executor_settings(max_concurrency=4, app_concurrency=1)

        async with (
            parts(settings, pool) as wired,
            held_lock(database, settings) as fence,
        ):
            assert await wired.scheduler.run_once(fence) == 3
            statuses = sorted(
                [
                    run["status"]
                    for trigger in triggers
                    for run in await runs_of(pool, trigger.id)
                ]
            )
            held = dict(wired.dispatcher.running)
            stuck.release()
    finally:
        stuck.release()
        await stuck.stop()

    # One application, limited to one callback: one run handed over, the
    # other two left in the queue for the claim loop.
    assert statuses == ["queued", "queued", "running"]
    assert held == {application.id: 1}


async def test_reserved_room_is_freed_when_the_slot_already_has_a_run(
    database: DatabaseTarget, pool: asyncpg.Pool
) -> None:
    application = await create_application(pool, "http://127.0.0.1:9")
    trigger = await add_trigger(pool, application, schedule="0 0 1 1 *")
    slot = await pool.fetchval("SELECT date_trunc('second', now())")
    await pool.execute(
        "UPDATE triggers SET next_run_at = $2 WHERE id = $1", trigger.id, slot
    )
    # An earlier leader recorded this slot already.
    await pool.execute(
        """
        INSERT INTO trigger_runs (trigger_id, application_id, scheduled_at, status)
        VALUES ($1, $2, $3, 'succeeded')
        """,
        trigger.id,
        application.id,
        slot,
    )
    settings = executor_settings()

    async with parts(settings, pool) as wired, held_lock(database, settings) as fence:
        assert await wired.scheduler.run_once(fence) == 1
        room = wired.dispatcher.claim_room
        held = dict(wired.dispatcher.running)

    assert len(await runs_of(pool, trigger.id)) == 1
    assert wired.dispatcher.reserved == 0
    assert held == {}
    assert room == 2 * settings.cron.max_concurrency


async def test_ready_runs_go_back_unsent_when_the_term_ends(
    database: DatabaseTarget, pool: asyncpg.Pool
) -> None:
    stuck = await RecordingBackend(Behaviour(hang=True)).start()
    try:
        await two_due_triggers(pool, stuck.url)
        settings = executor_settings(max_concurrency=1, app_concurrency=1)

        async with (
            parts(settings, pool) as wired,
            held_lock(database, settings) as fence,
        ):
            # The dispatcher's own claim takes both queued runs: one into
            # the only slot, one ready behind it.
            assert await queue_runs(settings, pool, fence) == 2
            dispatching = asyncio.create_task(wired.dispatcher.run(fence))
            await stuck.wait_for(1, within=10)
            await eventually(_has_ready(wired.dispatcher))
            (waiting,) = [run for run, _ in wired.dispatcher.ready]

            dispatching.cancel()
            await asyncio.gather(dispatching, return_exceptions=True)
            outcome = await wired.outcome_of(waiting.id)
    finally:
        stuck.release()
        await stuck.stop()

    assert (outcome.status, outcome.sent, outcome.error) == (
        "queued",
        False,
        TERM_ENDED,
    )
    assert len(stuck.deliveries) == 1
    assert stuck.deliveries[0].webhook_id != str(waiting.id)


async def test_a_run_kept_ready_too_long_goes_back_unsent(
    database: DatabaseTarget, pool: asyncpg.Pool
) -> None:
    slow = await RecordingBackend(Behaviour(hang=True)).start()
    try:
        # The first callback times out after 1 s; the run behind it has
        # waited longer than half the rescue grace (0.75 s) by then.
        await two_due_triggers(pool, slow.url, timeout_seconds=1)
        settings = executor_settings(max_concurrency=1, app_concurrency=1)

        async with (
            parts(settings, pool) as wired,
            held_lock(database, settings) as fence,
        ):
            assert await queue_runs(settings, pool, fence) == 2
            # One slot and one ready place: the claim takes both runs.
            assert await wired.dispatcher.claim_once(fence) == "full"
            assert len(wired.dispatcher.in_flight()) == 2
            (waiting,) = [run for run, _ in wired.dispatcher.ready]
            outcome = await wired.outcome_of(waiting.id)
    finally:
        slow.release()
        await slow.stop()

    assert wired.dispatcher.ready_age_limit == settings.cron.rescue_grace / 2
    assert (outcome.status, outcome.sent, outcome.error) == (
        "queued",
        False,
        WAITED_TOO_LONG,
    )
    assert str(waiting.id) not in {delivery.webhook_id for delivery in slow.deliveries}


def _has_ready(dispatcher: Dispatcher) -> Any:
    async def check() -> bool:
        return bool(dispatcher.ready)

    return check


async def test_claims_keep_the_queue_index_when_statistics_are_stale(
    database: DatabaseTarget, pool: asyncpg.Pool
) -> None:
    application = await create_application(pool, "http://127.0.0.1:9")
    trigger = await add_trigger(pool, application, schedule="0 0 1 1 *")
    # Statistics taken while the queue was empty, then a backlog arrives:
    # the planner believes a handful of runs are queued.
    await pool.execute("ANALYZE trigger_runs")
    await pool.execute(
        """
        INSERT INTO trigger_runs (trigger_id, application_id, scheduled_at)
        SELECT $1, $2, now() - make_interval(secs => n)
        FROM generate_series(1, 20000) AS n
        """,
        trigger.id,
        application.id,
    )
    settings = executor_settings()
    executor_pool = await create_pool(database, 1, 1, session=EXECUTOR_SESSION)
    try:
        async with held_lock(database, settings) as fence:
            with_session = await claim_plan(executor_pool, fence)
            plain = await claim_plan(pool, fence)
    finally:
        await executor_pool.close()

    assert "Index Scan using trigger_runs_queued_idx" in with_session
    assert "Bitmap" not in with_session
    # Without the session setting the planner does take the bitmap path,
    # so the assertion above is about the setting, not about luck.
    assert "Bitmap Heap Scan" in plain


async def claim_plan(pool: asyncpg.Pool, fence: Fence) -> str:
    """The plan of a claim of 100 runs (EXPLAIN alone claims nothing)."""
    rows = await pool.fetch(
        "EXPLAIN " + CLAIM_RUNS, *fence.arguments(), [], 100, [], [], 10, 30.0
    )
    return "\n".join(row[0] for row in rows)
