"""The daemon: one uvloop event loop running the API, the executor, or both.

Start order: database (embedded or configured), pool, migrations, listeners,
then the executor. Stop order is the reverse and deliberate: stop accepting
HTTP requests and claiming triggers, let in-flight work drain, release the
executor's lock, close the pool, and stop the embedded database last.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

import asyncpg
from aiohttp import web

from manager import __version__
from manager.api.app import build_app
from manager.config import Settings
from manager.db.database import Database
from manager.db.embedded import EmbeddedPostgres
from manager.db.migrations import apply_migrations
from manager.db.pool import DatabaseTarget, connect, create_pool
from manager.errors import DatabaseError, ManagerError
from manager.executor.http import build_metrics_app
from manager.executor.service import Executor
from manager.notify import SystemdNotifier
from manager.store.runs import EXECUTOR_SESSION

log = logging.getLogger(__name__)

# How long the daemon keeps trying to reach its database at start, so that a
# database started at the same moment (Compose, Nomad) has time to come up.
STARTUP_DATABASE_PATIENCE = 60.0

# Connections the executor needs: one each kept by the scheduler, the
# dispatcher and the outcome writer, one for housekeeping and one for
# /health and the writes at shutdown.
EXECUTOR_POOL_SIZE = 5

# How long in-flight API requests get to finish once the daemon stops.
HTTP_SHUTDOWN_TIMEOUT = 10.0


class Daemon:
    """Owns every long-lived resource of one `manager run`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.embedded: EmbeddedPostgres | None = None
        self.database: Database | None = None
        # In `both` mode the executor has a pool of its own.
        self.executor_pool: asyncpg.Pool | None = None
        self.executor: Executor | None = None
        self.api_runner: web.AppRunner | None = None
        self.metrics_runner: web.AppRunner | None = None
        self.stopping = asyncio.Event()
        self.notifier = SystemdNotifier.from_environment()
        self.watchdog: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Start everything, wait for SIGTERM or SIGINT, stop everything."""
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signal_number, self.stopping.set)
        try:
            await self.start()
            # systemd (Type=notify) considers the service started only now:
            # the database answered, migrations ran and every port is bound.
            self.notifier.ready()
            self.notifier.status(self._status_text())
            self.watchdog = asyncio.create_task(self.notifier.run_watchdog())
            await self.stopping.wait()
            log.info("stop requested")
        finally:
            self.notifier.stopping()
            await self.stop()
            if self.watchdog is not None:
                self.watchdog.cancel()
                await asyncio.gather(self.watchdog, return_exceptions=True)

    async def start(self) -> None:
        target = await self.open_database(self.settings.db.migrate_on_start)
        db = self.settings.db
        size = db.pool_max_size
        only_executor = self.settings.run_mode == "executor"
        if only_executor:
            # The claim loops keep their connections: leave room for
            # housekeeping and /health whatever the configured size.
            size = max(size, EXECUTOR_POOL_SIZE)
        pool = await create_pool(
            target,
            min(db.pool_min_size, size),
            size,
            session=EXECUTOR_SESSION if only_executor else None,
        )
        self.database = Database(target, pool)
        executor_database = self.database
        if self.settings.runs_api and self.settings.runs_executor:
            # Slow API queries could otherwise hold every pooled connection
            # and stall claiming, though the lock itself stays probed.
            executor_pool = await create_pool(
                target, 1, EXECUTOR_POOL_SIZE, session=EXECUTOR_SESSION
            )
            executor_database = Database(target, executor_pool)
            self.executor_pool = executor_pool

        if self.settings.runs_api:
            app = build_app(self.settings, self.database)
            self.api_runner = await self._listen(
                app, self.settings.host, self.settings.port
            )
        if self.settings.runs_executor:
            self.executor = Executor(
                self.settings, executor_database, on_status=self._executor_status
            )
            metrics_app = build_metrics_app(
                self.database,
                self.executor.registry,
                self.settings.run_mode,
                refresh=self.executor.metrics.fold,
            )
            metrics_port = self.settings.cron.metrics_port
            self.metrics_runner = await self._listen(
                metrics_app, self.settings.host, metrics_port
            )
            await self.executor.start()

        log.info(
            "manager started",
            extra={
                "mode": self.settings.run_mode,
                "version": __version__,
                "env": self.settings.env,
                "port": self.settings.port if self.settings.runs_api else None,
                "metrics_port": (
                    self.settings.cron.metrics_port
                    if self.settings.runs_executor
                    else None
                ),
                "database": target.describe(),
                "embedded_database": self.embedded is not None,
            },
        )

    async def stop(self) -> None:
        # The API stops accepting first and finishes its in-flight requests,
        # so no request sees the pool close under it.
        if self.api_runner is not None:
            await self.api_runner.cleanup()
            self.api_runner = None
        # The executor drains its callbacks and releases the leader lock
        # before the pool it records outcomes with is closed; its metrics
        # stay scrapeable until then.
        if self.executor is not None:
            await self.executor.stop()
            self.executor = None
        if self.metrics_runner is not None:
            await self.metrics_runner.cleanup()
            self.metrics_runner = None
        if self.executor_pool is not None:
            await self.executor_pool.close()
            self.executor_pool = None
        if self.database is not None:
            await self.database.pool.close()
            self.database = None
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
            self.embedded = None
        log.info("manager stopped", extra={"mode": self.settings.run_mode})

    def _status_text(self, role: str | None = None) -> str:
        if role is None and self.executor is not None:
            role = "leader" if self.executor.is_leader else "standby"
        text = f"mode {self.settings.run_mode}"
        return f"{text}, executor {role}" if role else text

    def _executor_status(self, role: str) -> None:
        """Show leader or standby in `systemctl status` as it changes."""
        self.notifier.status(self._status_text(role))

    async def open_database(self, migrate: bool) -> DatabaseTarget:
        """Find or start the database, wait until it answers, migrate it."""
        if self.settings.embedded_database:
            self.embedded = EmbeddedPostgres(self.settings.data_dir)
            target = await asyncio.to_thread(self.embedded.start, self.settings.db)
        else:
            target = DatabaseTarget.from_settings(self.settings.db)

        connection = await self._connect_patiently(target)
        try:
            if migrate:
                applied = await apply_migrations(connection)
                log.info("migrations up to date", extra={"applied": applied})
        finally:
            await connection.close()
        return target

    async def _connect_patiently(self, target: DatabaseTarget) -> asyncpg.Connection:
        deadline = time.monotonic() + STARTUP_DATABASE_PATIENCE
        delay = 0.5
        while True:
            try:
                return await connect(target)
            except DatabaseError as error:
                if time.monotonic() + delay > deadline or self.stopping.is_set():
                    raise
                log.warning(
                    "database not reachable yet",
                    extra={"database": target.describe(), "error": str(error)},
                )
            stop_wait = asyncio.ensure_future(self.stopping.wait())
            await asyncio.wait([stop_wait], timeout=delay)
            stop_wait.cancel()
            delay = min(delay * 2, 5.0)

    async def _listen(
        self, app: web.Application, host: str, port: int
    ) -> web.AppRunner:
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=HTTP_SHUTDOWN_TIMEOUT
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            raise ManagerError(f"cannot listen on {host}:{port}: {error}") from error
        log.info("listening", extra={"host": host, "port": port})
        return runner


async def run_daemon(settings: Settings) -> None:
    """The body of `manager run`."""
    await Daemon(settings).run()
