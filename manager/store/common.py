"""Pieces every store module uses: the connection type, ids, error mapping."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

import asyncpg

from manager.errors import ConflictError, InvalidInputError, NotFoundError

Queryable: TypeAlias = asyncpg.Pool | asyncpg.Connection

MAX_NAME_LENGTH = 200


def parse_id(value: Any, field: str = "id") -> uuid.UUID:
    """A UUID from a string (or a UUID), else InvalidInputError for `field`."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InvalidInputError(field, f"{field}: not a valid id") from None


def clean_name(value: Any, field: str = "name") -> str:
    """A trimmed, non-empty name of at most MAX_NAME_LENGTH characters."""
    if not isinstance(value, str):
        raise InvalidInputError(field, f"{field}: expected a string")
    name = value.strip()
    if not name:
        raise InvalidInputError(field, f"{field}: must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInputError(field, f"{field}: at most {MAX_NAME_LENGTH} characters")
    if "\x00" in name:
        raise InvalidInputError(field, f"{field}: must not contain NUL characters")
    return name


# The tables fetch_row and delete_row work on, by the kind named in errors.
_TABLES = {
    "project": "projects",
    "tenant": "tenants",
    "application": "applications",
    "trigger": "triggers",
    "run": "trigger_runs",
}


async def fetch_row(
    db: Queryable, kind: str, columns: str, object_id: Any
) -> asyncpg.Record:
    """One row of `kind` by id; NotFoundError when there is no such row."""
    row = await db.fetchrow(
        f"SELECT {columns} FROM {_TABLES[kind]} WHERE id = $1", parse_id(object_id)
    )
    if row is None:
        raise NotFoundError(f"{kind} {object_id} does not exist")
    return row


async def delete_row(db: Queryable, kind: str, object_id: Any) -> uuid.UUID:
    """Delete one project, tenant, application or trigger (and, by cascade,
    everything below it); NotFoundError when there is no such row."""
    table = _TABLES[kind]
    identifier = parse_id(object_id)
    deleted = await db.fetchval(
        f"DELETE FROM {table} WHERE id = $1 RETURNING id", identifier
    )
    if deleted is None:
        raise NotFoundError(f"{kind} {object_id} does not exist")
    return identifier


@asynccontextmanager
async def transaction(source: Queryable) -> AsyncIterator[asyncpg.Connection]:
    """A transaction on `source`, taking a pool connection when given a pool."""
    if isinstance(source, asyncpg.Pool):
        async with source.acquire() as connection, connection.transaction():
            yield connection
    else:
        async with source.transaction():
            yield source


@asynccontextmanager
async def unique_name(kind: str, parent: str, name: str) -> AsyncIterator[None]:
    """Turn a duplicate-name violation into a ConflictError on `name`."""
    try:
        yield
    except asyncpg.UniqueViolationError:
        raise ConflictError(
            "name", f"name: a {kind} named {name!r} already exists in this {parent}"
        ) from None


@asynccontextmanager
async def parent_exists(kind: str, field: str, value: Any) -> AsyncIterator[None]:
    """Turn a foreign-key violation into a NotFoundError naming the parent."""
    try:
        yield
    except asyncpg.ForeignKeyViolationError:
        raise NotFoundError(f"{field}: {kind} {value} does not exist") from None
