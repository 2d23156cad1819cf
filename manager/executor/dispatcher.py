"""Dispatch: claim queued runs and call the application backends.

Concurrency is bounded twice: at most `cron.max_concurrency` callbacks in
flight overall, and at most `cron.app_concurrency` per application, so one
slow backend holds only its own slots and never starves the others. Both
counts live here, in memory: they describe this process's callbacks.

The scheduler hands over runs it inserted as running, within the room the
dispatcher reserves for it. Runs that wait in the queue are claimed here.
A claim is a database round trip, and callbacks finish while it is under
way. So the dispatcher claims ahead: besides the runs in flight it keeps up
to as many again claimed and ready, and a finished callback's slot goes
to the next ready run at once. Ready runs count against their application's
limit like runs in flight, and one that waited too long for a slot is handed
back unsent, before its lease could run out under it.

Outcomes go to the OutcomeWriter, which records them in batches; a run stays
`running` in the database until then, so it cannot be claimed twice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import functools
import logging
import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aiohttp
import asyncpg
import orjson
import yarl

from manager import __version__
from manager.callback_urls import GuardedResolver, validate_backend_url
from manager.config import CronSettings, Settings
from manager.errors import CallbackUrlError
from manager.executor.metrics import ExecutorMetrics
from manager.executor.waiting import wait_for_any, wait_for_event
from manager.signing import signature_headers
from manager.store.runs import (
    FAILED,
    QUEUED,
    SUCCEEDED,
    ClaimedRun,
    Fence,
    Outcome,
    claim_runs,
    seconds_until_next_run,
)

log = logging.getLogger(__name__)

USER_AGENT = f"productify-manager/{__version__}"

# Statuses worth another attempt besides 5xx: the backend asked us to come
# back later (408 Request Timeout, 429 Too Many Requests).
RETRYABLE_STATUSES = frozenset({408, 429})

# The start of the error of an attempt the address policy refused.
REFUSED = "address refused"

# How long the claim loop waits after a database error before trying again.
CLAIM_ERROR_PAUSE = 1.0

# The error kept with a run whose claimed attempt was handed back unsent.
WITHHELD = "not sent: the executor could not prove it still leads"
WAITED_TOO_LONG = "not sent: no callback slot came free in time"
TERM_ENDED = "not sent: the executor stopped leading"

# Claimed runs kept ready beyond the slots in flight, as a share of
# cron.max_concurrency; the claim loop tops them up when half are gone.
READY_SHARE = 1.0

_DATABASE_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)

OutcomeSink = Callable[[Outcome, uuid.UUID], None]
LeadershipCheck = Callable[[], bool]


class Dispatcher:
    """Claims runs within the concurrency limits and delivers their callbacks."""

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        metrics: ExecutorMetrics,
        record: OutcomeSink,
        leading: LeadershipCheck = lambda: True,
    ) -> None:
        self.cron = settings.cron
        self.allowed_networks = settings.callbacks.allowed_networks
        self.pool = pool
        self.metrics = metrics
        self.record = record
        # Asked right before each POST: a process that lost the lock, or was
        # frozen past its probe deadline, must not send what it claimed.
        self.leading = leading
        self.wake = asyncio.Event()
        self.session: aiohttp.ClientSession | None = None
        # Callbacks in flight: run id -> (attempt, task).
        self.callbacks: dict[uuid.UUID, tuple[int, asyncio.Task[None]]] = {}
        # Claimed runs waiting for a slot, with the monotonic time of their
        # claim, oldest first.
        self.ready: collections.deque[tuple[ClaimedRun, float]] = collections.deque()
        self.ready_limit = max(1, int(self.cron.max_concurrency * READY_SHARE))
        # A ready run older than this goes back unsent: its lease, counted
        # from the claim, must still cover a whole callback after it starts.
        self.ready_age_limit = self.cron.rescue_grace / 2
        # Claimed runs (in flight or ready) per application, with the room
        # reserved for runs the scheduler is inserting as running.
        self.running: dict[uuid.UUID, int] = {}
        self.reserved = 0
        self._room_freed = asyncio.Event()

    async def open(self) -> None:
        """Create the one HTTP session every callback shares."""
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(allowed_networks=self.allowed_networks),
            limit=self.cron.max_concurrency,
            limit_per_host=0,
            enable_cleanup_closed=True,
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": USER_AGENT},
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    @property
    def free_slots(self) -> int:
        return self.cron.max_concurrency - len(self.callbacks)

    @property
    def claim_room(self) -> int:
        """How many more runs a claim may take: free slots plus ready room."""
        return self.free_slots + self.ready_limit - len(self.ready) - self.reserved

    def reserve(self, application_id: uuid.UUID) -> bool:
        """Hold room for one run the scheduler is about to insert as running."""
        if self.claim_room <= 0:
            return False
        count = self.running.get(application_id, 0)
        if count >= self.cron.app_concurrency:
            return False
        self.running[application_id] = count + 1
        self.reserved += 1
        return True

    def take(self, runs: list[ClaimedRun], reserved: dict[uuid.UUID, int]) -> None:
        """Runs the scheduler inserted as running; unused room is freed."""
        unused = dict(reserved)
        for run in runs:
            unused[run.application_id] -= 1
        self.release(unused)
        self.reserved -= len(runs)
        self._hold(runs, counted=True)

    def release(self, reserved: dict[uuid.UUID, int]) -> None:
        """Free room reserved for runs that were not inserted."""
        for application_id, count in reserved.items():
            self._release_application(application_id, count)
            self.reserved -= count

    def in_flight(self) -> dict[uuid.UUID, int]:
        """Run id -> attempt of every run this process holds claimed."""
        held = {run_id: attempt for run_id, (attempt, _) in self.callbacks.items()}
        held.update((run.id, run.attempt) for run, _ in self.ready)
        return held

    async def run(self, fence: Fence) -> None:
        """Claim and dispatch until cancelled (leadership ends).

        The loop keeps one pool connection for as long as it works: a
        connection given back to the pool is reset with an extra round trip,
        which at hundreds of claims a second is worth saving.
        """
        try:
            while True:
                try:
                    async with self.pool.acquire() as connection:
                        await self._claim_loop(connection, fence)
                except _DATABASE_ERRORS as error:
                    log.warning("run claim failed", extra={"error": str(error)})
                    await wait_for_event(self.wake, CLAIM_ERROR_PAUSE)
        finally:
            self._return_ready()

    def _return_ready(self) -> None:
        """The term is over: ready runs go back to the queue unsent."""
        runs = self._take_ready()
        for run in runs:
            self.record(_unsent(run, TERM_ENDED), run.application_id)
        if runs:
            log.info("ready runs handed back", extra={"count": len(runs)})

    def _take_ready(self) -> list[ClaimedRun]:
        """Every ready run, out of the dispatcher's hands and limits."""
        runs = [run for run, _ in self.ready]
        self.ready.clear()
        for run in runs:
            self._release(run)
        return runs

    async def _claim_loop(self, connection: asyncpg.Connection, fence: Fence) -> None:
        while True:
            self.wake.clear()
            self._room_freed.clear()
            state = await self.claim_once(fence, connection)
            if state == "more":
                continue
            if state == "full":
                # Slots and ready runs are all taken: finished callbacks
                # signal when the ready runs are half gone.
                await wait_for_any((self._room_freed, self.wake), self.cron.max_sleep)
                continue
            delay = await self._idle_delay(connection)
            await wait_for_event(self.wake, delay)

    async def claim_once(
        self, fence: Fence, connection: asyncpg.Connection | None = None
    ) -> str:
        """One claim; "full" (no room left), "more" (claim again) or "idle"."""
        free = self.claim_room
        if free <= 0:
            return "full"
        limit = self.cron.app_concurrency
        started = time.perf_counter()
        saturated = [app for app, count in self.running.items() if count >= limit]
        claim = asyncio.ensure_future(
            claim_runs(
                connection or self.pool,
                fence,
                free,
                saturated,
                {app: count for app, count in self.running.items() if count},
                limit,
                self.cron.rescue_grace,
            )
        )
        try:
            runs, candidates = await asyncio.shield(claim)
        except asyncio.CancelledError:
            # Claiming stops, but a claim already sent may have marked runs
            # running: they become callbacks like any other, which a stop
            # drains or requeues, instead of waiting for their lease to end.
            with contextlib.suppress(*_DATABASE_ERRORS):
                runs, _ = await claim
                self._hold(runs)
            raise
        self.metrics.observe_claim("runs", time.perf_counter() - started)
        self._hold(runs)
        # Set per claim, not per callback: the gauge is read every few
        # seconds, the callbacks come by the thousand.
        self.metrics.set_inflight(len(self.callbacks))
        if len(runs) >= free:
            return "full"
        # Candidates held back by their application's limit: those
        # applications are saturated now, so claim again past them.
        if candidates > len(runs):
            return "more"
        return "idle"

    async def _idle_delay(self, connection: asyncpg.Connection) -> float:
        seconds = await seconds_until_next_run(connection)
        if seconds is None:
            return self.cron.max_sleep
        return min(max(seconds, 0.001), self.cron.max_sleep)

    def _hold(self, runs: list[ClaimedRun], counted: bool = False) -> None:
        """Take claimed runs on: ready first, then into free slots. `counted`
        runs are already counted against their application (reserved)."""
        claimed_at = time.monotonic()
        for run in runs:
            if not counted:
                self.running[run.application_id] = (
                    self.running.get(run.application_id, 0) + 1
                )
            self.ready.append((run, claimed_at))
        self._fill()

    def _fill(self) -> None:
        """Start ready runs while slots are free."""
        while self.ready and len(self.callbacks) < self.cron.max_concurrency:
            run, claimed_at = self.ready.popleft()
            waited = time.monotonic() - claimed_at
            if waited > self.ready_age_limit:
                self._hand_back(run, WAITED_TOO_LONG)
                self._release(run)
                continue
            self._start(run)
            self._count_start(run, waited)

    def _start(self, run: ClaimedRun) -> None:
        task = asyncio.create_task(self._deliver(run), name=f"callback {run.id}")
        self.callbacks[run.id] = (run.attempt, task)

    def _count_start(self, run: ClaimedRun, waited: float) -> None:
        if run.attempt != 1:
            return
        if run.manual:
            # Scheduled runs are counted when the scheduler inserts them;
            # runs requested through the API are counted here, once.
            self.metrics.count_enqueued(run.application_id)
        else:
            # The claim's database time plus the wait for a slot.
            lag = (run.started_at - run.scheduled_at).total_seconds()
            self.metrics.observe_lag(lag + waited)

    def _finish(self, run: ClaimedRun) -> None:
        self.callbacks.pop(run.id, None)
        self._release(run)
        self._fill()
        if len(self.ready) <= self.ready_limit // 2:
            self._room_freed.set()

    def _release(self, run: ClaimedRun) -> None:
        self._release_application(run.application_id)

    def _release_application(self, application_id: uuid.UUID, count: int = 1) -> None:
        remaining = self.running.get(application_id, count) - count
        if remaining > 0:
            self.running[application_id] = remaining
        else:
            self.running.pop(application_id, None)

    async def _deliver(self, run: ClaimedRun) -> None:
        started = time.perf_counter()
        try:
            if not self.leading():
                self._hand_back(run, WITHHELD)
                return
            try:
                http_status, error, retry_after = await self._post(run)
            except Exception:
                # A bug must not strand the run as running until its lease
                # expires: record it as a failed attempt, with the traceback.
                log.exception("callback crashed", extra={"run": str(run.id)})
                http_status, error, retry_after = None, "internal error", None
            duration = time.perf_counter() - started
            status, delay = decide(run, http_status, error, retry_after, self.cron)
            outcome = Outcome(
                run_id=run.id,
                attempt=run.attempt,
                status=status,
                retry_delay=delay,
                http_status=http_status,
                error=error,
                duration_ms=round(duration * 1000, 3),
            )
            self.record(outcome, run.application_id)
            self.metrics.observe_attempt(
                run.application_id, duration, status == SUCCEEDED
            )
            _log_outcome(run, outcome)
        finally:
            self._finish(run)

    def _hand_back(self, run: ClaimedRun, reason: str) -> None:
        """Give a claimed attempt back unsent; a leader delivers it later."""
        self.record(_unsent(run, reason), run.application_id)
        log.warning(
            "callback withheld",
            extra={
                "app": str(run.application_id),
                "trigger": str(run.trigger_id),
                "run": str(run.id),
                "attempt": run.attempt,
                "reason": reason,
            },
        )

    async def _post(
        self, run: ClaimedRun
    ) -> tuple[int | None, str | None, float | None]:
        """Deliver one attempt: (HTTP status, error, Retry-After seconds)."""
        assert self.session is not None
        body = callback_body(run)
        headers = signature_headers(
            run.signing_secret, str(run.id), int(time.time()), body
        )
        headers["Content-Type"] = "application/json"
        try:
            url = callback_url(
                run.backend_url, callback_path(run), self.allowed_networks
            )
        except CallbackUrlError as error:
            return None, f"{REFUSED}: {error}", None
        timeout = _timeout(run.timeout_seconds)
        try:
            async with self.session.post(
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=timeout,
            ) as response:
                await _drain_body(response, self.cron.max_response_bytes)
                return (
                    response.status,
                    _status_error(response.status),
                    _retry_after(response),
                )
        except TimeoutError:
            return None, f"timeout after {run.timeout_seconds:g}s", None
        except aiohttp.ClientConnectorError as error:
            # The resolver refused every address the host resolved to.
            if isinstance(error.os_error, CallbackUrlError):
                return None, _short(f"{REFUSED}: {error.os_error}"), None
            return None, _short(f"connection error: {_reason(error)}"), None
        except aiohttp.ClientError as error:
            return None, _short(f"connection error: {_reason(error)}"), None

    async def drain(self, timeout: float) -> dict[uuid.UUID, int]:
        """Let callbacks finish for up to `timeout` seconds; cancel the rest.

        Returns run id -> attempt of the runs that did not finish, ready
        runs that never started among them.
        """
        unstarted = {run.id: run.attempt for run in self._take_ready()}
        tasks = [task for _, task in self.callbacks.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        unfinished = self.in_flight()
        for _, task in list(self.callbacks.values()):
            task.cancel()
        remaining = [task for _, task in self.callbacks.values()]
        if remaining:
            await asyncio.gather(*remaining, return_exceptions=True)
        self.metrics.set_inflight(len(self.callbacks))
        return {**unfinished, **unstarted}


def _unsent(run: ClaimedRun, reason: str) -> Outcome:
    """The outcome of an attempt handed back without being sent."""
    return Outcome(
        run_id=run.id,
        attempt=run.attempt,
        status=QUEUED,
        retry_delay=0.0,
        http_status=None,
        error=reason,
        duration_ms=0.0,
        sent=False,
    )


@functools.lru_cache(maxsize=4096)
def callback_url(
    backend_url: str, path: str, allowed_networks: tuple[str, ...]
) -> yarl.URL:
    """The backend URL joined with the path, checked and parsed once.

    aiohttp does not ask the resolver about IP-literal hosts, so the stored
    URL is validated again here (a row may predate a stricter policy).
    """
    checked = validate_backend_url(backend_url, allowed_networks)
    return yarl.URL(checked.rstrip("/") + path)


@functools.lru_cache(maxsize=256)
def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=seconds)


def callback_path(run: ClaimedRun) -> str:
    """The trigger's path, or /triggers/<name> with the name escaped."""
    return run.path or f"/triggers/{quote(run.trigger_name, safe='')}"


def callback_body(run: ClaimedRun) -> bytes:
    """The documented request body; the payload goes in as stored."""
    return orjson.dumps(
        {
            "trigger": {"id": str(run.trigger_id), "name": run.trigger_name},
            "run": {
                "id": str(run.id),
                "attempt": run.attempt,
                "scheduled_at": run.scheduled_at.astimezone(UTC),
            },
            "application": {"id": str(run.application_id)},
            "payload": orjson.Fragment(run.payload),
        },
        option=orjson.OPT_UTC_Z,
    )


def decide(
    run: ClaimedRun,
    http_status: int | None,
    error: str | None,
    retry_after: float | None,
    cron: CronSettings,
) -> tuple[str, float]:
    """The run's next status and, for a retry, the delay before it."""
    if http_status is not None and 200 <= http_status < 300:
        return SUCCEEDED, 0.0
    if http_status is None:
        # Timeouts and connection errors are worth retrying; an address the
        # policy refuses stays refused.
        retryable = not (error or "").startswith(REFUSED)
    else:
        retryable = http_status in RETRYABLE_STATUSES or http_status >= 500
    if not retryable or run.attempt > run.max_retries:
        return FAILED, 0.0
    return QUEUED, retry_delay(run.attempt, retry_after, cron)


def retry_delay(attempt: int, retry_after: float | None, cron: CronSettings) -> float:
    """Exponential backoff with jitter, or the backend's Retry-After; capped."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), cron.retry_backoff_max)
    ceiling = min(cron.retry_backoff * 2 ** (attempt - 1), cron.retry_backoff_max)
    # Half fixed, half random: retries of runs that failed together spread
    # out instead of arriving at the backend in one burst.
    return ceiling / 2 + random.uniform(0, ceiling / 2)


async def _drain_body(response: aiohttp.ClientResponse, limit: int) -> None:
    """Read at most `limit` bytes so the connection can be reused; discard them.

    A larger body is not read to the end: the connection is closed instead.
    """
    read = 0
    content = response.content
    # A short body has usually arrived whole with the headers: then nothing
    # is awaited at all.
    while not content.at_eof():
        chunk = await content.read(min(65536, limit + 1 - read))
        if not chunk:
            return
        read += len(chunk)
        if read > limit:
            response.close()
            return


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    """Retry-After of a 429 or 503, in seconds (number or HTTP date)."""
    if response.status not in (429, 503):
        return None
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return (when - datetime.now(UTC)).total_seconds()


def _status_error(status: int) -> str | None:
    if 200 <= status < 300:
        return None
    if 300 <= status < 400:
        return f"HTTP {status} (redirects are not followed)"
    return f"HTTP {status}"


def _log_outcome(run: ClaimedRun, outcome: Outcome) -> None:
    fields: dict[str, Any] = {
        "app": str(run.application_id),
        "trigger": str(run.trigger_id),
        "run": str(run.id),
        "attempt": run.attempt,
        "status": outcome.http_status,
        "duration_ms": outcome.duration_ms,
    }
    if outcome.status == SUCCEEDED:
        log.info("callback succeeded", extra=fields)
        return
    fields["error"] = outcome.error
    if outcome.status == QUEUED:
        fields["retry_in_s"] = round(outcome.retry_delay, 3)
        log.warning("callback retrying", extra=fields)
    else:
        log.warning("callback failed", extra=fields)


def _reason(error: BaseException) -> str:
    return str(error).strip() or type(error).__name__


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
