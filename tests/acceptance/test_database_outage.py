"""/health follows the database: 503 while it is down, 200 when it is back."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests.support.ports import free_port
from tests.support.process import ManagerProcess, clean_environment
from tests.support.server import OwnPostgres, database_environment


async def health_status(session: aiohttp.ClientSession, port: int) -> tuple[int, Any]:
    async with session.get(f"http://127.0.0.1:{port}/health") as response:
        return response.status, await response.json()


async def wait_for_status(
    session: aiohttp.ClientSession, port: int, wanted: int, within: float
) -> dict[str, Any]:
    """Ask /health until it answers `wanted`; each answer is a real request."""
    async with asyncio.timeout(within):
        while True:
            status, body = await health_status(session, port)
            if status == wanted:
                return body
            await asyncio.sleep(0.2)


async def test_health_goes_503_and_back_without_restart(
    own_postgres: OwnPostgres, processes: list[ManagerProcess]
) -> None:
    target = await own_postgres.create_database("manager")
    port = free_port()
    process = ManagerProcess(
        clean_environment(
            PFY_RUN_MODE="api", PFY_PORT=str(port), **database_environment(target)
        )
    )
    processes.append(process)
    await process.start()
    await process.wait_started()

    async with aiohttp.ClientSession() as session:
        status, body = await health_status(session, port)
        assert (status, body["database"]) == (200, "connected")

        await own_postgres.stop()
        body = await wait_for_status(session, port, 503, within=10)
        assert body["status"] == "unhealthy"
        assert body["database"] == "disconnected"
        assert body["mode"] == "api"

        await own_postgres.start()
        body = await wait_for_status(session, port, 200, within=20)
        assert body["status"] == "healthy"

    assert process.process is not None and process.process.returncode is None
    assert await process.terminate() == 0
