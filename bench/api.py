"""Benchmark the API: /health and a trigger(id) query under concurrent load.

    python bench/api.py [--seconds 10] [--connections 32] [--rounds 3]

Three processes take part besides PostgreSQL: the `manager` daemon in api
mode (as an operator runs it, logging at info to /dev/null), a bare aiohttp
+ asyncpg server answering the same two questions with no framework in
between, and a load generator. The load generator keeps `--connections`
keep-alive HTTP/1.1 connections busy for `--seconds` after a warm-up and
reports requests per second and latency percentiles; the conductor also
reads each server's CPU time from /proc, so the cost of a request can be
compared even when other work on the machine steals CPU from a run.

PostgreSQL is the one in PFY_TEST_DSN when set, else an embedded pgserver.
Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import asyncpg
import orjson
import uvloop
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from manager.db.migrations import apply_migrations  # noqa: E402
from manager.db.pool import DatabaseTarget, connect, create_pool  # noqa: E402
from manager.store import catalog, triggers  # noqa: E402
from manager.store.triggers import TriggerFields  # noqa: E402

MANAGER = str(Path(sys.executable).with_name("manager"))
BENCH_DATABASE = "pfy_bench"

TRIGGER_QUERY = """
query ($id: ID!) {
  trigger(id: $id) {
    id name schedule timezone enabled nextRunAt lastRunAt misfirePolicy
  }
}
"""

# The bare server's equivalent of the trigger query.
SELECT_TRIGGER = """
SELECT id, name, schedule, timezone, enabled, next_run_at, last_run_at,
       misfire_policy
FROM triggers WHERE id = $1
"""


# --- the load generator (runs in its own process)


@dataclass
class Load:
    host: str
    port: int
    request: bytes
    seconds: float
    warmup: float
    connections: int


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


async def _connection(load: Load, deadline: float, start: float) -> list[float]:
    reader, writer = await asyncio.open_connection(load.host, load.port)
    latencies: list[float] = []
    try:
        while True:
            sent = time.perf_counter()
            if sent >= deadline:
                return latencies
            status = await _exchange(reader, writer, load.request)
            if status != 200:
                raise RuntimeError(f"HTTP {status}")
            if sent >= start:
                latencies.append(time.perf_counter() - sent)
    finally:
        writer.close()


async def _generate(load: Load) -> dict[str, Any]:
    start = time.perf_counter() + load.warmup
    deadline = start + load.seconds
    results = await asyncio.gather(
        *(_connection(load, deadline, start) for _ in range(load.connections))
    )
    latencies = sorted(value for result in results for value in result)
    quantiles = statistics.quantiles(latencies, n=100)
    return {
        "requests": len(latencies),
        "rps": len(latencies) / load.seconds,
        "p50_ms": quantiles[49] * 1000,
        "p99_ms": quantiles[98] * 1000,
    }


def run_load(arguments: argparse.Namespace) -> None:
    load = Load(
        host="127.0.0.1",
        port=arguments.port,
        request=bytes.fromhex(arguments.request),
        seconds=arguments.seconds,
        warmup=arguments.warmup,
        connections=arguments.connections,
    )
    sys.stdout.write(orjson.dumps(uvloop.run(_generate(load))).decode() + "\n")


def http_request(method: str, path: str, body: bytes | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: keep-alive"]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


# --- the bare server (runs in its own process)


BARE_POOL = web.AppKey("pool", asyncpg.Pool)
BARE_TARGET = web.AppKey("target", DatabaseTarget)


async def bare_health(request: web.Request) -> web.Response:
    async with request.app[BARE_POOL].acquire() as connection:
        await connection.fetchval("SELECT 1")
    return web.json_response({"status": "healthy", "database": "connected"})


async def bare_trigger(request: web.Request) -> web.Response:
    trigger_id = uuid.UUID(request.match_info["id"])
    row = await request.app[BARE_POOL].fetchrow(SELECT_TRIGGER, trigger_id)
    data = {key: str(value) for key, value in dict(row).items()}
    return web.Response(
        body=orjson.dumps({"data": {"trigger": data}}),
        content_type="application/json",
    )


async def bare_pool(app: web.Application) -> Any:
    # The daemon's own pool settings, so the comparison is of what sits
    # between the socket and the pool, not of pool configuration.
    app[BARE_POOL] = await create_pool(app[BARE_TARGET], 2, 10)
    yield
    await app[BARE_POOL].close()


def run_bare(arguments: argparse.Namespace) -> None:
    app = web.Application()
    app[BARE_TARGET] = DatabaseTarget(**orjson.loads(arguments.target))
    app.cleanup_ctx.append(bare_pool)
    app.router.add_get("/health", bare_health)
    app.router.add_get("/trigger/{id}", bare_trigger)
    web.run_app(
        app,
        host="127.0.0.1",
        port=arguments.port,
        print=None,
        access_log=None,
        loop=uvloop.new_event_loop(),
    )


# --- the conductor


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


def postgres() -> tuple[DatabaseTarget, Any]:
    """The admin target of a PostgreSQL server, and what keeps it running."""
    dsn = os.environ.get("PFY_TEST_DSN")
    if dsn:
        parsed = urlparse(dsn)
        target = DatabaseTarget(
            host=parsed.hostname or "127.0.0.1",
            port=parsed.port or 5432,
            user=unquote(parsed.username or "postgres"),
            password=unquote(parsed.password or ""),
            database=parsed.path.lstrip("/") or "postgres",
        )
        return target, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
    server = pgserver.get_server(
        Path(tempfile.mkdtemp(prefix="pfy-bench-pg-")), cleanup_mode="delete"
    )
    info = server.get_postmaster_info()
    target = DatabaseTarget(
        host=str(info.socket_dir),
        port=info.port or 5432,
        user="postgres",
        password="",
        database="postgres",
    )
    return target, server


async def prepare_database(admin: DatabaseTarget) -> tuple[DatabaseTarget, str]:
    connection = await connect(admin)
    await connection.execute(f'DROP DATABASE IF EXISTS "{BENCH_DATABASE}" WITH (FORCE)')
    await connection.execute(f'CREATE DATABASE "{BENCH_DATABASE}"')
    await connection.close()

    target = DatabaseTarget(**{**vars(admin), "database": BENCH_DATABASE})
    connection = await connect(target)
    await apply_migrations(connection)
    project = await catalog.create_project(connection, "bench")
    tenant = await catalog.create_tenant(connection, project.id, "bench")
    application, _ = await catalog.create_application(
        connection, tenant.id, "bench", "http://127.0.0.1:9/"
    )
    trigger = await triggers.create_trigger(
        connection, application.id, TriggerFields(name="nightly", schedule="0 3 * * *")
    )
    await connection.close()
    return target, str(trigger.id)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    pid: int, port: int, request: bytes, arguments: argparse.Namespace
) -> dict[str, Any]:
    """One load run against one server, with the server's CPU per request."""
    before = cpu_seconds(pid)
    output = subprocess.run(
        [
            sys.executable,
            __file__,
            "load",
            "--port", str(port),
            "--request", request.hex(),
            "--seconds", str(arguments.seconds),
            "--warmup", str(arguments.warmup),
            "--connections", str(arguments.connections),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout  # fmt: skip
    used = cpu_seconds(pid) - before
    result = orjson.loads(output)
    # The CPU count includes the warm-up; so must the requests it served.
    served = result["rps"] * (arguments.seconds + arguments.warmup)
    result["cpu_us"] = used / served * 1e6
    return result


def conduct(arguments: argparse.Namespace) -> None:
    admin, server = postgres()
    target, trigger_id = uvloop.run(prepare_database(admin))
    manager_port, bare_port = free_port(), free_port()

    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PFY_", "DB_")) and key not in ("MODE", "PORT")
    }
    environment.update(
        PFY_RUN_MODE="api",
        PFY_ENV="development",
        PFY_HOST="127.0.0.1",
        PFY_PORT=str(manager_port),
        PFY_LOG_LEVEL=arguments.log_level,
        PFY_DB_HOST=target.host,
        PFY_DB_PORT=str(target.port),
        PFY_DB_USER=target.user,
        PFY_DB_PASSWORD=target.password,
        PFY_DB_NAME=target.database,
        PFY_DB_SSLMODE="disable",
    )
    bare_target = orjson.dumps(vars(target)).decode()
    processes = [
        subprocess.Popen(
            [MANAGER], env=environment, stdout=subprocess.DEVNULL
        ),
        subprocess.Popen(
            [sys.executable, __file__, "bare", "--port", str(bare_port),
             "--target", bare_target]
        ),
    ]  # fmt: skip
    try:
        wait_for_port(manager_port)
        wait_for_port(bare_port)
        query = orjson.dumps({"query": TRIGGER_QUERY, "variables": {"id": trigger_id}})
        bare, manager = processes[1].pid, processes[0].pid
        scenarios = [
            ("/health", "bare", bare, bare_port, http_request("GET", "/health")),
            (
                "/health",
                "manager",
                manager,
                manager_port,
                http_request("GET", "/health"),
            ),
            (
                "trigger(id)",
                "bare",
                bare,
                bare_port,
                http_request("GET", f"/trigger/{trigger_id}"),
            ),
            (
                "trigger(id)",
                "manager",
                manager,
                manager_port,
                http_request("POST", "/query", query),
            ),
        ]
        # Rounds interleave the servers, so that a noisy neighbour on the
        # machine hurts both sides of a comparison alike; the median counts.
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for _ in range(arguments.rounds):
            for name, server_name, pid, port, request in scenarios:
                result = measure(pid, port, request, arguments)
                runs.setdefault((name, server_name), []).append(result)
        report(runs, arguments)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)
        if server is not None:
            server.cleanup()


def median_run(results: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(results, key=lambda result: result["rps"])[len(results) // 2]


def report(runs: dict[tuple[str, str], list[dict[str, Any]]], arguments: Any) -> None:
    print(
        f"{arguments.connections} connections, {arguments.rounds} rounds of "
        f"{arguments.seconds:g} s after {arguments.warmup:g} s warm-up, "
        f"{os.cpu_count()} CPUs; daemon logging at {arguments.log_level}; "
        "median round"
    )
    print(
        f"{'scenario':<14}{'server':<9}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'CPU us/req':>12}"
    )
    medians = {key: median_run(results) for key, results in runs.items()}
    for (name, server_name), result in medians.items():
        print(
            f"{name:<14}{server_name:<9}{result['rps']:>8.0f}"
            f"{result['p50_ms']:>9.2f}{result['p99_ms']:>9.2f}"
            f"{result['cpu_us']:>12.0f}"
        )
    bare, manager = medians[("/health", "bare")], medians[("/health", "manager")]
    print(
        f"/health manager/bare: {manager['rps'] / bare['rps']:.2f} by req/s, "
        f"{bare['cpu_us'] / manager['cpu_us']:.2f} by CPU per request "
        "(target >= 0.80)"
    )
    trigger = medians[("trigger(id)", "manager")]
    print(
        f"trigger(id): {trigger['rps']:.0f} req/s; one fully used core would "
        f"serve {1e6 / trigger['cpu_us']:.0f} req/s (target >= 2000)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("role", nargs="?", default="conduct",
                        choices=["conduct", "load", "bare"])  # fmt: skip
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--log-level",
        default="info",
        help="the daemon's log level; warning drops the per-request line",
    )
    parser.add_argument("--port", type=int)
    parser.add_argument("--request")
    parser.add_argument("--target")
    arguments = parser.parse_args()
    if arguments.role == "load":
        run_load(arguments)
    elif arguments.role == "bare":
        run_bare(arguments)
    else:
        conduct(arguments)


if __name__ == "__main__":
    main()
