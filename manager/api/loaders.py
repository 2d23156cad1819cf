"""Per-request batch loading: many `load(key)` calls, one statement.

graphql-core starts the resolvers of every item of a list in the same turn
of the event loop. A `Loader` collects the keys they ask for during that
turn and fetches them all in one call once the turn ends, so the number of
statements follows the depth of a query rather than the number of objects
it touches. Results are cached for the rest of the request.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from datetime import datetime
from functools import cached_property
from typing import Any, Generic, TypeVar

from manager.store import access, batches, catalog, triggers
from manager.store.catalog import Application, Project, Tenant
from manager.store.common import Queryable
from manager.store.triggers import Trigger, TriggerRun

Key = TypeVar("Key", bound=Hashable)
Value = TypeVar("Value")

Fetch = Callable[[list[Key]], Awaitable[Mapping[Key, Value]]]


class Loader(Generic[Key, Value]):
    """Batches and caches lookups by key; a missing key loads as `default`."""

    def __init__(self, fetch: Fetch[Key, Value], default: Any = None) -> None:
        self.fetch = fetch
        self.default = default
        self.cache: dict[Key, asyncio.Future[Value]] = {}
        self.pending: list[Key] = []

    def load(self, key: Key) -> asyncio.Future[Value]:
        future = self.cache.get(key)
        if future is not None:
            return future
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.cache[key] = future
        if not self.pending:
            # Dispatch after every resolver started in this turn has asked.
            loop.call_soon(self._dispatch)
        self.pending.append(key)
        return future

    def prime(self, key: Key, value: Value) -> None:
        """Remember a value the caller already has, such as a mutation result."""
        if key not in self.cache:
            future = asyncio.get_running_loop().create_future()
            future.set_result(value)
            self.cache[key] = future

    def clear(self) -> None:
        self.cache = {key: self.cache[key] for key in self.pending}

    def _dispatch(self) -> None:
        keys, self.pending = self.pending, []
        futures = [self.cache[key] for key in keys]
        task = asyncio.ensure_future(self.fetch(keys))
        task.add_done_callback(lambda done: self._settle(done, keys, futures))

    def _settle(
        self,
        done: asyncio.Future[Mapping[Key, Value]],
        keys: list[Key],
        futures: list[asyncio.Future[Value]],
    ) -> None:
        if done.cancelled():
            for future in futures:
                future.cancel()
            return
        error = done.exception()
        for key, future in zip(keys, futures, strict=True):
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(done.result().get(key, self.default))


def _grouped(
    items: Sequence[Any], attribute: str, keys: Sequence[Key]
) -> dict[Key, list[Any]]:
    groups: dict[Key, list[Any]] = {key: [] for key in keys}
    for item in items:
        groups[getattr(item, attribute)].append(item)
    return groups


RunPageKey = tuple[uuid.UUID, str | None, int, tuple[datetime, uuid.UUID] | None]
RunCountKey = tuple[uuid.UUID, str | None]


class Loaders:
    """The loaders of one request."""

    def __init__(self, db: Queryable) -> None:
        self.db = db

    # Each loader is made on first use: most requests need one or two.

    @cached_property
    def project(self) -> Loader[uuid.UUID, Project | None]:
        return Loader(self._projects)

    @cached_property
    def tenant(self) -> Loader[uuid.UUID, Tenant | None]:
        return Loader(self._tenants)

    @cached_property
    def application(self) -> Loader[uuid.UUID, Application | None]:
        return Loader(self._applications)

    @cached_property
    def trigger(self) -> Loader[uuid.UUID, Trigger | None]:
        return Loader(self._triggers)

    @cached_property
    def tenants_of_project(self) -> Loader[uuid.UUID, list[Tenant]]:
        return Loader(self._tenants_of_projects, default=[])

    @cached_property
    def applications_of_tenant(self) -> Loader[uuid.UUID, list[Application]]:
        return Loader(self._applications_of_tenants, default=[])

    @cached_property
    def triggers_of_application(self) -> Loader[uuid.UUID, list[Trigger]]:
        return Loader(self._triggers_of_applications, default=[])

    @cached_property
    def members_of_tenant(self) -> Loader[uuid.UUID, list[access.TenantMember]]:
        return Loader(self._members_of_tenants, default=[])

    @cached_property
    def tokens_of_tenant(self) -> Loader[uuid.UUID, list[access.ApiToken]]:
        return Loader(self._tokens_of_tenants, default=[])

    @cached_property
    def run_page(self) -> Loader[RunPageKey, tuple[list[TriggerRun], bool]]:
        return Loader(self._run_pages)

    @cached_property
    def run_count(self) -> Loader[RunCountKey, int]:
        return Loader(self._run_counts)

    def all(self) -> list[Loader[Any, Any]]:
        """The loaders made so far."""
        return [value for value in vars(self).values() if isinstance(value, Loader)]

    def clear(self) -> None:
        """Forget what was read: a mutation may have changed it."""
        for loader in self.all():
            loader.clear()

    @staticmethod
    def _prime(loader: Loader[uuid.UUID, Any], items: Sequence[Any]) -> None:
        # Objects read as someone's children need no second read by id.
        for item in items:
            loader.prime(item.id, item)

    async def _projects(self, ids: list[uuid.UUID]) -> Mapping[uuid.UUID, Project]:
        return await batches.projects_by_id(self.db, ids)

    async def _tenants(self, ids: list[uuid.UUID]) -> Mapping[uuid.UUID, Tenant]:
        return await batches.tenants_by_id(self.db, ids)

    async def _applications(
        self, ids: list[uuid.UUID]
    ) -> Mapping[uuid.UUID, Application]:
        return await batches.applications_by_id(self.db, ids)

    async def _triggers(self, ids: list[uuid.UUID]) -> Mapping[uuid.UUID, Trigger]:
        return await batches.triggers_by_id(self.db, ids)

    async def _tenants_of_projects(
        self, ids: list[uuid.UUID]
    ) -> Mapping[uuid.UUID, list[Tenant]]:
        tenants = await catalog.list_tenants(self.db, ids)
        self._prime(self.tenant, tenants)
        return _grouped(tenants, "project_id", ids)

    async def _applications_of_tenants(
        self, ids: list[uuid.UUID]
    ) -> Mapping[uuid.UUID, list[Application]]:
        applications = await catalog.list_applications(self.db, ids)
        self._prime(self.application, applications)
        return _grouped(applications, "tenant_id", ids)

    async def _triggers_of_applications(
        self, ids: list[uuid.UUID]
    ) -> Mapping[uuid.UUID, list[Trigger]]:
        found = await triggers.list_triggers(self.db, ids)
        self._prime(self.trigger, found)
        return _grouped(found, "application_id", ids)

    async def _members_of_tenants(
        self, ids: list[uuid.UUID]
    ) -> Mapping[uuid.UUID, list[access.TenantMember]]:
        members = await access.list_tenant_members(self.db, ids)
        return _grouped(members, "tenant_id", ids)

    async def _tokens_of_tenants(
        self, ids: list[uuid.UUID]
    ) -> Mapping[uuid.UUID, list[access.ApiToken]]:
        tokens = await access.list_api_tokens(self.db, ids)
        return _grouped(tokens, "tenant_id", ids)

    async def _run_pages(
        self, keys: list[RunPageKey]
    ) -> Mapping[RunPageKey, tuple[list[TriggerRun], bool]]:
        # Triggers asked for with the same filter and page share a statement.
        by_arguments: dict[tuple[Any, ...], list[uuid.UUID]] = {}
        for trigger_id, status, first, after in keys:
            by_arguments.setdefault((status, first, after), []).append(trigger_id)
        pages: dict[RunPageKey, tuple[list[TriggerRun], bool]] = {}
        for (status, first, after), trigger_ids in by_arguments.items():
            found = await batches.run_pages(self.db, trigger_ids, status, first, after)
            for trigger_id, page in found.items():
                pages[(trigger_id, status, first, after)] = page
        return pages

    async def _run_counts(self, keys: list[RunCountKey]) -> Mapping[RunCountKey, int]:
        by_status: dict[str | None, list[uuid.UUID]] = {}
        for trigger_id, status in keys:
            by_status.setdefault(status, []).append(trigger_id)
        counts: dict[RunCountKey, int] = {}
        for status, trigger_ids in by_status.items():
            found = await batches.run_counts(self.db, trigger_ids, status)
            for trigger_id, total in found.items():
                counts[(trigger_id, status)] = total
        return counts
