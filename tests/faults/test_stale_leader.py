"""A leader whose event loop froze between claiming a run and sending its
callback sends nothing under that stale leadership: the attempt goes back to
the queue uncounted and is delivered once, later, by whoever leads."""

from __future__ import annotations

import time

import asyncpg
import pytest

from manager.db.pool import DatabaseTarget
from manager.executor.dispatcher import WITHHELD
from manager.store.runs import ClaimedRun
from tests.conftest import Figures
from tests.support.backend import RecordingBackend
from tests.support.executor import (
    FAST_CRON,
    add_trigger,
    create_application,
    eventually,
    executor_settings,
    running_executor,
    runs_of,
)

# Longer than a probe cycle (interval + timeout), so the proof is stale.
FREEZE = (
    float(FAST_CRON["lock_probe_interval"])
    + float(FAST_CRON["lock_probe_timeout"])
    + 0.3
)


async def test_callback_claimed_before_a_freeze_is_withheld_then_delivered_once(
    database: DatabaseTarget,
    pool: asyncpg.Pool,
    backend: RecordingBackend,
    monkeypatch: pytest.MonkeyPatch,
    figures: Figures,
) -> None:
    figures("5b. loop frozen between claim and send (in process)")
    application = await create_application(pool, backend.url)
    trigger = await add_trigger(pool, application, schedule="0 0 1 1 *")
    errors: list[str | None] = []

    async with running_executor(executor_settings(), database, pool) as harness:
        dispatcher = harness.executor.dispatcher
        start = dispatcher._start
        frozen: list[float] = []

        def start_then_freeze(run: ClaimedRun) -> None:
            start(run)
            if not frozen:
                # The whole process stops here, as under SIGSTOP: the
                # callback task exists but has not sent anything.
                frozen.append(time.monotonic())
                time.sleep(FREEZE)

        monkeypatch.setattr(dispatcher, "_start", start_then_freeze)
        await pool.execute(
            "UPDATE triggers SET next_run_at = now() WHERE id = $1", trigger.id
        )

        async def delivered() -> asyncpg.Record | None:
            runs = await runs_of(pool, trigger.id)
            errors.extend(run["error"] for run in runs)
            done = [run for run in runs if run["status"] == "succeeded"]
            return done[0] if done else None

        run = await eventually(delivered, within=10)
        still_leading = harness.executor.is_leader

    figures(
        freeze_s=round(FREEZE, 3),
        deliveries=len(backend.deliveries),
        attempt_delivered=backend.deliveries[0].json["run"]["attempt"],
        withheld_seen=WITHHELD in errors,
    )
    assert frozen
    assert WITHHELD in errors
    assert len(backend.deliveries) == 1
    assert backend.deliveries[0].json["run"]["attempt"] == 1
    assert run["attempt"] == 1
    assert still_leading
