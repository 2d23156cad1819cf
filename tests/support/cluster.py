"""Executors (and API daemons) as `manager` processes on one database, and
what the server and their logs say about who leads."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from manager.db.pool import DatabaseTarget
from manager.executor.leader import LOCK_KEY
from tests.support.executor import cron_environment
from tests.support.ports import free_port
from tests.support.process import ManagerProcess, clean_environment
from tests.support.server import database_environment

# Who holds the executor lock, from the server's point of view.
LOCK_HOLDERS = """
SELECT pid FROM pg_locks
WHERE locktype = 'advisory' AND granted AND objsubid = 1
  AND classid = $1 AND objid = $2
"""

# Process-level defaults: a little slower than in-process tests, since a
# subprocess shares two cores with PostgreSQL and the test itself.
PROCESS_CRON = {
    "lock_retry_interval": "0.5",
    "lock_probe_interval": "0.5",
    "lock_probe_timeout": "1",
}

# What each leadership log line means for the process that wrote it.
_GAINED = {"leadership acquired"}
_ENDED = {"leadership lost", "leadership released", "leadership not taken up"}


async def lock_holders(db: asyncpg.Pool | asyncpg.Connection) -> list[int]:
    """Backend pids holding the executor lock: none or one."""
    rows = await db.fetch(LOCK_HOLDERS, LOCK_KEY >> 32, LOCK_KEY & 0xFFFFFFFF)
    return [row["pid"] for row in rows]


def manager_environment(
    target: DatabaseTarget, mode: str = "executor", **settings: str
) -> dict[str, str]:
    """A clean environment for `manager run` against `target`.

    `settings` are cron.* values by name (lock_retry_interval="0.2"); other
    variables go in through `extra` of start_manager.
    """
    return clean_environment(
        PFY_RUN_MODE=mode,
        PFY_ENV="test",
        PFY_HOST="127.0.0.1",
        PFY_PORT=str(free_port()),
        PFY_CRON_METRICS_PORT=str(free_port()),
        PFY_DB_MIGRATE_ON_START="false",
        **database_environment(target),
        **cron_environment(**{**PROCESS_CRON, **settings}),
    )


async def start_manager(
    processes: list[ManagerProcess],
    target: DatabaseTarget,
    mode: str = "executor",
    extra: dict[str, str] | None = None,
    wait: bool = True,
    **settings: str,
) -> ManagerProcess:
    """Start `manager run` in `mode`; by default wait until it has started."""
    environment = {**manager_environment(target, mode, **settings), **(extra or {})}
    process = await ManagerProcess(environment).start()
    processes.append(process)
    if wait:
        await process.wait_started()
    return process


async def start_executor(
    processes: list[ManagerProcess],
    target: DatabaseTarget,
    wait: bool = True,
    **settings: str,
) -> ManagerProcess:
    return await start_manager(processes, target, "executor", wait=wait, **settings)


def port_of(process: ManagerProcess, name: str = "PFY_CRON_METRICS_PORT") -> int:
    return int(process.environment[name])


def log_time(line: dict[str, Any]) -> float:
    """A log line's timestamp as Unix seconds."""
    return datetime.fromisoformat(line["timestamp"]).timestamp()


def leading(process: ManagerProcess) -> bool:
    """Does the process's last leadership line say it leads?"""
    state = False
    for line in process.lines:
        if line.get("msg") in _GAINED:
            state = True
        elif line.get("msg") in _ENDED:
            state = False
    return state


def leadership_terms(
    process: ManagerProcess, until: float | None = None
) -> list[tuple[float, float]]:
    """(start, end) of each term the process led, from its log.

    A term still open, or cut off by a kill, ends at `until`.
    """
    terms: list[tuple[float, float]] = []
    started: float | None = None
    for line in process.lines:
        if line.get("msg") in _GAINED and started is None:
            started = log_time(line)
        elif line.get("msg") in _ENDED and started is not None:
            terms.append((started, log_time(line)))
            started = None
    if started is not None:
        terms.append((started, until if until is not None else float("inf")))
    return terms


def overlapping_terms(
    processes: list[ManagerProcess], ends: dict[int, float] | None = None
) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Pairs of terms of different processes that overlap in time.

    `ends` maps a process's index to the moment it was killed or frozen: a
    term it held then ends there, since a dead or stopped process does
    nothing (what a frozen one does once woken is checked separately).
    """
    ends = ends or {}
    terms = []
    for index, process in enumerate(processes):
        cut = ends.get(index, float("inf"))
        for start, end in leadership_terms(process, cut):
            terms.append((index, (start, min(end, cut) if start < cut else end)))
    overlaps = []
    for position, (index, (start, end)) in enumerate(terms):
        for other, (other_start, other_end) in terms[position + 1 :]:
            if other != index and start < other_end and other_start < end:
                overlaps.append(((start, end), (other_start, other_end)))
    return overlaps
