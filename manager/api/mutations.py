"""Resolvers of the mutations: tenancy check first, then the store.

Projects and tenants are created and deleted by admins only. Inside a
tenant, editors change things and viewers only read. Members and API tokens
are managed by admins and by people who edit the tenant, never by API
tokens. After a mutation the request's loaders forget what they read, so
the answer shows the state after the change.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

from manager.api.context import RequestContext, get_context
from manager.api.resolvers import (
    load_application,
    load_project,
    load_tenant,
    load_trigger,
)
from manager.errors import InvalidInputError
from manager.store import access, catalog, triggers
from manager.store.common import parse_id
from manager.store.triggers import TriggerFields

Resolver = Callable[..., Awaitable[Any]]

# GraphQL input names of trigger fields and their TriggerFields names.
TRIGGER_FIELDS = {
    "name": "name",
    "schedule": "schedule",
    "timezone": "timezone",
    "path": "path",
    "payload": "payload",
    "enabled": "enabled",
    "timeoutSeconds": "timeout_seconds",
    "maxRetries": "max_retries",
    "misfirePolicy": "misfire_policy",
}

# Fields that may be set to null: null restores their default.
NULLABLE_TRIGGER_FIELDS = {"path", "payload"}


def mutation(resolver: Resolver) -> Resolver:
    """Clear the request's loaders once the change is made."""

    @wraps(resolver)
    async def run(root: Any, info: Any, **arguments: Any) -> Any:
        context = get_context(info)
        try:
            return await resolver(context, **arguments)
        finally:
            context.loaders.clear()

    return run


# --- projects and tenants


@mutation
async def create_project(context: RequestContext, input: dict[str, Any]) -> Any:
    context.require_admin("create projects")
    return await catalog.create_project(context.db, input["name"])


@mutation
async def update_project(
    context: RequestContext, id: str, input: dict[str, Any]
) -> Any:
    if not context.is_admin:
        await load_project(context, id)
    context.require_admin("change projects")
    return await catalog.update_project(context.db, id, input["name"])


@mutation
async def delete_project(context: RequestContext, id: str) -> bool:
    if not context.is_admin:
        # Members of one of its tenants learn only that they may not.
        await load_project(context, id)
    context.require_admin("delete projects")
    await catalog.delete_project(context.db, id)
    return True


@mutation
async def create_tenant(context: RequestContext, input: dict[str, Any]) -> Any:
    context.require_admin("create tenants")
    return await catalog.create_tenant(context.db, input["projectId"], input["name"])


@mutation
async def update_tenant(context: RequestContext, id: str, input: dict[str, Any]) -> Any:
    tenant = await load_tenant(context, id, write=True)
    return await catalog.update_tenant(context.db, tenant.id, input["name"])


@mutation
async def delete_tenant(context: RequestContext, id: str) -> bool:
    tenant = await load_tenant(context, id)
    context.require_admin("delete tenants")
    await catalog.delete_tenant(context.db, tenant.id)
    return True


# --- applications


@mutation
async def create_application(
    context: RequestContext, input: dict[str, Any]
) -> dict[str, Any]:
    tenant = await load_tenant(context, input["tenantId"], "tenantId", write=True)
    application, secret = await catalog.create_application(
        context.db,
        tenant.id,
        input["name"],
        input["backendUrl"],
        context.settings.callbacks.allowed_networks,
    )
    return {"application": application, "signingSecret": secret}


@mutation
async def update_application(
    context: RequestContext, id: str, input: dict[str, Any]
) -> Any:
    application = await load_application(context, id, write=True)
    return await catalog.update_application(
        context.db,
        application.id,
        name=input.get("name"),
        backend_url=input.get("backendUrl"),
        allowed_networks=context.settings.callbacks.allowed_networks,
    )


@mutation
async def delete_application(context: RequestContext, id: str) -> bool:
    application = await load_application(context, id, write=True)
    await catalog.delete_application(context.db, application.id)
    return True


@mutation
async def rotate_application_secret(context: RequestContext, id: str) -> dict[str, Any]:
    application = await load_application(context, id, write=True)
    secret = await catalog.rotate_signing_secret(context.db, application.id)
    updated = await catalog.get_application(context.db, application.id)
    return {"application": updated, "signingSecret": secret}


# --- triggers


def _trigger_changes(input: dict[str, Any]) -> dict[str, Any]:
    """TriggerFields keyword arguments from a GraphQL input object."""
    changes: dict[str, Any] = {}
    for name, value in input.items():
        if name not in TRIGGER_FIELDS:
            continue
        if value is None and name not in NULLABLE_TRIGGER_FIELDS:
            raise InvalidInputError(name, f"{name}: must not be null")
        changes[TRIGGER_FIELDS[name]] = value
    return changes


@mutation
async def create_trigger(context: RequestContext, input: dict[str, Any]) -> Any:
    application = await load_application(
        context, input["applicationId"], "applicationId", write=True
    )
    changes = _trigger_changes(input)
    changes.setdefault("timeout_seconds", context.settings.cron.default_timeout)
    return await triggers.create_trigger(
        context.db, application.id, TriggerFields(**changes)
    )


@mutation
async def update_trigger(
    context: RequestContext, id: str, input: dict[str, Any]
) -> Any:
    trigger = await load_trigger(context, id, write=True)
    changes = _trigger_changes(input)
    return await triggers.update_trigger(context.db, trigger.id, **changes)


@mutation
async def delete_trigger(context: RequestContext, id: str) -> bool:
    trigger = await load_trigger(context, id, write=True)
    await triggers.delete_trigger(context.db, trigger.id)
    return True


@mutation
async def pause_trigger(context: RequestContext, id: str) -> Any:
    trigger = await load_trigger(context, id, write=True)
    return await triggers.set_trigger_enabled(context.db, trigger.id, False)


@mutation
async def resume_trigger(context: RequestContext, id: str) -> Any:
    trigger = await load_trigger(context, id, write=True)
    return await triggers.set_trigger_enabled(context.db, trigger.id, True)


@mutation
async def run_trigger(context: RequestContext, id: str) -> Any:
    trigger = await load_trigger(context, id, write=True)
    return await triggers.request_run(context.db, trigger.id)


# --- API tokens and members


@mutation
async def create_api_token(
    context: RequestContext, input: dict[str, Any]
) -> dict[str, Any]:
    tenant = await load_tenant(context, input["tenantId"], "tenantId")
    await context.require_people_manager(tenant.id, _missing_tenant(tenant.id))
    api_token, token = await access.create_api_token(
        context.db, tenant.id, input["name"], input["role"]
    )
    return {"token": token, "apiToken": api_token}


@mutation
async def revoke_api_token(context: RequestContext, id: str) -> Any:
    token_id = parse_id(id)
    missing = f"API token {id} does not exist"
    api_token = await access.get_api_token(context.db, token_id)
    await context.require_people_manager(api_token.tenant_id, missing)
    return await access.revoke_api_token(context.db, token_id)


@mutation
async def add_tenant_member(context: RequestContext, input: dict[str, Any]) -> Any:
    tenant = await load_tenant(context, input["tenantId"], "tenantId")
    await context.require_people_manager(tenant.id, _missing_tenant(tenant.id))
    return await access.add_tenant_member(
        context.db, tenant.id, input["kind"], input["subject"], input["role"]
    )


@mutation
async def remove_tenant_member(context: RequestContext, input: dict[str, Any]) -> bool:
    tenant = await load_tenant(context, input["tenantId"], "tenantId")
    await context.require_people_manager(tenant.id, _missing_tenant(tenant.id))
    await access.remove_tenant_member(
        context.db, tenant.id, input["kind"], input["subject"]
    )
    return True


def _missing_tenant(tenant_id: Any) -> str:
    return f"tenantId: tenant {tenant_id} does not exist"


MUTATION_RESOLVERS: dict[str, Callable[..., Any]] = {
    "createProject": create_project,
    "updateProject": update_project,
    "deleteProject": delete_project,
    "createTenant": create_tenant,
    "updateTenant": update_tenant,
    "deleteTenant": delete_tenant,
    "createApplication": create_application,
    "updateApplication": update_application,
    "deleteApplication": delete_application,
    "rotateApplicationSecret": rotate_application_secret,
    "createTrigger": create_trigger,
    "updateTrigger": update_trigger,
    "deleteTrigger": delete_trigger,
    "pauseTrigger": pause_trigger,
    "resumeTrigger": resume_trigger,
    "runTrigger": run_trigger,
    "createApiToken": create_api_token,
    "revokeApiToken": revoke_api_token,
    "addTenantMember": add_tenant_member,
    "removeTenantMember": remove_tenant_member,
}
