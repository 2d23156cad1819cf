"""The whole path as a user walks it: the `manager` command in both mode,
GraphQL to create an application and an every-second trigger, and the
example receiver from examples/backend verifying each signed callback."""

from __future__ import annotations

import asyncio
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from manager.db.pool import DatabaseTarget
from tests.support.ports import free_port
from tests.support.process import ManagerProcess, clean_environment
from tests.support.server import database_environment

RECEIVER = Path(__file__).resolve().parents[2] / "examples" / "backend" / "receiver.py"


async def graphql(
    session: aiohttp.ClientSession, url: str, query: str, **variables: Any
) -> dict[str, Any]:
    async with session.post(
        f"{url}/query", json={"query": query, "variables": variables}
    ) as response:
        answer = await response.json()
    assert "errors" not in answer, answer
    return answer["data"]


async def read_fired(stream: asyncio.StreamReader, fired: asyncio.Queue[str]) -> None:
    """Collect the receiver's "trigger fired" log lines as they come."""
    async for raw in stream:
        line = raw.decode()
        if "trigger fired" in line:
            fired.put_nowait(line)


async def test_every_second_trigger_reaches_the_example_receiver(
    database: DatabaseTarget,
) -> None:
    api_port, backend_port = free_port(), free_port()
    url = f"http://127.0.0.1:{api_port}"
    manager = ManagerProcess(
        clean_environment(
            PFY_RUN_MODE="both",
            PFY_PORT=str(api_port),
            PFY_CRON_METRICS_PORT=str(free_port()),
            **database_environment(database),
        )
    )
    await manager.start()
    receiver: asyncio.subprocess.Process | None = None
    try:
        await manager.wait_started()
        async with aiohttp.ClientSession() as session:
            project = await graphql(
                session, url, 'mutation { createProject(input: {name: "shop"}) { id } }'
            )
            tenant = await graphql(
                session,
                url,
                "mutation ($p: ID!) { createTenant(input: "
                '{projectId: $p, name: "acme"}) { id } }',
                p=project["createProject"]["id"],
            )
            application = await graphql(
                session,
                url,
                "mutation ($t: ID!, $u: String!) { createApplication(input: "
                '{tenantId: $t, name: "billing", backendUrl: $u}) '
                "{ application { id } signingSecret } }",
                t=tenant["createTenant"]["id"],
                u=f"http://127.0.0.1:{backend_port}",
            )
            secret = application["createApplication"]["signingSecret"]

            # The receiver as an application team runs it from its README.
            receiver = await asyncio.create_subprocess_exec(
                sys.executable,
                str(RECEIVER),
                env=clean_environment(WEBHOOK_SECRET=secret, PORT=str(backend_port)),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            assert receiver.stderr is not None
            fired: asyncio.Queue[str] = asyncio.Queue()
            reader = asyncio.create_task(read_fired(receiver.stderr, fired))
            await wait_for_port(backend_port)

            created = await graphql(
                session,
                url,
                "mutation ($a: ID!, $p: JSON) { createTrigger(input: "
                '{applicationId: $a, name: "tick", schedule: "*/1 * * * * *", '
                "payload: $p}) { id createdAt } }",
                a=application["createApplication"]["application"]["id"],
                p={"n": 1},
            )
            trigger = created["createTrigger"]
            lines = [await asyncio.wait_for(fired.get(), 10) for _ in range(3)]
            assert all("tick" in line for line in lines)

            # The receiver logs before it answers, and the executor records
            # outcomes in batches: ask until the third success is recorded.
            async with asyncio.timeout(10):
                while True:
                    runs = await graphql(
                        session,
                        url,
                        "query ($t: ID!) { triggerRuns(triggerId: $t, "
                        "status: SUCCEEDED) { totalCount nodes "
                        "{ scheduledAt startedAt httpStatus attempt } } }",
                        t=trigger["id"],
                    )
                    if runs["triggerRuns"]["totalCount"] >= 3:
                        break
                    await asyncio.sleep(0.1)
            reader.cancel()

        page = runs["triggerRuns"]
        assert page["totalCount"] >= 3
        assert all(node["httpStatus"] == 200 for node in page["nodes"])
        assert all(node["attempt"] == 1 for node in page["nodes"])
        # The first slot after creation is dispatched at once: the API's
        # NOTIFY wakes the executor instead of its next tick.
        first = min(page["nodes"], key=lambda node: node["scheduledAt"])
        started = datetime.fromisoformat(first["startedAt"])
        assert (
            started - datetime.fromisoformat(trigger["createdAt"])
        ).total_seconds() < 2
        assert await manager.terminate() == 0
    finally:
        if receiver is not None and receiver.returncode is None:
            receiver.terminate()
            await receiver.wait()
        await manager.close()


async def wait_for_port(port: int) -> None:
    """Until the receiver accepts connections (it starts in a fraction of a second)."""
    async with asyncio.timeout(20):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return
