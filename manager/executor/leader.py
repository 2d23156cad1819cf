"""Leadership: the one active executor holds a session advisory lock.

The lock lives on a dedicated connection opened outside the pool: a session
lock belongs to one server connection, and a pooled connection is handed to
other work between uses (and asyncpg's default pool reset would run
`pg_advisory_unlock_all()` on it). The same connection carries LISTEN for
trigger changes while this instance leads.

A leader proves it still holds the lock on every probe; a probe that fails
or takes longer than its timeout ends leadership at once, well before the
server would hand the lock to a standby. Claims on other connections check
the lock themselves through the `Fence` (see manager.store.runs).

The server, for its part, ends a lock session that stays silent for
`cron.lock_session_timeout` (PostgreSQL's idle_session_timeout, set on the
lock connection only). A leader that is frozen (SIGSTOP, a stuck host) or
cut off by a half-open connection stops probing, so its session goes silent
and the lock passes to a standby instead of being held for ever. The leader
probes far more often than that, and its own deadline comes first; a leader
that wakes up late sees its proof of leadership is stale (`is_fresh`) and
sends nothing more under it.

Behind a transaction-pooling proxy (PgBouncer in transaction mode) a session
lock belongs to whichever server connection ran the statement, not to us:
the lock's backend pid may change between statements, and another client
handed the same server connection "holds" the lock as well. Both are checked
(the second with a connection of our own right after the lock is granted)
and the instance refuses to lead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import asyncpg

from manager.config import CronSettings
from manager.db.pool import TRIGGERS_CHANNEL, DatabaseTarget, connect
from manager.errors import DatabaseError
from manager.store.runs import FENCE, Fence

log = logging.getLogger(__name__)

# The executor lock's key: "PFYXEXEC" in ASCII. Both 32-bit halves are below
# 2**31, so they read the same as signed or unsigned numbers in pg_locks.
LOCK_KEY = 0x50465958_45584543

# Take the lock if free; the pid says which server session now holds it.
TRY_LOCK = "SELECT pg_try_advisory_lock($1) AS acquired, pg_backend_pid() AS pid"

# Does this session still hold the lock, on the same server backend?
PROBE = f"SELECT pg_backend_pid() = $1 AND {FENCE}"

# Give the lock back (shutdown).
UNLOCK = "SELECT pg_advisory_unlock($1)"

# The server ends this session after so many milliseconds of silence, which
# frees the lock of a leader that can no longer speak (see the module note).
# SET takes no parameters; the value is a whole number formatted by us.
SESSION_TIMEOUT = "SET idle_session_timeout = {milliseconds}"

# What the log says when the lock cannot be trusted.
POOLING_PROXY = (
    "the advisory lock is not private to this connection's session (a "
    "transaction-pooling proxy such as PgBouncer in transaction mode?); point "
    "the executor at PostgreSQL directly or at a session-pooling proxy"
)

# Grants a pooled session may have collected from several clients.
MAX_UNLOCKS = 16

_CONNECTION_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)

Listener = Callable[[], None]


class PoolingProxyError(DatabaseError):
    """The database connection goes through a transaction-pooling proxy."""


class LeaderLock:
    """The executor lock and the dedicated connection that holds it."""

    def __init__(
        self, target: DatabaseTarget, cron: CronSettings, key: int = LOCK_KEY
    ) -> None:
        self.target = target
        self.cron = cron
        self.key = key
        self.fence: Fence | None = None
        self._connection: asyncpg.Connection | None = None
        self._closed = asyncio.Event()
        # time.monotonic() of the last answer that proved the lock held.
        self._proven_at = 0.0
        self._session_timeout_refused = False

    @property
    def held(self) -> bool:
        return self.fence is not None

    def is_fresh(self) -> bool:
        """Is the lock held with a proof no older than one probe cycle?

        A probe that does not answer within the cycle ends leadership anyway;
        this also covers a process that was frozen and has not probed since
        it woke up (the monotonic clock runs on while a process is stopped).
        """
        if self.fence is None:
            return False
        age = time.monotonic() - self._proven_at
        return age <= self.cron.lock_probe_interval + self.cron.lock_probe_timeout

    async def try_acquire(self) -> bool:
        """One attempt at the lock; True when this instance now leads.

        Raises DatabaseError when the database cannot be asked, and
        PoolingProxyError when the lock would not mean anything.
        """
        connection = await self._open()
        try:
            row = await connection.fetchrow(
                TRY_LOCK, self.key, timeout=self.cron.lock_probe_timeout
            )
        except _CONNECTION_ERRORS as error:
            self.abandon()
            raise DatabaseError(
                f"leader lock attempt failed: {_reason(error)}"
            ) from error
        if not row["acquired"]:
            return False

        fence = Fence(pid=row["pid"], key=self.key)
        try:
            same_session = await connection.fetchval(
                PROBE, *fence.arguments(), timeout=self.cron.lock_probe_timeout
            )
            shared = same_session and await self._shared(fence)
        except _CONNECTION_ERRORS as error:
            self.abandon()
            raise DatabaseError(
                f"leader lock check failed: {_reason(error)}"
            ) from error
        if not same_session or shared:
            await self._give_back(connection)
            self.abandon()
            raise PoolingProxyError(POOLING_PROXY)
        self.fence = fence
        self._proven_at = time.monotonic()
        return True

    async def _shared(self, fence: Fence) -> bool:
        """Does another connection end up in the lock's server session?

        With a real session, a second connection is refused the lock. Behind
        a transaction pooler it may be handed the very server connection
        that holds it, and then "gets" the lock too: two leaders.
        """
        other = await connect(self.target)
        try:
            row = await other.fetchrow(
                TRY_LOCK, self.key, timeout=self.cron.lock_probe_timeout
            )
            if row["acquired"]:
                await self._give_back(other)
            return bool(row["acquired"]) or row["pid"] == fence.pid
        finally:
            other.terminate()

    async def _give_back(self, connection: asyncpg.Connection) -> None:
        """Undo lock grants made through a pooler, as far as it lets us.

        A pooled server session outlives our client connection, so the lock
        would stay taken for everyone; each unlock drops one grant.
        """
        with contextlib.suppress(*_CONNECTION_ERRORS):
            for _ in range(MAX_UNLOCKS):
                released = await connection.fetchval(
                    UNLOCK, self.key, timeout=self.cron.lock_probe_timeout
                )
                if not released:
                    return

    async def listen(self, on_notify: Listener) -> None:
        """Call `on_notify` for every NOTIFY on the triggers channel."""
        assert self._connection is not None
        async with asyncio.timeout(self.cron.lock_probe_timeout):
            await self._connection.add_listener(
                TRIGGERS_CHANNEL, lambda *_arguments: on_notify()
            )

    async def watch(self) -> str:
        """Probe the lock until it is lost; return why it was lost."""
        assert self._connection is not None and self.fence is not None
        connection, fence = self._connection, self.fence
        while True:
            closed = asyncio.ensure_future(self._closed.wait())
            try:
                done, _ = await asyncio.wait(
                    [closed], timeout=self.cron.lock_probe_interval
                )
            finally:
                closed.cancel()
            if done:
                return "lock connection closed"
            try:
                held = await connection.fetchval(
                    PROBE, *fence.arguments(), timeout=self.cron.lock_probe_timeout
                )
            except TimeoutError:
                return "lock probe timed out"
            except _CONNECTION_ERRORS as error:
                return f"lock probe failed: {_reason(error)}"
            if not held:
                return "lock no longer held by this session"
            self._proven_at = time.monotonic()

    async def release(self) -> None:
        """Unlock and close the connection, so a standby takes over at once."""
        connection, self._connection = self._connection, None
        held, self.fence = self.fence is not None, None
        if connection is None:
            return
        try:
            if held:
                await connection.fetchval(
                    UNLOCK, self.key, timeout=self.cron.lock_probe_timeout
                )
            await asyncio.wait_for(connection.close(), self.cron.lock_probe_timeout)
        except _CONNECTION_ERRORS:
            # Closing the socket ends the session, which frees the lock too.
            connection.terminate()

    def abandon(self) -> None:
        """Drop the lock connection without talking to the server.

        Used once the connection cannot be trusted: the server frees the
        lock when it notices the session is gone.
        """
        connection, self._connection = self._connection, None
        self.fence = None
        if connection is not None and not connection.is_closed():
            connection.terminate()

    async def _open(self) -> asyncpg.Connection:
        if self._connection is not None and not self._connection.is_closed():
            return self._connection
        connection = await connect(self.target)
        try:
            await self._limit_silence(connection)
        except _CONNECTION_ERRORS as error:
            connection.terminate()
            raise DatabaseError(
                f"leader lock connection setup failed: {_reason(error)}"
            ) from error
        self._closed = asyncio.Event()
        closed = self._closed
        connection.add_termination_listener(lambda _connection: closed.set())
        self._connection = connection
        return connection

    async def _limit_silence(self, connection: asyncpg.Connection) -> None:
        """Ask the server to end this session after lock_session_timeout of
        silence; servers before PostgreSQL 14 do not know the setting."""
        milliseconds = round(self.cron.lock_session_timeout * 1000)
        try:
            await connection.execute(
                SESSION_TIMEOUT.format(milliseconds=milliseconds),
                timeout=self.cron.lock_probe_timeout,
            )
        except asyncpg.UndefinedObjectError:
            if not self._session_timeout_refused:
                self._session_timeout_refused = True
                log.warning(
                    "lock session timeout not supported",
                    extra={"effect": "a frozen leader keeps the lock"},
                )


def _reason(error: BaseException) -> str:
    return str(error).strip() or type(error).__name__
