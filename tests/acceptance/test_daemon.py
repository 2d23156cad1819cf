"""The `manager` command as an operator runs it: modes, health, signals, exits."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from manager.db.pool import DatabaseTarget
from tests.support.ports import free_port
from tests.support.process import MANAGER_COMMAND, ManagerProcess, clean_environment
from tests.support.server import database_environment


async def get_health(port: int) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/health") as response,
    ):
        return response.status, await response.json()


def assert_every_line_is_json(process: ManagerProcess) -> None:
    assert process.raw_lines, "the daemon logged nothing"
    for text in process.raw_lines:
        line = orjson.loads(text)
        assert {"level", "msg", "timestamp"} <= set(line)


async def run_manager(
    processes: list[ManagerProcess], environment: dict[str, str], *arguments: str
) -> ManagerProcess:
    process = ManagerProcess(environment, *arguments)
    processes.append(process)
    return await process.start()


@pytest.mark.parametrize("mode", ["api", "executor", "both"])
async def test_each_mode_serves_health_and_stops_on_sigterm(
    mode: str, database: DatabaseTarget, processes: list[ManagerProcess]
) -> None:
    api_port, metrics_port = free_port(), free_port()
    environment = clean_environment(
        PFY_RUN_MODE=mode,
        PFY_PORT=str(api_port),
        PFY_CRON_METRICS_PORT=str(metrics_port),
        **database_environment(database),
    )
    process = await run_manager(processes, environment)
    started = await process.wait_started()

    port = metrics_port if mode == "executor" else api_port
    status, body = await get_health(port)
    assert status == 200
    assert body == {
        "status": "healthy",
        "database": "connected",
        "version": "1.0.0",
        "mode": mode,
    }
    assert started["mode"] == mode
    assert started["version"] == "1.0.0"
    assert database.database in str(started["database"])

    assert await process.terminate(timeout=10) == 0
    assert process.find("manager stopped") is not None
    assert process.find("request", path="/health", status=200) is not None
    assert_every_line_is_json(process)


async def test_unprefixed_names_and_prefixed_precedence(
    database: DatabaseTarget, processes: list[ManagerProcess]
) -> None:
    api_port = free_port()
    environment = clean_environment(
        MODE="api", PORT=str(api_port), **database_environment(database)
    )
    process = await run_manager(processes, environment)
    await process.wait_started()
    status, body = await get_health(api_port)
    assert (status, body["mode"]) == (200, "api")
    assert await process.terminate() == 0

    metrics_port = free_port()
    environment = clean_environment(
        MODE="api",
        PFY_RUN_MODE="executor",
        PFY_CRON_METRICS_PORT=str(metrics_port),
        **database_environment(database),
    )
    process = await run_manager(processes, environment)
    started = await process.wait_started()
    assert started["mode"] == "executor"
    status, body = await get_health(metrics_port)
    assert (status, body["mode"]) == (200, "executor")
    assert await process.terminate() == 0


async def test_invalid_mode_exits_2_with_one_line(
    processes: list[ManagerProcess],
) -> None:
    process = await run_manager(processes, clean_environment(PFY_RUN_MODE="bogus"))
    assert await process.wait() == 2
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("PFY_RUN_MODE: invalid value 'bogus'")
    assert "api, executor, both" in lines[0]
    assert process.raw_lines == []


async def test_version_and_module_entry_point() -> None:
    for command in (
        [MANAGER_COMMAND, "--version"],
        [sys.executable, "-m", "manager", "--version"],
    ):
        child = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, env=clean_environment()
        )
        output, _ = await child.communicate()
        assert child.returncode == 0
        assert output.decode().strip() == "1.0.0"


async def test_check_config_masks_secrets_and_rejects_bad_values(
    processes: list[ManagerProcess],
) -> None:
    environment = clean_environment(
        DB_PASSWORD="pw-visible-if-leaked",
        AUTH_CLIENT_SECRET="client-secret-leak",
        PFY_POCKET_ID_API_KEY="api-key-leak",
        PORT="8181",
    )
    process = await run_manager(processes, environment, "check-config")
    assert await process.wait() == 0
    text = "\n".join(process.raw_lines)
    settings = orjson.loads(text)
    assert settings["port"] == 8181
    assert settings["db"]["password"] == "********"
    for secret in ("pw-visible-if-leaked", "client-secret-leak", "api-key-leak"):
        assert secret not in text

    environment = clean_environment(PORT="eighty", PFY_CRON_BATCH_SIZE="0")
    process = await run_manager(processes, environment, "check-config")
    assert await process.wait() == 2
    problems = process.stderr.strip().splitlines()
    assert len(problems) == 2
    assert problems[0].startswith("PORT: invalid value 'eighty'")
    assert problems[1].startswith("PFY_CRON_BATCH_SIZE: invalid value '0'")


async def test_migrate_command_applies_and_exits(
    database: DatabaseTarget, processes: list[ManagerProcess]
) -> None:
    environment = clean_environment(**database_environment(database))
    process = await run_manager(processes, environment, "migrate")
    assert await process.wait() == 0
    line = process.find("migrations up to date")
    assert line is not None
    # The test database was copied from a migrated template: nothing to do.
    assert line["applied"] == []


async def test_missing_embedded_extra_is_explained(
    tmp_path: Path, processes: list[ManagerProcess]
) -> None:
    # A pgserver module that cannot be imported, as on an install without
    # the `embedded` extra.
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "pgserver.py").write_text("raise ImportError('not installed')\n")
    environment = clean_environment(
        PYTHONPATH=str(shadow), HOME=str(tmp_path), PFY_PORT=str(free_port())
    )
    process = await run_manager(processes, environment)
    assert await process.wait() == 2
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "productify-manager[embedded]" in lines[0]
    assert "PFY_DB_HOST" in lines[0]


async def test_no_configuration_at_all_uses_embedded_database(
    tmp_path: Path, processes: list[ManagerProcess]
) -> None:
    # Nothing but a home directory: defaults everywhere, ports 8080 and 9090.
    environment = clean_environment(HOME=str(tmp_path))
    environment.pop("XDG_DATA_HOME", None)
    process = await run_manager(processes, environment)
    started = await process.wait_started(timeout=20)
    assert started["embedded_database"] is True

    status, body = await get_health(8080)
    assert status == 200
    assert body == {
        "status": "healthy",
        "database": "connected",
        "version": "1.0.0",
        "mode": "both",
    }
    assert (tmp_path / ".local/share/productify-manager/postgres").is_dir()

    assert await process.terminate(timeout=10) == 0
    assert process.find("embedded database stopped") is not None
    assert_every_line_is_json(process)


async def test_sigint_also_stops_cleanly(
    database: DatabaseTarget, processes: list[ManagerProcess]
) -> None:
    environment = clean_environment(
        PFY_RUN_MODE="api", PFY_PORT=str(free_port()), **database_environment(database)
    )
    process = await run_manager(processes, environment)
    await process.wait_started()
    process.send(signal.SIGINT)
    assert await process.wait(timeout=10) == 0


async def test_healthcheck_command_follows_the_instance(
    database: DatabaseTarget, processes: list[ManagerProcess]
) -> None:
    metrics_port = free_port()
    environment = clean_environment(
        PFY_RUN_MODE="executor",
        PFY_CRON_METRICS_PORT=str(metrics_port),
        **database_environment(database),
    )
    probe = await run_manager(processes, environment, "healthcheck")
    assert await probe.wait() == 1

    daemon = await run_manager(processes, environment)
    await daemon.wait_started()
    probe = await run_manager(processes, environment, "healthcheck")
    assert await probe.wait() == 0
    assert await daemon.terminate() == 0
