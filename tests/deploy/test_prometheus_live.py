"""Prometheus for real: promtool on live scrapes, and a Prometheus server on
127.0.0.1 scraping an executor that has delivered callbacks, answering the
README's example queries through its HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import yaml

from manager.db.pool import DatabaseTarget
from manager.store import catalog, triggers
from tests.support.backend import Behaviour, RecordingBackend
from tests.support.ports import free_port
from tests.support.process import ManagerProcess, clean_environment
from tests.support.server import database_environment

FindTool = Callable[[str, str], str]

# The scrape configuration the README tells operators to use.
SCRAPE_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "prometheus.yml"


@dataclass
class DeliveringManager:
    """`manager` in both mode whose two every-second triggers are firing:
    one application's backend answers 200, the other's answers 404."""

    process: ManagerProcess
    api_port: int
    metrics_port: int
    application_id: str
    backends: list[RecordingBackend]

    @classmethod
    async def start(
        cls, database: DatabaseTarget, pool: asyncpg.Pool
    ) -> DeliveringManager:
        working = await RecordingBackend().start()
        failing = await RecordingBackend(Behaviour(status=404)).start()
        project = await catalog.create_project(pool, "metrics")
        tenant = await catalog.create_tenant(pool, project.id, "t")
        application = None
        for name, backend in (("app", working), ("broken", failing)):
            created, _ = await catalog.create_application(
                pool, tenant.id, name, backend.url
            )
            application = application or created
            await triggers.create_trigger(
                pool,
                created.id,
                triggers.TriggerFields(
                    name="tick", schedule="* * * * * *", max_retries=0
                ),
            )
        assert application is not None

        api_port, metrics_port = free_port(), free_port()
        process = ManagerProcess(
            clean_environment(
                PFY_RUN_MODE="both",
                PFY_PORT=str(api_port),
                PFY_CRON_METRICS_PORT=str(metrics_port),
                **database_environment(database),
            )
        )
        running = cls(
            process, api_port, metrics_port, str(application.id), [working, failing]
        )
        await process.start()
        await process.wait_started()
        for backend in running.backends:
            await backend.wait_for(2)
        return running

    async def stop(self) -> None:
        await self.process.close()
        for backend in self.backends:
            await backend.stop()


async def scrape(port: int) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        return await response.text()


async def test_promtool_accepts_live_scrapes(
    database: DatabaseTarget, pool: asyncpg.Pool, find_tool: FindTool
) -> None:
    promtool = find_tool("promtool", "apt-get install prometheus")
    running = await DeliveringManager.start(database, pool)
    try:
        expositions = [
            await scrape(port) for port in (running.metrics_port, running.api_port)
        ]
    finally:
        await running.stop()
    for exposition in expositions:
        assert "pfy_" in exposition
        checker = await asyncio.create_subprocess_exec(
            promtool,
            "check",
            "metrics",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(checker.communicate(exposition.encode()), 30)
        # promtool prints a line per problem, lint warnings included.
        assert checker.returncode == 0, output.decode()
        assert output.decode().strip() == "", output.decode()


@contextlib.asynccontextmanager
async def prometheus(
    running: DeliveringManager, binary: str, directory: Path
) -> AsyncIterator[str]:
    """A real Prometheus with the README's scrape jobs, pointed at loopback."""
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config.pop("rule_files", None)
    targets = {
        "manager-api": running.api_port,
        "manager-executor": running.metrics_port,
    }
    for job in config["scrape_configs"]:
        job.pop("dns_sd_configs", None)
        job["static_configs"] = [{"targets": [f"127.0.0.1:{targets[job['job_name']]}"]}]
    config_file = directory / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))

    port = free_port()
    server = await asyncio.create_subprocess_exec(
        binary,
        f"--config.file={config_file}",
        f"--storage.tsdb.path={directory / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        with contextlib.suppress(ProcessLookupError):
            await asyncio.wait_for(server.wait(), 20)


async def ask(session: aiohttp.ClientSession, base: str, query: str) -> list[Any]:
    """One instant query; the result vector (empty until data is there)."""
    try:
        async with session.get(
            f"{base}/api/v1/query", params={"query": query}
        ) as response:
            if response.status != 200:
                return []
            answer = await response.json()
    except aiohttp.ClientConnectionError:
        return []
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


async def answer_of(session: aiohttp.ClientSession, base: str, query: str) -> list[Any]:
    """Ask until Prometheus has scraped enough to answer (two scrapes for a rate)."""
    async with asyncio.timeout(60):
        while True:
            result = await ask(session, base, query)
            if result:
                return result
            await asyncio.sleep(0.5)


async def test_prometheus_answers_the_documented_queries(
    database: DatabaseTarget,
    pool: asyncpg.Pool,
    find_tool: FindTool,
    tmp_path: Path,
) -> None:
    binary = find_tool("prometheus", "apt-get install prometheus")
    running = await DeliveringManager.start(database, pool)
    try:
        async with (
            prometheus(running, binary, tmp_path) as base,
            aiohttp.ClientSession() as session,
        ):
            await check_documented_queries(session, base, running.application_id)
    finally:
        await running.stop()


async def check_documented_queries(
    session: aiohttp.ClientSession, prometheus: str, app: str
) -> None:
    waiting = await answer_of(
        session, prometheus, f'pfy_executor_queue_waiting{{app="{app}"}}'
    )
    assert waiting[0]["metric"]["app"] == app

    processed = await answer_of(
        session, prometheus, "rate(pfy_executor_queue_processed_total[5m])"
    )
    assert float(processed[0]["value"][1]) > 0

    quantile = await answer_of(
        session,
        prometheus,
        "histogram_quantile(0.99, sum by (le) "
        "(rate(pfy_executor_queue_process_time_seconds_bucket[5m])))",
    )
    assert float(quantile[0]["value"][1]) > 0

    error_rate = await answer_of(
        session,
        prometheus,
        'sum(rate(pfy_executor_backend_dispatch_total{status="error"}[5m])) '
        "/ sum(rate(pfy_executor_backend_dispatch_total[5m]))",
    )
    # One of the two applications answers 404 to every callback.
    assert 0 < float(error_rate[0]["value"][1]) < 1

    leader = await answer_of(session, prometheus, "pfy_executor_leader")
    assert leader[0]["value"][1] == "1"
    api = await answer_of(session, prometheus, 'up{job="manager-api"}')
    assert api[0]["value"][1] == "1"
