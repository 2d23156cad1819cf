"""The database health probe: concurrent checks share one probe."""

from __future__ import annotations

import asyncio

from manager.db.database import Database
from manager.db.pool import DatabaseTarget, create_pool


async def test_concurrent_checks_share_one_select(database: DatabaseTarget) -> None:
    pool = await create_pool(database, min_size=1, max_size=1)
    statements: list[str] = []
    try:
        async with pool.acquire() as connection:
            connection.add_query_logger(lambda record: statements.append(record.query))
            # Hold the only connection so every check is waiting at once.
            checks = [
                asyncio.ensure_future(Database(database, pool).is_reachable(5))
                for _ in range(1)
            ]
            shared = Database(database, pool)
            checks += [asyncio.ensure_future(shared.is_reachable(5)) for _ in range(20)]
            await asyncio.sleep(0)
        results = await asyncio.gather(*checks)
    finally:
        await pool.close()
    assert results == [True] * 21
    # One probe for the lone Database, one for the twenty that shared theirs.
    assert statements.count("SELECT 1") == 2


async def test_a_probe_that_times_out_reports_disconnected(
    database: DatabaseTarget,
) -> None:
    pool = await create_pool(database, min_size=1, max_size=1)
    try:
        async with pool.acquire():
            assert await Database(database, pool).is_reachable(0.2) is False
        assert await Database(database, pool).is_reachable(1) is True
    finally:
        await pool.close()
