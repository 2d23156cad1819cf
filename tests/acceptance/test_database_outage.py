"""/health follows the database: 503 while it is down, 200 when it is back."""

from __future__ import annotations

import asyncio
import tempfile
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from manager.db.pool import DatabaseTarget
from tests.support.ports import free_port
from tests.support.process import ManagerProcess, clean_environment
from tests.support.server import database_environment


def start_server(data_dir: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
    return pgserver.get_server(data_dir, cleanup_mode="stop")


@pytest.fixture
def own_postgres() -> Iterator[Path]:
    """A data directory for a PostgreSQL this test alone stops and starts."""
    with tempfile.TemporaryDirectory(prefix="pfy-outage-") as directory:
        yield Path(directory)


@pytest.fixture
async def daemon() -> AsyncIterator[list[ManagerProcess]]:
    holder: list[ManagerProcess] = []
    yield holder
    for process in holder:
        await process.close()


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
    own_postgres: Path, daemon: list[ManagerProcess]
) -> None:
    server = await asyncio.to_thread(start_server, own_postgres)
    info = server.get_postmaster_info()
    await asyncio.to_thread(server.psql, "CREATE DATABASE manager;")
    target = DatabaseTarget(
        host=str(info.socket_dir),
        port=info.port or 5432,
        user="postgres",
        password="",
        database="manager",
    )
    port = free_port()
    process = ManagerProcess(
        clean_environment(
            PFY_RUN_MODE="api", PFY_PORT=str(port), **database_environment(target)
        )
    )
    daemon.append(process)
    await process.start()
    await process.wait_started()

    async with aiohttp.ClientSession() as session:
        status, body = await health_status(session, port)
        assert (status, body["database"]) == (200, "connected")

        await asyncio.to_thread(server.cleanup)
        body = await wait_for_status(session, port, 503, within=10)
        assert body["status"] == "unhealthy"
        assert body["database"] == "disconnected"
        assert body["mode"] == "api"

        server = await asyncio.to_thread(start_server, own_postgres)
        body = await wait_for_status(session, port, 200, within=20)
        assert body["status"] == "healthy"

    assert process.process is not None and process.process.returncode is None
    assert await process.terminate() == 0
    await asyncio.to_thread(server.cleanup)
