"""Leadership under faults: simultaneous starts, kill -9, a half-open lock
connection, a terminated lock session, a frozen leader, and SIGTERM.

Every scenario runs `manager` executor processes against one PostgreSQL and
ends by checking the invariants (tests/faults/invariants.py).
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from dataclasses import replace
from typing import Any

import asyncpg
import pytest

from manager.db.pool import DatabaseTarget
from tests.conftest import Figures
from tests.faults.invariants import check_invariants, scheduled_through
from tests.faults.scenario import (
    FAULT_CRON,
    LEADER_DEADLINE,
    at_fraction_of_second,
    callbacks_started_after,
    database_now,
    every_second_triggers,
    redelivered_runs,
    repeated_attempts,
    scheduled_at,
)
from tests.support.backend import RecordingBackend
from tests.support.cluster import (
    leading,
    lock_holders,
    log_time,
    overlapping_terms,
    start_executor,
)
from tests.support.executor import eventually
from tests.support.process import ManagerProcess
from tests.support.proxy import BLACKHOLE, ControlledProxy

ROUNDS = 20


@pytest.mark.slow
async def test_simultaneous_starts_elect_one_leader(
    database: DatabaseTarget,
    pool: asyncpg.Pool,
    processes: list[ManagerProcess],
    figures: Figures,
) -> None:
    figures("1. two executors started together, 20 times")
    samples = most_holders = double_leaders = 0
    for _ in range(ROUNDS):
        pair = await asyncio.gather(
            *(
                start_executor(processes, database, wait=False, **FAULT_CRON)
                for _ in range(2)
            )
        )

        async def someone_leads(pair: list[ManagerProcess] = pair) -> bool:
            return any(process.find("leadership acquired") for process in pair)

        await eventually(someone_leads, within=20)
        # Both have had several lock attempts by now.
        for _ in range(10):
            holders = await lock_holders(pool)
            most_holders = max(most_holders, len(holders))
            samples += 1
            if all(leading(process) for process in pair):
                double_leaders += 1
            await asyncio.sleep(0.05)
        assert sum(leading(process) for process in pair) == 1
        assert not overlapping_terms(pair)

        for process in pair:
            process.send(signal.SIGKILL)
        for process in pair:
            await process.wait()
        await eventually(lambda: _no_holder(pool), within=5)

    figures(rounds=ROUNDS, pg_locks_samples=samples, most_holders=most_holders)
    figures(two_leaders_seen=double_leaders)
    assert most_holders == 1
    assert double_leaders == 0


async def _no_holder(pool: asyncpg.Pool) -> bool:
    return not await lock_holders(pool)


# When in the second each kill lands: just before a slot, at it, and random.
KILL_MOMENTS = (0.97, 0.99, 0.0, 0.5, None, None)


@pytest.mark.slow
async def test_kill_9_of_the_leader_hands_over_without_loss_or_duplicate(
    database: DatabaseTarget,
    pool: asyncpg.Pool,
    backend: RecordingBackend,
    processes: list[ManagerProcess],
    figures: Figures,
) -> None:
    figures("2. kill -9 of the leader at random moments")
    await every_second_triggers(pool, backend.url, 5)
    cluster = [
        await start_executor(processes, database, **FAULT_CRON) for _ in range(2)
    ]
    await backend.wait_for(10, within=15)

    takeovers: list[float] = []
    kills: dict[int, float] = {}
    next_slot_deliveries: list[int] = []
    for moment in KILL_MOMENTS:
        leader = next(process for process in cluster if leading(process))
        others = [process for process in cluster if process is not leader]
        await at_fraction_of_second(random.random() if moment is None else moment)
        marks = [len(process.lines) for process in others]
        leader.send(signal.SIGKILL)
        killed_at = time.time()
        kills[processes.index(leader)] = killed_at
        await leader.wait()

        acquired = await _first_of(
            [
                other.wait_for_log("leadership acquired", timeout=10, start=mark)
                for other, mark in zip(others, marks, strict=True)
            ]
        )
        takeovers.append(log_time(acquired) - killed_at)

        # The first slot after the kill arrives, once per trigger.
        first_slot = int(killed_at) + 1
        await eventually(
            lambda slot=first_slot: _delivered_for(backend, slot, 5), within=10
        )
        next_slot_deliveries.append(_count_for(backend, first_slot))

        cluster = [
            *others,
            await start_executor(processes, database, **FAULT_CRON),
        ]

    window_end = await database_now(pool)
    await scheduled_through(pool, window_end)
    # The last kill may have left runs running: they are rescued after their
    # timeout (2 s) plus the rescue grace (1 s).
    invariants = await check_invariants(pool, window_end, recovery=10)
    overlaps = overlapping_terms(processes, kills)

    figures(
        kills=len(KILL_MOMENTS),
        takeover_max_s=round(max(takeovers), 3),
        takeover_mean_s=round(sum(takeovers) / len(takeovers), 3),
        **invariants.figures(),
        repeated_attempts=repeated_attempts(backend),
        redelivered_runs=redelivered_runs(backend),
        overlapping_terms=len(overlaps),
    )
    assert invariants.held, invariants
    assert max(takeovers) <= 5
    assert next_slot_deliveries == [5] * len(KILL_MOMENTS)
    assert repeated_attempts(backend) == 0
    assert not overlaps


async def _first_of(waiters: list[Any]) -> dict[str, object]:
    """The result of whichever awaitable finishes first; the others stop."""
    tasks = [asyncio.ensure_future(waiter) for waiter in waiters]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return next(iter(done)).result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _count_for(backend: RecordingBackend, slot: int) -> int:
    """First attempts delivered for the slot at Unix second `slot`."""
    return sum(
        1
        for delivery in backend.deliveries
        if scheduled_at(delivery) == slot and delivery.json["run"]["attempt"] == 1
    )


async def _delivered_for(backend: RecordingBackend, slot: int, count: int) -> bool:
    return _count_for(backend, slot) >= count


def through(proxy: ControlledProxy, target: DatabaseTarget) -> DatabaseTarget:
    """The same database, reached through the proxy."""
    return replace(target, host="127.0.0.1", port=proxy.port)


async def test_half_open_lock_connection_stops_the_leader_before_anyone_else_leads(
    database: DatabaseTarget,
    pool: asyncpg.Pool,
    backend: RecordingBackend,
    processes: list[ManagerProcess],
    figures: Figures,
) -> None:
    figures("3. leader's lock connection blackholed (half-open)")
    await every_second_triggers(pool, backend.url, 5)
    proxy = await ControlledProxy(database.host, database.port).start()
    try:
        # The cut-off leader retries more slowly than the standby, so the
        # hand-over goes to the standby; either way nobody leads twice.
        leader = await start_executor(
            processes,
            through(proxy, database),
            **{**FAULT_CRON, "lock_retry_interval": "0.8"},
        )
        acquired = await leader.wait_for_log("leadership acquired", timeout=10)
        standby = await start_executor(processes, database, **FAULT_CRON)
        await backend.wait_for(10, within=15)

        mark = len(leader.lines)
        standby_mark = len(standby.lines)
        proxy.set_mode(BLACKHOLE, pid=acquired["pid"])
        silenced = time.time()

        lost = await leader.wait_for_log("leadership lost", timeout=5, start=mark)
        taken = await _first_of(
            [
                standby.wait_for_log(
                    "leadership acquired", timeout=10, start=standby_mark
                ),
                leader.wait_for_log("leadership acquired", timeout=10, start=mark),
            ]
        )
        stopped_after = log_time(lost) - silenced
        taken_after = log_time(taken) - silenced
        new_leader = "standby" if standby.find("leadership acquired") else "old"

        window_end = await database_now(pool)
        await scheduled_through(pool, window_end)
        invariants = await check_invariants(pool, window_end, recovery=10)
    finally:
        await proxy.stop()

    figures(
        leader_stopped_after_s=round(stopped_after, 3),
        leader_deadline_s=LEADER_DEADLINE,
        next_leader_after_s=round(taken_after, 3),
        lock_session_timeout_s=float(FAULT_CRON["lock_session_timeout"]),
        next_leader=new_leader,
        **invariants.figures(),
        repeated_attempts=repeated_attempts(backend),
        overlapping_terms=len(overlapping_terms(processes)),
    )
    assert lost["reason"] == "lock probe timed out"
    assert stopped_after <= LEADER_DEADLINE + 1.0
    # The server frees the lock only once the silent session times out; its
    # clock started at the last probe, up to one probe interval earlier.
    silence = float(FAULT_CRON["lock_session_timeout"]) - 0.2
    assert taken_after >= silence - 0.05
    assert taken_after <= float(FAULT_CRON["lock_session_timeout"]) + 2.0
    assert log_time(lost) < log_time(taken)
    assert not overlapping_terms(processes)
    assert invariants.held, invariants
    assert repeated_attempts(backend) == 0


async def test_terminated_lock_session_is_noticed_within_one_probe(
    database: DatabaseTarget,
    pool: asyncpg.Pool,
    backend: RecordingBackend,
    processes: list[ManagerProcess],
    figures: Figures,
) -> None:
    figures("4. lock session ended with pg_terminate_backend")
    await every_second_triggers(pool, backend.url, 5)
    leader = await start_executor(
        processes, database, **{**FAULT_CRON, "lock_retry_interval": "0.8"}
    )
    acquired = await leader.wait_for_log("leadership acquired", timeout=10)
    standby = await start_executor(processes, database, **FAULT_CRON)
    await backend.wait_for(10, within=15)

    mark, standby_mark = len(leader.lines), len(standby.lines)
    assert await pool.fetchval("SELECT pg_terminate_backend($1)", acquired["pid"])
    terminated = time.time()
    lost = await leader.wait_for_log("leadership lost", timeout=5, start=mark)
    taken = await standby.wait_for_log(
        "leadership acquired", timeout=5, start=standby_mark
    )
    detected_after = log_time(lost) - terminated
    taken_after = log_time(taken) - terminated

    window_end = await database_now(pool)
    await scheduled_through(pool, window_end)
    invariants = await check_invariants(pool, window_end, recovery=10)
    figures(
        detected_after_s=round(detected_after, 3),
        probe_interval_s=float(FAULT_CRON["lock_probe_interval"]),
        standby_leads_after_s=round(taken_after, 3),
        **invariants.figures(),
        repeated_attempts=repeated_attempts(backend),
    )
    assert detected_after <= float(FAULT_CRON["lock_probe_interval"]) + 0.3
    assert taken_after <= 1.0
    assert not overlapping_terms(processes)
    assert invariants.held, invariants
    assert repeated_attempts(backend) == 0


# Ten seconds, not thirty: the standby takes over once the frozen leader's
# session has been silent for cron.lock_session_timeout (2 s here), however
# long the freeze. Ten seconds is over three times a run's lease (timeout 2 s
# + grace 1 s), so runs the leader had in flight are rescued and redelivered
# during the freeze: the hardest case for the old leader once it wakes.
FREEZE = 10.0


@pytest.mark.slow
async def test_frozen_leader_is_replaced_and_sends_nothing_when_it_wakes(
    database: DatabaseTarget,
    pool: asyncpg.Pool,
    backend: RecordingBackend,
    processes: list[ManagerProcess],
    figures: Figures,
) -> None:
    figures("5. leader frozen with SIGSTOP for 10 s")
    await every_second_triggers(pool, backend.url, 20)
    leader = await start_executor(processes, database, **FAULT_CRON)
    await leader.wait_for_log("leadership acquired", timeout=10)
    standby = await start_executor(processes, database, **FAULT_CRON)
    await backend.wait_for(40, within=15)

    standby_mark = len(standby.lines)
    leader.send(signal.SIGSTOP)
    frozen = time.time()
    try:
        taken = await standby.wait_for_log(
            "leadership acquired", timeout=FREEZE, start=standby_mark
        )
        await asyncio.sleep(frozen + FREEZE - time.time())
    finally:
        leader.send(signal.SIGCONT)
    woken = time.time()
    mark = len(leader.lines)
    lost = await leader.wait_for_log("leadership lost", timeout=5, start=mark)
    # Let the old leader run a while: whatever it would still send, it sends
    # now.
    await asyncio.sleep(2)

    window_end = await database_now(pool)
    await scheduled_through(pool, window_end)
    invariants = await check_invariants(pool, window_end, recovery=10)
    sent_after_waking = callbacks_started_after(leader, woken)
    withheld = sum(1 for line in leader.lines if line["msg"] == "callback withheld")
    overlaps = overlapping_terms(processes, {processes.index(leader): frozen})
    figures(
        freeze_s=FREEZE,
        takeover_s=round(log_time(taken) - frozen, 3),
        old_leader_noticed_after_wake_s=round(log_time(lost) - woken, 3),
        sent_by_old_leader_after_wake=len(sent_after_waking),
        withheld_by_old_leader=withheld,
        **invariants.figures(),
        repeated_attempts=repeated_attempts(backend),
        redelivered_runs=redelivered_runs(backend),
        overlapping_terms=len(overlaps),
    )
    assert log_time(taken) - frozen <= float(FAULT_CRON["lock_session_timeout"]) + 1
    assert sent_after_waking == []
    assert not overlaps
    assert invariants.held, invariants
    assert repeated_attempts(backend) == 0


async def test_sigterm_hands_over_at_once_and_drains(
    database: DatabaseTarget,
    pool: asyncpg.Pool,
    processes: list[ManagerProcess],
    figures: Figures,
) -> None:
    figures("13. SIGTERM with callbacks in flight")
    slow = await RecordingBackend().start()
    stuck = await RecordingBackend().start()
    try:
        slow.behaviour.delay = 1.0
        stuck.behaviour.hang = True
        await every_second_triggers(pool, slow.url, 5)
        await every_second_triggers(pool, stuck.url, 1, timeout=30)
        leader = await start_executor(processes, database, **FAULT_CRON)
        await leader.wait_for_log("leadership acquired", timeout=10)
        standby = await start_executor(processes, database, **FAULT_CRON)
        await slow.wait_for(10, within=15)
        await stuck.wait_for(2, within=15)

        standby_mark = len(standby.lines)
        leader.send(signal.SIGTERM)
        signalled = time.time()
        taken = await standby.wait_for_log(
            "leadership acquired", timeout=5, start=standby_mark
        )
        code = await leader.wait(timeout=15)
        exited_after = time.time() - signalled
        released = leader.find("leadership released")
        requeued = leader.find("runs requeued")

        stuck.behaviour.hang = False
        stuck.release()
        window_end = await database_now(pool)
        await scheduled_through(pool, window_end)
        invariants = await check_invariants(pool, window_end, recovery=10)
    finally:
        await slow.stop()
        await stuck.stop()

    # Callbacks the leader began after the signal (a 0.1 s allowance for the
    # signal to arrive and the claim loops to be cancelled).
    late = callbacks_started_after(leader, signalled + 0.1)
    figures(
        lock_released_after_s=round(log_time(released) - signalled, 3)
        if released
        else None,
        standby_leads_after_s=round(log_time(taken) - signalled, 3),
        exited_after_s=round(exited_after, 3),
        drain_timeout_s=float(FAULT_CRON["drain_timeout"]),
        requeued=requeued["count"] if requeued else 0,
        callbacks_begun_after_sigterm=len(late),
        **invariants.figures(),
        repeated_attempts=repeated_attempts(slow) + repeated_attempts(stuck),
    )
    assert code == 0
    assert released is not None
    assert log_time(taken) - signalled <= 1.0
    # The drain timeout plus writing and exiting; far below any kill timeout
    # of the deployment files (15 s and more).
    assert exited_after <= float(FAULT_CRON["drain_timeout"]) + 3
    assert requeued is not None and requeued["count"] >= 1
    assert late == []
    assert not overlapping_terms(processes)
    assert invariants.held, invariants
