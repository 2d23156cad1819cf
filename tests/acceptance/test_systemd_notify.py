"""sd_notify from the real daemon: READY, watchdog pings, STATUS, STOPPING."""

from __future__ import annotations

import asyncio
import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from manager.db.pool import DatabaseTarget
from tests.support.ports import free_port
from tests.support.process import ManagerProcess, clean_environment
from tests.support.server import database_environment


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    # A short directory: unix socket paths are limited to about 100 bytes.
    with tempfile.TemporaryDirectory(prefix="pfy-n-", dir="/tmp") as directory:
        path = str(Path(directory) / "notify")
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.bind(path)
        receiver.setblocking(False)
        yield receiver, path
        receiver.close()


async def next_message(receiver: socket.socket, within: float = 30.0) -> str:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(within):
        data = await loop.sock_recv(receiver, 4096)
    return data.decode()


async def test_ready_after_health_then_watchdog_then_stopping(
    database: DatabaseTarget, notify_socket: tuple[socket.socket, str]
) -> None:
    receiver, path = notify_socket
    port = free_port()
    environment = clean_environment(
        PFY_RUN_MODE="api",
        PFY_PORT=str(port),
        NOTIFY_SOCKET=path,
        WATCHDOG_USEC="300000",
        **database_environment(database),
    )
    process = ManagerProcess(environment)
    await process.start()
    try:
        assert await next_message(receiver) == "READY=1"
        # Readiness means the port is bound and the database answers.
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/health") as response,
        ):
            assert response.status == 200

        messages = [await next_message(receiver) for _ in range(5)]
        assert "STATUS=mode api" in messages
        assert messages.count("WATCHDOG=1") >= 3

        process.send(signal.SIGTERM)
        while (message := await next_message(receiver)) == "WATCHDOG=1":
            pass
        assert message == "STOPPING=1"
        assert await process.wait() == 0
    finally:
        await process.close()


async def test_executor_status_names_its_role(
    database: DatabaseTarget, notify_socket: tuple[socket.socket, str]
) -> None:
    receiver, path = notify_socket
    environment = clean_environment(
        PFY_RUN_MODE="executor",
        PFY_CRON_METRICS_PORT=str(free_port()),
        NOTIFY_SOCKET=path,
        **database_environment(database),
    )
    process = ManagerProcess(environment)
    await process.start()
    try:
        assert await next_message(receiver) == "READY=1"
        statuses = [await next_message(receiver)]
        while "leader" not in statuses[-1]:
            statuses.append(await next_message(receiver))
        assert statuses[-1] == "STATUS=mode executor, executor leader"
        assert await process.terminate() == 0
    finally:
        await process.close()
