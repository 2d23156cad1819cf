"""The API as an operator runs it: the `manager` command in api mode."""

from __future__ import annotations

import aiohttp

from manager.db.pool import DatabaseTarget
from tests.support.ports import free_port
from tests.support.process import ManagerProcess, clean_environment
from tests.support.server import database_environment

CREATE = """
mutation {
  createProject(input: {name: "shop"}) { id }
}
"""


async def test_api_mode_answers_graphql_and_logs_safely(
    database: DatabaseTarget,
) -> None:
    port = free_port()
    environment = clean_environment(
        PFY_RUN_MODE="api", PFY_PORT=str(port), **database_environment(database)
    )
    process = await ManagerProcess(environment).start()
    try:
        await process.wait_started()
        warning = process.find(
            "authentication disabled: every request acts as a local admin"
        )
        assert warning is not None and warning["level"] == "warning"

        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{url}/query", json={"query": CREATE}) as answer:
                project = (await answer.json())["data"]["createProject"]["id"]
                request_id = answer.headers["X-Request-Id"]
            tenant = await graphql(
                session,
                url,
                "mutation ($p: ID!) { createTenant(input: {projectId: $p, name: "
                '"acme"}) { id } }',
                {"p": project},
            )
            created = await graphql(
                session,
                url,
                "mutation ($t: ID!) { createApplication(input: {tenantId: $t, "
                'name: "app", backendUrl: "http://10.0.0.5/"}) { signingSecret } }',
                {"t": tenant["createTenant"]["id"]},
            )
            async with session.get(f"{url}/metrics") as metrics:
                text = await metrics.text()

        line = await process.wait_for_log("request", request_id=request_id)
        assert line["path"] == "/query" and line["status"] == 200
        assert (
            'pfy_api_requests_total{method="POST",route="/query",status="200"} 3'
            in (text)
        )
        secret = created["createApplication"]["signingSecret"]
        assert not any(secret in raw for raw in process.raw_lines)
    finally:
        assert await process.terminate() == 0


async def graphql(
    session: aiohttp.ClientSession, url: str, query: str, variables: dict[str, str]
) -> dict[str, dict[str, str]]:
    body = {"query": query, "variables": variables}
    async with session.post(f"{url}/query", json=body) as answer:
        result = await answer.json()
    assert "errors" not in result, result
    return result["data"]
