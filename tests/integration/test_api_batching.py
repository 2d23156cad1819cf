"""Batch loading: the statements a query costs do not grow with its objects."""

from __future__ import annotations

import asyncpg

from manager.db.pool import DatabaseTarget
from manager.store import catalog, triggers
from manager.store.triggers import TriggerFields
from tests.support.api import serve_api

NESTED = """
query ($tenant: ID!) {
  tenant(id: $tenant) {
    name
    project { name }
    applications {
      id name tenant { name }
      triggers {
        id name application { name }
        runs(first: 3) { nodes { id trigger { name } } totalCount }
      }
    }
  }
}
"""


async def build_tenant(pool: asyncpg.Pool, applications: int) -> str:
    project = await catalog.create_project(pool, f"project-{applications}")
    tenant = await catalog.create_tenant(pool, project.id, "tenant")
    for number in range(applications):
        application, _ = await catalog.create_application(
            pool, tenant.id, f"app-{number:03d}", "http://127.0.0.1:9/"
        )
        for name in ("hourly", "daily"):
            trigger = await triggers.create_trigger(
                pool, application.id, TriggerFields(name=name, schedule="@hourly")
            )
            await triggers.request_run(pool, trigger.id)
    return str(tenant.id)


async def statements_for(
    database: DatabaseTarget, pool: asyncpg.Pool, applications: int
) -> int:
    tenant_id = await build_tenant(pool, applications)
    statements: list[str] = []

    def record(query: asyncpg.LoggedQuery) -> None:
        # asyncpg's own reset when a connection goes back to the pool is
        # housekeeping, not a statement the query asked for.
        if "pg_advisory_unlock_all" not in query.query:
            statements.append(query.query)

    async with serve_api(database, on_query=record) as api:
        # The first run lets the connection learn its types; count the second.
        await api.data(NESTED, {"tenant": tenant_id})
        statements.clear()
        data = await api.data(NESTED, {"tenant": tenant_id})

    found = data["tenant"]["applications"]
    assert len(found) == applications
    assert all(len(application["triggers"]) == 2 for application in found)
    assert all(
        trigger["runs"]["totalCount"] == 1
        for application in found
        for trigger in application["triggers"]
    )
    return len(statements)


async def test_hundred_applications_cost_as_few_statements_as_two(
    database: DatabaseTarget, pool: asyncpg.Pool
) -> None:
    few = await statements_for(database, pool, 2)
    await pool.execute("DELETE FROM projects")
    many = await statements_for(database, pool, 100)

    # tenant, project, applications, triggers, run pages, run counts.
    assert many == few
    assert many <= 6
