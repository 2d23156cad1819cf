"""Recovery: a database restart with callbacks in flight, kill -9 in the
middle of a callback, callbacks slower than the rescue grace, and the
configuration that would let a run be rescued while still in flight."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from manager.db.pool import DatabaseTarget, create_pool
from tests.conftest import Figures
from tests.faults.invariants import check_invariants, scheduled_through
from tests.faults.scenario import (
    FAULT_CRON,
    database_now,
    every_second_triggers,
    graphql,
    redelivered_runs,
    repeated_attempts,
    wait_for_health,
)
from tests.support.backend import Behaviour, RecordingBackend
from tests.support.cluster import (
    leading,
    log_time,
    manager_environment,
    port_of,
    start_executor,
    start_manager,
)
from tests.support.executor import add_trigger, create_application, eventually
from tests.support.process import ManagerProcess
from tests.support.server import OwnPostgres


@pytest.fixture
async def own_pool(own_postgres: OwnPostgres) -> AsyncIterator[asyncpg.Pool]:
    """A migrated database on the test's own server, and a pool on it."""
    target = await own_postgres.create_database("manager")
    pool = await create_pool(target, min_size=1, max_size=4)
    yield pool
    await pool.close()


IN_FLIGHT = 50

# How long the database stays down once the callbacks in flight finished.
OUTAGE_AFTER_CALLBACKS = 2.0


@pytest.mark.slow
async def test_database_restart_with_callbacks_in_flight(
    own_postgres: OwnPostgres,
    own_pool: asyncpg.Pool,
    processes: list[ManagerProcess],
    figures: Figures,
) -> None:
    figures("6. database restarted (immediate) with 50 callbacks in flight")
    target = own_postgres.target("manager")
    backend = await RecordingBackend(Behaviour(delay=2.0)).start()
    try:
        for _ in range(5):
            await every_second_triggers(own_pool, backend.url, 10, timeout=10)
        cron = {**FAULT_CRON, "app_concurrency": "10", "max_concurrency": "100"}
        executors = [await start_executor(processes, target, **cron) for _ in range(2)]
        api = await start_manager(processes, target, "api", **cron)
        api_port = port_of(api, "PFY_PORT")

        async def busy() -> bool:
            return backend.in_flight >= IN_FLIGHT

        await eventually(busy, within=15, every=0.02)
        in_flight = backend.in_flight
        marks = [len(process.lines) for process in executors]

        async with aiohttp.ClientSession() as session:
            await own_postgres.stop("immediate")
            down = time.time()
            unhealthy = await wait_for_health(session, api_port, 503, within=10)
            outage_answer = await graphql(session, api_port, "{ projects { id } }")

            # The callbacks in flight finish while the database is down, so
            # their outcomes must wait for it.
            async def finished() -> bool:
                return backend.in_flight == 0

            await eventually(finished, within=10, every=0.05)
            # The outage lasts on (a scenario parameter, not a wait for
            # anything): outcome writes must retry across a real gap.
            await asyncio.sleep(OUTAGE_AFTER_CALLBACKS)
            up = time.time()
            await own_postgres.start()
            healthy = await wait_for_health(session, api_port, 200, within=20)

        led = await _first_leader_since(executors, marks, within=20)
        pool = await create_pool(target, min_size=1, max_size=4)
        try:
            window_end = await database_now(pool)
            await scheduled_through(pool, window_end)
            # Leases are the timeout (10 s) plus the grace (1 s).
            invariants = await check_invariants(pool, window_end, recovery=15)
            statuses = dict(
                await pool.fetch(
                    "SELECT status, count(*) FROM trigger_runs "
                    "WHERE scheduled_at <= $1 GROUP BY status",
                    window_end,
                )
            )
        finally:
            await pool.close()
    finally:
        await backend.stop()

    figures(
        in_flight_at_restart=in_flight,
        outage_s=round(up - down, 3),
        restart_took_s=round(healthy - up, 3),
        health_503_after_s=round(unhealthy - down, 3),
        health_200_after_restart_s=round(healthy - up, 3),
        graphql_while_down=f"{outage_answer[0]} "
        f"{outage_answer[1]['errors'][0]['extensions']['code']}",
        leader_again_after_restart_s=round(log_time(led) - up, 3),
        daemon_restarts=0,
        **invariants.figures(),
        repeated_attempts=repeated_attempts(backend),
        redelivered_runs=redelivered_runs(backend),
    )
    assert in_flight >= IN_FLIGHT
    # A clear answer while the database is down, not a 500.
    status, answer = outage_answer
    assert status in (200, 503)
    assert answer["errors"][0]["message"] == "database unavailable"
    assert answer["errors"][0]["extensions"]["code"] == "SERVICE_UNAVAILABLE"
    assert all(process.process.returncode is None for process in processes)
    assert invariants.held, invariants
    assert set(statuses) <= {"succeeded", "queued"}
    assert repeated_attempts(backend) == 0
    # The callbacks in flight finished while the database was down; their
    # outcomes are written once it is back, so nothing is delivered twice.
    assert redelivered_runs(backend) == 0
    assert log_time(led) - up <= 5


async def _first_leader_since(
    executors: list[ManagerProcess], marks: list[int], within: float
) -> dict[str, Any]:
    async def found() -> dict[str, Any] | None:
        for process, mark in zip(executors, marks, strict=True):
            line = process.find("leadership acquired", mark)
            if line is not None:
                return line
        return None

    return await eventually(found, within=within)


async def _one_slot_trigger(
    pool: asyncpg.Pool, backend_url: str, timeout: float
) -> tuple[Any, Any]:
    """A trigger whose only slot is now (its schedule fires once a year)."""
    application = await create_application(pool, backend_url)
    trigger = await add_trigger(
        pool, application, schedule="0 0 1 1 *", timeout_seconds=timeout
    )
    await pool.execute(
        "UPDATE triggers SET next_run_at = now() WHERE id = $1", trigger.id
    )
    return application, trigger


async def test_kill_9_during_a_callback_redelivers_with_the_same_webhook_id(
    database: DatabaseTarget,
    pool: asyncpg.Pool,
    processes: list[ManagerProcess],
    figures: Figures,
) -> None:
    figures("7. kill -9 during a callback")
    backend = await RecordingBackend(Behaviour(hang=True)).start()
    try:
        timeout = 2.0
        leader = await start_executor(processes, database, **FAULT_CRON)
        await leader.wait_for_log("leadership acquired", timeout=10)
        standby = await start_executor(processes, database, **FAULT_CRON)
        _, trigger = await _one_slot_trigger(pool, backend.url, timeout)
        (first,) = await backend.wait_for(1, within=10)
        backend.behaviour = Behaviour()

        leader.send(signal.SIGKILL)
        killed = time.time()
        await leader.wait()
        deliveries = await backend.wait_for(2, within=15)
        second = deliveries[1]

        async def finished() -> asyncpg.Record | None:
            row = await pool.fetchrow(
                "SELECT status, attempt, error FROM trigger_runs WHERE trigger_id = $1",
                trigger.id,
            )
            return row if row["status"] == "succeeded" else None

        run = await eventually(finished, within=10)
        window_end = await database_now(pool)
        invariants = await check_invariants(pool, window_end, recovery=5)
    finally:
        await backend.stop()

    lease = timeout + float(FAULT_CRON["rescue_grace"])
    figures(
        lease_s=lease,
        redelivered_after_kill_s=round(second.received_at - killed, 3),
        same_webhook_id=second.webhook_id == first.webhook_id,
        attempts=run["attempt"],
        deliveries=len(backend.deliveries),
        **invariants.figures(),
    )
    assert leading(standby)
    assert second.webhook_id == first.webhook_id
    assert (first.json["run"]["attempt"], second.json["run"]["attempt"]) == (1, 2)
    assert run["attempt"] == 2
    assert len(backend.deliveries) == 2
    # Rescue comes with the lease's end, at the next housekeeping tick (1 s).
    assert second.received_at - first.received_at >= lease - 0.1
    assert second.received_at - first.received_at <= lease + 2.5
    assert invariants.held, invariants


async def test_callback_slower_than_the_rescue_grace_is_not_sent_twice(
    database: DatabaseTarget,
    pool: asyncpg.Pool,
    processes: list[ManagerProcess],
    figures: Figures,
) -> None:
    figures("8. callback slower than the rescue grace, leader stops mid-way")
    # 2.5 s of work against a 1 s grace; the leader is stopped while the
    # callback is in flight, so the standby leads at once (the lock goes
    # before the drain) and must leave the run alone: its lease is the
    # timeout (4 s) plus the grace.
    backend = await RecordingBackend(Behaviour(delay=2.5)).start()
    cron = {**FAULT_CRON, "drain_timeout": "5"}
    try:
        leader = await start_executor(processes, database, **cron)
        await leader.wait_for_log("leadership acquired", timeout=10)
        standby = await start_executor(processes, database, **cron)
        _, trigger = await _one_slot_trigger(pool, backend.url, timeout=4.0)
        await backend.wait_for(1, within=10)
        mark = len(standby.lines)
        leader.send(signal.SIGTERM)
        await standby.wait_for_log("leadership acquired", timeout=5, start=mark)
        assert await leader.wait(timeout=15) == 0

        async def finished() -> asyncpg.Record | None:
            row = await pool.fetchrow(
                "SELECT status, attempt FROM trigger_runs WHERE trigger_id = $1",
                trigger.id,
            )
            return row if row["status"] == "succeeded" else None

        run = await eventually(finished, within=10)
        # Past the lease: a wrong rescue would have happened by now.
        await asyncio.sleep(4.0 + 1.0 + 1.5 - 2.5)
    finally:
        await backend.stop()

    rescued = [
        line
        for process in (leader, standby)
        for line in process.lines
        if line["msg"] == "runs rescued"
    ]
    figures(
        callback_s=2.5,
        rescue_grace_s=float(FAULT_CRON["rescue_grace"]),
        deliveries=len(backend.deliveries),
        attempts=run["attempt"],
        rescues=len(rescued),
    )
    assert len(backend.deliveries) == 1
    assert run["attempt"] == 1
    assert rescued == []


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        # A grace shorter than the time a cut-off leader needs to notice.
        (
            {"rescue_grace": "0.5", "lock_probe_interval": "1"},
            "PFY_CRON_RESCUE_GRACE",
        ),
        ({"rescue_grace": "0"}, "PFY_CRON_RESCUE_GRACE"),
        # A lock session the server would end before the leader gives up.
        ({"lock_session_timeout": "1"}, "PFY_CRON_LOCK_SESSION_TIMEOUT"),
    ],
)
async def test_settings_that_allow_a_second_dispatch_are_refused_at_start(
    database: DatabaseTarget,
    processes: list[ManagerProcess],
    settings: dict[str, str],
    named: str,
    figures: Figures,
) -> None:
    figures("8. settings that would allow a second dispatch")
    environment = manager_environment(database, "executor", **settings)
    process = await ManagerProcess(environment).start()
    processes.append(process)
    code = await process.wait(timeout=30)
    figures(setting=named, exit_code=code)
    assert code != 0
    (problem,) = [line for line in process.stderr.splitlines() if line.strip()]
    assert problem.startswith(f"{named}: ")
    assert not process.find("manager started")
