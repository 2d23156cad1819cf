"""Cron maths for triggers: parsing, next fire times, DST and misfires.

Every function here is pure: the clock is always passed in, so the executor can
use the database clock and tests can use fixed instants.

Schedules
---------
- five fields, ``minute hour day-of-month month day-of-week``: standard cron at
  minute resolution; when both day fields are restricted, a day matching either
  one matches (Vixie cron);
- six fields, with seconds *first*: ``*/5 * * * * *`` fires every five seconds;
- descriptors: ``@yearly``, ``@annually``, ``@monthly``, ``@weekly``,
  ``@daily``, ``@midnight`` and ``@hourly``;
- ``@every <duration>``, the duration written as hours, minutes and seconds in
  that order, each at most once: ``@every 10s``, ``@every 1m30s``,
  ``@every 2h``. It is at least one second and at most 366 days.

A range whose two ends are equal, such as ``5-5``, means that one value, as in
standard cron (croniter alone would read it as the whole field).

Time zones and DST
------------------
Cron schedules are read on the wall clock of the trigger's time zone. Where the
clock changes:

- A schedule whose hour field names particular hours (``30 2 * * *``,
  ``@daily``) has *fixed hours*. When the clock falls back it fires once, at the
  first occurrence of the repeated wall time. A wall time skipped when the
  clock springs forward fires once, at the instant the skip ends (02:30 in
  Europe/Berlin on the spring-forward day fires at 03:00 local time); several
  skipped slots collapse into that one instant.
- A schedule whose hour field matches every hour (``*/15 * * * *``,
  ``@hourly``) is *interval-like* and follows real time: the repeated hour fires
  again on its second pass, and skipped wall times simply do not occur. Its
  slots stay evenly spaced in real time across both changes.

Either way a schedule never yields the same instant twice and never goes
backwards.

``@every`` intervals ignore the time zone altogether: they are anchored to the
Unix epoch in UTC, so ``@every 10s`` fires at :00, :10, :20 and so on, and
``@every 1h`` on the UTC hour, whichever zone the trigger names.

Misfires
--------
:func:`plan_due_slots` decides what happens to the slots that fell due while
nobody was dispatching them. Due slots are the stored ``next_run_at`` and
every slot after it up to and including ``now``. The latest due slot is the
current one and always fires, under every policy, exactly as a single due slot
does. The earlier ones are *missed*: each was overtaken by a later slot before
it could run. The policy decides their fate:

- ``fire_once`` (default): the run of the latest slot stands for all missed
  slots; they leave no record.
- ``skip``: missed slots are recorded as skipped runs and never dispatched;
  only the most recent ``catch_up_limit`` of them are recorded.
- ``catch_up``: missed slots fire too, oldest first, but only the most recent
  ``catch_up_limit`` of them; older ones leave no record.

However long the executor was down, planning walks back at most
``catch_up_limit + 1`` slots from ``now``: it never counts every missed slot.
"""

from __future__ import annotations

import copy
import enum
import functools
import re
import zoneinfo
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, croniter

from manager.errors import ScheduleError

DEFAULT_TIME_ZONE = "UTC"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)
_MICROSECOND = timedelta(microseconds=1)
_LONGEST_INTERVAL_SECONDS = 366 * 24 * 3600

# Any fixed wall time works as the start of the "does it ever fire" probe.
_PROBE_START = datetime(2000, 1, 1)

_DESCRIPTORS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_FIELD_NAMES = ("minute", "hour", "day-of-month", "month", "day-of-week")
_HOUR = 1

# Nine digits per unit already exceed the longest interval; the bound keeps
# int() away from its refusal of very long digit strings.
_DURATION = re.compile(r"(?:([0-9]{1,9})h)?(?:([0-9]{1,9})m)?(?:([0-9]{1,9})s)?")
_RANGE = re.compile(r"([0-9a-z]+)-([0-9a-z]+)(?:/\d+)?", re.IGNORECASE)

_MONTHS = (
    *("jan", "feb", "mar", "apr", "may", "jun"),
    *("jul", "aug", "sep", "oct", "nov", "dec"),
)
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_NAMED_VALUES = {name: number for number, name in enumerate(_MONTHS, start=1)}
_NAMED_VALUES |= {name: number for number, name in enumerate(_WEEKDAYS)}


class Schedule(ABC):
    """A parsed schedule; `expression` is its normalised text."""

    expression: str

    @abstractmethod
    def next_after(self, after: datetime, zone: ZoneInfo) -> datetime:
        """The first fire instant strictly after `after`, in UTC."""

    @abstractmethod
    def previous_before(self, before: datetime, zone: ZoneInfo) -> datetime:
        """The last fire instant strictly before `before`, in UTC."""


@dataclass(frozen=True)
class IntervalSchedule(Schedule):
    """An ``@every`` schedule: fixed steps of real time from the Unix epoch."""

    expression: str
    interval: timedelta

    def next_after(self, after: datetime, zone: ZoneInfo) -> datetime:
        _require_aware(after)
        steps = (after - _EPOCH) // self.interval
        return _EPOCH + (steps + 1) * self.interval

    def previous_before(self, before: datetime, zone: ZoneInfo) -> datetime:
        _require_aware(before)
        steps = (before - _EPOCH - _MICROSECOND) // self.interval
        return _EPOCH + steps * self.interval


@dataclass(frozen=True)
class CronSchedule(Schedule):
    """A cron schedule, matched on the wall clock of a time zone."""

    expression: str
    fixed_hours: bool
    template: croniter = field(repr=False, compare=False)

    def next_after(self, after: datetime, zone: ZoneInfo) -> datetime:
        _require_aware(after)
        local = after.astimezone(zone)
        wall = _naive(local)

        if _is_repeated(wall, zone):
            return self._next_from_repeat(wall, local.fold, zone)
        return self._resolve_forward(self._wall_after(wall), zone)

    def previous_before(self, before: datetime, zone: ZoneInfo) -> datetime:
        _require_aware(before)
        local = before.astimezone(zone)
        wall = _naive(local)

        if _is_repeated(wall, zone):
            return self._previous_from_repeat(wall, local.fold, before, zone)
        return self._resolve_backward(self._wall_before(wall), before, zone)

    def _next_from_repeat(self, wall: datetime, fold: int, zone: ZoneInfo) -> datetime:
        """Step forward from a wall time the clock shows twice."""
        transition = _transition_at(wall, zone)
        if fold == 0:
            candidate = self._wall_after(wall)
            if candidate < transition.wall_end:
                return _to_utc(candidate, zone)
            if not self.fixed_hours:
                # The clock is about to run through the repeated wall times
                # again, and interval-like schedules fire on that pass too.
                candidate = self._wall_after(transition.wall_start - _SECOND)
            return self._resolve_forward(candidate, zone, transition)

        # Already on the second pass: fixed hours fired on the first one.
        start = transition.wall_end - _SECOND if self.fixed_hours else wall
        return self._resolve_forward(self._wall_after(start), zone, transition)

    def _resolve_forward(
        self,
        candidate: datetime,
        zone: ZoneInfo,
        repeat: _Transition | None = None,
    ) -> datetime:
        """The earliest instant of `candidate`, skipping what the clock skips.

        With `repeat`, the clock is on the second pass through those wall times.
        """
        if repeat is not None and candidate < repeat.wall_end:
            return _to_utc(candidate, zone, fold=1)

        while True:
            if not _is_skipped(candidate, zone):
                return _to_utc(candidate, zone)

            transition = _transition_at(candidate, zone)
            if self.fixed_hours:
                return transition.instant
            candidate = self._wall_after(transition.wall_end - _SECOND)

    def _previous_from_repeat(
        self, wall: datetime, fold: int, before: datetime, zone: ZoneInfo
    ) -> datetime:
        """Step back from a wall time the clock shows twice."""
        transition = _transition_at(wall, zone)
        if fold == 1 and not self.fixed_hours:
            candidate = self._wall_before(wall)
            if candidate >= transition.wall_start:
                return _to_utc(candidate, zone, fold=1)

        # From the second pass, the whole first pass lies behind us.
        end = transition.wall_end if fold == 1 else wall
        candidate = self._wall_before(end)
        if candidate >= transition.wall_start:
            return _to_utc(candidate, zone)
        return self._resolve_backward(candidate, before, zone)

    def _resolve_backward(
        self, candidate: datetime, before: datetime, zone: ZoneInfo
    ) -> datetime:
        """The latest instant of `candidate` that is before `before`."""
        while True:
            if _is_repeated(candidate, zone):
                return _to_utc(candidate, zone, fold=0 if self.fixed_hours else 1)
            if not _is_skipped(candidate, zone):
                return _to_utc(candidate, zone)

            transition = _transition_at(candidate, zone)
            if self.fixed_hours and transition.instant < before:
                return transition.instant
            candidate = self._wall_before(transition.wall_start)

    def _wall_after(self, wall: datetime) -> datetime:
        """The first matching wall time strictly after `wall`."""
        # Slots fall on whole seconds, so dropping the fraction changes nothing
        # and keeps croniter's float timestamps exact. The copy keeps the
        # cached template free of per-call state.
        start = wall.replace(microsecond=0)
        return copy.copy(self.template).get_next(datetime, start_time=start)

    def _wall_before(self, wall: datetime) -> datetime:
        """The last matching wall time strictly before `wall`."""
        start = wall
        if wall.microsecond:
            start = wall.replace(microsecond=0) + _SECOND
        return copy.copy(self.template).get_prev(datetime, start_time=start)


class MisfirePolicy(enum.StrEnum):
    """What to do with slots that fell due while no executor was running."""

    FIRE_ONCE = "fire_once"
    SKIP = "skip"
    CATCH_UP = "catch_up"


@dataclass(frozen=True)
class SlotPlan:
    """What to do with the due slots of one trigger.

    `fire` lists slots to create runs for and dispatch, oldest first;
    `skipped` lists slots to record as skipped runs; `next_run_at` is the first
    slot strictly after now.
    """

    fire: list[datetime]
    skipped: list[datetime]
    next_run_at: datetime


@functools.lru_cache(maxsize=4096)
def parse_schedule(expression: str) -> Schedule:
    """Parse a schedule expression, raising ScheduleError if it is not valid."""
    text = " ".join(expression.split())
    if not text:
        raise ScheduleError("schedule is empty")

    if text.startswith("@"):
        text = text.lower()
        if text.startswith("@every"):
            return _parse_interval(text)
        return _parse_descriptor(text)
    return _parse_cron(text, text.split(" "))


def parse_timezone(name: str) -> ZoneInfo:
    """The IANA time zone called `name`, raising ScheduleError if unknown."""
    if name not in _zone_names():
        raise ScheduleError(f"unknown time zone '{name}'")
    return ZoneInfo(name)


def parse_misfire_policy(value: str) -> MisfirePolicy:
    """The misfire policy called `value`, raising ScheduleError if unknown."""
    try:
        return MisfirePolicy(value)
    except ValueError:
        allowed = ", ".join(policy.value for policy in MisfirePolicy)
        message = f"unknown misfire policy '{value}'; expected one of {allowed}"
        raise ScheduleError(message) from None


def next_fire_times(
    schedule: Schedule, zone: ZoneInfo, after: datetime, count: int
) -> list[datetime]:
    """The next `count` fire instants strictly after `after`, in UTC."""
    if count < 0:
        raise ValueError(f"count must be 0 or more, got {count}")

    instants: list[datetime] = []
    instant = after
    for _ in range(count):
        instant = schedule.next_after(instant, zone)
        instants.append(instant)
    return instants


def plan_due_slots(
    schedule: Schedule,
    zone: ZoneInfo,
    next_run_at: datetime,
    now: datetime,
    policy: MisfirePolicy,
    catch_up_limit: int,
) -> SlotPlan:
    """Decide which due slots fire and which are recorded as skipped.

    See the module docstring for the rules. A `next_run_at` later than `now`
    means nothing is due yet: the plan is empty and keeps `next_run_at`.
    """
    policy = parse_misfire_policy(policy)
    if catch_up_limit < 0:
        message = f"catch-up limit must be 0 or more, got {catch_up_limit}"
        raise ScheduleError(message)
    if next_run_at > now:
        return SlotPlan(fire=[], skipped=[], next_run_at=next_run_at)

    # The common case costs one step: only the stored slot is due.
    upcoming = schedule.next_after(next_run_at, zone)
    if upcoming > now:
        return SlotPlan(fire=[next_run_at], skipped=[], next_run_at=upcoming)

    # fire_once needs only the latest slot, so it walks back no further.
    kept = 0 if policy is MisfirePolicy.FIRE_ONCE else catch_up_limit
    due = _latest_due_slots(schedule, zone, next_run_at, now, kept + 1)
    missed, latest = due[:-1], due[-1]
    upcoming = schedule.next_after(now, zone)

    if policy is MisfirePolicy.CATCH_UP:
        return SlotPlan(fire=due, skipped=[], next_run_at=upcoming)
    skipped = missed if policy is MisfirePolicy.SKIP else []
    return SlotPlan(fire=[latest], skipped=skipped, next_run_at=upcoming)


def _latest_due_slots(
    schedule: Schedule,
    zone: ZoneInfo,
    next_run_at: datetime,
    now: datetime,
    limit: int,
) -> list[datetime]:
    """The most recent `limit` due slots, oldest first."""
    # datetime counts in microseconds, so "before now + 1 µs" is "at or
    # before now".
    slots: list[datetime] = []
    slot = schedule.previous_before(now + _MICROSECOND, zone)
    while slot > next_run_at and len(slots) < limit:
        slots.append(slot)
        slot = schedule.previous_before(slot, zone)

    # The stored instant was due even if the schedule changed since.
    if len(slots) < limit:
        slots.append(next_run_at)
    slots.reverse()
    return slots


def _parse_interval(text: str) -> IntervalSchedule:
    """Parse ``@every <duration>``."""
    keyword, _, duration = text.partition(" ")
    if keyword != "@every":
        raise ScheduleError(f"unknown descriptor '{keyword}'")
    if not duration:
        raise ScheduleError("expected a duration after @every, such as '@every 10s'")

    match = _DURATION.fullmatch(duration)
    if match is None:
        raise ScheduleError(f"invalid duration '{duration}'")

    # Whole seconds as an int first: timedelta would overflow on absurd input.
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total < 1:
        raise ScheduleError(f"duration '{duration}' must be at least 1s")
    if total > _LONGEST_INTERVAL_SECONDS:
        raise ScheduleError(f"duration '{duration}' must be at most 366 days")

    interval = timedelta(seconds=total)
    return IntervalSchedule(expression=text, interval=interval)


def _parse_descriptor(text: str) -> CronSchedule:
    """Parse ``@daily`` and its kin into the cron expression they stand for."""
    if text not in _DESCRIPTORS:
        raise ScheduleError(f"unknown descriptor '{text}'")
    return _parse_cron(text, _DESCRIPTORS[text].split(" "))


def _parse_cron(expression: str, fields: list[str]) -> CronSchedule:
    """Build a cron schedule from five fields, or six with seconds first."""
    if len(fields) not in (5, 6):
        raise ScheduleError(f"expected 5 or 6 fields, got {len(fields)}")

    names = ("second", *_FIELD_NAMES) if len(fields) == 6 else _FIELD_NAMES
    for name, text in zip(names, fields, strict=True):
        _check_field(name, text)

    # croniter reads six fields with the seconds last.
    ordered = [*fields[1:], fields[0]] if len(fields) == 6 else fields
    template = _cron_template(" ".join(_single_values(text) for text in ordered))
    if template is None:
        raise ScheduleError(f"invalid cron expression '{expression}'")

    _check_fires(template, expression)
    fixed_hours = template.expanded[_HOUR] != ["*"]
    return CronSchedule(expression, fixed_hours, template)


def _check_field(name: str, text: str) -> None:
    """Raise ScheduleError naming the field if croniter refuses it alone."""
    # croniter turns "R" into a random value: a schedule would change from
    # one parse to the next.
    if any(part[:1] in ("r", "R") for part in text.split(",")):
        raise ScheduleError(f"invalid {name} field '{text}'")

    fields = ["*"] * 6
    position = 5 if name == "second" else _FIELD_NAMES.index(name)
    fields[position] = _single_values(text)
    if _cron_template(" ".join(fields)) is None:
        raise ScheduleError(f"invalid {name} field '{text}'")


def _single_values(text: str) -> str:
    """Rewrite ranges with equal ends, such as ``5-5``, as the one value."""
    # croniter reads an equal range as the whole field: "5-5" would fire
    # every minute.
    parts = []
    for part in text.split(","):
        match = _RANGE.fullmatch(part)
        if match and _value(match[1]) == _value(match[2]):
            part = match[1]
        parts.append(part)
    return ",".join(parts)


def _value(token: str) -> str:
    """The number a field token stands for, as text; unknown tokens as is."""
    token = token.lower()
    if token.isdigit():
        # Compared as text: int() refuses very long digit strings.
        return token.lstrip("0") or "0"
    return str(_NAMED_VALUES.get(token, token))


def _cron_template(expression: str) -> croniter | None:
    """A croniter for `expression` on naive wall times, or None if refused."""
    try:
        return croniter(expression, _PROBE_START)
    except (ValueError, TypeError, KeyError, IndexError):
        return None


def _check_fires(template: croniter, expression: str) -> None:
    """Refuse expressions that no date matches, such as ``0 0 30 2 *``."""
    try:
        copy.copy(template).get_next(datetime, start_time=_PROBE_START)
    except CroniterBadDateError:
        raise ScheduleError(f"schedule '{expression}' never fires") from None


@functools.cache
def _zone_names() -> frozenset[str]:
    """Names parse_timezone accepts."""
    # "localtime" is the host's own zone and would differ between machines.
    return frozenset(zoneinfo.available_timezones() - {"localtime"})


@dataclass(frozen=True)
class _Transition:
    """A change of UTC offset and the wall times it skips or repeats."""

    instant: datetime
    wall_start: datetime
    wall_end: datetime


def _transition_at(wall: datetime, zone: ZoneInfo) -> _Transition:
    """The offset change that makes `wall` skipped or repeated."""
    first, second = _offsets(wall, zone)
    low = (wall - max(first, second)).replace(tzinfo=UTC)
    high = (wall - min(first, second)).replace(tzinfo=UTC)

    # `low` still has the old offset and `high` the new one; zones change
    # offset on whole seconds, so halving down to one second finds the change.
    while high - low > _SECOND:
        middle = low + _SECOND * ((high - low) // _SECOND // 2)
        if middle.astimezone(zone).utcoffset() == first:
            low = middle
        else:
            high = middle

    wall_start = (high + min(first, second)).replace(tzinfo=None)
    wall_end = (high + max(first, second)).replace(tzinfo=None)
    return _Transition(instant=high, wall_start=wall_start, wall_end=wall_end)


def _offsets(wall: datetime, zone: ZoneInfo) -> tuple[timedelta, timedelta]:
    """The UTC offsets of `wall` before and after a transition (folds 0, 1)."""
    first = wall.replace(tzinfo=zone, fold=0).utcoffset()
    second = wall.replace(tzinfo=zone, fold=1).utcoffset()
    assert first is not None and second is not None
    return first, second


def _is_repeated(wall: datetime, zone: ZoneInfo) -> bool:
    """Whether the clock shows `wall` twice, as when it falls back."""
    first, second = _offsets(wall, zone)
    return first > second


def _is_skipped(wall: datetime, zone: ZoneInfo) -> bool:
    """Whether the clock never shows `wall`, as when it springs forward."""
    first, second = _offsets(wall, zone)
    return first < second


def _to_utc(wall: datetime, zone: ZoneInfo, fold: int = 0) -> datetime:
    """The UTC instant of a wall time; `fold` picks a repeated one's pass."""
    return wall.replace(tzinfo=zone, fold=fold).astimezone(UTC)


def _naive(local: datetime) -> datetime:
    """The wall time of an aware local datetime, fold reset."""
    return local.replace(tzinfo=None, fold=0)


def _require_aware(instant: datetime) -> None:
    """Refuse naive datetimes, which would silently mean the host's zone."""
    if instant.utcoffset() is None:
        raise ValueError(f"expected an aware datetime, got {instant!r}")
