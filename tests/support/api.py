"""The API served by a real aiohttp server on 127.0.0.1, and a client for it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from manager.api.app import build_app
from manager.config import Settings, load_settings
from manager.db.database import Database
from manager.db.pool import DatabaseTarget, _setup_connection


def api_settings(**environment: str) -> Settings:
    """Settings as an operator would give them, for a test environment."""
    values = {"PFY_ENV": "test", "PFY_RUN_MODE": "api"}
    values.update(environment)
    return load_settings(values)


async def open_pool(
    target: DatabaseTarget,
    on_query: Callable[[asyncpg.LoggedQuery], None] | None = None,
    min_size: int = 1,
) -> asyncpg.Pool:
    """A pool like the daemon's; `on_query` sees every statement it runs."""

    async def setup(connection: asyncpg.Connection) -> None:
        await _setup_connection(connection)
        if on_query is not None:
            connection.add_query_logger(on_query)

    pool = await asyncpg.create_pool(
        **target.connect_arguments(), min_size=min_size, max_size=5, init=setup
    )
    assert pool is not None
    return pool


class ApiClient:
    """GraphQL over HTTP, the way an application team calls the API."""

    def __init__(self, client: TestClient[web.Request, web.Application]) -> None:
        self.http = client
        self.token: str | None = None

    def headers(self, token: str | None) -> dict[str, str]:
        token = token if token is not None else self.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def post(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        token: str | None = None,
    ) -> dict[str, Any]:
        """The whole answer: data and errors."""
        response = await self.http.post(
            "/query",
            json={"query": query, "variables": variables or {}},
            headers=self.headers(token),
        )
        assert response.content_type == "application/json", await response.text()
        return await response.json()

    async def data(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        token: str | None = None,
    ) -> dict[str, Any]:
        """The data of an answer that must have no errors."""
        answer = await self.post(query, variables, token)
        assert "errors" not in answer, answer["errors"]
        return answer["data"]

    async def error(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        token: str | None = None,
    ) -> dict[str, Any]:
        """The single error of an answer that must fail."""
        answer = await self.post(query, variables, token)
        assert len(answer.get("errors", [])) == 1, answer
        return answer["errors"][0]


@asynccontextmanager
async def serve_api(
    target: DatabaseTarget,
    settings: Settings | None = None,
    on_query: Callable[[asyncpg.LoggedQuery], None] | None = None,
) -> AsyncIterator[ApiClient]:
    """build_app on a real server on 127.0.0.1, with its own pool."""
    pool = await open_pool(target, on_query)
    app = build_app(settings or api_settings(), Database(target, pool))
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield ApiClient(client)
    finally:
        await client.close()
        await pool.close()


# Mutations most tests need to build a tree of objects.

CREATE_PROJECT = """
mutation ($name: String!) { createProject(input: {name: $name}) { id name } }
"""

CREATE_TENANT = """
mutation ($projectId: ID!, $name: String!) {
  createTenant(input: {projectId: $projectId, name: $name}) { id name }
}
"""

CREATE_APPLICATION = """
mutation ($tenantId: ID!, $name: String!, $backendUrl: String!) {
  createApplication(
    input: {tenantId: $tenantId, name: $name, backendUrl: $backendUrl}
  ) { application { id name backendUrl } signingSecret }
}
"""

CREATE_TRIGGER = """
mutation ($input: CreateTriggerInput!) {
  createTrigger(input: $input) { id name schedule enabled nextRunAt }
}
"""


async def create_tree(
    api: ApiClient, prefix: str = "", token: str | None = None
) -> dict[str, str]:
    """A project, a tenant, an application and a trigger; their ids."""
    project = await api.data(CREATE_PROJECT, {"name": f"{prefix}project"}, token)
    project_id = project["createProject"]["id"]
    tenant = await api.data(
        CREATE_TENANT, {"projectId": project_id, "name": f"{prefix}tenant"}, token
    )
    tenant_id = tenant["createTenant"]["id"]
    application = await api.data(
        CREATE_APPLICATION,
        {
            "tenantId": tenant_id,
            "name": f"{prefix}app",
            "backendUrl": "http://127.0.0.1:9/hooks",
        },
        token,
    )
    application_id = application["createApplication"]["application"]["id"]
    trigger = await api.data(
        CREATE_TRIGGER,
        {
            "input": {
                "applicationId": application_id,
                "name": f"{prefix}nightly",
                "schedule": "0 3 * * *",
            }
        },
        token,
    )
    return {
        "project": project_id,
        "tenant": tenant_id,
        "application": application_id,
        "trigger": trigger["createTrigger"]["id"],
        "secret": application["createApplication"]["signingSecret"],
    }
