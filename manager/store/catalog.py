"""Projects, tenants and applications: the registry above the triggers."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from manager.callback_urls import validate_backend_url
from manager.errors import InvalidInputError, NotFoundError
from manager.signing import generate_secret
from manager.store.common import (
    Queryable,
    clean_name,
    delete_row,
    fetch_row,
    parent_exists,
    parse_id,
    unique_name,
)


@dataclass(frozen=True)
class Project:
    id: uuid.UUID
    name: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Tenant:
    id: uuid.UUID
    project_id: uuid.UUID
    name: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Application:
    id: uuid.UUID
    tenant_id: uuid.UUID
    name: str
    backend_url: str
    created_at: datetime
    updated_at: datetime


def _project(row: asyncpg.Record) -> Project:
    return Project(row["id"], row["name"], row["created_at"], row["updated_at"])


def _tenant(row: asyncpg.Record) -> Tenant:
    return Tenant(
        row["id"], row["project_id"], row["name"], row["created_at"], row["updated_at"]
    )


def _application(row: asyncpg.Record) -> Application:
    return Application(
        row["id"],
        row["tenant_id"],
        row["name"],
        row["backend_url"],
        row["created_at"],
        row["updated_at"],
    )


# --- projects

PROJECT_COLUMNS = "id, name, created_at, updated_at"

# Create a project.
INSERT_PROJECT = f"INSERT INTO projects (name) VALUES ($1) RETURNING {PROJECT_COLUMNS}"

# Rename a project.
UPDATE_PROJECT = f"""
UPDATE projects SET name = $2, updated_at = now() WHERE id = $1
RETURNING {PROJECT_COLUMNS}
"""


async def create_project(db: Queryable, name: str) -> Project:
    name = clean_name(name)
    async with unique_name("project", "installation", name):
        return _project(await db.fetchrow(INSERT_PROJECT, name))


async def get_project(db: Queryable, project_id: Any) -> Project:
    return _project(await fetch_row(db, "project", PROJECT_COLUMNS, project_id))


async def list_projects(
    db: Queryable, project_ids: Sequence[uuid.UUID] | None = None
) -> list[Project]:
    """All projects by name, or only those in `project_ids` when given."""
    if project_ids is None:
        rows = await db.fetch(f"SELECT {PROJECT_COLUMNS} FROM projects ORDER BY name")
    else:
        rows = await db.fetch(
            f"SELECT {PROJECT_COLUMNS} FROM projects WHERE id = ANY($1) ORDER BY name",
            list(project_ids),
        )
    return [_project(row) for row in rows]


async def update_project(db: Queryable, project_id: Any, name: str) -> Project:
    name = clean_name(name)
    async with unique_name("project", "installation", name):
        row = await db.fetchrow(UPDATE_PROJECT, parse_id(project_id), name)
    if row is None:
        raise NotFoundError(f"project {project_id} does not exist")
    return _project(row)


async def delete_project(db: Queryable, project_id: Any) -> None:
    """Delete a project and, by cascade, everything in it."""
    await delete_row(db, "project", project_id)


# --- tenants

TENANT_COLUMNS = "id, project_id, name, created_at, updated_at"

# Create a tenant in a project.
INSERT_TENANT = f"""
INSERT INTO tenants (project_id, name) VALUES ($1, $2) RETURNING {TENANT_COLUMNS}
"""

# Rename a tenant.
UPDATE_TENANT = f"""
UPDATE tenants SET name = $2, updated_at = now() WHERE id = $1
RETURNING {TENANT_COLUMNS}
"""


async def create_tenant(db: Queryable, project_id: Any, name: str) -> Tenant:
    project = parse_id(project_id, "projectId")
    name = clean_name(name)
    async with (
        unique_name("tenant", "project", name),
        parent_exists("project", "projectId", project),
    ):
        return _tenant(await db.fetchrow(INSERT_TENANT, project, name))


async def get_tenant(db: Queryable, tenant_id: Any) -> Tenant:
    return _tenant(await fetch_row(db, "tenant", TENANT_COLUMNS, tenant_id))


async def list_tenants(
    db: Queryable,
    project_ids: Sequence[uuid.UUID],
    tenant_ids: Sequence[uuid.UUID] | None = None,
) -> list[Tenant]:
    """Tenants of the given projects, optionally only those in `tenant_ids`."""
    rows = await db.fetch(
        f"""
        SELECT {TENANT_COLUMNS} FROM tenants
        WHERE project_id = ANY($1) AND ($2::uuid[] IS NULL OR id = ANY($2))
        ORDER BY name
        """,
        list(project_ids),
        None if tenant_ids is None else list(tenant_ids),
    )
    return [_tenant(row) for row in rows]


async def update_tenant(db: Queryable, tenant_id: Any, name: str) -> Tenant:
    name = clean_name(name)
    async with unique_name("tenant", "project", name):
        row = await db.fetchrow(UPDATE_TENANT, parse_id(tenant_id), name)
    if row is None:
        raise NotFoundError(f"tenant {tenant_id} does not exist")
    return _tenant(row)


async def delete_tenant(db: Queryable, tenant_id: Any) -> None:
    await delete_row(db, "tenant", tenant_id)


# --- applications

APPLICATION_COLUMNS = "id, tenant_id, name, backend_url, created_at, updated_at"

# Create an application with its signing secret.
INSERT_APPLICATION = f"""
INSERT INTO applications (tenant_id, name, backend_url, signing_secret)
VALUES ($1, $2, $3, $4)
RETURNING {APPLICATION_COLUMNS}
"""

# Change an application's name and/or backend URL; NULL keeps a value.
UPDATE_APPLICATION = f"""
UPDATE applications
SET name = coalesce($2, name),
    backend_url = coalesce($3, backend_url),
    updated_at = now()
WHERE id = $1
RETURNING {APPLICATION_COLUMNS}
"""

# Replace an application's signing secret.
ROTATE_SECRET = """
UPDATE applications SET signing_secret = $2, updated_at = now()
WHERE id = $1 RETURNING id
"""


def _backend_url(url: Any, allowed_networks: Sequence[str]) -> str:
    if not isinstance(url, str):
        raise InvalidInputError("backendUrl", "backendUrl: expected a string")
    try:
        return validate_backend_url(url, allowed_networks)
    except ValueError as error:
        raise InvalidInputError("backendUrl", f"backendUrl: {error}") from None


async def create_application(
    db: Queryable,
    tenant_id: Any,
    name: str,
    backend_url: str,
    allowed_networks: Sequence[str] = (),
) -> tuple[Application, str]:
    """Create an application; returns it with its new signing secret."""
    tenant = parse_id(tenant_id, "tenantId")
    name = clean_name(name)
    url = _backend_url(backend_url, allowed_networks)
    secret = generate_secret()
    async with (
        unique_name("application", "tenant", name),
        parent_exists("tenant", "tenantId", tenant),
    ):
        row = await db.fetchrow(INSERT_APPLICATION, tenant, name, url, secret)
    return _application(row), secret


async def get_application(db: Queryable, application_id: Any) -> Application:
    return _application(
        await fetch_row(db, "application", APPLICATION_COLUMNS, application_id)
    )


async def list_applications(
    db: Queryable, tenant_ids: Sequence[uuid.UUID]
) -> list[Application]:
    """Applications of the given tenants, by name."""
    rows = await db.fetch(
        f"""
        SELECT {APPLICATION_COLUMNS} FROM applications
        WHERE tenant_id = ANY($1) ORDER BY name
        """,
        list(tenant_ids),
    )
    return [_application(row) for row in rows]


async def get_signing_secret(db: Queryable, application_id: Any) -> str:
    secret = await db.fetchval(
        "SELECT signing_secret FROM applications WHERE id = $1",
        parse_id(application_id),
    )
    if secret is None:
        raise NotFoundError(f"application {application_id} does not exist")
    return secret


async def update_application(
    db: Queryable,
    application_id: Any,
    name: str | None = None,
    backend_url: str | None = None,
    allowed_networks: Sequence[str] = (),
) -> Application:
    name = None if name is None else clean_name(name)
    url = None if backend_url is None else _backend_url(backend_url, allowed_networks)
    async with unique_name("application", "tenant", name or ""):
        row = await db.fetchrow(UPDATE_APPLICATION, parse_id(application_id), name, url)
    if row is None:
        raise NotFoundError(f"application {application_id} does not exist")
    return _application(row)


async def rotate_signing_secret(db: Queryable, application_id: Any) -> str:
    """Give the application a new signing secret and return it."""
    secret = generate_secret()
    updated = await db.fetchval(ROTATE_SECRET, parse_id(application_id), secret)
    if updated is None:
        raise NotFoundError(f"application {application_id} does not exist")
    return secret


async def delete_application(db: Queryable, application_id: Any) -> None:
    await delete_row(db, "application", application_id)
