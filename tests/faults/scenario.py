"""Building blocks of the fault scenarios: settings, triggers, and reading
what the backend and the executors' logs saw."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import aiohttp
import asyncpg

from manager.store.triggers import Trigger
from tests.support.backend import Delivery, RecordingBackend
from tests.support.cluster import log_time
from tests.support.executor import (
    Application,
    add_trigger,
    create_application,
    eventually,
)
from tests.support.process import ManagerProcess

# Short intervals keep scenarios fast; the relations the daemon enforces
# still hold: rescue_grace >= probe interval + timeout, and the lock session
# timeout at least twice that and twice the retry interval.
FAULT_CRON = {
    "lock_retry_interval": "0.2",
    "lock_probe_interval": "0.2",
    "lock_probe_timeout": "0.5",
    "lock_session_timeout": "2",
    "rescue_grace": "1",
    "drain_timeout": "2",
    "max_sleep": "0.5",
}

# A client deadline: probe interval + probe timeout.
LEADER_DEADLINE = 0.2 + 0.5

# Log lines of finished callback attempts.
CALLBACK_LINES = ("callback succeeded", "callback retrying", "callback failed")


async def every_second_triggers(
    pool: asyncpg.Pool,
    backend_url: str,
    count: int,
    policy: str = "catch_up",
    timeout: float = 2.0,
    application: Application | None = None,
) -> tuple[Application, list[Trigger]]:
    """`count` triggers firing every second, in one application."""
    application = application or await create_application(pool, backend_url)
    triggers = [
        await add_trigger(
            pool,
            application,
            schedule="* * * * * *",
            misfire_policy=policy,
            timeout_seconds=timeout,
        )
        for _ in range(count)
    ]
    return application, triggers


async def database_now(pool: asyncpg.Pool) -> datetime:
    return await pool.fetchval("SELECT now()")


def scheduled_at(delivery: Delivery) -> float:
    """The slot a delivery was for, as Unix seconds."""
    return datetime.fromisoformat(delivery.json["run"]["scheduled_at"]).timestamp()


def lag(delivery: Delivery) -> float:
    """Seconds from the slot to the backend reading the callback."""
    return delivery.received_at - scheduled_at(delivery)


def repeated_attempts(backend: RecordingBackend) -> int:
    """(webhook-id, attempt) pairs received more than once: one attempt sent
    twice, which must never happen."""
    counts = Counter(
        (delivery.webhook_id, delivery.json["run"]["attempt"])
        for delivery in backend.deliveries
    )
    return sum(1 for count in counts.values() if count > 1)


def redelivered_runs(backend: RecordingBackend) -> int:
    """Runs the backend saw more than once (later attempts, same webhook-id)."""
    counts = Counter(delivery.webhook_id for delivery in backend.deliveries)
    return sum(1 for count in counts.values() if count > 1)


def callbacks_started_after(
    process: ManagerProcess, instant: float
) -> list[dict[str, Any]]:
    """Callback attempts the process began at or after `instant`.

    A callback line is written when the attempt ends; its start is the line's
    time less the attempt's duration (the monotonic clock behind the duration
    runs on while a process is stopped, so a callback that was in flight
    across a freeze starts before it).
    """
    started = []
    for line in process.lines:
        if line.get("msg") not in CALLBACK_LINES:
            continue
        began = log_time(line) - (line.get("duration_ms") or 0) / 1000
        # Log times have millisecond resolution.
        if began >= instant + 0.002:
            started.append(line)
    return started


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(math.ceil(fraction * len(ordered)), 1)
    return ordered[rank - 1]


def lag_figures(
    deliveries: Sequence[Delivery], prefix: str = "lag"
) -> dict[str, float]:
    """p50 / p99 / max of schedule lag, in seconds, rounded to milliseconds."""
    lags = [lag(delivery) for delivery in deliveries]
    return {
        f"{prefix}_p50_s": round(percentile(lags, 0.5), 3),
        f"{prefix}_p99_s": round(percentile(lags, 0.99), 3),
        f"{prefix}_max_s": round(max(lags, default=0.0), 3),
    }


async def at_fraction_of_second(fraction: float) -> None:
    """Return when the wall clock is `fraction` into a second (a moment to
    act at, such as just before a slot; not a synchronisation)."""
    now = time.time()
    wait = (fraction - now % 1) % 1
    await asyncio.sleep(wait)


async def graphql(
    session: aiohttp.ClientSession, port: int, query: str
) -> tuple[int, Any]:
    """POST a GraphQL query; the HTTP status and the JSON answer."""
    async with session.post(
        f"http://127.0.0.1:{port}/query", json={"query": query}
    ) as response:
        return response.status, await response.json()


async def health(session: aiohttp.ClientSession, port: int) -> int:
    try:
        async with session.get(f"http://127.0.0.1:{port}/health") as response:
            return response.status
    except aiohttp.ClientError:
        return 0


async def wait_for_health(
    session: aiohttp.ClientSession, port: int, wanted: int, within: float
) -> float:
    """Poll /health until it answers `wanted`; when it did (Unix seconds)."""

    async def answered() -> bool:
        return await health(session, port) == wanted

    await eventually(answered, within=within, every=0.1)
    return time.time()
