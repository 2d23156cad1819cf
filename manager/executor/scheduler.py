"""Scheduling: turn due trigger slots into queued runs.

One transaction per batch locks due triggers (`FOR UPDATE SKIP LOCKED`),
plans their slots by misfire policy, inserts the runs and moves each trigger
on to its next slot. The database clock decides what is due. Between batches
the loop sleeps until the earliest `next_run_at`, or until a NOTIFY says
triggers changed.

When the dispatcher has room, a slot's run is inserted already running and
handed to it once the transaction commits: the scheduler's claim is fenced
like the dispatcher's, and this saves the run a second claim (a round trip
and an update) on the way to its callback.

Triggers are claimed up to `cron.lookahead` before their slot, so that the
scheduling transaction is over when the slot comes and the dispatcher only
has to claim the run. A slot still ahead is planned as itself alone (it
cannot have been missed); its run is queued, not available before its
instant, and never handed over early: held in a process's memory until its
instant, it would be stranded until its lease ran out if that process died,
where a queued run is claimed by the next leader on time.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

import asyncpg

from manager.config import CronSettings
from manager.errors import ScheduleError
from manager.executor.metrics import ExecutorMetrics
from manager.executor.waiting import wait_for_event
from manager.schedule import (
    SlotPlan,
    parse_misfire_policy,
    parse_schedule,
    parse_timezone,
    plan_due_slots,
)
from manager.store.runs import (
    QUEUED,
    RUNNING,
    SKIPPED,
    ClaimedRun,
    DueTrigger,
    Fence,
    advance_triggers,
    claim_due_triggers,
    insert_slots,
    seconds_until_next_slot,
)

log = logging.getLogger(__name__)

# A trigger due but locked by someone else (an API edit) is retried this
# soon, rather than spinning on it.
LOCKED_RETRY = 0.01

# How long the loop waits after a database error before trying again.
ERROR_PAUSE = 1.0

_DATABASE_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)

# Triggers that share a schedule, zone, policy and slot share one plan.
PlanKey = tuple[str, str, str, datetime]

# Reservations of dispatcher room: application id -> runs.
Reserved = dict[uuid.UUID, int]


class RunTaker(Protocol):
    """Where runs inserted as running go: the dispatcher."""

    def reserve(self, application_id: uuid.UUID) -> bool:
        """Hold room for one run of this application; False when there is none."""

    def take(self, runs: list[ClaimedRun], reserved: Reserved) -> None:
        """Accept runs inserted as running; reservations left over are freed."""

    def release(self, reserved: Reserved) -> None:
        """Free reservations whose runs were never inserted."""


class Scheduler:
    """Claims due triggers in batches and inserts their runs."""

    def __init__(
        self,
        cron: CronSettings,
        pool: asyncpg.Pool,
        metrics: ExecutorMetrics,
        on_enqueued: Callable[[], None],
        taker: RunTaker | None = None,
    ) -> None:
        self.cron = cron
        self.pool = pool
        self.metrics = metrics
        self.on_enqueued = on_enqueued
        self.taker = taker
        self.wake = asyncio.Event()

    async def run(self, fence: Fence) -> None:
        """Schedule until cancelled (leadership ends)."""
        while True:
            try:
                # One connection for the whole term: giving it back to the
                # pool after every batch would cost a reset round trip.
                async with self.pool.acquire() as connection:
                    await self._schedule_loop(connection, fence)
            except _DATABASE_ERRORS as error:
                log.warning("trigger claim failed", extra={"error": str(error)})
                await wait_for_event(self.wake, ERROR_PAUSE)

    async def _schedule_loop(
        self, connection: asyncpg.Connection, fence: Fence
    ) -> None:
        while True:
            self.wake.clear()
            claimed = await self.run_once(fence, connection=connection)
            if claimed >= self.cron.batch_size:
                # More may be due right now; let other tasks run first.
                await asyncio.sleep(0)
                continue
            delay = await self._sleep_time(connection, claimed)
            await wait_for_event(self.wake, delay)

    async def _sleep_time(self, connection: asyncpg.Connection, claimed: int) -> float:
        seconds = await seconds_until_next_slot(connection)
        if seconds is None:
            return self.cron.max_sleep
        # Slots within the look-ahead are claimed already.
        seconds -= self.cron.lookahead
        if seconds <= 0:
            # Due but not claimed: locked by another transaction right now.
            return 0.0 if claimed else LOCKED_RETRY
        return min(seconds, self.cron.max_sleep)

    async def run_once(
        self,
        fence: Fence,
        now: datetime | None = None,
        connection: asyncpg.Connection | None = None,
    ) -> int:
        """One batch; returns how many triggers it claimed.

        `now` stands in for the database clock only where tests simulate
        time (and then nothing is claimed ahead); production passes nothing.
        """
        if connection is None:
            async with self.pool.acquire() as acquired:
                return await self.run_once(fence, now, acquired)

        started = time.perf_counter()
        batch = SlotBatch(self.taker, self.cron.rescue_grace)
        try:
            async with connection.transaction():
                triggers, clock = await claim_due_triggers(
                    connection,
                    fence,
                    self.cron.batch_size,
                    now,
                    self.cron.lookahead if now is None else 0.0,
                )
                if not triggers or clock is None:
                    return 0
                self._plan(batch, triggers, clock)
                inserted = await insert_slots(
                    connection,
                    batch.trigger_ids,
                    batch.application_ids,
                    batch.scheduled,
                    batch.statuses,
                    batch.leases,
                )
                await advance_triggers(
                    connection, batch.advanced_ids, batch.next_runs, batch.last_runs
                )
        except BaseException:
            batch.release()
            raise
        self.metrics.observe_claim("triggers", time.perf_counter() - started)

        batch.hand_over(inserted.running)
        for application, count in inserted.enqueued.items():
            self.metrics.count_enqueued(application, count)
        if len(inserted.running) < sum(inserted.enqueued.values()):
            self.on_enqueued()
        return len(triggers)

    def _plan(
        self, batch: SlotBatch, triggers: list[DueTrigger], now: datetime
    ) -> None:
        plans: dict[PlanKey, SlotPlan | None] = {}
        for trigger in triggers:
            key = (
                trigger.schedule,
                trigger.timezone,
                trigger.misfire_policy,
                trigger.next_run_at,
            )
            if key not in plans:
                # A slot claimed ahead is planned as of its own instant.
                plans[key] = self._plan_one(trigger, max(now, trigger.next_run_at))
            plan = plans[key]
            if plan is None:
                batch.stop(trigger.id)
                continue
            batch.add(trigger, plan, now)
            _report_misfire(trigger, plan)

    def _plan_one(self, trigger: DueTrigger, now: datetime) -> SlotPlan | None:
        try:
            return plan_due_slots(
                parse_schedule(trigger.schedule),
                parse_timezone(trigger.timezone),
                trigger.next_run_at,
                now,
                parse_misfire_policy(trigger.misfire_policy),
                self.cron.catch_up_limit,
            )
        except ScheduleError as error:
            # Only a row written around the API gets here; the trigger
            # stops until someone saves a valid schedule.
            log.error(
                "trigger schedule unreadable",
                extra={"trigger": str(trigger.id), "error": str(error)},
            )
            return None


class SlotBatch:
    """The parallel arrays one batch sends to the database, and the room it
    reserved with the dispatcher for runs inserted as running."""

    def __init__(self, taker: RunTaker | None, lease_grace: float) -> None:
        self.taker = taker
        self.lease_grace = lease_grace
        self.reserved: Reserved = {}
        self.trigger_ids: list[uuid.UUID] = []
        self.application_ids: list[uuid.UUID] = []
        self.scheduled: list[datetime] = []
        self.statuses: list[str] = []
        self.leases: list[float | None] = []
        self.advanced_ids: list[uuid.UUID] = []
        self.next_runs: list[datetime | None] = []
        self.last_runs: list[datetime | None] = []

    def add(self, trigger: DueTrigger, plan: SlotPlan, now: datetime) -> None:
        """A trigger's plan; slots due by `now` may go to the dispatcher."""
        for slot in plan.skipped:
            self._slot(trigger, slot, SKIPPED, None)
        lease = trigger.timeout_seconds + self.lease_grace
        for slot in plan.fire:
            if slot <= now and self._reserve(trigger.application_id):
                self._slot(trigger, slot, RUNNING, lease)
            else:
                self._slot(trigger, slot, QUEUED, None)
        self.advanced_ids.append(trigger.id)
        self.next_runs.append(plan.next_run_at)
        self.last_runs.append(plan.fire[-1] if plan.fire else None)

    def stop(self, trigger_id: uuid.UUID) -> None:
        self.advanced_ids.append(trigger_id)
        self.next_runs.append(None)
        self.last_runs.append(None)

    def hand_over(self, runs: list[ClaimedRun]) -> None:
        """The transaction committed: the running runs go to the dispatcher."""
        if self.taker is not None and self.reserved:
            self.taker.take(runs, self.reserved)
            self.reserved = {}

    def release(self) -> None:
        """The transaction failed: nothing was inserted, free the room."""
        if self.taker is not None and self.reserved:
            self.taker.release(self.reserved)
            self.reserved = {}

    def _reserve(self, application_id: uuid.UUID) -> bool:
        if self.taker is None or not self.taker.reserve(application_id):
            return False
        self.reserved[application_id] = self.reserved.get(application_id, 0) + 1
        return True

    def _slot(
        self, trigger: DueTrigger, slot: datetime, status: str, lease: float | None
    ) -> None:
        self.trigger_ids.append(trigger.id)
        self.application_ids.append(trigger.application_id)
        self.scheduled.append(slot)
        self.statuses.append(status)
        self.leases.append(lease)


def _report_misfire(trigger: DueTrigger, plan: SlotPlan) -> None:
    """Warn when slots were missed: more than the stored one was due."""
    if plan.skipped or len(plan.fire) != 1 or plan.fire[0] != trigger.next_run_at:
        log.warning(
            "misfire",
            extra={
                "trigger": str(trigger.id),
                "app": str(trigger.application_id),
                "policy": trigger.misfire_policy,
                "missed_since": trigger.next_run_at.isoformat(),
                "fired": len(plan.fire),
                "skipped": len(plan.skipped),
            },
        )
