"""What a resolver knows about its request, and the tenancy rules.

Admins see and change everything. Everyone else acts within the tenants
they belong to: a viewer reads, an editor reads and writes. An API token
belongs to exactly one tenant with its own role. An object in a tenant the
caller does not belong to is reported as not existing, with the same
message as an object that really does not exist, so nobody learns what
other tenants hold.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from manager.api.auth import API_TOKEN, Principal
from manager.api.errors import PermissionDeniedError
from manager.api.loaders import Loaders
from manager.config import Settings
from manager.errors import NotFoundError
from manager.store import access
from manager.store.common import Queryable

EDITOR = "editor"
VIEWER = "viewer"


@dataclass
class RequestContext:
    settings: Settings
    db: Queryable
    principal: Principal
    loaders: Loaders
    request_id: str
    _roles: dict[uuid.UUID, str] | None = field(default=None, repr=False)

    @property
    def is_admin(self) -> bool:
        return self.principal.is_admin

    async def roles(self) -> dict[uuid.UUID, str]:
        """Tenant id -> role for a non-admin caller, read once per request."""
        if self._roles is None:
            token = self.principal.api_token
            if token is not None:
                self._roles = {token.tenant_id: token.role}
            else:
                self._roles = await access.memberships(
                    self.db, self.principal.subject, self.principal.groups
                )
        return self._roles

    async def visible_tenant_ids(self) -> list[uuid.UUID] | None:
        """The tenants the caller may read; None means all of them."""
        if self.is_admin:
            return None
        return list(await self.roles())

    async def can_read(self, tenant_id: uuid.UUID) -> bool:
        return self.is_admin or tenant_id in await self.roles()

    async def require_tenant(
        self, tenant_id: uuid.UUID, missing: str, write: bool = False
    ) -> None:
        """Allow reading (or writing) in a tenant, else NOT_FOUND or FORBIDDEN.

        `missing` is the message for an object the caller may not see: the
        same one the store gives for an id that does not exist.
        """
        if self.is_admin:
            return
        role = (await self.roles()).get(tenant_id)
        if role is None:
            raise NotFoundError(missing)
        if write and role != EDITOR:
            raise PermissionDeniedError("your role in this tenant is viewer")

    def require_admin(self, action: str) -> None:
        if not self.is_admin:
            raise PermissionDeniedError(f"only administrators may {action}")

    async def require_people_manager(self, tenant_id: uuid.UUID, missing: str) -> None:
        """Members and tokens: editors (people, not tokens) or admins."""
        await self.require_tenant(tenant_id, missing, write=True)
        if self.principal.kind == API_TOKEN:
            # A leaked token must not be able to mint its own successors.
            raise PermissionDeniedError("API tokens may not manage tokens or members")


def get_context(info: Any) -> RequestContext:
    """The request context of a resolver's `info`."""
    return info.context  # type: ignore[no-any-return]
