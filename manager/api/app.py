"""The API's aiohttp application: routes and middleware."""

from __future__ import annotations

from aiohttp import web

from manager.config import Settings
from manager.db.database import Database
from manager.web import DATABASE_KEY, MODE_KEY, health, log_requests

SETTINGS_KEY = web.AppKey("settings", Settings)


def build_app(settings: Settings, database: Database) -> web.Application:
    """The API application for `settings`, talking to `database`."""
    app = web.Application(
        middlewares=[log_requests],
        client_max_size=settings.api.max_body_bytes,
    )
    app[SETTINGS_KEY] = settings
    app[DATABASE_KEY] = database
    app[MODE_KEY] = settings.run_mode
    app.router.add_get("/health", health)
    return app
