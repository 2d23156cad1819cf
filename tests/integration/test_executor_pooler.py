"""Behind PgBouncer in transaction mode a session lock means nothing: the
executor must notice and refuse to lead, and leave the lock free."""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest

from manager.db.pool import DatabaseTarget
from tests.support.executor import (
    ExecutorHarness,
    eventually,
    executor_settings,
    running_executor,
)
from tests.support.ports import free_port


def pooler_user() -> list[str]:
    """PgBouncer will not run as root; run it as the embedded server's user."""
    if os.geteuid() != 0:
        return []
    for name in ("pgserver", "postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return ["-u", name]
    return ["-u", "nobody"]


@pytest.fixture
async def transaction_pooler(
    database: DatabaseTarget,
) -> AsyncIterator[DatabaseTarget]:
    """PgBouncer in transaction mode in front of the test database, with one
    server connection, so every client shares it."""
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="pfy-pgbouncer-"))
    config = write_config(directory, database, port)
    process = await asyncio.create_subprocess_exec(
        "pgbouncer",
        *pooler_user(),
        str(config),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await eventually(lambda: listening(port), within=10)
        yield replace(database, host="127.0.0.1", port=port)
    finally:
        process.terminate()
        await process.wait()
        shutil.rmtree(directory, ignore_errors=True)


def write_config(directory: Path, database: DatabaseTarget, port: int) -> Path:
    """pgbouncer.ini and its users file, readable by the pooler's user."""
    directory.chmod(0o755)
    users = directory / "users.txt"
    users.write_text(f'"{database.user}" "{database.password}"\n')
    config = directory / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"* = host={database.host} port={database.port} user={database.user}"
        + (f" password={database.password}" if database.password else "")
        + "\n[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {users}\npool_mode = transaction\n"
        "default_pool_size = 1\nmin_pool_size = 0\n"
        "ignore_startup_parameters = extra_float_digits\n"
    )
    for path in (users, config):
        path.chmod(0o644)
    return config


async def listening(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


async def test_transaction_pooler_is_refused_and_the_lock_left_free(
    database: DatabaseTarget,
    pool: asyncpg.Pool,
    transaction_pooler: DatabaseTarget,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = executor_settings()
    harness = ExecutorHarness(settings, transaction_pooler, pool)

    def refusals() -> list[logging.LogRecord]:
        return [
            record
            for record in caplog.records
            if record.getMessage() == "executor refuses to lead"
        ]

    async def refused() -> list[logging.LogRecord]:
        return refusals()

    with caplog.at_level(logging.ERROR, logger="manager.executor.service"):
        await harness.executor.start()
        try:
            (record,) = await eventually(refused, within=10)
        finally:
            await harness.executor.stop()

    assert record.levelname == "ERROR"
    assert "transaction-pooling proxy" in record.__dict__["error"]
    assert harness.statuses == []
    assert not harness.executor.is_leader

    # Nothing of the attempt stays behind: an executor connected directly
    # takes the lock at once.
    async with running_executor(settings, database, pool) as direct:
        assert direct.executor.is_leader
