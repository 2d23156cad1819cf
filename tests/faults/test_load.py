"""Load-shaped faults: one hanging backend among many fast ones, 5,000
triggers due in the same second, and a 30-minute outage with 200
every-minute triggers under each misfire policy."""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import datetime, timedelta

import aiohttp
import asyncpg
import pytest

from manager.db.pool import DatabaseTarget
from tests.conftest import Figures
from tests.faults.invariants import check_invariants, scheduled_through
from tests.faults.scenario import (
    FAULT_CRON,
    database_now,
    every_second_triggers,
    graphql,
    lag_figures,
    repeated_attempts,
    scheduled_at,
)
from tests.support.backend import Behaviour, Delivery, RecordingBackend
from tests.support.cluster import log_time, port_of, start_executor, start_manager
from tests.support.executor import add_trigger, create_application, eventually
from tests.support.metrics import samples, scrape
from tests.support.process import ManagerProcess

FAST_APPLICATIONS = 99
HANG_TIMEOUT = 3.0


def most_within(instants: list[float], span: float) -> int:
    """The most instants that fall inside any window of `span` seconds."""
    ordered = sorted(instants)
    most = start = 0
    for end, instant in enumerate(ordered):
        while instant - ordered[start] > span:
            start += 1
        most = max(most, end - start + 1)
    return most


@pytest.mark.slow
async def test_one_hanging_backend_does_not_delay_the_others(
    database: DatabaseTarget,
    pool: asyncpg.Pool,
    backend: RecordingBackend,
    processes: list[ManagerProcess],
    figures: Figures,
) -> None:
    figures("9. one backend hangs, 99 are fast, global limit 10")
    hanging = await RecordingBackend(Behaviour(hang=True)).start()
    try:
        stuck_application = await create_application(pool, hanging.url)
        await add_trigger(
            pool,
            stuck_application,
            schedule="* * * * * *",
            timeout_seconds=HANG_TIMEOUT,
            max_retries=0,
            misfire_policy="catch_up",
        )
        for _ in range(FAST_APPLICATIONS):
            application = await create_application(pool, backend.url)
            await add_trigger(
                pool, application, schedule="* * * * * *", misfire_policy="catch_up"
            )
        cron = {**FAULT_CRON, "max_concurrency": "10", "app_concurrency": "2"}
        await start_executor(processes, database, **cron)

        # Measure once the hanging backend holds its two slots.
        await hanging.wait_for(2, within=15)
        measured_from = time.time()
        await asyncio.sleep(12)
        measured_to = time.time()
        deliveries = [
            delivery
            for delivery in backend.deliveries
            if measured_from <= scheduled_at(delivery) <= measured_to - 1
            and delivery.json["run"]["attempt"] == 1
        ]
        # The backend cannot tell when the executor gives up on a request
        # (aiohttp does not cancel a handler whose client left), so the
        # executor's concurrency towards it is read from arrival times:
        # each attempt lasts its timeout.
        hung = most_within(
            [delivery.received_at for delivery in hanging.deliveries],
            HANG_TIMEOUT - 0.1,
        )
        hanging.release()
        window_end = await database_now(pool)
        await scheduled_through(pool, window_end)
        invariants = await check_invariants(pool, window_end, recovery=10)
    finally:
        await hanging.stop()

    lags = lag_figures(deliveries, "fast_lag")
    figures(
        fast_deliveries=len(deliveries),
        **lags,
        hanging_attempts_at_once_max=hung,
        max_concurrency=10,
        app_concurrency=2,
        **invariants.figures(),
    )
    assert len(deliveries) >= FAST_APPLICATIONS * 10
    assert lags["fast_lag_p99_s"] < 1.0
    assert hung <= 2
    assert invariants.held, invariants


DUE_TOGETHER = 5000
DUE_APPLICATIONS = 50

# 5,000 triggers of 50 applications, all due at $1 (their yearly schedule
# makes it their only slot for a long while).
INSERT_DUE_TRIGGERS = """
INSERT INTO triggers (application_id, name, schedule, next_run_at, timeout_seconds)
SELECT application_id, 'due-' || n, '0 0 1 1 *', $1, 10
FROM unnest($2::uuid[]) WITH ORDINALITY AS application (application_id, position),
     generate_series(1, $3) AS n
"""


@pytest.mark.slow
async def test_5000_triggers_due_in_the_same_second(
    database: DatabaseTarget,
    pool: asyncpg.Pool,
    backend: RecordingBackend,
    processes: list[ManagerProcess],
    figures: Figures,
) -> None:
    figures("11. 5,000 triggers due at the same second")
    applications = [
        await create_application(pool, backend.url) for _ in range(DUE_APPLICATIONS)
    ]
    executor = await start_executor(processes, database, **FAULT_CRON)
    await executor.wait_for_log("leadership acquired", timeout=10)

    due: datetime = await pool.fetchval(
        "SELECT date_trunc('second', now()) + interval '2 seconds'"
    )
    await pool.execute(
        INSERT_DUE_TRIGGERS,
        due,
        [application.id for application in applications],
        DUE_TOGETHER // DUE_APPLICATIONS,
    )
    deliveries = await backend.wait_for(DUE_TOGETHER, within=60)
    metrics = samples(await scrape(port_of(executor)))
    invariants = await check_invariants(pool, due, recovery=10)

    slow_claims = {
        step: metrics[(f"{CLAIM}_count", f'step="{step}"')]
        - metrics[(f"{CLAIM}_bucket", f'le="1.0",step="{step}"')]
        for step in ("triggers", "runs")
    }
    claims = {
        step: metrics[(f"{CLAIM}_count", f'step="{step}"')]
        for step in ("triggers", "runs")
    }
    unique = {delivery.webhook_id for delivery in deliveries}
    figures(
        triggers=DUE_TOGETHER,
        delivered=len(deliveries),
        distinct_runs=len(unique),
        **lag_figures(deliveries),
        scheduling_transactions=int(claims["triggers"]),
        run_claims=int(claims["runs"]),
        claims_over_1s=int(slow_claims["triggers"] + slow_claims["runs"]),
        claim_mean_ms=round(
            1000
            * sum(metrics[(f"{CLAIM}_sum", f'step="{step}"')] for step in claims)
            / max(sum(claims.values()), 1),
            2,
        ),
        **invariants.figures(),
    )
    assert len(unique) == DUE_TOGETHER == len(deliveries)
    assert slow_claims == {"triggers": 0, "runs": 0}
    assert invariants.held, invariants


CLAIM = "pfy_executor_claim_duration_seconds"

MISSED_MINUTES = 30
POLICIES = ("fire_once", "skip", "catch_up")
EVERY_MINUTE_TRIGGERS = 200
CATCH_UP_CONCURRENCY = 20


@pytest.mark.slow
async def test_thirty_minutes_down_each_misfire_policy_and_bounded_catch_up(
    database: DatabaseTarget,
    pool: asyncpg.Pool,
    processes: list[ManagerProcess],
    figures: Figures,
) -> None:
    figures("12. everything stopped 30 minutes, 200 every-minute triggers")
    backend = await RecordingBackend(Behaviour(delay=0.05)).start()
    try:
        # Keep clear of a minute boundary: the missed slots are counted up
        # to the current minute.
        now: datetime = await database_now(pool)
        if now.second >= 50:
            await asyncio.sleep(61 - now.second)
        applications = [await create_application(pool, backend.url) for _ in range(4)]
        policy_of = {}
        for number in range(EVERY_MINUTE_TRIGGERS):
            policy = POLICIES[number % len(POLICIES)]
            trigger = await add_trigger(
                pool,
                applications[number % len(applications)],
                schedule="* * * * *",
                misfire_policy=policy,
            )
            policy_of[trigger.id] = policy

        minute: datetime = await pool.fetchval("SELECT date_trunc('minute', now())")
        missed_since = minute - timedelta(minutes=MISSED_MINUTES)
        # As if every executor had been stopped for 30 minutes.
        await pool.execute(
            "UPDATE triggers SET next_run_at = $1, created_at = $2",
            missed_since,
            missed_since - timedelta(minutes=1),
        )

        cron = {
            **FAULT_CRON,
            "max_concurrency": str(CATCH_UP_CONCURRENCY),
            "app_concurrency": "10",
        }
        started = time.time()
        await start_executor(processes, database, **cron)
        catch_up_runs = (MISSED_MINUTES + 1) * sum(
            policy == "catch_up" for policy in policy_of.values()
        )
        expected = catch_up_runs + sum(
            policy != "catch_up" for policy in policy_of.values()
        )

        def caught() -> list[Delivery]:
            return [
                delivery
                for delivery in backend.deliveries
                if scheduled_at(delivery) <= minute.timestamp()
            ]

        async def caught_up() -> bool:
            return len(caught()) >= expected

        await eventually(caught_up, within=60, every=0.2)
        invariants = await check_invariants(pool, minute, recovery=10)
        runs = await pool.fetch(
            "SELECT trigger_id, scheduled_at, status FROM trigger_runs "
            "WHERE scheduled_at <= $1",
            minute,
        )
    finally:
        await backend.stop()

    by_policy: dict[str, dict[str, int]] = {policy: {} for policy in POLICIES}
    per_trigger: dict[object, list[asyncpg.Record]] = {}
    for run in runs:
        counts = by_policy[policy_of[run["trigger_id"]]]
        counts[run["status"]] = counts.get(run["status"], 0) + 1
        per_trigger.setdefault(run["trigger_id"], []).append(run)

    delivered = caught()
    first = min(delivery.received_at for delivery in delivered)
    last = max(delivery.received_at for delivery in delivered)
    figures(
        missed_minutes=MISSED_MINUTES,
        triggers=EVERY_MINUTE_TRIGGERS,
        fire_once=by_policy["fire_once"],
        skip=by_policy["skip"],
        catch_up=by_policy["catch_up"],
        delivered=len(delivered),
        catch_up_s=round(last - first, 3),
        dispatch_rate_per_s=round(len(delivered) / max(last - first, 0.001), 1),
        backend_in_flight_max=backend.max_in_flight,
        max_concurrency=CATCH_UP_CONCURRENCY,
        first_delivery_after_start_s=round(first - started, 3),
        **invariants.figures(),
        repeated_attempts=repeated_attempts(backend),
    )
    for trigger_id, policy in policy_of.items():
        slots = sorted(per_trigger[trigger_id], key=lambda run: run["scheduled_at"])
        fired = [run for run in slots if run["status"] != "skipped"]
        if policy == "fire_once":
            # One run, for the latest missed slot.
            assert [run["scheduled_at"] for run in fired] == [minute]
            assert len(slots) == 1
        elif policy == "skip":
            assert [run["scheduled_at"] for run in fired] == [minute]
            assert len(slots) == MISSED_MINUTES + 1
        else:
            assert len(fired) == MISSED_MINUTES + 1
            assert slots[0]["scheduled_at"] == missed_since
        assert all(run["status"] in ("succeeded", "skipped") for run in slots)
    assert backend.max_in_flight <= CATCH_UP_CONCURRENCY
    assert invariants.held, invariants
    assert repeated_attempts(backend) == 0


SLOW_REQUESTS = 12


@pytest.mark.slow
async def test_exhausted_pool_leaves_probing_and_claiming_working(
    database: DatabaseTarget,
    pool: asyncpg.Pool,
    backend: RecordingBackend,
    processes: list[ManagerProcess],
    figures: Figures,
) -> None:
    figures("10. connection pool exhausted by slow API queries")
    await every_second_triggers(pool, backend.url, 5)
    cron = {**FAULT_CRON, "lock_session_timeout": "3"}
    leader = await start_executor(processes, database, **cron)
    await leader.wait_for_log("leadership acquired", timeout=10)
    # API and executor in one process, sharing the pool settings: three
    # connections, which a dozen slow queries take at once.
    both = await start_manager(
        processes,
        database,
        "both",
        extra={"PFY_DB_POOL_MIN_SIZE": "1", "PFY_DB_POOL_MAX_SIZE": "3"},
        **cron,
    )
    api_port = port_of(both, "PFY_PORT")

    blocker = await pool.acquire()
    transaction = blocker.transaction()
    await transaction.start()
    # Every API query for projects now waits for this lock: slow queries
    # holding their pool connections. The executor's statements never read
    # the projects table.
    await blocker.execute("LOCK TABLE projects IN ACCESS EXCLUSIVE MODE")
    async with aiohttp.ClientSession() as session:
        slow = [
            asyncio.ensure_future(graphql(session, api_port, "{ projects { id } }"))
            for _ in range(SLOW_REQUESTS)
        ]
        try:
            waiting = await eventually(
                lambda: _waiting_on_lock(pool), within=10, every=0.1
            )
            mark = len(both.lines)
            leader.send(signal.SIGTERM)
            taken = await both.wait_for_log(
                "leadership acquired", timeout=10, start=mark
            )
            took_over = time.time()
            # Slots after the hand-over are delivered while the API's
            # queries still hold every pooled connection.
            first_slot = int(log_time(taken)) + 1
            await eventually(lambda: _delivered_after(backend, first_slot, 5), within=5)
            delivered_at = time.time()
            still_blocked = sum(not request.done() for request in slow)
        finally:
            await transaction.rollback()
            await pool.release(blocker)
            answers = await asyncio.gather(*slow, return_exceptions=True)

    lost = both.find("leadership lost", mark)
    window_end = await database_now(pool)
    await scheduled_through(pool, window_end)
    invariants = await check_invariants(pool, window_end, recovery=10)
    statuses = sorted({answer[0] for answer in answers if isinstance(answer, tuple)})
    figures(
        api_queries_waiting=waiting,
        pool_max_size=3,
        delivered_within_s=round(delivered_at - took_over, 3),
        api_requests_still_blocked=still_blocked,
        api_statuses=statuses,
        leadership_lost=lost is not None,
        **invariants.figures(),
    )
    assert still_blocked >= 3
    assert lost is None
    assert 500 not in statuses
    assert invariants.held, invariants


async def _waiting_on_lock(pool: asyncpg.Pool) -> int:
    """API queries blocked on the projects lock, once there are three."""
    count = await pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE wait_event_type = 'Lock' AND datname = current_database()"
    )
    return count if count >= 3 else 0


async def _delivered_after(backend: RecordingBackend, slot: int, count: int) -> bool:
    return sum(scheduled_at(d) >= slot for d in backend.deliveries) >= count
