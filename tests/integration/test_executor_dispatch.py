"""Dispatch: the callback's body, headers and signature, retries, failures,
timeouts, per-application limits and run-now, against real backends."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from datetime import datetime

import asyncpg

from manager.db.pool import DatabaseTarget
from manager.store.triggers import request_run
from tests.support.backend import Behaviour, RecordingBackend
from tests.support.executor import (
    add_trigger,
    create_application,
    eventually,
    executor_settings,
    running_executor,
    runs_of,
)


def expected_signature(secret: str, headers: dict[str, str], body: bytes) -> str:
    """Standard Webhooks: v1, base64 HMAC-SHA256 of id.timestamp.body."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode()
    digest = hmac.new(key, signed + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


async def test_every_second_trigger_delivers_documented_callback(
    database: DatabaseTarget, pool: asyncpg.Pool, backend: RecordingBackend
) -> None:
    application = await create_application(pool, backend.url)
    trigger = await add_trigger(
        pool, application, name="nightly report", payload={"report": "daily", "n": 3}
    )

    async with running_executor(executor_settings(), database, pool):
        deliveries = await backend.wait_for(2, within=10)

    first = deliveries[0]
    assert first.path == "/triggers/nightly report"
    assert first.headers["content-type"] == "application/json"
    assert first.headers["user-agent"] == "productify-manager/1.0.0"
    body = first.json
    assert set(body) == {"trigger", "run", "application", "payload"}
    assert body["trigger"] == {"id": str(trigger.id), "name": "nightly report"}
    assert body["application"] == {"id": str(application.id)}
    assert body["payload"] == {"report": "daily", "n": 3}
    assert body["run"]["attempt"] == 1
    assert body["run"]["id"] == first.headers["webhook-id"]
    scheduled = datetime.fromisoformat(body["run"]["scheduled_at"])
    assert body["run"]["scheduled_at"].endswith("Z")
    assert scheduled.microsecond == 0

    timestamp = int(first.headers["webhook-timestamp"])
    assert abs(timestamp - first.received_at) < 5
    signatures = first.headers["webhook-signature"].split(" ")
    assert expected_signature(application.secret, first.headers, first.body) in (
        signatures
    )
    # Two slots, two runs, two different webhook ids.
    assert len({delivery.webhook_id for delivery in deliveries}) == len(deliveries)
    run_ids = {str(run["id"]) for run in await runs_of(pool, trigger.id)}
    assert {delivery.webhook_id for delivery in deliveries} <= run_ids


async def test_server_error_then_success_is_one_run_with_two_attempts(
    database: DatabaseTarget, pool: asyncpg.Pool, backend: RecordingBackend
) -> None:
    backend.behaviour = Behaviour(flap=True)
    application = await create_application(pool, backend.url)
    # A yearly schedule made due now: the test sees exactly one run.
    trigger = await add_trigger(pool, application, schedule="0 0 1 1 *")
    await pool.execute(
        "UPDATE triggers SET next_run_at = date_trunc('second', now()) WHERE id = $1",
        trigger.id,
    )

    async with running_executor(executor_settings(), database, pool):
        deliveries = await backend.wait_for(2, within=10)
        runs = await eventually(lambda: finished_runs(pool, trigger.id))

    assert len(runs) == 1
    assert (runs[0]["status"], runs[0]["attempt"]) == ("succeeded", 2)
    assert runs[0]["http_status"] == 200
    assert [delivery.json["run"]["attempt"] for delivery in deliveries] == [1, 2]
    assert {delivery.webhook_id for delivery in deliveries} == {str(runs[0]["id"])}
    # Re-signed on every attempt (the timestamp may differ).
    for delivery in deliveries:
        assert expected_signature(
            application.secret, delivery.headers, delivery.body
        ) in delivery.headers["webhook-signature"].split(" ")


async def test_not_found_fails_after_one_attempt(
    database: DatabaseTarget, pool: asyncpg.Pool, backend: RecordingBackend
) -> None:
    backend.behaviour = Behaviour(status=404)
    application = await create_application(pool, backend.url)
    trigger = await add_trigger(pool, application, schedule="0 0 1 1 *")
    await pool.execute(
        "UPDATE triggers SET next_run_at = date_trunc('second', now()) WHERE id = $1",
        trigger.id,
    )

    async with running_executor(executor_settings(), database, pool):
        runs = await eventually(lambda: finished_runs(pool, trigger.id))

    assert len(runs) == 1
    run = runs[0]
    assert (run["status"], run["attempt"], run["http_status"]) == ("failed", 1, 404)
    assert run["error"] == "HTTP 404"
    assert len(backend.deliveries) == 1


async def test_hanging_backend_times_out_is_retried_then_fails(
    database: DatabaseTarget, pool: asyncpg.Pool, backend: RecordingBackend
) -> None:
    backend.behaviour = Behaviour(hang=True)
    application = await create_application(pool, backend.url)
    trigger = await add_trigger(
        pool,
        application,
        schedule="0 0 1 1 *",
        timeout_seconds=0.3,
        max_retries=2,
    )
    await pool.execute(
        "UPDATE triggers SET next_run_at = date_trunc('second', now()) WHERE id = $1",
        trigger.id,
    )

    async with running_executor(executor_settings(), database, pool):
        runs = await eventually(lambda: finished_runs(pool, trigger.id))

    assert len(runs) == 1
    run = runs[0]
    assert (run["status"], run["attempt"]) == ("failed", 3)
    assert run["http_status"] is None
    assert run["error"] == "timeout after 0.3s"
    assert 250 <= run["duration_ms"] < 2000
    assert len(backend.deliveries) == 3
    assert len({delivery.webhook_id for delivery in backend.deliveries}) == 1


async def test_too_many_requests_honours_retry_after(
    database: DatabaseTarget, pool: asyncpg.Pool, backend: RecordingBackend
) -> None:
    backend.behaviour = Behaviour(status=429, headers={"Retry-After": "1"})
    application = await create_application(pool, backend.url)
    trigger = await add_trigger(pool, application, schedule="0 0 1 1 *", max_retries=1)
    await pool.execute(
        "UPDATE triggers SET next_run_at = date_trunc('second', now()) WHERE id = $1",
        trigger.id,
    )
    # Retry-After (1 s) is capped by the backoff maximum (0.6 s here).
    settings = executor_settings(retry_backoff_max="0.6")

    async with running_executor(settings, database, pool):
        runs = await eventually(lambda: finished_runs(pool, trigger.id))

    assert (runs[0]["status"], runs[0]["attempt"], runs[0]["http_status"]) == (
        "failed",
        2,
        429,
    )
    first, second = backend.deliveries
    assert 0.5 <= second.received_at - first.received_at < 3


async def test_slow_application_does_not_delay_another(
    database: DatabaseTarget, pool: asyncpg.Pool
) -> None:
    stuck = await RecordingBackend(Behaviour(hang=True)).start()
    healthy = await RecordingBackend().start()
    try:
        stuck_app = await create_application(pool, stuck.url)
        healthy_app = await create_application(pool, healthy.url)
        for _ in range(4):
            await add_trigger(pool, stuck_app, timeout_seconds=60)
        await add_trigger(pool, healthy_app)
        settings = executor_settings(max_concurrency=6, app_concurrency=3)

        async with running_executor(settings, database, pool) as harness:
            deliveries = await healthy.wait_for(4, within=10)
            running = harness.executor.dispatcher.running
            assert running.get(stuck_app.id) == 3
            stuck.release()
    finally:
        await stuck.stop()
        await healthy.stop()

    # The stuck application never had more than its limit in flight.
    assert len({d.webhook_id for d in stuck.deliveries[:3]}) == 3
    for delivery in deliveries:
        scheduled = datetime.fromisoformat(delivery.json["run"]["scheduled_at"])
        # Each slot arrives long before the stuck callbacks could time out.
        assert delivery.received_at - scheduled.timestamp() < 2.0


async def test_run_now_is_delivered_without_waiting_for_the_schedule(
    database: DatabaseTarget, pool: asyncpg.Pool, backend: RecordingBackend
) -> None:
    application = await create_application(pool, backend.url)
    trigger = await add_trigger(pool, application, schedule="0 0 1 1 *")

    async with running_executor(executor_settings(max_sleep="60"), database, pool):
        run = await request_run(pool, trigger.id)
        deliveries = await backend.wait_for(1, within=5)

    assert deliveries[0].webhook_id == str(run.id)
    assert deliveries[0].json["run"]["attempt"] == 1


async def finished_runs(
    pool: asyncpg.Pool, trigger_id: uuid.UUID
) -> list[asyncpg.Record] | None:
    runs = await runs_of(pool, trigger_id)
    if runs and all(run["status"] in ("succeeded", "failed") for run in runs):
        return runs
    return None


async def test_metadata_address_is_refused_at_dispatch_without_retry(
    database: DatabaseTarget, pool: asyncpg.Pool
) -> None:
    application = await create_application(pool, "http://127.0.0.1:9")
    # A URL saved before the policy existed, or written around the API.
    await pool.execute(
        "UPDATE applications SET backend_url = 'http://169.254.169.254' WHERE id = $1",
        application.id,
    )
    trigger = await add_trigger(pool, application, schedule="0 0 1 1 *")
    await pool.execute(
        "UPDATE triggers SET next_run_at = date_trunc('second', now()) WHERE id = $1",
        trigger.id,
    )

    async with running_executor(executor_settings(), database, pool):
        runs = await eventually(lambda: finished_runs(pool, trigger.id))

    (run,) = runs
    assert (run["status"], run["attempt"], run["http_status"]) == ("failed", 1, None)
    assert run["error"].startswith("address refused: ")
    assert "169.254.169.254" in run["error"]


async def test_response_bodies_over_the_cap_still_record_their_status(
    database: DatabaseTarget, pool: asyncpg.Pool, backend: RecordingBackend
) -> None:
    # 200 kB answers against a 1 kB cap: the executor stops reading at the
    # cap and drops the connection; every run still records its 2xx.
    backend.behaviour = Behaviour(body="x" * 200_000)
    application = await create_application(pool, backend.url)
    triggers = [
        await add_trigger(pool, application, schedule="0 0 1 1 *") for _ in range(3)
    ]
    await pool.execute(
        "UPDATE triggers SET next_run_at = now() WHERE id = ANY($1)",
        [trigger.id for trigger in triggers],
    )
    settings = executor_settings(max_response_bytes="1024")

    async def all_finished() -> list[asyncpg.Record] | None:
        runs = [run for trigger in triggers for run in await runs_of(pool, trigger.id)]
        done = [run for run in runs if run["status"] in ("succeeded", "failed")]
        return done if len(done) == len(triggers) else None

    async with running_executor(settings, database, pool):
        runs = await eventually(all_finished, within=10)

    assert [(run["status"], run["http_status"], run["attempt"]) for run in runs] == [
        ("succeeded", 200, 1)
    ] * 3
