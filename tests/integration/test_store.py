"""The store against a real database: CRUD, clear errors, notifications."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from manager.db.pool import TRIGGERS_CHANNEL, DatabaseTarget, connect
from manager.errors import ConflictError, InvalidInputError, NotFoundError
from manager.store import catalog, triggers
from manager.store.triggers import TriggerFields


async def make_application(pool: asyncpg.Pool) -> catalog.Application:
    project = await catalog.create_project(pool, "acme")
    tenant = await catalog.create_tenant(pool, project.id, "prod")
    application, secret = await catalog.create_application(
        pool, tenant.id, "billing", "http://127.0.0.1:9/hooks"
    )
    assert secret.startswith("whsec_")
    return application


async def test_registry_round_trip_and_cascade(pool: asyncpg.Pool) -> None:
    application = await make_application(pool)
    renamed = await catalog.update_application(pool, application.id, name="payments")
    assert renamed.name == "payments"
    assert renamed.backend_url == "http://127.0.0.1:9/hooks"

    tenant = await catalog.get_tenant(pool, application.tenant_id)
    await catalog.delete_project(pool, tenant.project_id)
    with pytest.raises(NotFoundError, match="does not exist"):
        await catalog.get_application(pool, application.id)


async def test_duplicate_names_are_conflicts_naming_the_field(
    pool: asyncpg.Pool,
) -> None:
    application = await make_application(pool)
    with pytest.raises(ConflictError) as caught:
        await catalog.create_application(
            pool, application.tenant_id, "billing", "http://127.0.0.1:9"
        )
    assert caught.value.field == "name"
    assert "already exists" in str(caught.value)


async def test_unknown_and_malformed_ids(pool: asyncpg.Pool) -> None:
    with pytest.raises(NotFoundError):
        await catalog.get_project(pool, uuid.uuid4())
    with pytest.raises(NotFoundError, match="tenantId"):
        await catalog.create_application(pool, uuid.uuid4(), "x", "http://127.0.0.1:9")
    with pytest.raises(InvalidInputError) as caught:
        await triggers.get_trigger(pool, "not-a-uuid")
    assert caught.value.field == "id"
    with pytest.raises(NotFoundError):
        await triggers.delete_trigger(pool, uuid.uuid4())


async def test_invalid_trigger_fields_name_the_field_and_store_nothing(
    pool: asyncpg.Pool,
) -> None:
    application = await make_application(pool)
    cases = {
        "schedule": TriggerFields(name="t", schedule="* * *"),
        "timezone": TriggerFields(name="t", schedule="* * * * *", timezone="Mars/X"),
        "timeoutSeconds": TriggerFields(
            name="t", schedule="* * * * *", timeout_seconds=0
        ),
        "maxRetries": TriggerFields(name="t", schedule="* * * * *", max_retries=-1),
        "misfirePolicy": TriggerFields(
            name="t", schedule="* * * * *", misfire_policy="sometimes"
        ),
        "path": TriggerFields(name="t", schedule="* * * * *", path="no-slash"),
        "payload": TriggerFields(
            name="t", schedule="* * * * *", payload={"blob": "x" * 300_000}
        ),
    }
    for field, fields in cases.items():
        with pytest.raises(InvalidInputError) as caught:
            await triggers.create_trigger(pool, application.id, fields)
        assert caught.value.field == field
        assert str(caught.value).startswith(f"{field}: ")
    assert await triggers.list_triggers(pool, [application.id]) == []


async def test_trigger_changes_notify_the_executor(
    pool: asyncpg.Pool, database: DatabaseTarget
) -> None:
    application = await make_application(pool)
    received: asyncio.Queue[str] = asyncio.Queue()
    listener = await connect(database)
    await listener.add_listener(
        TRIGGERS_CHANNEL, lambda *arguments: received.put_nowait(arguments[-1])
    )
    try:
        trigger = await triggers.create_trigger(
            pool, application.id, TriggerFields(name="tick", schedule="*/5 * * * * *")
        )
        assert await asyncio.wait_for(received.get(), 5) == str(trigger.id)
        assert trigger.next_run_at is not None
        assert trigger.callback_path == "/triggers/tick"

        paused = await triggers.set_trigger_enabled(pool, trigger.id, False)
        assert await asyncio.wait_for(received.get(), 5) == str(trigger.id)
        assert paused.next_run_at is None

        run = await triggers.request_run(pool, trigger.id)
        assert await asyncio.wait_for(received.get(), 5) == str(trigger.id)
        assert (run.status, run.manual) == ("queued", True)

        page = await triggers.list_runs(pool, trigger.id)
        assert [item.id for item in page.runs] == [run.id]
        assert page.total_count == 1
    finally:
        await listener.close()


async def test_run_history_pages_newest_first(pool: asyncpg.Pool) -> None:
    application = await make_application(pool)
    trigger = await triggers.create_trigger(
        pool, application.id, TriggerFields(name="t", schedule="@hourly")
    )
    for hour in range(5):
        await pool.execute(
            """
            INSERT INTO trigger_runs (trigger_id, application_id, scheduled_at)
            VALUES ($1, $2, '2026-01-01T00:00:00Z'::timestamptz + $3 * interval '1h')
            """,
            trigger.id,
            application.id,
            hour,
        )
    first = await triggers.list_runs(pool, trigger.id, first=2)
    second = await triggers.list_runs(pool, trigger.id, first=2, after=first.end_cursor)
    rest = await triggers.list_runs(pool, trigger.id, first=2, after=second.end_cursor)
    hours = [
        run.scheduled_at.hour for page in (first, second, rest) for run in page.runs
    ]
    assert hours == [4, 3, 2, 1, 0]
    assert (first.has_next_page, second.has_next_page, rest.has_next_page) == (
        True,
        True,
        False,
    )
    assert first.total_count == 5
    with pytest.raises(InvalidInputError):
        await triggers.list_runs(pool, trigger.id, after="garbage")
