"""Triggers and their runs as the API and tests create and read them.

Every change to a trigger, and every run requested through the API, sends a
NOTIFY on TRIGGERS_CHANNEL inside the same transaction, so the executor
wakes up as soon as the change is committed and not before.
"""

from __future__ import annotations

import base64
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from manager.db.pool import TRIGGERS_CHANNEL
from manager.errors import InvalidInputError, NotFoundError, ScheduleError
from manager.schedule import MisfirePolicy, parse_schedule, parse_timezone
from manager.store.common import (
    Queryable,
    clean_name,
    delete_row,
    fetch_row,
    parent_exists,
    parse_id,
    transaction,
    unique_name,
)

MAX_PAYLOAD_BYTES = 256 * 1024
MAX_PATH_LENGTH = 1024
MAX_TIMEOUT_SECONDS = 3600.0
MAX_RETRIES = 100
RUN_STATUSES = ("queued", "running", "succeeded", "failed", "skipped")


@dataclass(frozen=True)
class Trigger:
    id: uuid.UUID
    application_id: uuid.UUID
    name: str
    schedule: str
    timezone: str
    enabled: bool
    payload: Any
    path: str | None
    timeout_seconds: float
    max_retries: int
    misfire_policy: str
    next_run_at: datetime | None
    last_run_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @property
    def callback_path(self) -> str:
        """Where on the backend the callback goes: the path or the default."""
        return self.path or f"/triggers/{self.name}"


@dataclass(frozen=True)
class TriggerRun:
    id: uuid.UUID
    trigger_id: uuid.UUID
    application_id: uuid.UUID
    scheduled_at: datetime
    manual: bool
    status: str
    attempt: int
    started_at: datetime | None
    finished_at: datetime | None
    http_status: int | None
    error: str | None
    duration_ms: float | None
    created_at: datetime


@dataclass(frozen=True)
class RunPage:
    runs: list[TriggerRun]
    has_next_page: bool
    end_cursor: str | None
    total_count: int


TRIGGER_COLUMNS = """
id, application_id, name, schedule, timezone, enabled, payload, path,
timeout_seconds, max_retries, misfire_policy, next_run_at, last_run_at,
created_at, updated_at
"""

RUN_COLUMNS = """
id, trigger_id, application_id, scheduled_at, manual, status, attempt,
started_at, finished_at, http_status, error, duration_ms, created_at
"""


def trigger_from_row(row: asyncpg.Record) -> Trigger:
    return Trigger(**dict(row))


def run_from_row(row: asyncpg.Record) -> TriggerRun:
    return TriggerRun(**dict(row))


# Create a trigger.
INSERT_TRIGGER = f"""
INSERT INTO triggers (
    application_id, name, schedule, timezone, enabled, payload, path,
    timeout_seconds, max_retries, misfire_policy, next_run_at
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
RETURNING {TRIGGER_COLUMNS}
"""

# Replace every editable field of a trigger.
UPDATE_TRIGGER = f"""
UPDATE triggers SET
    name = $2, schedule = $3, timezone = $4, enabled = $5, payload = $6,
    path = $7, timeout_seconds = $8, max_retries = $9, misfire_policy = $10,
    next_run_at = $11, updated_at = now()
WHERE id = $1
RETURNING {TRIGGER_COLUMNS}
"""

# Wake the executor once this transaction commits.
NOTIFY_EXECUTOR = "SELECT pg_notify($1, $2)"

# Queue a run now, outside the schedule ("run now").
INSERT_MANUAL_RUN = f"""
INSERT INTO trigger_runs (trigger_id, application_id, scheduled_at, manual)
SELECT id, application_id, now(), true FROM triggers WHERE id = $1
RETURNING {RUN_COLUMNS}
"""


@dataclass(frozen=True)
class TriggerFields:
    """The validated, editable fields of a trigger."""

    name: str
    schedule: str
    timezone: str = "UTC"
    enabled: bool = True
    payload: Any = None
    path: str | None = None
    timeout_seconds: float = 30.0
    max_retries: int = 3
    misfire_policy: str = MisfirePolicy.FIRE_ONCE.value

    def validated(self) -> TriggerFields:
        """A copy with every field checked and normalised, or InvalidInputError."""
        try:
            parse_schedule(self.schedule)
        except ScheduleError as error:
            raise InvalidInputError("schedule", f"schedule: {error}") from None
        try:
            parse_timezone(self.timezone)
        except ScheduleError as error:
            raise InvalidInputError("timezone", f"timezone: {error}") from None
        return replace(
            self,
            name=clean_name(self.name),
            schedule=self.schedule.strip(),
            enabled=_boolean(self.enabled, "enabled"),
            payload=_payload(self.payload),
            path=_path(self.path),
            timeout_seconds=_timeout(self.timeout_seconds),
            max_retries=_retries(self.max_retries),
            misfire_policy=_policy(self.misfire_policy),
        )


def _boolean(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInputError(field, f"{field}: expected true or false")
    return value


def _payload(value: Any) -> Any:
    if value is None:
        return {}
    try:
        encoded = orjson.dumps(value)
    except TypeError:
        raise InvalidInputError("payload", "payload: not valid JSON") from None
    if len(encoded) > MAX_PAYLOAD_BYTES:
        raise InvalidInputError(
            "payload", f"payload: at most {MAX_PAYLOAD_BYTES} bytes of JSON"
        )
    if b"\\u0000" in encoded:
        raise InvalidInputError("payload", "payload: must not contain NUL characters")
    return value


def _path(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidInputError("path", "path: expected a string")
    if not value.startswith("/") or value.startswith("//"):
        raise InvalidInputError("path", "path: must start with a single '/'")
    if len(value) > MAX_PATH_LENGTH:
        raise InvalidInputError("path", f"path: at most {MAX_PATH_LENGTH} characters")
    if any(char.isspace() or ord(char) < 32 for char in value) or "#" in value:
        raise InvalidInputError(
            "path", "path: must not contain spaces, control characters or '#'"
        )
    return value


def _timeout(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError("timeoutSeconds", "timeoutSeconds: expected a number")
    if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT_SECONDS):
        raise InvalidInputError(
            "timeoutSeconds",
            f"timeoutSeconds: must be above 0 and at most {MAX_TIMEOUT_SECONDS:g}",
        )
    return float(value)


def _retries(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError("maxRetries", "maxRetries: expected a whole number")
    if not 0 <= value <= MAX_RETRIES:
        raise InvalidInputError(
            "maxRetries", f"maxRetries: must be from 0 to {MAX_RETRIES}"
        )
    return value


def _policy(value: Any) -> str:
    allowed = [policy.value for policy in MisfirePolicy]
    text = str(value).lower()
    if text not in allowed:
        raise InvalidInputError(
            "misfirePolicy", f"misfirePolicy: expected one of {', '.join(allowed)}"
        )
    return text


def next_fire_after(fields: TriggerFields, now: datetime) -> datetime | None:
    """The trigger's next slot after `now`, or None while it is disabled."""
    if not fields.enabled:
        return None
    schedule = parse_schedule(fields.schedule)
    return schedule.next_after(now, parse_timezone(fields.timezone))


def _arguments(fields: TriggerFields, next_run_at: datetime | None) -> list[Any]:
    return [
        fields.name,
        fields.schedule,
        fields.timezone,
        fields.enabled,
        fields.payload,
        fields.path,
        fields.timeout_seconds,
        fields.max_retries,
        fields.misfire_policy,
        next_run_at,
    ]


async def create_trigger(
    db: Queryable, application_id: Any, fields: TriggerFields
) -> Trigger:
    application = parse_id(application_id, "applicationId")
    fields = fields.validated()
    async with transaction(db) as connection:
        now = await connection.fetchval("SELECT now()")
        async with (
            unique_name("trigger", "application", fields.name),
            parent_exists("application", "applicationId", application),
        ):
            row = await connection.fetchrow(
                INSERT_TRIGGER,
                application,
                *_arguments(fields, next_fire_after(fields, now)),
            )
        await connection.execute(NOTIFY_EXECUTOR, TRIGGERS_CHANNEL, str(row["id"]))
    return trigger_from_row(row)


async def get_trigger(db: Queryable, trigger_id: Any) -> Trigger:
    return trigger_from_row(await fetch_row(db, "trigger", TRIGGER_COLUMNS, trigger_id))


async def list_triggers(
    db: Queryable, application_ids: Sequence[uuid.UUID]
) -> list[Trigger]:
    """Triggers of the given applications, by name."""
    rows = await db.fetch(
        f"""
        SELECT {TRIGGER_COLUMNS} FROM triggers
        WHERE application_id = ANY($1) ORDER BY name
        """,
        list(application_ids),
    )
    return [trigger_from_row(row) for row in rows]


async def update_trigger(db: Queryable, trigger_id: Any, **changes: Any) -> Trigger:
    """Change the named fields of a trigger (names as in TriggerFields)."""
    identifier = parse_id(trigger_id)
    unknown = set(changes) - set(TriggerFields.__dataclass_fields__)
    if unknown:
        field = sorted(unknown)[0]
        raise InvalidInputError(field, f"{field}: not a trigger field")

    async with transaction(db) as connection:
        row = await connection.fetchrow(
            f"SELECT {TRIGGER_COLUMNS} FROM triggers WHERE id = $1 FOR UPDATE",
            identifier,
        )
        if row is None:
            raise NotFoundError(f"trigger {trigger_id} does not exist")
        current = trigger_from_row(row)
        fields = replace(_fields_of(current), **changes).validated()

        timing_changed = (
            fields.schedule != current.schedule
            or fields.timezone != current.timezone
            or fields.enabled != current.enabled
        )
        next_run_at = current.next_run_at
        if timing_changed or (fields.enabled and next_run_at is None):
            now = await connection.fetchval("SELECT now()")
            next_run_at = next_fire_after(fields, now)

        async with unique_name("trigger", "application", fields.name):
            row = await connection.fetchrow(
                UPDATE_TRIGGER, identifier, *_arguments(fields, next_run_at)
            )
        await connection.execute(NOTIFY_EXECUTOR, TRIGGERS_CHANNEL, str(identifier))
    return trigger_from_row(row)


def _fields_of(trigger: Trigger) -> TriggerFields:
    return TriggerFields(
        name=trigger.name,
        schedule=trigger.schedule,
        timezone=trigger.timezone,
        enabled=trigger.enabled,
        payload=trigger.payload,
        path=trigger.path,
        timeout_seconds=trigger.timeout_seconds,
        max_retries=trigger.max_retries,
        misfire_policy=trigger.misfire_policy,
    )


async def set_trigger_enabled(db: Queryable, trigger_id: Any, enabled: bool) -> Trigger:
    """Pause (False) or resume (True); resuming schedules from now on."""
    return await update_trigger(db, trigger_id, enabled=enabled)


async def delete_trigger(db: Queryable, trigger_id: Any) -> None:
    async with transaction(db) as connection:
        identifier = await delete_row(connection, "trigger", trigger_id)
        await connection.execute(NOTIFY_EXECUTOR, TRIGGERS_CHANNEL, str(identifier))


async def request_run(db: Queryable, trigger_id: Any) -> TriggerRun:
    """Queue a run of the trigger now, outside its schedule."""
    identifier = parse_id(trigger_id)
    async with transaction(db) as connection:
        row = await connection.fetchrow(INSERT_MANUAL_RUN, identifier)
        if row is None:
            raise NotFoundError(f"trigger {trigger_id} does not exist")
        await connection.execute(NOTIFY_EXECUTOR, TRIGGERS_CHANNEL, str(identifier))
    return run_from_row(row)


async def get_run(db: Queryable, run_id: Any) -> TriggerRun:
    return run_from_row(await fetch_row(db, "run", RUN_COLUMNS, run_id))


def encode_cursor(run: TriggerRun) -> str:
    text = f"{run.scheduled_at.isoformat()}|{run.id}"
    return base64.urlsafe_b64encode(text.encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        text = base64.urlsafe_b64decode(cursor.encode()).decode()
        instant, identifier = text.split("|")
        return datetime.fromisoformat(instant), uuid.UUID(identifier)
    except (ValueError, UnicodeError):
        raise InvalidInputError("after", "after: not a cursor from this API") from None


# A page of one trigger's runs, newest first, after a (scheduled_at, id) key.
SELECT_RUN_PAGE = f"""
SELECT {RUN_COLUMNS} FROM trigger_runs
WHERE trigger_id = $1
  AND ($2::text IS NULL OR status = $2)
  AND ($3::timestamptz IS NULL OR (scheduled_at, id) < ($3, $4::uuid))
ORDER BY scheduled_at DESC, id DESC
LIMIT $5
"""

# How many runs of one trigger match the status filter.
COUNT_RUNS = """
SELECT count(*) FROM trigger_runs
WHERE trigger_id = $1 AND ($2::text IS NULL OR status = $2)
"""


async def list_runs(
    db: Queryable,
    trigger_id: Any,
    status: str | None = None,
    first: int = 50,
    after: str | None = None,
) -> RunPage:
    """One page of a trigger's run history, newest first."""
    identifier = parse_id(trigger_id, "triggerId")
    if status is not None and status not in RUN_STATUSES:
        raise InvalidInputError("status", f"status: expected one of {RUN_STATUSES}")
    if first < 0:
        raise InvalidInputError("first", "first: must not be negative")
    after_at, after_id = decode_cursor(after) if after else (None, None)

    rows = await db.fetch(
        SELECT_RUN_PAGE, identifier, status, after_at, after_id, first + 1
    )
    total = await db.fetchval(COUNT_RUNS, identifier, status)
    runs = [run_from_row(row) for row in rows[:first]]
    return RunPage(
        runs=runs,
        has_next_page=len(rows) > first,
        end_cursor=encode_cursor(runs[-1]) if runs else None,
        total_count=total,
    )
