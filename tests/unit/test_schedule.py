"""Unit tests of manager.schedule: parsing, fire times, DST and misfires."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import given
from hypothesis import strategies as st

from manager.errors import ScheduleError
from manager.schedule import (
    CronSchedule,
    IntervalSchedule,
    MisfirePolicy,
    Schedule,
    SlotPlan,
    next_fire_times,
    parse_misfire_policy,
    parse_schedule,
    parse_timezone,
    plan_due_slots,
)

BERLIN = ZoneInfo("Europe/Berlin")
UTC_ZONE = ZoneInfo("UTC")
MINUTE = timedelta(minutes=1)


def utc(
    year: int,
    month: int,
    day: int,
    hour: int = 0,
    minute: int = 0,
    second: int = 0,
    microsecond: int = 0,
) -> datetime:
    return datetime(year, month, day, hour, minute, second, microsecond, UTC)


def wall_clock(instants: list[datetime], zone: ZoneInfo) -> list[str]:
    return [instant.astimezone(zone).strftime("%d %H:%M:%S%z") for instant in instants]


# Parsing


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("*/15 * * * *", utc(2026, 5, 4, 10, 7), utc(2026, 5, 4, 10, 15)),
        ("0 9 * * MON-FRI", utc(2026, 5, 2, 12), utc(2026, 5, 4, 9)),
        ("0 0 1 * MON", utc(2026, 5, 2), utc(2026, 5, 4)),
        ("*/5 * * * * *", utc(2026, 5, 4, 10, 0, 2), utc(2026, 5, 4, 10, 0, 5)),
        ("30 15 10 * * *", utc(2026, 5, 4, 9), utc(2026, 5, 4, 10, 15, 30)),
        ("5-5 * * * *", utc(2026, 5, 4, 10, 6), utc(2026, 5, 4, 11, 5)),
        ("0 0 * * sun-sun", utc(2026, 5, 4), utc(2026, 5, 10)),
        ("@yearly", utc(2026, 5, 4), utc(2027, 1, 1)),
        ("@annually", utc(2026, 5, 4), utc(2027, 1, 1)),
        ("@monthly", utc(2026, 5, 4), utc(2026, 6, 1)),
        ("@weekly", utc(2026, 5, 4), utc(2026, 5, 10)),
        ("@daily", utc(2026, 5, 4, 1), utc(2026, 5, 5)),
        ("@midnight", utc(2026, 5, 4, 1), utc(2026, 5, 5)),
        ("@hourly", utc(2026, 5, 4, 1, 1), utc(2026, 5, 4, 2)),
        ("@Daily", utc(2026, 5, 4, 1), utc(2026, 5, 5)),
        ("@every 10s", utc(2026, 5, 4, 1, 0, 3), utc(2026, 5, 4, 1, 0, 10)),
        ("@every 1m30s", utc(2026, 5, 4, 1, 0, 3), utc(2026, 5, 4, 1, 1, 30)),
        ("@every 2h", utc(2026, 5, 4, 1, 0, 3), utc(2026, 5, 4, 2)),
        ("  @every   90m ", utc(2026, 5, 4, 1, 0, 3), utc(2026, 5, 4, 1, 30)),
    ],
)
def test_parse_schedule_accepts_every_documented_form(
    expression: str, after: datetime, expected: datetime
) -> None:
    schedule = parse_schedule(expression)

    assert schedule.next_after(after, UTC_ZONE) == expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("", "schedule is empty"),
        ("* * *", "expected 5 or 6 fields, got 3"),
        ("* * * * * * *", "expected 5 or 6 fields, got 7"),
        ("61 * * * *", "invalid minute field '61'"),
        ("* 24 * * *", "invalid hour field '24'"),
        ("* * 0 * *", "invalid day-of-month field '0'"),
        ("* * * 13 *", "invalid month field '13'"),
        ("* * * * 8", "invalid day-of-week field '8'"),
        ("60 * * * * *", "invalid second field '60'"),
        ("*/0 * * * *", "invalid minute field '*/0'"),
        ("1,,2 * * * *", "invalid minute field '1,,2'"),
        ("R * * * *", "invalid minute field 'R'"),
        ("H * * * *", "invalid minute field 'H'"),
        ("0 0 30 2 *", "schedule '0 0 30 2 *' never fires"),
        ("@fortnightly", "unknown descriptor '@fortnightly'"),
        ("@daily 5", "unknown descriptor '@daily 5'"),
        ("@everyday", "unknown descriptor '@everyday'"),
        ("@every", "expected a duration after @every"),
        ("@every 10x", "invalid duration '10x'"),
        ("@every 10", "invalid duration '10'"),
        ("@every 30s1m", "invalid duration '30s1m'"),
        ("@every 1.5h", "invalid duration '1.5h'"),
        ("@every 0s", "duration '0s' must be at least 1s"),
        ("@every 0h0m0s", "must be at least 1s"),
        ("@every 8785h", "must be at most 366 days"),
        ("@every 99999999999999999999999999h", "invalid duration"),
        ("@every 999999999h", "must be at most 366 days"),
        ("@every " + "9" * 5000 + "s", "invalid duration"),
        ("1" * 5000 + "-" + "1" * 5000 + " * * * *", "invalid minute field"),
    ],
)
def test_parse_schedule_says_what_is_wrong(expression: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=message.replace("*", r"\*")):
        parse_schedule(expression)


@given(st.text(alphabet="0123456789*/-,@ LWHR#?abcdefhmosvxyz", max_size=40))
def test_parse_schedule_raises_only_schedule_errors(expression: str) -> None:
    try:
        schedule = parse_schedule(expression)
    except ScheduleError:
        return

    assert isinstance(schedule, Schedule)


def test_parse_schedule_caches_by_expression() -> None:
    assert parse_schedule("17 */3 * * *") is parse_schedule("17 */3 * * *")


def test_hour_field_decides_between_fixed_hours_and_interval_like() -> None:
    fixed = parse_schedule("*/15 2 * * *")
    interval_like = parse_schedule("0 0-23 * * *")

    assert isinstance(fixed, CronSchedule) and fixed.fixed_hours
    assert isinstance(interval_like, CronSchedule)
    assert not interval_like.fixed_hours


def test_naive_datetimes_are_refused() -> None:
    for schedule in (parse_schedule("* * * * *"), parse_schedule("@every 5s")):
        with pytest.raises(ValueError, match="aware"):
            schedule.next_after(datetime(2026, 5, 4), UTC_ZONE)
        with pytest.raises(ValueError, match="aware"):
            schedule.previous_before(datetime(2026, 5, 4), UTC_ZONE)


# Time zones


def test_parse_timezone_returns_the_named_zone() -> None:
    assert parse_timezone("UTC") == ZoneInfo("UTC")
    assert parse_timezone("Europe/Berlin") == BERLIN


@pytest.mark.parametrize(
    "name",
    ["Mars/Base", "", "utc", "Europe", "localtime", "../etc/passwd", "Europe/Berlin "],
)
def test_parse_timezone_refuses_unknown_names(name: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_timezone(name)

    assert str(caught.value) == f"unknown time zone '{name}'"


def test_results_are_utc_whatever_the_zone() -> None:
    instant = parse_schedule("0 9 * * *").next_after(utc(2026, 5, 4), BERLIN)

    assert instant == utc(2026, 5, 4, 7)
    assert instant.tzinfo is UTC


# @every


def test_every_is_anchored_to_the_epoch_whatever_the_zone() -> None:
    kolkata = ZoneInfo("Asia/Kolkata")
    after = utc(2026, 5, 4, 10, 0, 3)

    ten_seconds = next_fire_times(parse_schedule("@every 10s"), kolkata, after, 3)
    hourly = parse_schedule("@every 1h").next_after(after, kolkata)

    assert ten_seconds == [utc(2026, 5, 4, 10, 0, s) for s in (10, 20, 30)]
    assert hourly == utc(2026, 5, 4, 11)


def test_every_with_an_odd_interval_counts_from_the_epoch() -> None:
    schedule = parse_schedule("@every 7s")

    instants = next_fire_times(schedule, BERLIN, utc(2026, 5, 4, 10), 20)

    assert all(instant.timestamp() % 7 == 0 for instant in instants)
    assert {b - a for a, b in pairwise(instants)} == {timedelta(seconds=7)}


def test_every_previous_before_is_strict() -> None:
    schedule = parse_schedule("@every 10s")

    assert schedule.previous_before(utc(2026, 5, 4, 1, 0, 10), BERLIN) == utc(
        2026, 5, 4, 1, 0, 0
    )
    assert schedule.previous_before(
        utc(2026, 5, 4, 1, 0, 10) + timedelta(microseconds=1), BERLIN
    ) == utc(2026, 5, 4, 1, 0, 10)


# DST in Europe/Berlin: back on 2026-10-25 03:00 CEST, forward on 2026-03-29 02:00


def test_fixed_hour_fires_once_when_the_clock_falls_back() -> None:
    schedule = parse_schedule("30 2 * * *")

    instants = next_fire_times(schedule, BERLIN, utc(2026, 10, 24, 12), 3)

    assert instants == [
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 26, 1, 30),
        utc(2026, 10, 27, 1, 30),
    ]
    assert wall_clock(instants[:1], BERLIN) == ["25 02:30:00+0200"]


def test_fixed_hour_skipped_by_spring_forward_fires_when_the_gap_ends() -> None:
    schedule = parse_schedule("30 2 * * *")

    instants = next_fire_times(schedule, BERLIN, utc(2026, 3, 28, 12), 3)

    assert instants == [
        utc(2026, 3, 29, 1),
        utc(2026, 3, 30, 0, 30),
        utc(2026, 3, 31, 0, 30),
    ]
    assert wall_clock(instants[:1], BERLIN) == ["29 03:00:00+0200"]


def test_several_skipped_slots_collapse_into_one_instant() -> None:
    schedule = parse_schedule("*/15 2,3 * * *")

    instants = next_fire_times(schedule, BERLIN, utc(2026, 3, 28, 12), 4)

    assert wall_clock(instants, BERLIN) == [
        "29 03:00:00+0200",
        "29 03:15:00+0200",
        "29 03:30:00+0200",
        "29 03:45:00+0200",
    ]


def test_fixed_hour_with_stepped_minutes_fires_only_on_the_first_pass() -> None:
    schedule = parse_schedule("*/20 2 * * *")

    instants = next_fire_times(schedule, BERLIN, utc(2026, 10, 24, 12), 4)

    assert wall_clock(instants, BERLIN) == [
        "25 02:00:00+0200",
        "25 02:20:00+0200",
        "25 02:40:00+0200",
        "26 02:00:00+0100",
    ]


@pytest.mark.parametrize(
    ("day", "fires"),
    [((2026, 10, 25), 25 * 4), ((2026, 3, 29), 23 * 4), ((2026, 5, 4), 24 * 4)],
)
def test_interval_like_keeps_real_time_spacing_across_dst(
    day: tuple[int, int, int], fires: int
) -> None:
    schedule = parse_schedule("*/15 * * * *")
    start = datetime(*day, tzinfo=BERLIN)
    end = start + timedelta(days=1)

    instants = next_fire_times(schedule, BERLIN, start - MINUTE, fires + 1)

    assert instants[0] == start
    assert instants[fires] == end
    steps = {b - a for a, b in pairwise(instants)}
    assert steps == {timedelta(minutes=15)}


def test_hourly_fires_on_both_passes_of_the_repeated_hour() -> None:
    schedule = parse_schedule("@hourly")

    instants = next_fire_times(schedule, BERLIN, utc(2026, 10, 24, 22, 30), 4)

    assert wall_clock(instants, BERLIN) == [
        "25 01:00:00+0200",
        "25 02:00:00+0200",
        "25 02:00:00+0100",
        "25 03:00:00+0100",
    ]


def test_seconds_schedule_crosses_the_repeated_hour_in_real_time() -> None:
    schedule = parse_schedule("*/20 59 2 * * *")
    after = utc(2026, 10, 25, 0, 58, 59)

    instants = next_fire_times(schedule, BERLIN, after, 4)

    assert wall_clock(instants, BERLIN) == [
        "25 02:59:00+0200",
        "25 02:59:20+0200",
        "25 02:59:40+0200",
        "26 02:59:00+0100",
    ]


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        # 02:10 CET is the second pass; 02:30 already fired on the first.
        ("30 2 * * *", utc(2026, 10, 25, 1, 10), utc(2026, 10, 26, 1, 30)),
        ("*/15 * * * *", utc(2026, 10, 25, 1, 10), utc(2026, 10, 25, 1, 15)),
        ("*/15 * * * *", utc(2026, 10, 25, 0, 50), utc(2026, 10, 25, 1)),
        ("*/15 * * * *", utc(2026, 10, 25, 1, 50), utc(2026, 10, 25, 2)),
        ("30 2 * * *", utc(2026, 10, 25, 0, 10), utc(2026, 10, 25, 0, 30)),
        ("30 2 * * *", utc(2026, 10, 25, 0, 40), utc(2026, 10, 26, 1, 30)),
    ],
)
def test_next_after_from_inside_the_repeated_hour(
    expression: str, after: datetime, expected: datetime
) -> None:
    assert parse_schedule(expression).next_after(after, BERLIN) == expected


@pytest.mark.parametrize(
    ("expression", "before", "expected"),
    [
        ("30 2 * * *", utc(2026, 10, 25, 1, 40), utc(2026, 10, 25, 0, 30)),
        ("*/15 * * * *", utc(2026, 10, 25, 1, 10), utc(2026, 10, 25, 1)),
        ("*/15 * * * *", utc(2026, 10, 25, 1), utc(2026, 10, 25, 0, 45)),
        ("45 * * * *", utc(2026, 10, 25, 1, 10), utc(2026, 10, 25, 0, 45)),
        ("30 2 * * *", utc(2026, 3, 29, 1), utc(2026, 3, 28, 1, 30)),
        ("30 2 * * *", utc(2026, 3, 29, 1, 0, 1), utc(2026, 3, 29, 1)),
    ],
)
def test_previous_before_around_dst(
    expression: str, before: datetime, expected: datetime
) -> None:
    assert parse_schedule(expression).previous_before(before, BERLIN) == expected


# A brute-force oracle: walk every UTC minute and decide on the wall clock.

ORACLE_SCHEDULES = [
    "30 2 * * *",
    "*/15 * * * *",
    "0 * * * *",
    "*/20 1-3 * * *",
    "45 0,2 * * *",
    "0 0 * * *",
    "10 23 * * *",
    "*/7 * * * *",
]
ORACLE_TRANSITIONS = [
    ("Europe/Berlin", utc(2026, 3, 29, 1)),
    ("Europe/Berlin", utc(2026, 10, 25, 1)),
    ("America/New_York", utc(2026, 3, 8, 7)),
    ("America/New_York", utc(2026, 11, 1, 6)),
    ("Australia/Lord_Howe", utc(2026, 4, 4, 15)),
    ("Australia/Lord_Howe", utc(2026, 10, 3, 15, 30)),
    ("America/Santiago", utc(2026, 4, 5, 3)),
    ("America/Santiago", utc(2026, 9, 6, 4)),
    ("Asia/Kolkata", utc(2026, 6, 1)),
]


def oracle(
    expression: str, zone: ZoneInfo, start: datetime, end: datetime
) -> list[datetime]:
    expanded, _ = croniter.expand(expression)
    allowed = [None if values == ["*"] else set(values) for values in expanded]
    fixed_hours = allowed[1] is not None

    def matches(wall: datetime) -> bool:
        weekday = (wall.weekday() + 1) % 7
        parts = (wall.minute, wall.hour, wall.day, wall.month, weekday)
        return all(a is None or p in a for a, p in zip(allowed, parts, strict=True))

    instants = []
    instant = start
    while instant < end:
        local = instant.astimezone(zone)
        wall = local.replace(tzinfo=None, fold=0)
        earlier = (instant - MINUTE).astimezone(zone)
        jump = _offset(local) - _offset(earlier)
        skipped = [wall - jump + MINUTE * n for n in range(jump // MINUTE)]
        second_pass = local.fold == 1

        on_the_clock = matches(wall) and not (fixed_hours and second_pass)
        after_a_gap = fixed_hours and any(map(matches, skipped))
        if on_the_clock or after_a_gap:
            instants.append(instant)
        instant += MINUTE
    return instants


def _offset(local: datetime) -> timedelta:
    offset = local.utcoffset()
    assert offset is not None
    return offset


@pytest.mark.parametrize("expression", ORACLE_SCHEDULES)
@pytest.mark.parametrize(("zone_name", "transition"), ORACLE_TRANSITIONS)
def test_fire_times_agree_with_a_minute_by_minute_oracle(
    expression: str, zone_name: str, transition: datetime
) -> None:
    zone = ZoneInfo(zone_name)
    schedule = parse_schedule(expression)
    start, end = transition - timedelta(hours=26), transition + timedelta(hours=26)
    expected = oracle(expression, zone, start, end)

    forward = []
    instant = schedule.next_after(start - MINUTE, zone)
    while instant < end:
        forward.append(instant)
        instant = schedule.next_after(instant, zone)
        assert instant > forward[-1], "fire times must move forward"

    backward = []
    instant = schedule.previous_before(end, zone)
    while instant >= start:
        backward.append(instant)
        instant = schedule.previous_before(instant, zone)
        assert instant < backward[-1], "previous fire times must move back"

    assert forward == expected
    assert backward[::-1] == expected


def test_next_after_from_every_minute_agrees_with_the_oracle() -> None:
    schedule = parse_schedule("*/20 1-3 * * *")
    start, end = utc(2026, 10, 24, 22), utc(2026, 10, 25, 3)
    expected = oracle("*/20 1-3 * * *", BERLIN, start, end + timedelta(days=1))

    instant = start
    while instant < end:
        following = next(slot for slot in expected if slot > instant)
        assert schedule.next_after(instant, BERLIN) == following
        instant += MINUTE + timedelta(seconds=7)


# Misfire planning


class CountingSchedule(Schedule):
    """Wraps a schedule to count how many steps a plan takes."""

    def __init__(self, inner: Schedule) -> None:
        self.expression = inner.expression
        self.inner = inner
        self.steps = 0

    def next_after(self, after: datetime, zone: ZoneInfo) -> datetime:
        self.steps += 1
        return self.inner.next_after(after, zone)

    def previous_before(self, before: datetime, zone: ZoneInfo) -> datetime:
        self.steps += 1
        return self.inner.previous_before(before, zone)


def plan(
    expression: str,
    next_run_at: datetime,
    now: datetime,
    policy: MisfirePolicy,
    limit: int = 3,
) -> SlotPlan:
    schedule = parse_schedule(expression)
    return plan_due_slots(schedule, UTC_ZONE, next_run_at, now, policy, limit)


def minutes(*values: int) -> list[datetime]:
    return [utc(2026, 5, 4, 10, value) for value in values]


@pytest.mark.parametrize("policy", list(MisfirePolicy))
def test_a_single_due_slot_fires_under_every_policy(policy: MisfirePolicy) -> None:
    result = plan("*/5 * * * *", utc(2026, 5, 4, 10, 5), utc(2026, 5, 4, 10, 9), policy)

    assert result == SlotPlan(
        fire=minutes(5), skipped=[], next_run_at=utc(2026, 5, 4, 10, 10)
    )


@pytest.mark.parametrize("policy", list(MisfirePolicy))
def test_nothing_fires_before_next_run_at(policy: MisfirePolicy) -> None:
    next_run_at = utc(2026, 5, 4, 10, 5)

    result = plan("*/5 * * * *", next_run_at, utc(2026, 5, 4, 10, 4), policy)

    assert result == SlotPlan(fire=[], skipped=[], next_run_at=next_run_at)


@pytest.mark.parametrize(
    ("policy", "fire", "skipped"),
    [
        (MisfirePolicy.FIRE_ONCE, minutes(30), []),
        (MisfirePolicy.SKIP, minutes(30), minutes(15, 20, 25)),
        (MisfirePolicy.CATCH_UP, minutes(15, 20, 25, 30), []),
    ],
)
def test_missed_slots_follow_the_policy(
    policy: MisfirePolicy, fire: list[datetime], skipped: list[datetime]
) -> None:
    # Due: 10:05 .. 10:30, six slots; the limit keeps three missed ones.
    now = utc(2026, 5, 4, 10, 32)

    result = plan("*/5 * * * *", utc(2026, 5, 4, 10, 5), now, policy, limit=3)

    assert result == SlotPlan(fire, skipped, next_run_at=utc(2026, 5, 4, 10, 35))


@pytest.mark.parametrize(
    ("policy", "fire", "skipped"),
    [
        (MisfirePolicy.SKIP, minutes(15), minutes(5, 10)),
        (MisfirePolicy.CATCH_UP, minutes(5, 10, 15), []),
    ],
)
def test_fewer_missed_slots_than_the_limit_are_all_kept(
    policy: MisfirePolicy, fire: list[datetime], skipped: list[datetime]
) -> None:
    now = utc(2026, 5, 4, 10, 15)

    result = plan("*/5 * * * *", utc(2026, 5, 4, 10, 5), now, policy, limit=10)

    assert result == SlotPlan(fire, skipped, next_run_at=utc(2026, 5, 4, 10, 20))


@pytest.mark.parametrize("policy", [MisfirePolicy.SKIP, MisfirePolicy.CATCH_UP])
def test_a_zero_limit_keeps_only_the_latest_slot(policy: MisfirePolicy) -> None:
    now = utc(2026, 5, 4, 10, 32)

    result = plan("*/5 * * * *", utc(2026, 5, 4, 10, 5), now, policy, limit=0)

    assert result == SlotPlan(minutes(30), [], next_run_at=utc(2026, 5, 4, 10, 35))


def test_a_stored_instant_off_the_schedule_still_counts_as_due() -> None:
    next_run_at = utc(2026, 5, 4, 10, 3)
    now = utc(2026, 5, 4, 10, 12)

    result = plan("*/5 * * * *", next_run_at, now, MisfirePolicy.CATCH_UP, limit=10)

    assert result.fire == [next_run_at, *minutes(5, 10)]


def test_a_slot_exactly_at_now_is_due() -> None:
    result = plan(
        "*/5 * * * *",
        utc(2026, 5, 4, 10, 5),
        utc(2026, 5, 4, 10, 10),
        MisfirePolicy.CATCH_UP,
    )

    assert result.fire == minutes(5, 10)
    assert result.next_run_at == utc(2026, 5, 4, 10, 15)


@pytest.mark.parametrize("expression", ["* * * * * *", "@every 1s"])
@pytest.mark.parametrize("policy", list(MisfirePolicy))
def test_a_long_downtime_is_planned_in_a_bounded_number_of_steps(
    expression: str, policy: MisfirePolicy
) -> None:
    schedule = CountingSchedule(parse_schedule(expression))
    next_run_at = utc(2025, 5, 4)
    now = utc(2026, 5, 4, 10, 0, 0, 500_000)

    result = plan_due_slots(schedule, UTC_ZONE, next_run_at, now, policy, 5)

    assert schedule.steps <= 5 + 4
    assert result.next_run_at == utc(2026, 5, 4, 10, 0, 1)
    assert result.fire[-1] == utc(2026, 5, 4, 10)
    assert len(result.fire) + len(result.skipped) == (
        6 if policy is not MisfirePolicy.FIRE_ONCE else 1
    )


def test_catch_up_across_fall_back_never_repeats_an_instant() -> None:
    schedule = parse_schedule("30 2 * * *")
    next_run_at = utc(2026, 10, 24, 0, 30)
    now = utc(2026, 10, 27, 12)

    result = plan_due_slots(
        schedule, BERLIN, next_run_at, now, MisfirePolicy.CATCH_UP, 10
    )

    assert result.fire == [
        utc(2026, 10, 24, 0, 30),
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 26, 1, 30),
        utc(2026, 10, 27, 1, 30),
    ]
    assert result.next_run_at == utc(2026, 10, 28, 1, 30)


def test_plans_refuse_a_negative_limit_and_unknown_policies() -> None:
    schedule = parse_schedule("@hourly")
    now = utc(2026, 5, 4)

    with pytest.raises(ScheduleError, match="catch-up limit must be 0 or more"):
        plan_due_slots(schedule, UTC_ZONE, now, now, MisfirePolicy.SKIP, -1)
    with pytest.raises(ScheduleError, match="unknown misfire policy 'later'"):
        policy: Any = "later"
        plan_due_slots(schedule, UTC_ZONE, now, now, policy, 1)


def test_parse_misfire_policy() -> None:
    assert parse_misfire_policy("catch_up") is MisfirePolicy.CATCH_UP
    assert MisfirePolicy("fire_once") is MisfirePolicy.FIRE_ONCE

    with pytest.raises(ScheduleError) as caught:
        parse_misfire_policy("sometimes")

    assert str(caught.value) == (
        "unknown misfire policy 'sometimes'; expected one of fire_once, skip, catch_up"
    )


def test_next_fire_times_previews_in_order() -> None:
    schedule = parse_schedule("0 */6 * * *")

    assert next_fire_times(schedule, UTC_ZONE, utc(2026, 5, 4, 1), 3) == [
        utc(2026, 5, 4, 6),
        utc(2026, 5, 4, 12),
        utc(2026, 5, 4, 18),
    ]
    assert next_fire_times(schedule, UTC_ZONE, utc(2026, 5, 4, 1), 0) == []
    with pytest.raises(ValueError, match="count must be 0 or more"):
        next_fire_times(schedule, UTC_ZONE, utc(2026, 5, 4, 1), -1)


def test_interval_schedule_is_a_value() -> None:
    assert parse_schedule("@every 90s") == IntervalSchedule(
        expression="@every 90s", interval=timedelta(seconds=90)
    )
