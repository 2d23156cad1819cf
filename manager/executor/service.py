"""The executor as the daemon sees it: start, stop, and a metrics registry."""

from __future__ import annotations

import logging

from aioprometheus import Registry

from manager.config import Settings
from manager.db.database import Database

log = logging.getLogger(__name__)


class Executor:
    """Runs the trigger executor inside the daemon's event loop."""

    def __init__(self, settings: Settings, database: Database) -> None:
        self.settings = settings
        self.database = database
        self.registry = Registry()

    async def start(self) -> None:
        """Begin competing for leadership; returns once the loop is running."""

    async def stop(self) -> None:
        """Stop claiming, drain in-flight callbacks, release leadership."""
