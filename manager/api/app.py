"""The API's aiohttp application: routes and middleware.

Routes: GET /health, GET /metrics, POST /query (and GET /query for queries,
with GraphiQL in development). One middleware: the request log line, which
also assigns the request id and tells the API's metrics of each request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from manager.api.auth import Authenticator
from manager.api.metrics import ApiMetrics
from manager.api.schema import api_schema
from manager.api.view import QueryView
from manager.config import Settings
from manager.db.database import Database
from manager.web import DATABASE_KEY, MODE_KEY, OBSERVER_KEY, health, log_requests

SETTINGS_KEY = web.AppKey("settings", Settings)
AUTHENTICATOR_KEY = web.AppKey("authenticator", Authenticator)
METRICS_KEY = web.AppKey("metrics", ApiMetrics)


async def _authenticator_lifetime(app: web.Application) -> AsyncIterator[None]:
    # Its HTTP session for the identity provider lives as long as the app.
    authenticator = app[AUTHENTICATOR_KEY]
    await authenticator.start()
    yield
    await authenticator.close()


def build_app(settings: Settings, database: Database) -> web.Application:
    """The API application for `settings`, talking to `database`."""
    metrics = ApiMetrics()
    app = web.Application(
        middlewares=[log_requests],
        client_max_size=settings.api.max_body_bytes,
    )
    authenticator = Authenticator(settings.pocket_id, database.pool)
    app[SETTINGS_KEY] = settings
    app[DATABASE_KEY] = database
    app[MODE_KEY] = settings.run_mode
    app[AUTHENTICATOR_KEY] = authenticator
    app[METRICS_KEY] = metrics
    app[OBSERVER_KEY] = metrics.observe
    app.cleanup_ctx.append(_authenticator_lifetime)

    view = QueryView(api_schema(), settings, database, authenticator, metrics)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics.handler)
    app.router.add_route("GET", "/query", view)
    app.router.add_route("POST", "/query", view)
    return app
