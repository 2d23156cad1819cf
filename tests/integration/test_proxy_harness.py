"""The fault-injection proxy itself: forwarding, half-open blackhole, reset."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import asyncpg
import pytest

from manager.db.pool import DatabaseTarget, connect
from tests.support.proxy import BLACKHOLE, FORWARD, RESET, ControlledProxy


@pytest.fixture
async def proxy(database: DatabaseTarget) -> AsyncIterator[ControlledProxy]:
    proxy = await ControlledProxy(database.host, database.port).start()
    yield proxy
    await proxy.stop()


def through(proxy: ControlledProxy, database: DatabaseTarget) -> DatabaseTarget:
    return replace(database, host="127.0.0.1", port=proxy.port, connect_timeout=2)


async def test_forward_then_blackhole_then_forward(
    proxy: ControlledProxy, database: DatabaseTarget
) -> None:
    connection = await connect(through(proxy, database))
    try:
        assert await connection.fetchval("SELECT 41 + 1") == 42

        proxy.set_mode(BLACKHOLE)
        with pytest.raises(TimeoutError):
            await connection.fetchval("SELECT 1", timeout=0.5)
    finally:
        connection.terminate()

    proxy.set_mode(FORWARD)
    connection = await connect(through(proxy, database))
    assert await connection.fetchval("SELECT 2") == 2
    await connection.close()


async def test_reset_breaks_open_connections_and_refuses_new(
    proxy: ControlledProxy, database: DatabaseTarget
) -> None:
    connection = await connect(through(proxy, database))
    proxy.set_mode(RESET)
    with pytest.raises(
        (asyncpg.PostgresConnectionError, OSError, asyncpg.InterfaceError)
    ):
        await connection.fetchval("SELECT 1", timeout=2)
    connection.terminate()

    with pytest.raises(Exception) as caught:
        await asyncio.wait_for(connect(through(proxy, database)), 5)
    assert "cannot connect" in str(caught.value)
