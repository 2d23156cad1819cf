"""The executor's own HTTP listener: /metrics for Prometheus and /health."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from aioprometheus import Registry
from aioprometheus.renderer import render

from manager.db.database import Database
from manager.web import DATABASE_KEY, MODE_KEY, health, log_requests

REGISTRY_KEY = web.AppKey("registry", Registry)
Refresh = Callable[[], None]
REFRESH_KEY: web.AppKey[Refresh] = web.AppKey("refresh")


async def metrics(request: web.Request) -> web.Response:
    """The executor's metrics in the Prometheus text format."""
    request.app[REFRESH_KEY]()
    accepts = request.headers.getall("Accept", [])
    body, headers = render(request.app[REGISTRY_KEY], accepts)
    return web.Response(body=body, headers=headers)


def build_metrics_app(
    database: Database,
    registry: Registry,
    mode: str,
    refresh: Refresh = lambda: None,
) -> web.Application:
    """The application served on cron.metrics_port; `refresh` brings the
    registry up to date before each scrape."""
    app = web.Application(middlewares=[log_requests])
    app[DATABASE_KEY] = database
    app[REGISTRY_KEY] = registry
    app[REFRESH_KEY] = refresh
    app[MODE_KEY] = mode
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    return app
