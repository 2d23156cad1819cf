"""The executor's Prometheus metrics, registered on the Executor's registry.

The names and labels of the first six are a public contract (README); the
rest are what an operator also needs to see leadership, lag and load. `app`
is always the application UUID.

Each update of an aioprometheus collector serialises its labels to find the
series, which at thousands of callbacks a second is a measurable share of a
callback. So the per-callback figures (attempt durations and results, lag,
finished runs) are tallied in plain dictionaries and folded into the
collectors in one pass: after every batch of outcomes is written and before
every scrape.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from aioprometheus import Counter, Gauge, Histogram, Registry
from aioprometheus import histogram as aggregates

# Callback durations: from a fast local backend to the longest timeout.
PROCESS_TIME_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

# Schedule lag: milliseconds when healthy, seconds or more when overloaded.
LAG_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


# Claims: a few milliseconds normally; a second or more means contention.
CLAIM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ExecutorMetrics:
    """Every collector of the executor, with the updates it makes."""

    def __init__(self, registry: Registry) -> None:
        self.enqueued = Counter(
            "pfy_executor_queue_all_total",
            "Runs enqueued for a callback, per application.",
            registry=registry,
        )
        self.processed = Counter(
            "pfy_executor_queue_processed_total",
            "Runs finished (succeeded or failed), per application.",
            registry=registry,
        )
        self.waiting = Gauge(
            "pfy_executor_queue_waiting",
            "Runs queued and not yet running, per application.",
            registry=registry,
        )
        self.process_time = Histogram(
            "pfy_executor_queue_process_time_seconds",
            "Duration of one callback attempt in seconds, per application.",
            registry=registry,
            buckets=PROCESS_TIME_BUCKETS,
        )
        self.active_triggers = Gauge(
            "pfy_executor_active_triggers",
            "Enabled triggers.",
            registry=registry,
        )
        self.dispatched = Counter(
            "pfy_executor_backend_dispatch_total",
            "Callback attempts by result: success (2xx) or error.",
            registry=registry,
        )
        self.leader = Gauge(
            "pfy_executor_leader",
            "1 while this instance holds the executor lock, else 0.",
            registry=registry,
        )
        self.schedule_lag = Histogram(
            "pfy_executor_schedule_lag_seconds",
            "Seconds from a run's scheduled slot to the start of its dispatch.",
            registry=registry,
            buckets=LAG_BUCKETS,
        )
        self.claim_time = Histogram(
            "pfy_executor_claim_duration_seconds",
            "Seconds one claim took: a scheduling transaction (step=triggers) "
            "or a claim of queued runs (step=runs).",
            registry=registry,
            buckets=CLAIM_BUCKETS,
        )
        self.inflight = Gauge(
            "pfy_executor_inflight_callbacks",
            "Callbacks in flight right now.",
            registry=registry,
        )
        self._seen_applications: set[str] = set()
        # The tallies not yet folded into the collectors.
        self._attempts: dict[uuid.UUID, list[float]] = {}
        self._results = {"success": 0, "error": 0}
        self._lags: list[float] = []
        self._finished: dict[uuid.UUID, int] = {}

        # Series without labels exist from the start, so a scrape never
        # finds a metric with a type but no sample.
        self.active_triggers.set({}, 0)
        self.leader.set({}, 0)
        self.inflight.set({}, 0)
        for status in ("success", "error"):
            self.dispatched.set({"status": status}, 0)

    def count_enqueued(self, application_id: uuid.UUID, count: int = 1) -> None:
        application = str(application_id)
        self.enqueued.add({"app": application}, count)
        if application not in self._seen_applications:
            # Every application with runs gets a queue-depth series; the
            # next refresh from the database sets its value.
            self._seen_applications.add(application)
            self.waiting.set({"app": application}, 0)

    def count_processed(self, application_id: uuid.UUID) -> None:
        self._finished[application_id] = self._finished.get(application_id, 0) + 1

    def observe_attempt(
        self, application_id: uuid.UUID, seconds: float, success: bool
    ) -> None:
        durations = self._attempts.get(application_id)
        if durations is None:
            durations = self._attempts[application_id] = []
        durations.append(seconds)
        self._results["success" if success else "error"] += 1

    def observe_lag(self, seconds: float) -> None:
        self._lags.append(max(seconds, 0.0))

    def fold(self) -> None:
        """Bring the collectors up to date with the tallies."""
        attempts, self._attempts = self._attempts, {}
        for application_id, durations in attempts.items():
            _observe_all(self.process_time, {"app": str(application_id)}, durations)
        for result, count in self._results.items():
            if count:
                self.dispatched.add({"status": result}, count)
                self._results[result] = 0
        lags, self._lags = self._lags, []
        _observe_all(self.schedule_lag, {}, lags)
        finished, self._finished = self._finished, {}
        for application_id, count in finished.items():
            self.processed.add({"app": str(application_id)}, count)

    def observe_claim(self, step: str, seconds: float) -> None:
        self.claim_time.observe({"step": step}, seconds)

    def set_leader(self, leading: bool) -> None:
        self.leader.set({}, 1 if leading else 0)

    def set_inflight(self, count: int) -> None:
        self.inflight.set({}, count)

    def set_active_triggers(self, count: int) -> None:
        self.active_triggers.set({}, count)

    def set_waiting(self, waiting: Mapping[uuid.UUID, int]) -> None:
        """Queue depth per application; an application seen before shows 0."""
        current = {str(application): count for application, count in waiting.items()}
        self._seen_applications.update(current)
        for application in self._seen_applications:
            self.waiting.set({"app": application}, current.get(application, 0))


def _observe_all(
    histogram: Histogram, labels: dict[str, str], values: list[float]
) -> None:
    """Observe many values in one series, looking the series up once."""
    if not values:
        return
    histogram.observe(labels, values[0])
    series = histogram.get_value(labels)
    assert isinstance(series, aggregates.Histogram)
    for value in values[1:]:
        series.observe(value)
