"""Who may act on which tenant: tenant members and machine API tokens.

A token is `pfy_` followed by random text; only its SHA-256 is stored, so a
stolen database does not hand out working tokens. `last_used_at` is written
at most once a minute per token, so a busy machine client costs one extra
statement a minute and not one per request.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from manager.errors import InvalidInputError, NotFoundError
from manager.store.common import Queryable, clean_name, parent_exists, parse_id

TOKEN_PREFIX = "pfy_"
ROLES = ("viewer", "editor")
MEMBER_KINDS = ("user", "group")
MAX_SUBJECT_LENGTH = 300

# How stale `last_used_at` may get before a request refreshes it.
LAST_USED_RESOLUTION_SECONDS = 60


@dataclass(frozen=True)
class ApiToken:
    id: uuid.UUID
    tenant_id: uuid.UUID
    name: str
    role: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class TenantMember:
    tenant_id: uuid.UUID
    kind: str
    subject: str
    role: str
    created_at: datetime


TOKEN_COLUMNS = "id, tenant_id, name, role, created_at, last_used_at, revoked_at"
MEMBER_COLUMNS = "tenant_id, kind, subject, role, created_at"

# Store a new token's hash.
INSERT_TOKEN = f"""
INSERT INTO api_tokens (tenant_id, name, role, token_hash) VALUES ($1, $2, $3, $4)
RETURNING {TOKEN_COLUMNS}
"""

# The live (not revoked) token with this hash, if any.
SELECT_LIVE_TOKEN = f"""
SELECT {TOKEN_COLUMNS} FROM api_tokens
WHERE token_hash = $1 AND revoked_at IS NULL
"""

# Note that a token was used, unless that was noted less than $2 seconds ago.
TOUCH_TOKEN = """
UPDATE api_tokens SET last_used_at = now()
WHERE id = $1
  AND (last_used_at IS NULL OR last_used_at < now() - make_interval(secs => $2))
"""

# Revoke a token; revoking twice keeps the first instant.
REVOKE_TOKEN = f"""
UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1
RETURNING {TOKEN_COLUMNS}
"""

# One token by id.
SELECT_TOKEN = f"SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = $1"

# The tokens of some tenants, newest first.
SELECT_TENANT_TOKENS = f"""
SELECT {TOKEN_COLUMNS} FROM api_tokens
WHERE tenant_id = ANY($1) ORDER BY created_at DESC, id
"""

# The tenants a user belongs to, by subject or through one of their groups.
SELECT_MEMBERSHIPS = """
SELECT tenant_id, role FROM tenant_members
WHERE (kind = 'user' AND subject = $1) OR (kind = 'group' AND subject = ANY($2))
"""

# Add a member, or change the role of one already there.
UPSERT_MEMBER = f"""
INSERT INTO tenant_members (tenant_id, kind, subject, role) VALUES ($1, $2, $3, $4)
ON CONFLICT (tenant_id, kind, subject) DO UPDATE SET role = excluded.role
RETURNING {MEMBER_COLUMNS}
"""

# Remove a member.
DELETE_MEMBER = """
DELETE FROM tenant_members WHERE tenant_id = $1 AND kind = $2 AND subject = $3
RETURNING tenant_id
"""

# The members of some tenants, groups first, then by subject.
SELECT_TENANT_MEMBERS = f"""
SELECT {MEMBER_COLUMNS} FROM tenant_members
WHERE tenant_id = ANY($1) ORDER BY kind DESC, subject
"""


def hash_token(token: str) -> bytes:
    """The stored form of a token."""
    return hashlib.sha256(token.encode()).digest()


def new_token() -> str:
    """A fresh token: the prefix and 256 bits of randomness."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def clean_role(value: Any, field: str = "role") -> str:
    text = str(value).lower()
    if text not in ROLES:
        raise InvalidInputError(field, f"{field}: expected one of {', '.join(ROLES)}")
    return text


def clean_kind(value: Any, field: str = "kind") -> str:
    text = str(value).lower()
    if text not in MEMBER_KINDS:
        allowed = ", ".join(MEMBER_KINDS)
        raise InvalidInputError(field, f"{field}: expected one of {allowed}")
    return text


def clean_subject(value: Any, field: str = "subject") -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(field, f"{field}: must not be empty")
    subject = value.strip()
    if len(subject) > MAX_SUBJECT_LENGTH:
        raise InvalidInputError(
            field, f"{field}: at most {MAX_SUBJECT_LENGTH} characters"
        )
    if "\x00" in subject:
        raise InvalidInputError(field, f"{field}: must not contain NUL characters")
    return subject


def _token(row: asyncpg.Record) -> ApiToken:
    return ApiToken(**dict(row))


def _member(row: asyncpg.Record) -> TenantMember:
    return TenantMember(**dict(row))


async def create_api_token(
    db: Queryable, tenant_id: Any, name: str, role: str
) -> tuple[ApiToken, str]:
    """Create a token for one tenant; returns it with the token text."""
    tenant = parse_id(tenant_id, "tenantId")
    name = clean_name(name)
    role = clean_role(role)
    token = new_token()
    async with parent_exists("tenant", "tenantId", tenant):
        row = await db.fetchrow(INSERT_TOKEN, tenant, name, role, hash_token(token))
    return _token(row), token


async def authenticate_token(db: Queryable, token: str) -> ApiToken | None:
    """The live token matching `token`, noting its use; None when unknown."""
    row = await db.fetchrow(SELECT_LIVE_TOKEN, hash_token(token))
    if row is None:
        return None
    api_token = _token(row)
    if _needs_touch(api_token.last_used_at):
        await db.execute(TOUCH_TOKEN, api_token.id, LAST_USED_RESOLUTION_SECONDS)
    return api_token


def _needs_touch(last_used_at: datetime | None) -> bool:
    # A skewed local clock only makes the UPDATE run when it need not: the
    # statement itself compares with the database clock.
    if last_used_at is None:
        return True
    age = datetime.now(UTC) - last_used_at
    return age.total_seconds() >= LAST_USED_RESOLUTION_SECONDS


async def get_api_token(db: Queryable, token_id: Any) -> ApiToken:
    row = await db.fetchrow(SELECT_TOKEN, parse_id(token_id))
    if row is None:
        raise NotFoundError(f"API token {token_id} does not exist")
    return _token(row)


async def revoke_api_token(db: Queryable, token_id: Any) -> ApiToken:
    """Revoke a token; it is refused from the next request on."""
    row = await db.fetchrow(REVOKE_TOKEN, parse_id(token_id))
    if row is None:
        raise NotFoundError(f"API token {token_id} does not exist")
    return _token(row)


async def list_api_tokens(
    db: Queryable, tenant_ids: Sequence[uuid.UUID]
) -> list[ApiToken]:
    rows = await db.fetch(SELECT_TENANT_TOKENS, list(tenant_ids))
    return [_token(row) for row in rows]


async def memberships(
    db: Queryable, subject: str, groups: Sequence[str]
) -> dict[uuid.UUID, str]:
    """Tenant id -> role for a user; the stronger role wins when both match."""
    rows = await db.fetch(SELECT_MEMBERSHIPS, subject, list(groups))
    roles: dict[uuid.UUID, str] = {}
    for row in rows:
        if roles.get(row["tenant_id"]) != "editor":
            roles[row["tenant_id"]] = row["role"]
    return roles


async def add_tenant_member(
    db: Queryable, tenant_id: Any, kind: str, subject: str, role: str
) -> TenantMember:
    """Add a user or group to a tenant, or change its role there."""
    tenant = parse_id(tenant_id, "tenantId")
    arguments = (clean_kind(kind), clean_subject(subject), clean_role(role))
    async with parent_exists("tenant", "tenantId", tenant):
        row = await db.fetchrow(UPSERT_MEMBER, tenant, *arguments)
    return _member(row)


async def remove_tenant_member(
    db: Queryable, tenant_id: Any, kind: str, subject: str
) -> None:
    tenant = parse_id(tenant_id, "tenantId")
    kind = clean_kind(kind)
    subject = clean_subject(subject)
    removed = await db.fetchval(DELETE_MEMBER, tenant, kind, subject)
    if removed is None:
        raise NotFoundError(f"subject: {kind} {subject!r} is not a member")


async def list_tenant_members(
    db: Queryable, tenant_ids: Sequence[uuid.UUID]
) -> list[TenantMember]:
    rows = await db.fetch(SELECT_TENANT_MEMBERS, list(tenant_ids))
    return [_member(row) for row in rows]
