"""Per-callback figures are tallied and folded into the Prometheus
collectors in one pass; the exposition after a fold shows every one."""

from __future__ import annotations

import uuid

from aioprometheus import Registry
from aioprometheus.renderer import render

from manager.executor.metrics import ExecutorMetrics


def exposition(registry: Registry) -> dict[str, float]:
    body, _ = render(registry, [])
    values = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_fold_brings_every_tally_into_the_collectors() -> None:
    registry = Registry()
    metrics = ExecutorMetrics(registry)
    first, second = uuid.uuid4(), uuid.uuid4()

    for seconds in (0.002, 0.02, 0.2):
        metrics.observe_attempt(first, seconds, success=True)
    metrics.observe_attempt(second, 3.0, success=False)
    metrics.observe_lag(0.03)
    metrics.observe_lag(-0.001)
    metrics.count_processed(first)
    metrics.count_processed(first)

    before = exposition(registry)
    metrics.fold()
    after = exposition(registry)
    # Folding twice adds nothing: the tallies start again from zero.
    metrics.fold()
    again = exposition(registry)

    app = f'app="{first}"'
    other = f'app="{second}"'
    assert f"pfy_executor_queue_process_time_seconds_count{{{app}}}" not in before
    assert before['pfy_executor_backend_dispatch_total{status="success"}'] == 0
    assert after[f"pfy_executor_queue_process_time_seconds_count{{{app}}}"] == 3
    assert after[f"pfy_executor_queue_process_time_seconds_sum{{{app}}}"] == 0.222
    assert (
        after[f'pfy_executor_queue_process_time_seconds_bucket{{{app},le="0.01"}}'] == 1
    )
    assert after[f"pfy_executor_queue_process_time_seconds_count{{{other}}}"] == 1
    assert after['pfy_executor_backend_dispatch_total{status="success"}'] == 3
    assert after['pfy_executor_backend_dispatch_total{status="error"}'] == 1
    assert after["pfy_executor_schedule_lag_seconds_count"] == 2
    # A negative lag (a slot started a hair early by the clocks) counts as 0.
    assert after['pfy_executor_schedule_lag_seconds_bucket{le="0.001"}'] == 1
    assert after[f"pfy_executor_queue_processed_total{{{app}}}"] == 2
    assert again == after
