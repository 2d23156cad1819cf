"""What must hold after every fault scenario, checked against the database.

1. No schedule slot has two runs: (trigger, scheduled_at) is unique among
   scheduled runs.
2. Every slot due in the window has a run, or a skipped record under the
   skip policy. Triggers with the fire_once policy fold missed slots into
   one run by design, so only the other policies are held to this.
3. No run of a slot in the window is left `running` once the scenario's
   recovery time has passed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from manager.schedule import parse_schedule, parse_timezone
from tests.support.executor import eventually

# Slots with more than one scheduled run.
DUPLICATE_SLOTS = """
SELECT trigger_id, scheduled_at, count(*) AS runs
FROM trigger_runs WHERE NOT manual
GROUP BY trigger_id, scheduled_at HAVING count(*) > 1
"""

# The triggers held to invariant 2, with where their slots start.
SLOTTED_TRIGGERS = """
SELECT id, schedule, timezone, created_at FROM triggers
WHERE misfire_policy <> 'fire_once'
"""

# Every scheduled slot that has a run, whatever its status.
RECORDED_SLOTS = """
SELECT trigger_id, scheduled_at FROM trigger_runs WHERE NOT manual
"""

# Runs of slots up to $1 still in the middle of a callback.
RUNNING = """
SELECT count(*) FROM trigger_runs
WHERE status = 'running' AND scheduled_at <= $1
"""

# How far every enabled trigger's schedule has been worked through.
SCHEDULED_UP_TO = "SELECT min(next_run_at) FROM triggers WHERE enabled"


@dataclass
class Invariants:
    duplicates: int
    missing: list[tuple[uuid.UUID, datetime]] = field(default_factory=list)
    stuck: int = 0
    slots_checked: int = 0

    @property
    def held(self) -> bool:
        return not self.duplicates and not self.missing and not self.stuck

    def figures(self) -> dict[str, int]:
        return {
            "duplicate_slots": self.duplicates,
            "lost_slots": len(self.missing),
            "stuck_running": self.stuck,
            "slots_checked": self.slots_checked,
        }

    def __str__(self) -> str:
        return (
            f"duplicates={self.duplicates} missing={self.missing[:5]} "
            f"(of {len(self.missing)}) stuck={self.stuck} "
            f"checked={self.slots_checked}"
        )


async def scheduled_through(
    pool: asyncpg.Pool, instant: datetime, within: float = 15.0
) -> None:
    """Wait until the scheduler has worked every enabled trigger past `instant`."""

    async def past() -> bool:
        earliest = await pool.fetchval(SCHEDULED_UP_TO)
        return earliest is None or earliest > instant

    await eventually(past, within=within, every=0.1)


async def check_invariants(
    pool: asyncpg.Pool,
    window_end: datetime,
    recovery: float,
    window_start: datetime | None = None,
) -> Invariants:
    """Check the three invariants for slots up to `window_end`.

    Waits up to `recovery` seconds for running runs to finish first. Slots
    are counted from each trigger's creation (or `window_start`, if later).
    """
    stuck = await _wait_until_nothing_runs(pool, window_end, recovery)
    duplicates = len(await pool.fetch(DUPLICATE_SLOTS))

    recorded = {
        (row["trigger_id"], row["scheduled_at"])
        for row in await pool.fetch(RECORDED_SLOTS)
    }
    missing: list[tuple[uuid.UUID, datetime]] = []
    checked = 0
    for trigger in await pool.fetch(SLOTTED_TRIGGERS):
        start = trigger["created_at"]
        if window_start is not None and window_start > start:
            start = window_start
        for slot in slots_between(
            trigger["schedule"], trigger["timezone"], start, window_end
        ):
            checked += 1
            if (trigger["id"], slot) not in recorded:
                missing.append((trigger["id"], slot))
    return Invariants(duplicates, missing, stuck, checked)


def slots_between(
    schedule: str, timezone: str, after: datetime, until: datetime
) -> list[datetime]:
    """The schedule's slots later than `after` and at or before `until`."""
    parsed, zone = parse_schedule(schedule), parse_timezone(timezone)
    slots = []
    slot = parsed.next_after(after, zone)
    while slot <= until:
        slots.append(slot)
        slot = parsed.next_after(slot, zone)
    return slots


async def _wait_until_nothing_runs(
    pool: asyncpg.Pool, window_end: datetime, within: float
) -> int:
    """0 once no run of the window is running, else how many still were at
    the deadline. Later slots go on being worked on and are not counted."""

    async def idle() -> bool:
        return not await pool.fetchval(RUNNING, window_end)

    try:
        await eventually(idle, within=within, every=0.1)
    except TimeoutError:
        return await pool.fetchval(RUNNING, window_end)
    return 0
