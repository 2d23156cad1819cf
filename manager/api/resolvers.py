"""Resolvers of the queries and of the fields that lead from one type to another.

Root queries check tenancy; fields below an object the caller may see lead
only to objects in the same tenant, so they need no further check (the one
exception, a project's tenants, is filtered). Everything is read through the
request's batch loaders.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from manager.api.context import RequestContext, get_context
from manager.errors import InvalidInputError, NotFoundError, ScheduleError
from manager.schedule import next_fire_times, parse_schedule, parse_timezone
from manager.store import batches, catalog
from manager.store.access import ApiToken, TenantMember
from manager.store.catalog import Application, Project, Tenant
from manager.store.common import parse_id
from manager.store.triggers import (
    RUN_STATUSES,
    Trigger,
    TriggerRun,
    decode_cursor,
    encode_cursor,
)

MAX_PREVIEW_COUNT = 100


# --- loading one object with its tenancy check


async def load_project(context: RequestContext, raw_id: Any) -> Project:
    project_id = parse_id(raw_id)
    missing = f"project {raw_id} does not exist"
    project = await context.loaders.project.load(project_id)
    if project is None:
        raise NotFoundError(missing)
    if not context.is_admin:
        tenants = await context.loaders.tenants_of_project.load(project_id)
        roles = await context.roles()
        if not any(tenant.id in roles for tenant in tenants):
            raise NotFoundError(missing)
    return project


async def load_tenant(
    context: RequestContext, raw_id: Any, field: str = "id", write: bool = False
) -> Tenant:
    tenant_id = parse_id(raw_id, field)
    missing = _missing("tenant", raw_id, field)
    await context.require_tenant(tenant_id, missing, write)
    tenant = await context.loaders.tenant.load(tenant_id)
    if tenant is None:
        raise NotFoundError(missing)
    return tenant


async def load_application(
    context: RequestContext, raw_id: Any, field: str = "id", write: bool = False
) -> Application:
    application_id = parse_id(raw_id, field)
    missing = _missing("application", raw_id, field)
    application = await context.loaders.application.load(application_id)
    if application is None:
        raise NotFoundError(missing)
    await context.require_tenant(application.tenant_id, missing, write)
    return application


async def load_trigger(
    context: RequestContext, raw_id: Any, field: str = "id", write: bool = False
) -> Trigger:
    trigger_id = parse_id(raw_id, field)
    missing = _missing("trigger", raw_id, field)
    trigger = await context.loaders.trigger.load(trigger_id)
    if trigger is None:
        raise NotFoundError(missing)
    if not context.is_admin:
        application = await context.loaders.application.load(trigger.application_id)
        if application is None:
            raise NotFoundError(missing)
        await context.require_tenant(application.tenant_id, missing, write)
    return trigger


def _missing(kind: str, raw_id: Any, field: str) -> str:
    # The store's own wording, so that "not yours" reads like "not there".
    prefix = "" if field == "id" else f"{field}: "
    return f"{prefix}{kind} {raw_id} does not exist"


async def require_loaded(value: Any, kind: str, identifier: uuid.UUID) -> Any:
    """A parent that vanished between two statements is a plain not-found."""
    if value is None:
        raise NotFoundError(f"{kind} {identifier} does not exist")
    return value


# --- queries


async def resolve_projects(_: Any, info: Any) -> list[Project]:
    context = get_context(info)
    tenant_ids = await context.visible_tenant_ids()
    if tenant_ids is None:
        return await catalog.list_projects(context.db)
    if not tenant_ids:
        return []
    project_ids = await batches.project_ids_of_tenants(context.db, tenant_ids)
    return await catalog.list_projects(context.db, project_ids)


async def resolve_project(_: Any, info: Any, id: str) -> Project:
    return await load_project(get_context(info), id)


async def resolve_tenant(_: Any, info: Any, id: str) -> Tenant:
    return await load_tenant(get_context(info), id)


async def resolve_application(_: Any, info: Any, id: str) -> Application:
    return await load_application(get_context(info), id)


async def resolve_trigger(_: Any, info: Any, id: str) -> Trigger:
    return await load_trigger(get_context(info), id)


async def resolve_trigger_runs(
    _: Any,
    info: Any,
    triggerId: str,
    status: str | None = None,
    first: int = 50,
    after: str | None = None,
) -> RunConnection:
    context = get_context(info)
    trigger = await load_trigger(context, triggerId, field="triggerId")
    return run_connection(context, trigger.id, status, first, after)


def resolve_schedule_preview(
    _: Any, info: Any, schedule: str, timezone: str = "UTC", count: int = 5
) -> list[datetime]:
    if not 1 <= count <= MAX_PREVIEW_COUNT:
        raise InvalidInputError(
            "count", f"count: must be from 1 to {MAX_PREVIEW_COUNT}"
        )
    try:
        parsed = parse_schedule(schedule)
    except ScheduleError as error:
        raise InvalidInputError("schedule", f"schedule: {error}") from None
    try:
        zone = parse_timezone(timezone)
    except ScheduleError as error:
        raise InvalidInputError("timezone", f"timezone: {error}") from None
    return next_fire_times(parsed, zone, datetime.now(UTC), count)


async def resolve_me(_: Any, info: Any) -> dict[str, Any]:
    context = get_context(info)
    principal = context.principal
    memberships: list[dict[str, Any]] = []
    if not context.is_admin:
        roles = await context.roles()
        tenants = await asyncio.gather(
            *(context.loaders.tenant.load(tenant_id) for tenant_id in roles)
        )
        memberships = [
            {"tenant": tenant, "role": roles[tenant.id]}
            for tenant in tenants
            if tenant is not None
        ]
    memberships.sort(key=lambda membership: membership["tenant"].name)
    return {
        "kind": principal.kind,
        "subject": principal.subject,
        "name": principal.name,
        "email": principal.email,
        "groups": list(principal.groups),
        "isAdmin": principal.is_admin,
        "memberships": memberships,
    }


# --- run history


@dataclass(frozen=True)
class RunConnection:
    """One page of a trigger's runs; its fields load only what is asked for."""

    trigger_id: uuid.UUID
    status: str | None
    first: int
    after: tuple[datetime, uuid.UUID] | None


def run_connection(
    context: RequestContext,
    trigger_id: uuid.UUID,
    status: str | None,
    first: int,
    after: str | None,
) -> RunConnection:
    limit = context.settings.api.max_page_size
    if not 0 <= first <= limit:
        raise InvalidInputError("first", f"first: must be from 0 to {limit}")
    if status is not None and status not in RUN_STATUSES:
        raise InvalidInputError("status", "status: not a run status")
    cursor = decode_cursor(after) if after else None
    return RunConnection(trigger_id, status, first, cursor)


async def _page(info: Any, connection: RunConnection) -> tuple[list[TriggerRun], bool]:
    key = (connection.trigger_id, connection.status, connection.first, connection.after)
    return await get_context(info).loaders.run_page.load(key)


async def resolve_connection_nodes(
    connection: RunConnection, info: Any
) -> list[TriggerRun]:
    runs, _ = await _page(info, connection)
    return runs


async def resolve_connection_page_info(
    connection: RunConnection, info: Any
) -> dict[str, Any]:
    runs, has_next_page = await _page(info, connection)
    return {
        "hasNextPage": has_next_page,
        "endCursor": encode_cursor(runs[-1]) if runs else None,
    }


async def resolve_connection_total(connection: RunConnection, info: Any) -> int:
    key = (connection.trigger_id, connection.status)
    return await get_context(info).loaders.run_count.load(key)


# --- fields that lead to other objects


async def resolve_project_tenants(project: Project, info: Any) -> list[Tenant]:
    context = get_context(info)
    tenants = await context.loaders.tenants_of_project.load(project.id)
    if context.is_admin:
        return tenants
    roles = await context.roles()
    return [tenant for tenant in tenants if tenant.id in roles]


async def resolve_tenant_project(tenant: Tenant, info: Any) -> Project:
    project = await get_context(info).loaders.project.load(tenant.project_id)
    return await require_loaded(project, "project", tenant.project_id)


async def resolve_tenant_applications(tenant: Tenant, info: Any) -> list[Application]:
    return await get_context(info).loaders.applications_of_tenant.load(tenant.id)


async def resolve_tenant_members(tenant: Tenant, info: Any) -> list[TenantMember]:
    return await get_context(info).loaders.members_of_tenant.load(tenant.id)


async def resolve_tenant_tokens(tenant: Tenant, info: Any) -> list[ApiToken]:
    return await get_context(info).loaders.tokens_of_tenant.load(tenant.id)


async def resolve_owning_tenant(owner: Any, info: Any) -> Tenant:
    """The tenant of an application, API token or member."""
    tenant = await get_context(info).loaders.tenant.load(owner.tenant_id)
    return await require_loaded(tenant, "tenant", owner.tenant_id)


async def resolve_application_triggers(
    application: Application, info: Any
) -> list[Trigger]:
    loader = get_context(info).loaders.triggers_of_application
    return await loader.load(application.id)


async def resolve_trigger_application(trigger: Trigger, info: Any) -> Application:
    loader = get_context(info).loaders.application
    application = await loader.load(trigger.application_id)
    return await require_loaded(application, "application", trigger.application_id)


def resolve_trigger_runs_field(
    trigger: Trigger,
    info: Any,
    status: str | None = None,
    first: int = 50,
    after: str | None = None,
) -> RunConnection:
    return run_connection(get_context(info), trigger.id, status, first, after)


async def resolve_run_trigger(run: TriggerRun, info: Any) -> Trigger:
    trigger = await get_context(info).loaders.trigger.load(run.trigger_id)
    return await require_loaded(trigger, "trigger", run.trigger_id)


QUERY_RESOLVERS: dict[str, Callable[..., Any]] = {
    "projects": resolve_projects,
    "project": resolve_project,
    "tenant": resolve_tenant,
    "application": resolve_application,
    "trigger": resolve_trigger,
    "triggerRuns": resolve_trigger_runs,
    "schedulePreview": resolve_schedule_preview,
    "me": resolve_me,
}

TYPE_RESOLVERS: dict[str, dict[str, Callable[..., Any]]] = {
    "Project": {"tenants": resolve_project_tenants},
    "Tenant": {
        "project": resolve_tenant_project,
        "applications": resolve_tenant_applications,
        "members": resolve_tenant_members,
        "apiTokens": resolve_tenant_tokens,
    },
    "Application": {
        "tenant": resolve_owning_tenant,
        "triggers": resolve_application_triggers,
    },
    "Trigger": {
        "application": resolve_trigger_application,
        "runs": resolve_trigger_runs_field,
    },
    "TriggerRun": {"trigger": resolve_run_trigger},
    "TriggerRunConnection": {
        "nodes": resolve_connection_nodes,
        "pageInfo": resolve_connection_page_info,
        "totalCount": resolve_connection_total,
    },
    "ApiToken": {"tenant": resolve_owning_tenant},
    "TenantMember": {"tenant": resolve_owning_tenant},
}
