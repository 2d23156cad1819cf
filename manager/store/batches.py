"""Lookups of many objects in one statement, for the API's batch loaders.

Each function takes a list of keys and answers for all of them at once, so a
GraphQL query that walks 100 applications costs one statement per level of
the query and not one per application.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

from manager.store.catalog import (
    APPLICATION_COLUMNS,
    PROJECT_COLUMNS,
    TENANT_COLUMNS,
    Application,
    Project,
    Tenant,
)
from manager.store.common import Queryable
from manager.store.triggers import (
    RUN_COLUMNS,
    TRIGGER_COLUMNS,
    Trigger,
    TriggerRun,
    run_from_row,
    trigger_from_row,
)

# Projects by id.
SELECT_PROJECTS = f"SELECT {PROJECT_COLUMNS} FROM projects WHERE id = ANY($1)"

# Tenants by id.
SELECT_TENANTS = f"SELECT {TENANT_COLUMNS} FROM tenants WHERE id = ANY($1)"

# Applications by id.
SELECT_APPLICATIONS = (
    f"SELECT {APPLICATION_COLUMNS} FROM applications WHERE id = ANY($1)"
)

# Triggers by id.
SELECT_TRIGGERS = f"SELECT {TRIGGER_COLUMNS} FROM triggers WHERE id = ANY($1)"

# The projects that hold some tenants.
SELECT_PROJECTS_OF_TENANTS = """
SELECT DISTINCT project_id FROM tenants WHERE id = ANY($1)
"""

# One page of runs for each of several triggers, newest first, with the same
# status filter and cursor for all of them; one row beyond the page tells
# whether another page follows.
SELECT_RUN_PAGES = f"""
SELECT {RUN_COLUMNS} FROM (
    SELECT trigger_runs.*, row_number() OVER (
        PARTITION BY trigger_id ORDER BY scheduled_at DESC, id DESC
    ) AS position
    FROM trigger_runs
    WHERE trigger_id = ANY($1)
      AND ($2::text IS NULL OR status = $2)
      AND ($3::timestamptz IS NULL OR (scheduled_at, id) < ($3, $4::uuid))
) AS ranked
WHERE position <= $5
ORDER BY trigger_id, position
"""

# How many runs each of several triggers has, under a status filter.
COUNT_RUNS_BY_TRIGGER = """
SELECT trigger_id, count(*) AS total FROM trigger_runs
WHERE trigger_id = ANY($1) AND ($2::text IS NULL OR status = $2)
GROUP BY trigger_id
"""


async def projects_by_id(
    db: Queryable, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, Project]:
    rows = await db.fetch(SELECT_PROJECTS, list(ids))
    return {row["id"]: Project(**dict(row)) for row in rows}


async def tenants_by_id(
    db: Queryable, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, Tenant]:
    rows = await db.fetch(SELECT_TENANTS, list(ids))
    return {row["id"]: Tenant(**dict(row)) for row in rows}


async def applications_by_id(
    db: Queryable, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, Application]:
    rows = await db.fetch(SELECT_APPLICATIONS, list(ids))
    return {row["id"]: Application(**dict(row)) for row in rows}


async def triggers_by_id(
    db: Queryable, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, Trigger]:
    rows = await db.fetch(SELECT_TRIGGERS, list(ids))
    return {row["id"]: trigger_from_row(row) for row in rows}


async def project_ids_of_tenants(
    db: Queryable, tenant_ids: Sequence[uuid.UUID]
) -> list[uuid.UUID]:
    rows = await db.fetch(SELECT_PROJECTS_OF_TENANTS, list(tenant_ids))
    return [row["project_id"] for row in rows]


async def run_pages(
    db: Queryable,
    trigger_ids: Sequence[uuid.UUID],
    status: str | None,
    first: int,
    after: tuple[datetime, uuid.UUID] | None,
) -> dict[uuid.UUID, tuple[list[TriggerRun], bool]]:
    """Trigger id -> (at most `first` runs, whether more follow)."""
    after_at, after_id = after if after else (None, None)
    rows = await db.fetch(
        SELECT_RUN_PAGES, list(trigger_ids), status, after_at, after_id, first + 1
    )
    grouped: dict[uuid.UUID, list[TriggerRun]] = defaultdict(list)
    for row in rows:
        grouped[row["trigger_id"]].append(run_from_row(row))
    return {
        trigger_id: (grouped[trigger_id][:first], len(grouped[trigger_id]) > first)
        for trigger_id in trigger_ids
    }


async def run_counts(
    db: Queryable, trigger_ids: Sequence[uuid.UUID], status: str | None
) -> dict[uuid.UUID, int]:
    rows = await db.fetch(COUNT_RUNS_BY_TRIGGER, list(trigger_ids), status)
    counts = {row["trigger_id"]: row["total"] for row in rows}
    return {trigger_id: counts.get(trigger_id, 0) for trigger_id in trigger_ids}
