"""Trigger runs as the executor claims, records, rescues and prunes them.

Every statement that hands work to the executor carries a `Fence`: the
statement itself checks in `pg_locks` that the leader's lock session still
holds the executor lock, so a leader that lost the lock claims nothing, even
if it has not noticed yet. Outcome writes carry no fence; instead they apply
only to the exact attempt they describe, so a late write can never undo what
a newer leader did with the run.

Batches travel as parallel arrays through `unnest`, one statement per batch.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from manager.store.common import Queryable

# Runs still waiting for, or in the middle of, a callback.
QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
SKIPPED = "skipped"

# Kept with a rescued run so its history says why it was delivered again.
RESCUE_ERROR = "lease expired: the executor stopped during the callback"

# Session parameters of the executor's pool. The queue of runs grows and
# drains faster than autovacuum refreshes its statistics; believing a few
# hundred runs are queued when there are tens of thousands, the planner
# gathers every queued run in a bitmap and sorts them all to claim a hundred,
# where the ordered scan of trigger_runs_queued_idx stops after the first
# hundred. Without bitmap scans the claims keep the ordered index scans
# whatever the statistics say; no executor statement is better off with one.
EXECUTOR_SESSION = {"enable_bitmapscan": "off"}

# Deleting finished runs in small statements keeps row locks and WAL bursts
# short while the executor keeps working.
RETENTION_BATCH = 1000


@dataclass(frozen=True)
class Fence:
    """Identifies the leader's lock: its backend pid and the advisory lock key.

    A bigint advisory key shows in pg_locks as two 32-bit halves: `classid`
    holds the high half, `objid` the low half, and `objsubid` is 1.
    """

    pid: int
    key: int

    def arguments(self) -> tuple[int, int, int]:
        return self.pid, self.key >> 32, self.key & 0xFFFFFFFF


# The fence, as a condition on $1 (pid), $2 (classid) and $3 (objid). It
# does not depend on the row, so PostgreSQL evaluates it once per statement.
FENCE = """
EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND objsubid = 1
      AND pid = $1 AND classid = $2 AND objid = $3
)
"""


@dataclass(frozen=True)
class DueTrigger:
    """A trigger whose next slot has come, locked until the transaction ends."""

    id: uuid.UUID
    application_id: uuid.UUID
    schedule: str
    timezone: str
    misfire_policy: str
    next_run_at: datetime
    timeout_seconds: float


@dataclass(frozen=True)
class ClaimedRun:
    """A run marked running for this attempt, with what its callback needs."""

    id: uuid.UUID
    attempt: int
    scheduled_at: datetime
    started_at: datetime
    manual: bool
    trigger_id: uuid.UUID
    trigger_name: str
    path: str | None
    payload: str
    timeout_seconds: float
    max_retries: int
    application_id: uuid.UUID
    backend_url: str
    signing_secret: str


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to; `status` is queued again for a retry.

    `sent` is False for an attempt that was claimed but never sent (its
    executor could no longer prove it leads): the run goes back to the queue
    and the attempt does not count.
    """

    run_id: uuid.UUID
    attempt: int
    status: str
    retry_delay: float
    http_status: int | None
    error: str | None
    duration_ms: float
    sent: bool = True


# --- scheduling

# Lock enabled triggers due now or within the next $6 seconds (the look-ahead),
# oldest slot first. $4 replaces the database clock only when tests simulate
# time; the partial index triggers_due_idx keeps the cost proportional to the
# number of due triggers.
CLAIM_DUE_TRIGGERS = f"""
SELECT id, application_id, schedule, timezone, misfire_policy, next_run_at,
       timeout_seconds, coalesce($4::timestamptz, now()) AS now
FROM triggers
WHERE enabled
  AND next_run_at <= coalesce($4::timestamptz, now()) + make_interval(secs => $6)
  AND {FENCE}
ORDER BY next_run_at
LIMIT $5
FOR UPDATE SKIP LOCKED
"""

# Record schedule slots as runs: queued, skipped, or running when the
# dispatcher has room for them right away (the scheduler's claim is fenced,
# so these need no claim of their own). A slot that already has a run (an
# earlier leader got there) is left alone. Returns every inserted run; a
# running one comes with what its callback needs, in ClaimedRun's order.
# $5 is each running run's lease in seconds (its timeout plus the grace).
# A slot still ahead (the look-ahead) is not available before its instant.
INSERT_SLOTS = """
WITH inserted AS (
    INSERT INTO trigger_runs
        (trigger_id, application_id, scheduled_at, status, attempt,
         available_at, started_at, lease_expires_at, finished_at)
    SELECT slot.trigger_id, slot.application_id, slot.scheduled_at,
           slot.status,
           CASE WHEN slot.status = 'running' THEN 1 ELSE 0 END,
           greatest(slot.scheduled_at, now()),
           CASE WHEN slot.status = 'running' THEN clock_timestamp() END,
           CASE WHEN slot.status = 'running'
                THEN clock_timestamp() + make_interval(secs => slot.lease) END,
           CASE WHEN slot.status = 'skipped' THEN now() END
    FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[], $4::text[],
                $5::float8[])
         AS slot (trigger_id, application_id, scheduled_at, status, lease)
    ON CONFLICT (trigger_id, scheduled_at) WHERE NOT manual DO NOTHING
    RETURNING id, attempt, scheduled_at, started_at, manual, trigger_id,
              application_id, status
)
SELECT inserted.id, inserted.attempt, inserted.scheduled_at,
       inserted.started_at, inserted.manual, inserted.trigger_id,
       trigger.name AS trigger_name, trigger.path,
       trigger.payload::text AS payload, trigger.timeout_seconds,
       trigger.max_retries, inserted.application_id, application.backend_url,
       application.signing_secret, inserted.status
FROM inserted
LEFT JOIN triggers AS trigger
    ON inserted.status = 'running' AND trigger.id = inserted.trigger_id
LEFT JOIN applications AS application
    ON inserted.status = 'running' AND application.id = inserted.application_id
"""

# Move claimed triggers on to their next slot; NULL stops a trigger whose
# stored schedule can no longer be read. The redundant `= ANY` lets the
# planner probe the primary key instead of hashing the whole table.
ADVANCE_TRIGGERS = """
UPDATE triggers AS trigger
SET next_run_at = advance.next_run_at,
    last_run_at = coalesce(advance.last_run_at, trigger.last_run_at)
FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[])
     AS advance (id, next_run_at, last_run_at)
WHERE trigger.id = advance.id
  AND trigger.id = ANY($1::uuid[])
"""

# Seconds until the earliest enabled trigger is due (negative when overdue).
SECONDS_UNTIL_NEXT_SLOT = """
SELECT extract(epoch FROM min(next_run_at) - now())::float8
FROM triggers WHERE enabled
"""


async def claim_due_triggers(
    connection: asyncpg.Connection,
    fence: Fence,
    limit: int,
    now: datetime | None = None,
    lookahead: float = 0.0,
) -> tuple[list[DueTrigger], datetime | None]:
    """Lock up to `limit` triggers due now or within `lookahead` seconds
    (inside the caller's transaction)."""
    rows = await connection.fetch(
        CLAIM_DUE_TRIGGERS, *fence.arguments(), now, limit, lookahead
    )
    triggers = [
        DueTrigger(
            id=row["id"],
            application_id=row["application_id"],
            schedule=row["schedule"],
            timezone=row["timezone"],
            misfire_policy=row["misfire_policy"],
            next_run_at=row["next_run_at"],
            timeout_seconds=row["timeout_seconds"],
        )
        for row in rows
    ]
    return triggers, (rows[0]["now"] if rows else None)


@dataclass
class InsertedSlots:
    """What an insert of slots did: runs enqueued per application (queued or
    handed to the dispatcher) and the runs inserted as running."""

    enqueued: dict[uuid.UUID, int]
    running: list[ClaimedRun]


async def insert_slots(
    connection: asyncpg.Connection,
    trigger_ids: Sequence[uuid.UUID],
    application_ids: Sequence[uuid.UUID],
    scheduled: Sequence[datetime],
    statuses: Sequence[str],
    leases: Sequence[float | None] | None = None,
) -> InsertedSlots:
    """Insert runs for slots; `leases` gives each running one its lease."""
    inserted = InsertedSlots(enqueued={}, running=[])
    if not trigger_ids:
        return inserted
    rows = await connection.fetch(
        INSERT_SLOTS,
        trigger_ids,
        application_ids,
        scheduled,
        statuses,
        leases if leases is not None else [None] * len(trigger_ids),
    )
    for row in rows:
        status = row["status"]
        if status == SKIPPED:
            continue
        application = row["application_id"]
        inserted.enqueued[application] = inserted.enqueued.get(application, 0) + 1
        if status == RUNNING:
            inserted.running.append(ClaimedRun(*tuple(row)[:-1]))
    return inserted


async def advance_triggers(
    connection: asyncpg.Connection,
    trigger_ids: Sequence[uuid.UUID],
    next_runs: Sequence[datetime | None],
    last_runs: Sequence[datetime | None],
) -> None:
    if trigger_ids:
        await connection.execute(ADVANCE_TRIGGERS, trigger_ids, next_runs, last_runs)


async def seconds_until_next_slot(db: Queryable) -> float | None:
    """How long until a trigger is due; None when no trigger is enabled."""
    return await db.fetchval(SECONDS_UNTIL_NEXT_SLOT)


# --- dispatch

# Claim queued, available runs for callbacks, oldest first. $4 lists the
# applications already at their limit; $6/$7 give the others' running count,
# so each application gets at most $8 running runs. The claimed attempt is
# leased for its timeout plus $9 seconds of grace. `candidates` tells the
# caller whether per-application limits held runs back.
CLAIM_RUNS = f"""
WITH candidate AS (
    SELECT id, application_id, available_at
    FROM trigger_runs
    WHERE status = 'queued' AND available_at <= now()
      AND NOT (application_id = ANY($4::uuid[]))
      AND {FENCE}
    ORDER BY available_at
    LIMIT $5
    FOR UPDATE SKIP LOCKED
),
ranked AS (
    SELECT id, application_id,
           row_number() OVER (
               PARTITION BY application_id ORDER BY available_at
           ) AS position
    FROM candidate
),
chosen AS (
    SELECT ranked.id
    FROM ranked
    LEFT JOIN unnest($6::uuid[], $7::int[]) AS busy (application_id, running)
        USING (application_id)
    WHERE ranked.position <= $8 - coalesce(busy.running, 0)
)
UPDATE trigger_runs AS run
SET status = 'running',
    attempt = run.attempt + 1,
    started_at = now(),
    finished_at = NULL,
    lease_expires_at = now() + make_interval(secs => trigger.timeout_seconds + $9)
FROM chosen, triggers AS trigger, applications AS application
WHERE run.id = chosen.id
  AND trigger.id = run.trigger_id
  AND application.id = run.application_id
RETURNING run.id, run.attempt, run.scheduled_at, run.started_at, run.manual,
          run.trigger_id, trigger.name AS trigger_name, trigger.path,
          trigger.payload::text AS payload, trigger.timeout_seconds,
          trigger.max_retries, run.application_id, application.backend_url,
          application.signing_secret,
          (SELECT count(*) FROM candidate) AS candidates
"""

# Seconds until the earliest queued run becomes available (retry backoff).
SECONDS_UNTIL_NEXT_RUN = """
SELECT extract(epoch FROM min(available_at) - now())::float8
FROM trigger_runs WHERE status = 'queued'
"""

# Record attempts' outcomes; each applies only while the run is still running
# the same attempt, so a late write cannot undo a rescue or a newer attempt.
# An attempt never sent is handed back uncounted.
# `= ANY` keeps the lookup on the primary key (see ADVANCE_TRIGGERS).
RECORD_OUTCOMES = """
UPDATE trigger_runs AS run
SET status = outcome.status,
    attempt = run.attempt - CASE WHEN outcome.sent THEN 0 ELSE 1 END,
    available_at = CASE WHEN outcome.status = 'queued'
                        THEN now() + make_interval(secs => outcome.delay)
                        ELSE run.available_at END,
    finished_at = CASE WHEN outcome.status IN ('succeeded', 'failed')
                       THEN now() END,
    lease_expires_at = NULL,
    http_status = outcome.http_status,
    error = outcome.error,
    duration_ms = outcome.duration_ms
FROM unnest($1::uuid[], $2::int[], $3::text[], $4::float8[], $5::int[],
            $6::text[], $7::float8[], $8::bool[])
     AS outcome (id, attempt, status, delay, http_status, error, duration_ms,
                 sent)
WHERE run.id = outcome.id
  AND run.id = ANY($1::uuid[])
  AND run.status = 'running'
  AND run.attempt = outcome.attempt
RETURNING run.id
"""

# Put this executor's unfinished attempts back in the queue at shutdown; the
# run keeps its id, so the backend sees the same webhook-id again.
REQUEUE_OWN = """
UPDATE trigger_runs AS run
SET status = 'queued', available_at = now(), lease_expires_at = NULL
FROM unnest($1::uuid[], $2::int[]) AS own (id, attempt)
WHERE run.id = own.id AND run.id = ANY($1::uuid[])
  AND run.status = 'running' AND run.attempt = own.attempt
"""


async def claim_runs(
    db: Queryable,
    fence: Fence,
    limit: int,
    saturated: Sequence[uuid.UUID],
    running: dict[uuid.UUID, int],
    application_limit: int,
    lease_grace: float,
) -> tuple[list[ClaimedRun], int]:
    """Claim up to `limit` runs; returns them and how many were candidates."""
    rows = await db.fetch(
        CLAIM_RUNS,
        *fence.arguments(),
        list(saturated),
        limit,
        list(running.keys()),
        list(running.values()),
        application_limit,
        lease_grace,
    )
    candidates = rows[0]["candidates"] if rows else 0
    # RETURNING lists the columns in ClaimedRun's field order, then the count.
    runs = [ClaimedRun(*tuple(row)[:-1]) for row in rows]
    return runs, candidates


async def seconds_until_next_run(db: Queryable) -> float | None:
    """How long until a queued run is available; None when none is queued."""
    return await db.fetchval(SECONDS_UNTIL_NEXT_RUN)


async def record_outcomes(db: Queryable, outcomes: Sequence[Outcome]) -> set[uuid.UUID]:
    """Write outcomes in one statement; returns the ids that were applied."""
    if not outcomes:
        return set()
    rows = await db.fetch(
        RECORD_OUTCOMES,
        [outcome.run_id for outcome in outcomes],
        [outcome.attempt for outcome in outcomes],
        [outcome.status for outcome in outcomes],
        [outcome.retry_delay for outcome in outcomes],
        [outcome.http_status for outcome in outcomes],
        [outcome.error for outcome in outcomes],
        [outcome.duration_ms for outcome in outcomes],
        [outcome.sent for outcome in outcomes],
    )
    return {row["id"] for row in rows}


async def requeue_own(db: Queryable, attempts: dict[uuid.UUID, int]) -> int:
    """Requeue these running attempts; returns how many were still running."""
    if not attempts:
        return 0
    status = await db.execute(
        REQUEUE_OWN, list(attempts.keys()), list(attempts.values())
    )
    return _row_count(status)


# --- recovery and retention

# Requeue runs whose lease expired (their executor died mid-callback), or
# fail them when no attempt is left; never this leader's own callbacks ($4).
RESCUE_EXPIRED = f"""
UPDATE trigger_runs AS run
SET status = CASE WHEN run.attempt > trigger.max_retries
                  THEN 'failed' ELSE 'queued' END,
    finished_at = CASE WHEN run.attempt > trigger.max_retries THEN now() END,
    available_at = now(),
    lease_expires_at = NULL,
    error = $5
FROM triggers AS trigger
WHERE trigger.id = run.trigger_id
  AND run.status = 'running'
  AND run.lease_expires_at < now()
  AND NOT (run.id = ANY($4::uuid[]))
  AND {FENCE}
RETURNING run.id, run.application_id, run.status
"""

# Delete up to $5 runs that finished more than $4 seconds ago, oldest first.
DELETE_EXPIRED_RUNS = f"""
DELETE FROM trigger_runs
WHERE id IN (
    SELECT id FROM trigger_runs
    WHERE finished_at < now() - make_interval(secs => $4)
      AND {FENCE}
    ORDER BY finished_at
    LIMIT $5
)
"""


async def rescue_expired(
    db: Queryable, fence: Fence, own: Sequence[uuid.UUID]
) -> list[asyncpg.Record]:
    """Requeue (or fail) runs abandoned by a dead executor."""
    return await db.fetch(RESCUE_EXPIRED, *fence.arguments(), list(own), RESCUE_ERROR)


async def delete_expired_runs(
    db: Queryable, fence: Fence, retention: float, batch: int = RETENTION_BATCH
) -> int:
    """Delete one batch of old finished runs; returns how many went."""
    status = await db.execute(DELETE_EXPIRED_RUNS, *fence.arguments(), retention, batch)
    return _row_count(status)


# --- numbers for metrics

# Queued runs per application.
COUNT_QUEUED = """
SELECT application_id, count(*) AS waiting
FROM trigger_runs WHERE status = 'queued'
GROUP BY application_id
"""

# Enabled triggers.
COUNT_ENABLED_TRIGGERS = "SELECT count(*) FROM triggers WHERE enabled"


async def count_queued(db: Queryable) -> dict[uuid.UUID, int]:
    return {
        row["application_id"]: row["waiting"] for row in await db.fetch(COUNT_QUEUED)
    }


async def count_enabled_triggers(db: Queryable) -> int:
    return await db.fetchval(COUNT_ENABLED_TRIGGERS)


def _row_count(status: Any) -> int:
    """The row count at the end of a command tag such as 'UPDATE 3'."""
    return int(str(status).rsplit(" ", 1)[-1])
