"""The API's Prometheus metrics, served on the API port at GET /metrics.

Routes are labelled by their pattern (`/query`), never by the raw path, so a
scanner probing random URLs cannot grow the number of series: everything
that matches no route is `unmatched`.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web
from aioprometheus import Counter, Gauge, Histogram, Registry
from aioprometheus.renderer import render

from manager.web import DATABASE_KEY

# Seconds; from a cached GraphQL read to a slow mutation behind a busy pool.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
)  # fmt: skip

UNMATCHED = "unmatched"


class ApiMetrics:
    """The API's collectors, in a registry of their own.

    Never aioprometheus's global default registry: an executor in the same
    process (mode `both`) and each test's application keep their own.
    """

    def __init__(self) -> None:
        self.registry = Registry()
        self.requests = Counter(
            "pfy_api_requests_total",
            "HTTP requests answered by the API, by route, method and status.",
            registry=self.registry,
        )
        self.duration = Histogram(
            "pfy_api_request_duration_seconds",
            "Time to answer an API request, by route.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "pfy_api_graphql_errors_total",
            "Errors in GraphQL answers, by extensions.code.",
            registry=self.registry,
        )
        self.pool = Gauge(
            "pfy_api_db_pool_connections",
            "Database pool connections: in_use, idle, and the max allowed.",
            registry=self.registry,
        )

        # Hot-path tallies, copied into the collectors when scraped:
        # aioprometheus serialises the label dict on every update, which
        # costs more than the rest of a cached GraphQL read.
        self.request_counts: dict[tuple[str, str, int], int] = {}
        self.error_counts: dict[str, int] = {}
        self.route_histograms: dict[str, Any] = {}

    def count_error(self, code: str) -> None:
        self.error_counts[code] = self.error_counts.get(code, 0) + 1

    def count_request(
        self, route: str, method: str, status: int, seconds: float
    ) -> None:
        key = (route, method, status)
        self.request_counts[key] = self.request_counts.get(key, 0) + 1
        histogram = self.route_histograms.get(route)
        if histogram is None:
            self.duration.observe({"route": route}, seconds)
            self.route_histograms[route] = self.duration.get_value({"route": route})
        else:
            histogram.observe(seconds)

    def publish(self) -> None:
        """Copy the tallies into the collectors, just before rendering."""
        for (route, method, status), total in self.request_counts.items():
            labels = {"route": route, "method": method, "status": str(status)}
            self.requests.set(labels, total)
        for code, total in self.error_counts.items():
            self.errors.set({"code": code}, total)

    def observe_pool(self, pool: asyncpg.Pool) -> None:
        size = pool.get_size()
        idle = pool.get_idle_size()
        self.pool.set({"state": "in_use"}, size - idle)
        self.pool.set({"state": "idle"}, idle)
        self.pool.set({"state": "max"}, pool.get_max_size())

    def observe(self, request: web.Request, status: int, seconds: float) -> None:
        """Count one answered request (the log middleware calls this)."""
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else UNMATCHED
        self.count_request(route, request.method, status, seconds)

    async def handler(self, request: web.Request) -> web.Response:
        """The metrics in the Prometheus text format."""
        self.observe_pool(request.app[DATABASE_KEY].pool)
        self.publish()
        accepts = request.headers.getall("Accept", [])
        body, headers = render(self.registry, accepts)
        return web.Response(body=body, headers=headers)
