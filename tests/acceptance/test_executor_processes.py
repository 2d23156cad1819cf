"""Executors as `manager` processes on one database: one leader at a time,
no slot or delivery twice, take-over after kill -9, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from datetime import datetime

import asyncpg
import pytest

from manager.db.pool import DatabaseTarget
from tests.support.backend import Behaviour, Delivery, RecordingBackend
from tests.support.cluster import lock_holders, start_executor
from tests.support.executor import add_trigger, create_application, eventually
from tests.support.process import ManagerProcess


def scheduled_at(delivery: Delivery) -> float:
    return datetime.fromisoformat(delivery.json["run"]["scheduled_at"]).timestamp()


@pytest.mark.slow
async def test_two_executors_one_leader_no_duplicates(
    database: DatabaseTarget,
    pool: asyncpg.Pool,
    backend: RecordingBackend,
    processes: list[ManagerProcess],
) -> None:
    application = await create_application(pool, backend.url)
    for _ in range(5):
        await add_trigger(pool, application)
    first = await start_executor(processes, database)
    await first.wait_for_log("leadership acquired", timeout=10)
    second = await start_executor(processes, database)

    # ~20 s: sample the lock; half-way the leader hands over on SIGTERM.
    samples: list[tuple[int, bool]] = []
    loop = asyncio.get_running_loop()
    started = loop.time()
    handing_over = signalled = False
    while loop.time() - started < 20:
        if not signalled and loop.time() - started > 10:
            handing_over = signalled = True
            first.send(signal.SIGTERM)
        if handing_over and second.find("leadership acquired"):
            handing_over = False
        samples.append((len(await lock_holders(pool)), handing_over))
        await asyncio.sleep(0.2)

    assert await first.wait(timeout=15) == 0
    assert await second.terminate() == 0

    assert all(holders <= 1 for holders, _ in samples)
    assert all(holders == 1 for holders, moving in samples if not moving)
    assert second.find("leadership acquired") is not None
    assert first.find("leadership released") is not None

    duplicates = await pool.fetchval(
        """
        SELECT count(*) FROM (
            SELECT 1 FROM trigger_runs WHERE NOT manual
            GROUP BY trigger_id, scheduled_at HAVING count(*) > 1
        ) AS twice
        """
    )
    assert duplicates == 0
    deliveries = Counter(
        (delivery.webhook_id, delivery.json["run"]["attempt"])
        for delivery in backend.deliveries
    )
    assert len(deliveries) >= 5 * 15
    assert max(deliveries.values()) == 1
    delivered = {webhook_id for webhook_id, _ in deliveries}
    succeeded = await pool.fetch(
        "SELECT id::text AS id FROM trigger_runs WHERE status = 'succeeded'"
    )
    assert {row["id"] for row in succeeded} <= delivered


async def test_standby_delivers_the_next_slot_within_5s_of_kill_9(
    database: DatabaseTarget,
    pool: asyncpg.Pool,
    backend: RecordingBackend,
    processes: list[ManagerProcess],
) -> None:
    application = await create_application(pool, backend.url)
    await add_trigger(pool, application)
    leader = await start_executor(processes, database, lock_retry_interval="1")
    await leader.wait_for_log("leadership acquired", timeout=10)
    standby = await start_executor(processes, database, lock_retry_interval="1")
    await backend.wait_for(2, within=10)

    leader.send(signal.SIGKILL)
    killed_at = time.time()
    await standby.wait_for_log("leadership acquired", timeout=5)

    async def next_slot() -> list[Delivery]:
        return [d for d in backend.deliveries if scheduled_at(d) > killed_at]

    deliveries = await eventually(next_slot, within=5)
    assert deliveries[0].received_at - killed_at <= 5
    assert await standby.terminate() == 0


async def test_sigterm_drains_or_requeues_in_flight_callbacks(
    database: DatabaseTarget,
    pool: asyncpg.Pool,
    processes: list[ManagerProcess],
) -> None:
    quick = await RecordingBackend(Behaviour(delay=0.3)).start()
    stuck = await RecordingBackend(Behaviour(hang=True)).start()
    try:
        quick_app = await create_application(pool, quick.url)
        stuck_app = await create_application(pool, stuck.url)
        await add_trigger(pool, quick_app)
        await add_trigger(pool, stuck_app, timeout_seconds=60)
        executor = await start_executor(processes, database, drain_timeout="1")
        await quick.wait_for(2, within=10)
        await stuck.wait_for(2, within=10)

        assert await executor.terminate() == 0
        assert executor.find("leadership released") is not None
        requeued = executor.find("runs requeued")
        assert requeued is not None and requeued["count"] >= 2

        statuses = dict(
            await pool.fetch(
                "SELECT status, count(*) FROM trigger_runs GROUP BY status"
            )
        )
        assert "running" not in statuses
        assert set(statuses) <= {"queued", "succeeded", "skipped"}

        # Nothing is lost: a new executor delivers every queued run, under
        # the same webhook-id.
        await pool.execute("UPDATE triggers SET enabled = false")
        stuck.behaviour = Behaviour()
        stuck.release()
        queued = await pool.fetch(
            "SELECT id::text AS id FROM trigger_runs WHERE status = 'queued'"
        )
        restarted = await start_executor(processes, database)

        async def all_done() -> bool:
            return not await pool.fetchval(
                "SELECT count(*) FROM trigger_runs "
                "WHERE status IN ('queued', 'running')"
            )

        await eventually(all_done, within=10)
        assert await restarted.terminate() == 0
    finally:
        await quick.stop()
        await stuck.stop()

    delivered = {d.webhook_id for d in quick.deliveries + stuck.deliveries}
    assert {row["id"] for row in queued} <= delivered
    failed = await pool.fetchval(
        "SELECT count(*) FROM trigger_runs WHERE status = 'failed'"
    )
    assert failed == 0
