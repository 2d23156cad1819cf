"""Benchmark of the trigger executor on this machine (a script, not a test).

    python bench/executor.py [--seconds 20] [--triggers 1000]

What it does, each phase on a fresh database of one embedded PostgreSQL:

1. bare:       an aiohttp client POST loop (100 in flight) sending one
               prepared request shaped like a callback (same body, signature
               headers and backend route, so the backend does the same work
               for it): the rate the HTTP path alone allows;
2. bare burst: the same client starting `--triggers` such requests together
               at a second boundary, 100 in flight: the schedule lag the HTTP
               path alone allows for that many slots at one instant;
3. throughput: many triggers due every second, more than the executor can
               deliver: its callbacks per second when saturated; then
               steps of 500 more triggers a second from 3,000 while it keeps
               up (arrival lag p99 under a second; falling behind makes it
               grow through the run): the highest rate it sustains;
4. lag:        `--triggers` triggers every second (1,000 fires/s): callbacks
               per second and schedule lag (dispatch start - slot) p50/p99/max;
5. memory:     10,000 triggers every 10 seconds: the executor's peak RSS;
6. claim:      the scheduler's claim statement, and its whole transaction,
               for 1,000 due triggers with 1,000 and with 100,000 triggers in
               the table.

The backend is a separate process (`backend` sub-command) and the executor
is the `manager` command, so neither shares the other's core budget.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from manager.config import load_settings  # noqa: E402
from manager.db.migrations import apply_migrations  # noqa: E402
from manager.db.pool import DatabaseTarget, connect, create_pool  # noqa: E402
from manager.executor.leader import LeaderLock  # noqa: E402
from manager.executor.metrics import ExecutorMetrics  # noqa: E402
from manager.executor.scheduler import Scheduler  # noqa: E402
from manager.signing import generate_secret, signature_headers  # noqa: E402
from manager.store.runs import claim_due_triggers  # noqa: E402

MANAGER = str(Path(sys.executable).with_name("manager"))
BARE_CONCURRENCY = 100

# Triggers due every second in the throughput phase: more than the executor
# delivers on the development machine, so it runs saturated.
SATURATING = 6000

# Triggers a second tried in turn for the highest rate the executor sustains.
SUSTAIN_STEPS = (3000, 3500, 4000, 4500, 5000, 5500, 6000)


# --- the backend process


def run_backend(port: int) -> None:
    """Answer every POST with 200 and count them; for callbacks, also note
    the arrival lag (now - the run's scheduled slot). GET /count tells the
    count, GET /lags hands over the lags noted so far and forgets them."""
    import orjson
    import uvloop

    count = 0
    lags: list[float] = []

    async def callback(request: web.Request) -> web.Response:
        nonlocal count
        body = await request.read()
        count += 1
        slot = orjson.loads(body)["run"]["scheduled_at"]
        lags.append(time.time() - datetime.fromisoformat(slot).timestamp())
        return web.Response(text="ok")

    async def report(request: web.Request) -> web.Response:
        return web.Response(text=str(count))

    async def hand_over(request: web.Request) -> web.Response:
        taken = lags[:]
        lags.clear()
        return web.Response(body=orjson.dumps(taken), content_type="application/json")

    uvloop.install()
    app = web.Application()
    app.router.add_get("/count", report)
    app.router.add_get("/lags", hand_over)
    app.router.add_post("/{tail:.*}", callback)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def backend_count(session: aiohttp.ClientSession, port: int) -> int:
    async with session.get(f"http://127.0.0.1:{port}/count") as response:
        return int(await response.text())


async def backend_lags(session: aiohttp.ClientSession, port: int) -> list[float]:
    async with session.get(f"http://127.0.0.1:{port}/lags") as response:
        return await response.json()


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50, p99 and max of lags given in seconds, in milliseconds."""
    if not seconds:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    ordered = sorted(seconds)
    return {
        "p50": ordered[len(ordered) // 2] * 1000,
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        "max": ordered[-1] * 1000,
    }


# --- the database


def start_postgres(directory: Path) -> tuple[Any, DatabaseTarget]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

    server = pgserver.get_server(directory, cleanup_mode="delete")
    info = server.get_postmaster_info()
    target = DatabaseTarget(
        host=str(info.socket_dir),
        port=info.port or 5432,
        user="postgres",
        password="",
        database="postgres",
        command_timeout=60,
    )
    return server, target


async def fresh_database(admin: DatabaseTarget, name: str) -> DatabaseTarget:
    connection = await connect(admin)
    await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await connection.execute(f'CREATE DATABASE "{name}"')
    await connection.close()
    target = DatabaseTarget(**{**admin.__dict__, "database": name})
    connection = await connect(target)
    await apply_migrations(connection)
    await connection.close()
    return target


async def add_triggers(
    pool: asyncpg.Pool,
    backend_url: str,
    applications: int,
    triggers: int,
    schedule: str,
    due_in: float = 1.0,
) -> None:
    """`triggers` triggers spread over `applications` applications."""
    await pool.execute("INSERT INTO projects (name) VALUES ('bench')")
    await pool.execute(
        "INSERT INTO tenants (project_id, name) SELECT id, 'bench' FROM projects"
    )
    await pool.executemany(
        """
        INSERT INTO applications (tenant_id, name, backend_url, signing_secret)
        SELECT id, $1, $2, $3 FROM tenants
        """,
        [(f"app-{n}", backend_url, generate_secret()) for n in range(applications)],
    )
    await pool.execute(
        """
        WITH numbered AS (
            SELECT id, row_number() OVER (ORDER BY id) - 1 AS position
            FROM applications
        )
        INSERT INTO triggers (application_id, name, schedule, next_run_at,
                              timeout_seconds, max_retries)
        SELECT numbered.id, 'trigger-' || n, $1,
               date_trunc('second', now()) + make_interval(secs => $4), 10, 3
        FROM generate_series(0, $2 - 1) AS n
        JOIN numbered ON numbered.position = n % $3
        """,
        schedule,
        triggers,
        applications,
        due_in,
    )


# --- the executor process


def executor_environment(target: DatabaseTarget, **cron: Any) -> dict[str, str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PFY_", "DB_"))
    }
    environment.update(
        {
            "PFY_RUN_MODE": "executor",
            "PFY_ENV": "test",
            "PFY_HOST": "127.0.0.1",
            "PFY_CRON_METRICS_PORT": str(free_port()),
            "PFY_DB_HOST": target.host,
            "PFY_DB_PORT": str(target.port),
            "PFY_DB_USER": target.user,
            "PFY_DB_NAME": target.database,
            "PFY_DB_SSLMODE": "disable",
        }
    )
    for key, value in cron.items():
        environment[f"PFY_CRON_{key.upper()}"] = str(value)
    return environment


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run_executor(
    target: DatabaseTarget,
    seconds: float,
    backend_port: int,
    log_path: Path,
    **cron: Any,
) -> dict[str, float]:
    """Run `manager` for `seconds`; callbacks/s over the steady part, peak RSS."""
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            MANAGER,
            env=executor_environment(target, **cron),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            async with aiohttp.ClientSession() as session:
                # The first seconds are start-up and warm-up. The window then
                # runs from one half-second mark to another a whole number of
                # seconds later: callbacks come in bursts on the second, and
                # a window of 11.3 s would count 11 or 12 of them by chance.
                warm_up = min(5.0, seconds / 4)
                await asyncio.sleep(warm_up + half_second_mark())
                window_start = time.time()
                start_count = await backend_count(session, backend_port)
                await backend_lags(session, backend_port)
                window = float(int(seconds - warm_up))
                await asyncio.sleep(window_start + window - time.time())
                end_count = await backend_count(session, backend_port)
                arrival = percentiles(await backend_lags(session, backend_port))
            rss = peak_rss_mb(process.pid)
        finally:
            process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(process.wait(), 60)
    if code != 0:
        raise SystemExit(f"manager exited with {code}; see {log_path}")
    return {
        "callbacks_per_second": (end_count - start_count) / window,
        "rss_mb": rss,
        "arrival_ms": arrival,
    }


def half_second_mark() -> float:
    """Seconds until the clock next reads x.5."""
    return (0.5 - time.time()) % 1.0


async def sustained_rate(
    admin: DatabaseTarget, backend_port: int, seconds: float, workdir: Path
) -> dict[str, Any]:
    """The highest rate of SUSTAIN_STEPS the executor keeps up with."""
    best = 0
    delivered: dict[int, float] = {}
    for rate in SUSTAIN_STEPS:
        target = await fresh_database(admin, f"bench_sustain_{rate}")
        pool = await create_pool(target, 1, 4)
        backend_url = f"http://127.0.0.1:{backend_port}"
        await add_triggers(pool, backend_url, 100, rate, "* * * * * *")
        await pool.close()
        run = await run_executor(
            target, seconds, backend_port, workdir / f"sustain-{rate}.log"
        )
        delivered[rate] = run["callbacks_per_second"]
        # Falling behind shows as lag that grows through the run.
        kept_up = run["arrival_ms"]["p99"] < 1000
        if not kept_up:
            break
        best = rate
    return {"best": best, "delivered": delivered}


async def schedule_lag(pool: asyncpg.Pool, skip_seconds: float) -> dict[str, float]:
    """Lag of first attempts, in milliseconds, after the warm-up."""
    row = await pool.fetchrow(
        """
        WITH lag AS (
            SELECT extract(epoch FROM started_at - scheduled_at) * 1000 AS ms
            FROM trigger_runs
            WHERE started_at IS NOT NULL AND NOT manual
              AND scheduled_at >= (SELECT min(scheduled_at) FROM trigger_runs)
                                  + make_interval(secs => $1)
        )
        SELECT count(*) AS runs,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS p50,
               percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) AS p99,
               max(ms) AS max
        FROM lag
        """,
        skip_seconds,
    )
    return dict(row)


# --- the phases


async def lag_phase(
    admin: DatabaseTarget,
    backend_port: int,
    triggers: int,
    seconds: float,
    workdir: Path,
    cron: dict[str, str],
) -> dict[str, Any]:
    """`triggers` triggers every second: rate, claim lag and arrival lag."""
    target = await fresh_database(admin, f"bench_lag_{triggers}")
    pool = await create_pool(target, 1, 4)
    backend_url = f"http://127.0.0.1:{backend_port}"
    await add_triggers(pool, backend_url, 100, triggers, "* * * * * *")
    run = await run_executor(
        target, seconds, backend_port, workdir / f"lag-{triggers}.log", **cron
    )
    claim = await schedule_lag(pool, min(5.0, seconds / 4))
    await pool.close()
    return {**run, "claim_ms": claim}


# Signs the bare client's requests, as an application's secret signs callbacks.
BARE_SECRET = generate_secret()


def callback_like_request(slot: float) -> tuple[bytes, dict[str, str]]:
    """A body and headers shaped like a callback's, for the slot `slot`."""
    import orjson

    run_id = str(uuid.uuid4())
    body = orjson.dumps(
        {
            "trigger": {"id": str(uuid.uuid4()), "name": "bare"},
            "run": {
                "id": run_id,
                "attempt": 1,
                "scheduled_at": datetime.fromtimestamp(slot, UTC),
            },
            "application": {"id": str(uuid.uuid4())},
            "payload": {},
        },
        option=orjson.OPT_UTC_Z,
    )
    headers = signature_headers(BARE_SECRET, run_id, int(time.time()), body)
    headers["Content-Type"] = "application/json"
    return body, headers


async def bare_post_rate(port: int, seconds: float) -> float:
    """POSTs per second of a plain aiohttp client, 100 in flight."""
    url = f"http://127.0.0.1:{port}/triggers/bare"
    done = 0
    deadline = time.monotonic() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done
        # Built once: the loop measures the HTTP path, not building requests.
        body, headers = callback_like_request(time.time())
        while time.monotonic() < deadline:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
            done += 1

    connector = aiohttp.TCPConnector(limit=BARE_CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.monotonic()
        await asyncio.gather(*(worker(session) for _ in range(BARE_CONCURRENCY)))
        rate = done / (time.monotonic() - started)
        await backend_lags(session, port)
        return rate


async def bare_burst_lag(port: int, requests: int, rounds: int = 5) -> dict[str, float]:
    """Arrival lag when a plain client starts `requests` callback-shaped POSTs
    at a second boundary, 100 in flight; the worst round's figures."""
    url = f"http://127.0.0.1:{port}/triggers/bare"
    connector = aiohttp.TCPConnector(limit=BARE_CONCURRENCY)
    worst: dict[str, float] = {}
    async with aiohttp.ClientSession(connector=connector) as session:
        for round_number in range(rounds + 1):
            slot = float(int(time.time()) + 1)
            await asyncio.sleep(slot - time.time())

            async def post(slot: float = slot) -> None:
                body, headers = callback_like_request(slot)
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()

            await asyncio.gather(*(post() for _ in range(requests)))
            figures = percentiles(await backend_lags(session, port))
            # The first round opens the connections.
            if round_number and figures["p99"] > worst.get("p99", -1.0):
                worst = figures
    return worst


async def claim_time(
    admin: DatabaseTarget, name: str, total: int, due: int, rounds: int = 15
) -> dict[str, float]:
    """Median milliseconds, over `rounds`, to claim `due` of `total` triggers:
    the claim statement alone, and the scheduler's whole transaction (claim,
    insert the runs, advance the triggers)."""
    target = await fresh_database(admin, name)
    pool = await create_pool(target, 1, 4)
    await add_triggers(pool, "http://127.0.0.1:9", 100, total, "0 0 1 1 *")
    await pool.execute("UPDATE triggers SET next_run_at = now() + interval '1 hour'")
    await pool.execute("VACUUM ANALYZE triggers")
    settings = load_settings({"PFY_ENV": "test", "PFY_CRON_BATCH_SIZE": str(due)})
    from aioprometheus import Registry

    scheduler = Scheduler(settings.cron, pool, ExecutorMetrics(Registry()), lambda: 0)
    lock = LeaderLock(target, settings.cron)
    assert await lock.try_acquire() and lock.fence is not None

    claims = []
    transactions = []
    async with pool.acquire() as connection:
        # One round more than measured: the first warms the caches.
        for round_number in range(rounds + 1):
            await make_due(connection, round_number, total, due)
            # The claim alone, rolled back: the same triggers are claimed
            # again below by the whole transaction.
            transaction = connection.transaction()
            await transaction.start()
            started = time.perf_counter()
            claimed, _ = await claim_due_triggers(connection, lock.fence, due)
            elapsed = (time.perf_counter() - started) * 1000
            await transaction.rollback()
            assert len(claimed) == due, len(claimed)

            started = time.perf_counter()
            claimed_count = await scheduler.run_once(lock.fence, connection=connection)
            whole = (time.perf_counter() - started) * 1000
            assert claimed_count == due, claimed_count
            await connection.execute("DELETE FROM trigger_runs")
            if round_number:
                claims.append(elapsed)
                transactions.append(whole)

    await lock.release()
    await pool.close()
    return {
        "claim": statistics.median(claims),
        "transaction": statistics.median(transactions),
    }


async def make_due(
    connection: asyncpg.Connection, round_number: int, total: int, due: int
) -> None:
    """Make a different `due` triggers due each round."""
    await connection.execute(
        """
        UPDATE triggers SET next_run_at = now() - interval '1 second'
        WHERE id IN (SELECT id FROM triggers ORDER BY id OFFSET $1 LIMIT $2)
        """,
        (round_number * due) % total,
        due,
    )


async def main(arguments: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="pfy-bench-"))
    server, admin = await asyncio.to_thread(start_postgres, workdir / "pg")
    backend_port = free_port()
    backend = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "backend", "--port", str(backend_port)
    )
    backend_url = f"http://127.0.0.1:{backend_port}"
    results: dict[str, Any] = {}
    try:
        await wait_for_port(backend_port)
        seconds = arguments.seconds

        results["bare_posts_per_second"] = await bare_post_rate(backend_port, 10)
        print(f"bare POST loop: {results['bare_posts_per_second']:.0f}/s", flush=True)
        results["bare_burst"] = await bare_burst_lag(backend_port, arguments.triggers)
        print(f"bare burst: {results['bare_burst']}", flush=True)

        target = await fresh_database(admin, "bench_throughput")
        pool = await create_pool(target, 1, 4)
        await add_triggers(pool, backend_url, 100, SATURATING, "* * * * * *")
        await pool.close()
        throughput = await run_executor(
            target, seconds, backend_port, workdir / "throughput.log"
        )
        results["throughput"] = throughput
        print(f"throughput phase: {throughput}", flush=True)
        results["sustained"] = await sustained_rate(
            admin, backend_port, seconds, workdir
        )
        print(f"sustained: {results['sustained']}", flush=True)

        for name, triggers in (("lag", arguments.triggers), ("lag_small", 100)):
            results[name] = await lag_phase(
                admin, backend_port, triggers, seconds, workdir, arguments.cron
            )
            print(f"{name} phase ({triggers}/s): {results[name]}", flush=True)

        target = await fresh_database(admin, "bench_memory")
        pool = await create_pool(target, 1, 4)
        await add_triggers(pool, backend_url, 100, 10000, "*/10 * * * * *")
        await pool.close()
        memory = await run_executor(
            target, seconds, backend_port, workdir / "memory.log"
        )
        results["memory"] = memory
        print(f"memory phase: {memory}", flush=True)

        small = await claim_time(admin, "bench_claim_small", 1000, 1000)
        large = await claim_time(admin, "bench_claim_large", 100000, 1000)
        results["claim_ms"] = {"1k": small, "100k": large}
        print(f"claim: 1k {small}, 100k {large} (ms)", flush=True)
    finally:
        backend.terminate()
        await asyncio.wait_for(backend.wait(), 10)
        await asyncio.to_thread(server.cleanup)

    report(results, arguments)


async def wait_for_port(port: int, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def report(results: dict[str, Any], arguments: argparse.Namespace) -> None:
    bare = results["bare_posts_per_second"]
    best = results["throughput"]["callbacks_per_second"]
    lag = results["lag"]
    claim = results["claim_ms"]
    sustained = results["sustained"]
    rows = [
        ("bare aiohttp POST loop (100 in flight)", f"{bare:.0f}/s", ""),
        (
            f"executor callbacks/s, saturated ({SATURATING:,} triggers/s)",
            f"{best:.0f}/s",
            f"ratio {best / bare:.2f} (target >= 0.5)",
        ),
        (
            "executor, highest rate it keeps up with (steps of 500/s)",
            f"{sustained['best']}/s",
            f"ratio {sustained['best'] / bare:.2f}; delivered per step: "
            + ", ".join(
                f"{rate}: {rate_done:.0f}"
                for rate, rate_done in sustained["delivered"].items()
            ),
        ),
        (
            f"executor callbacks/s at {arguments.triggers} fires/s",
            f"{lag['callbacks_per_second']:.0f}/s",
            "",
        ),
        (
            f"lag at {arguments.triggers} fires/s: claim p50 / p99 / max",
            _triple(lag["claim_ms"]),
            "slot to started_at (claim or hand-over)",
        ),
        (
            f"lag at {arguments.triggers} fires/s: arrival p50 / p99 / max",
            _triple(lag["arrival_ms"]),
            "slot to the backend reading the request; target p99 <= 50 ms",
        ),
        (
            f"bare client, {arguments.triggers} requests at one instant: "
            "arrival p50 / p99 / max",
            _triple(results["bare_burst"]),
            "the HTTP path alone, 100 in flight: the floor for the line above",
        ),
        (
            "lag at 100 fires/s: claim / arrival p99",
            f"{results['lag_small']['claim_ms']['p99']:.1f} / "
            f"{results['lag_small']['arrival_ms']['p99']:.1f} ms",
            "",
        ),
        (
            "claim statement, 1,000 due: 1k / 100k triggers",
            f"{claim['1k']['claim']:.1f} / {claim['100k']['claim']:.1f} ms",
            f"ratio {claim['100k']['claim'] / claim['1k']['claim']:.2f} "
            "(target <= 1.2)",
        ),
        (
            "whole scheduling transaction, 1,000 due: 1k / 100k triggers",
            f"{claim['1k']['transaction']:.1f} / {claim['100k']['transaction']:.1f} ms",
            f"ratio {claim['100k']['transaction'] / claim['1k']['transaction']:.2f}",
        ),
        (
            "executor peak RSS, 10,000 triggers",
            f"{results['memory']['rss_mb']:.0f} MB",
            "target <= 120 MB",
        ),
    ]
    print()
    print("| measure | result | note |")
    print("| --- | --- | --- |")
    for name, value, note in rows:
        print(f"| {name} | {value} | {note} |")


def _triple(values: dict[str, Any]) -> str:
    return " / ".join(f"{float(values[key]):.1f}" for key in ("p50", "p99", "max")) + (
        " ms"
    )


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", default="run", choices=["run", "backend"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--triggers", type=int, default=1000)
    parser.add_argument(
        "--cron",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a cron.* setting for the lag phase, e.g. max_concurrency=1000",
    )
    arguments = parser.parse_args()
    arguments.cron = dict(item.split("=", 1) for item in arguments.cron)
    return arguments


if __name__ == "__main__":
    parsed = parse_arguments()
    if parsed.mode == "backend":
        run_backend(parsed.port)
    else:
        import uvloop

        uvloop.run(main(parsed))
