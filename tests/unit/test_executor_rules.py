"""The executor's pure rules: retry decisions, backoff, the callback body and
URL, and the rescue-grace setting rule."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson
import pytest

from manager.config import load_settings
from manager.errors import CallbackUrlError, ConfigError
from manager.executor.dispatcher import (
    callback_body,
    callback_path,
    callback_url,
    decide,
    retry_delay,
)
from manager.store.runs import ClaimedRun

CRON = load_settings(
    {"PFY_CRON_RETRY_BACKOFF": "1", "PFY_CRON_RETRY_BACKOFF_MAX": "10"}
).cron


def claimed(attempt: int = 1, max_retries: int = 3, **changes: object) -> ClaimedRun:
    fields: dict[str, object] = {
        "id": uuid.UUID(int=1),
        "attempt": attempt,
        "scheduled_at": datetime(2026, 3, 29, 1, 0, tzinfo=UTC),
        "started_at": datetime(2026, 3, 29, 1, 0, 0, 5000, tzinfo=UTC),
        "manual": False,
        "trigger_id": uuid.UUID(int=2),
        "trigger_name": "nightly report/eu",
        "path": None,
        "payload": '{"b": [1, 2], "a": null}',
        "timeout_seconds": 5.0,
        "max_retries": max_retries,
        "application_id": uuid.UUID(int=3),
        "backend_url": "http://10.0.0.5:8000/api/",
        "signing_secret": "whsec_c2VjcmV0",
    }
    fields.update(changes)
    return ClaimedRun(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("http_status", "error", "expected"),
    [
        (200, None, "succeeded"),
        (204, None, "succeeded"),
        (500, "HTTP 500", "queued"),
        (503, "HTTP 503", "queued"),
        (408, "HTTP 408", "queued"),
        (429, "HTTP 429", "queued"),
        (None, "timeout after 5s", "queued"),
        (None, "connection error: refused", "queued"),
        (404, "HTTP 404", "failed"),
        (400, "HTTP 400", "failed"),
        (302, "HTTP 302 (redirects are not followed)", "failed"),
        (None, "address refused: metadata", "failed"),
    ],
)
def test_decide_by_answer(
    http_status: int | None, error: str | None, expected: str
) -> None:
    status, _ = decide(claimed(), http_status, error, None, CRON)
    assert status == expected


def test_retries_end_when_attempts_exceed_max_retries() -> None:
    assert decide(claimed(attempt=3, max_retries=3), 500, "x", None, CRON)[0] == (
        "queued"
    )
    assert decide(claimed(attempt=4, max_retries=3), 500, "x", None, CRON)[0] == (
        "failed"
    )
    assert decide(claimed(attempt=1, max_retries=0), 500, "x", None, CRON)[0] == (
        "failed"
    )


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    for attempt, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 10.0)):
        delays = [retry_delay(attempt, None, CRON) for _ in range(200)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
        assert len(set(delays)) > 1


def test_retry_after_is_honoured_and_capped() -> None:
    assert retry_delay(1, 3.0, CRON) == 3.0
    assert retry_delay(1, 3600.0, CRON) == 10.0
    assert retry_delay(1, -5.0, CRON) == 0.0


def test_body_has_the_documented_shape_and_the_payload_as_stored() -> None:
    body = orjson.loads(callback_body(claimed()))
    assert body == {
        "trigger": {"id": str(uuid.UUID(int=2)), "name": "nightly report/eu"},
        "run": {
            "id": str(uuid.UUID(int=1)),
            "attempt": 1,
            "scheduled_at": "2026-03-29T01:00:00Z",
        },
        "application": {"id": str(uuid.UUID(int=3))},
        "payload": {"b": [1, 2], "a": None},
    }


def test_default_path_escapes_the_name_and_joins_the_backend_url() -> None:
    run = claimed()
    assert callback_path(run) == "/triggers/nightly%20report%2Feu"
    url = callback_url(run.backend_url, callback_path(run), ())
    assert str(url) == "http://10.0.0.5:8000/api/triggers/nightly%20report%2Feu"
    assert callback_path(claimed(path="/hooks/run")) == "/hooks/run"


def test_stored_metadata_address_is_refused() -> None:
    with pytest.raises(CallbackUrlError):
        callback_url("http://169.254.169.254", "/x", ())


@pytest.mark.parametrize(
    "environment",
    [
        {"PFY_CRON_RESCUE_GRACE": "0"},
        {
            "PFY_CRON_RESCUE_GRACE": "2",
            "PFY_CRON_LOCK_PROBE_INTERVAL": "1",
            "PFY_CRON_LOCK_PROBE_TIMEOUT": "2",
        },
    ],
)
def test_rescue_grace_must_cover_losing_the_lock(environment: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environment)
    (problem,) = caught.value.problems
    assert problem.startswith("PFY_CRON_RESCUE_GRACE: ")
    assert "PFY_CRON_LOCK_PROBE_INTERVAL + PFY_CRON_LOCK_PROBE_TIMEOUT" in problem


def test_default_rescue_grace_is_accepted() -> None:
    settings = load_settings({})
    cron = settings.cron
    assert cron.rescue_grace >= cron.lock_probe_interval + cron.lock_probe_timeout
