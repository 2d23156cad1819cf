"""The short path from slot to callback: slots scheduled ahead of their
instant and staged, runs the scheduler inserts already running and hands to
the dispatcher, runs the dispatcher claims ahead of free slots and keeps
ready, and the claim plan that stays on the queue's index."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
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


async def slot_ahead(
    pool: asyncpg.Pool, trigger_id: uuid.UUID, seconds: float
) -> datetime:
    """Put the trigger's next slot `seconds` ahead of the database clock."""
    return await pool.fetchval(
        """
        UPDATE triggers SET next_run_at = now() + make_interval(secs => $2)
        WHERE id = $1 RETURNING next_run_at
        """,
        trigger_id,
        seconds,
    )


async def test_a_slot_within_the_lookahead_is_queued_and_sent_at_its_instant(
    database: DatabaseTarget, pool: asyncpg.Pool, backend: RecordingBackend
) -> None:
    application = await create_application(pool, backend.url)
    trigger = await add_trigger(pool, application, schedule="0 0 1 1 *")
    slot = await slot_ahead(pool, trigger.id, 0.4)
    settings = executor_settings(lookahead="0.5")

    async with parts(settings, pool) as wired, held_lock(database, settings) as fence:
        # Scheduled before its slot, with room in the dispatcher: still
        # queued (not held in memory, where a crash would strand it), and
        # not available to a claim before its instant.
        assert await wired.scheduler.run_once(fence) == 1
        held = wired.dispatcher.in_flight()
        early = await wired.dispatcher.claim_once(fence)
        (run,) = await runs_of(pool, trigger.id)
        available_at = await pool.fetchval(
            "SELECT available_at FROM trigger_runs WHERE id = $1", run["id"]
        )

        dispatching = asyncio.create_task(wired.dispatcher.run(fence))
        try:
            (delivery,) = await backend.wait_for(1, within=10)
        finally:
            dispatching.cancel()
            await asyncio.gather(dispatching, return_exceptions=True)

    assert (held, early) == ({}, "idle")
    assert (run["status"], run["scheduled_at"], run["attempt"]) == ("queued", slot, 0)
    assert available_at == slot
    # Sent at the slot, not before it (one clock: the same machine).
    assert delivery.received_at >= slot.timestamp()
    assert delivery.webhook_id == str(run["id"])


async def test_nothing_is_claimed_ahead_without_lookahead_or_in_simulated_time(
    database: DatabaseTarget, pool: asyncpg.Pool
) -> None:
    application = await create_application(pool, "http://127.0.0.1:9")
    trigger = await add_trigger(pool, application, schedule="0 0 1 1 *")
    await slot_ahead(pool, trigger.id, 0.4)
    metrics = ExecutorMetrics(Registry())
    without = executor_settings(lookahead="0")
    with_lookahead = executor_settings(lookahead="0.5")
    no_lookahead = Scheduler(without.cron, pool, metrics, lambda: None)
    lookahead = Scheduler(with_lookahead.cron, pool, metrics, lambda: None)

    async with held_lock(database, with_lookahead) as fence:
        now = await pool.fetchval("SELECT now()")
        claimed = [
            await no_lookahead.run_once(fence),
            # A simulated clock (tests of downtime) never claims ahead.
            await lookahead.run_once(fence, now=now),
            await lookahead.run_once(fence),
        ]

    assert claimed == [0, 0, 1]
