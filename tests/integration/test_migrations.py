"""Migrations: applied in order, idempotent, changed files refused, schema rules."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import asyncpg
import pytest

from manager.db.migrations import apply_migrations, default_directory, load_migrations
from manager.db.pool import DatabaseTarget, connect
from manager.errors import MigrationError
from tests.support.server import PostgresServer


@pytest.fixture
async def empty_database(postgres: PostgresServer) -> DatabaseTarget:
    """A database with nothing in it, not even the migrations."""
    name = "pfy_test_empty"
    admin = await connect(postgres.target(postgres.admin_database))
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    return postgres.target(name)


async def test_applies_every_file_then_nothing(empty_database: DatabaseTarget) -> None:
    connection = await connect(empty_database)
    try:
        first = await apply_migrations(connection)
        second = await apply_migrations(connection)
        recorded = await connection.fetch(
            "SELECT version, name, checksum FROM schema_migrations ORDER BY version"
        )
    finally:
        await connection.close()

    expected = [migration.file_name for migration in load_migrations()]
    assert first == expected
    assert second == []
    assert [row["version"] for row in recorded] == [
        migration.version for migration in load_migrations()
    ]
    assert all(len(row["checksum"]) == 64 for row in recorded)


async def test_concurrent_starts_apply_once(empty_database: DatabaseTarget) -> None:
    connections = [await connect(empty_database) for _ in range(3)]
    try:
        results = await asyncio.gather(
            *(apply_migrations(connection) for connection in connections)
        )
    finally:
        for connection in connections:
            await connection.close()
    applied = [names for names in results if names]
    assert len(applied) == 1


async def test_changed_applied_file_is_refused(
    empty_database: DatabaseTarget, tmp_path: Path
) -> None:
    directory = tmp_path / "sql"
    shutil.copytree(default_directory(), directory)
    connection = await connect(empty_database)
    try:
        await apply_migrations(connection, directory)
        first = sorted(directory.glob("*.sql"))[0]
        first.write_text(first.read_text() + "\n-- edited after release\n")
        with pytest.raises(MigrationError) as caught:
            await apply_migrations(connection, directory)
    finally:
        await connection.close()
    assert first.name in str(caught.value)
    assert "changed after it was applied" in str(caught.value)


async def test_failing_migration_leaves_nothing_half_applied(
    empty_database: DatabaseTarget, tmp_path: Path
) -> None:
    directory = tmp_path / "sql"
    shutil.copytree(default_directory(), directory)
    (directory / "900_broken.sql").write_text(
        "CREATE TABLE half_done (id int);\nSELECT no_such_function();\n"
    )
    connection = await connect(empty_database)
    try:
        with pytest.raises(MigrationError) as caught:
            await apply_migrations(connection, directory)
        leftover = await connection.fetchval("SELECT to_regclass('half_done')")
        versions = await connection.fetch("SELECT version FROM schema_migrations")
    finally:
        await connection.close()
    assert "900_broken.sql failed" in str(caught.value)
    assert leftover is None
    assert 900 not in [row["version"] for row in versions]


async def test_badly_named_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "first.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"first\.sql"):
        load_migrations(tmp_path)


async def insert_hierarchy(connection: asyncpg.Connection) -> dict[str, object]:
    project = await connection.fetchval(
        "INSERT INTO projects (name) VALUES ('p') RETURNING id"
    )
    tenant = await connection.fetchval(
        "INSERT INTO tenants (project_id, name) VALUES ($1, 't') RETURNING id", project
    )
    application = await connection.fetchval(
        """
        INSERT INTO applications (tenant_id, name, backend_url, signing_secret)
        VALUES ($1, 'a', 'http://127.0.0.1:1', 'whsec_x') RETURNING id
        """,
        tenant,
    )
    trigger = await connection.fetchval(
        """
        INSERT INTO triggers (application_id, name, schedule)
        VALUES ($1, 'tr', '* * * * *') RETURNING id
        """,
        application,
    )
    return {
        "project": project,
        "tenant": tenant,
        "application": application,
        "trigger": trigger,
    }


async def test_schema_enforces_one_run_per_slot(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as connection:
        ids = await insert_hierarchy(connection)
        insert = """
            INSERT INTO trigger_runs (trigger_id, application_id, scheduled_at, manual)
            VALUES ($1, $2, '2026-01-01T00:00:00Z', $3)
        """
        await connection.execute(insert, ids["trigger"], ids["application"], False)
        with pytest.raises(asyncpg.UniqueViolationError):
            await connection.execute(insert, ids["trigger"], ids["application"], False)
        # A run asked for by hand is not a slot and may share the instant.
        await connection.execute(insert, ids["trigger"], ids["application"], True)


async def test_schema_rules_names_status_and_cascade(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as connection:
        ids = await insert_hierarchy(connection)
        with pytest.raises(asyncpg.UniqueViolationError):
            await connection.execute(
                "INSERT INTO tenants (project_id, name) VALUES ($1, 't')",
                ids["project"],
            )
        with pytest.raises(asyncpg.CheckViolationError):
            await connection.execute(
                """
                INSERT INTO trigger_runs
                    (trigger_id, application_id, scheduled_at, status)
                VALUES ($1, $2, now(), 'lost')
                """,
                ids["trigger"],
                ids["application"],
            )
        await connection.execute("DELETE FROM projects WHERE id = $1", ids["project"])
        remaining = await connection.fetchval(
            """
            SELECT (SELECT count(*) FROM tenants) + (SELECT count(*) FROM applications)
                 + (SELECT count(*) FROM triggers)
            """
        )
    assert remaining == 0


async def test_due_trigger_claim_uses_the_partial_index(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as connection:
        await connection.execute("SET enable_seqscan = off")
        plan = await connection.fetchval(
            """
            EXPLAIN (FORMAT TEXT)
            SELECT id FROM triggers
            WHERE enabled AND next_run_at <= now()
            ORDER BY next_run_at LIMIT 10 FOR UPDATE SKIP LOCKED
            """
        )
        full_plan = "\n".join(
            row[0]
            for row in await connection.fetch(
                """
                EXPLAIN SELECT id FROM triggers
                WHERE enabled AND next_run_at <= now()
                ORDER BY next_run_at LIMIT 10 FOR UPDATE SKIP LOCKED
                """
            )
        )
    assert plan is not None
    assert "triggers_due_idx" in full_plan
