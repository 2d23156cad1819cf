"""Test fixtures: one real PostgreSQL per test run, a fresh database per test.

The server is the one in `PFY_TEST_DSN` when set (for example a PostgreSQL
service in CI), else an embedded pgserver started once for the session. A
template database is migrated once; each test gets a copy of it, which takes
milliseconds and keeps tests independent.
"""

from __future__ import annotations

import os
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import asyncpg
import orjson
import pytest
import uvloop

from manager.db.migrations import apply_migrations
from manager.db.pool import DatabaseTarget, connect, create_pool
from tests.support.backend import RecordingBackend
from tests.support.oidc import Issuer
from tests.support.process import ManagerProcess
from tests.support.server import OwnPostgres, PostgresServer

TEMPLATE_NAME = "pfy_test_template"

# Where fault and security scenarios append their measured figures, one JSON
# line per test (see tests/faults/report.py); unset, figures are not kept.
REPORT_VARIABLE = "FAULTS_REPORT"


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, object]:
    """Tests run on uvloop, the loop the daemon itself uses."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The PostgreSQL server every test of this run uses."""
    dsn = os.environ.get("PFY_TEST_DSN")
    if dsn:
        yield _server_from_dsn(dsn)
        return

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

    data_dir = Path(tempfile.mkdtemp(prefix="pfy-test-pg-"))
    server = pgserver.get_server(data_dir, cleanup_mode="delete")
    info = server.get_postmaster_info()
    yield PostgresServer(
        host=str(info.socket_dir),
        port=info.port or 5432,
        user="postgres",
        password="",
        admin_database="postgres",
        data_dir=data_dir,
    )
    server.cleanup()


def _server_from_dsn(dsn: str) -> PostgresServer:
    parsed = urlparse(dsn)
    return PostgresServer(
        host=parsed.hostname or "127.0.0.1",
        port=parsed.port or 5432,
        user=unquote(parsed.username or "postgres"),
        password=unquote(parsed.password or ""),
        admin_database=parsed.path.lstrip("/") or "postgres",
        data_dir=None,
    )


@pytest.fixture(scope="session")
async def template_database(postgres: PostgresServer) -> str:
    """A migrated database that every test database is copied from."""
    admin = await connect(postgres.target(postgres.admin_database))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_NAME}"')
        await admin.execute(f'CREATE DATABASE "{TEMPLATE_NAME}"')
    finally:
        await admin.close()

    connection = await connect(postgres.target(TEMPLATE_NAME))
    try:
        await apply_migrations(connection)
    finally:
        await connection.close()
    return TEMPLATE_NAME


@pytest.fixture
async def database(
    postgres: PostgresServer, template_database: str
) -> AsyncIterator[DatabaseTarget]:
    """A fresh, migrated database for one test, dropped afterwards."""
    name = f"pfy_test_{uuid.uuid4().hex[:12]}"
    admin = await connect(postgres.target(postgres.admin_database))
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    finally:
        await admin.close()

    yield postgres.target(name)

    admin = await connect(postgres.target(postgres.admin_database))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def pool(database: DatabaseTarget) -> AsyncIterator[asyncpg.Pool]:
    """A connection pool on the test's database."""
    pool = await create_pool(database, min_size=1, max_size=10)
    yield pool
    await pool.close()


@pytest.fixture
async def processes() -> AsyncIterator[list[ManagerProcess]]:
    """`manager` processes a test starts; any still running are killed."""
    started: list[ManagerProcess] = []
    yield started
    for process in started:
        await process.close()


@pytest.fixture
async def backend() -> AsyncIterator[RecordingBackend]:
    """An application backend on 127.0.0.1 that answers 200 at once."""
    server = await RecordingBackend().start()
    yield server
    await server.stop()


@pytest.fixture
async def own_postgres() -> AsyncIterator[OwnPostgres]:
    """A PostgreSQL server for this test alone, which it may stop and restart."""
    with tempfile.TemporaryDirectory(prefix="pfy-own-pg-") as directory:
        server = OwnPostgres(Path(directory))
        try:
            yield await server.start()
        finally:
            await server.close()


class Figures:
    """A scenario's measured figures, written to $FAULTS_REPORT at its end."""

    def __init__(self) -> None:
        self.scenario = ""
        self.values: dict[str, Any] = {}

    def __call__(self, scenario: str | None = None, **values: Any) -> None:
        if scenario is not None:
            self.scenario = scenario
        self.values.update(values)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Iterator[pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_OUTCOME] = report.outcome
    return report


_OUTCOME = pytest.StashKey[str]()


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    """Record figures with `figures("scenario", name=value, ...)`."""
    recorded = Figures()
    yield recorded
    path = os.environ.get(REPORT_VARIABLE)
    if not path or not (recorded.values or recorded.scenario):
        return
    line = {
        "test": request.node.nodeid,
        "scenario": recorded.scenario,
        "outcome": request.node.stash.get(_OUTCOME, "error"),
        "figures": recorded.values,
    }
    with open(path, "ab") as report:
        report.write(orjson.dumps(line) + b"\n")


@pytest.fixture
async def issuer() -> AsyncIterator[Issuer]:
    """An OIDC issuer on 127.0.0.1 standing in for PocketID."""
    issuer = await Issuer().start()
    yield issuer
    await issuer.close()
