"""The executor's Prometheus metrics, registered on the Executor's registry.

The names and labels of the first six are a public contract (README); the
rest are what an operator also needs to see leadership, lag and load. `app`
is always the application UUID.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from aioprometheus import Counter, Gauge, Histogram, Registry

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
        self.processed.inc({"app": str(application_id)})

    def observe_attempt(
        self, application_id: uuid.UUID, seconds: float, success: bool
    ) -> None:
        self.process_time.observe({"app": str(application_id)}, seconds)
        self.dispatched.inc({"status": "success" if success else "error"})

    def observe_lag(self, seconds: float) -> None:
        self.schedule_lag.observe({}, max(seconds, 0.0))

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
