"""Apply the numbered SQL files in manager/sql (also reachable as ./sql).

Each file `NNN_name.sql` runs once, in order, inside its own transaction, and
is recorded with a SHA-256 of its content. Replicas starting together take
an advisory lock first, so only one applies migrations while the others wait
and then find nothing to do. A file whose content changed after it was
applied stops the start: the database and the code would disagree.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import asyncpg

from manager.errors import MigrationError

log = logging.getLogger(__name__)

# Arbitrary but fixed: the advisory lock key that serialises migrations.
MIGRATION_LOCK_KEY = 0x50_46_59_4D_49_47  # "PFYMIG"

_FILE_NAME = re.compile(r"^(\d{3,})_([a-z0-9_]+)\.sql$")

# The ledger of applied migrations.
CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""

# What has been applied so far.
SELECT_APPLIED = "SELECT version, name, checksum FROM schema_migrations"

# Record one applied migration.
INSERT_APPLIED = """
INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def file_name(self) -> str:
        return f"{self.version:03d}_{self.name}.sql"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def default_directory() -> Path:
    return Path(str(resources.files("manager") / "sql"))


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """The migration files in version order; a duplicate version is an error."""
    directory = directory or default_directory()
    migrations: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: expected a name like 001_name.sql")
        version = int(match.group(1))
        if version in migrations:
            raise MigrationError(f"{path.name}: version {version} appears twice")
        migrations[version] = Migration(version, match.group(2), path.read_text())
    return [migrations[version] for version in sorted(migrations)]


async def apply_migrations(
    connection: asyncpg.Connection, directory: Path | None = None
) -> list[str]:
    """Apply what is missing; return the file names applied by this call."""
    migrations = load_migrations(directory)

    # A session lock on this connection: released below, or by the server
    # if this process dies half-way.
    await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await connection.execute(CREATE_LEDGER)
        applied = {
            row["version"]: row for row in await connection.fetch(SELECT_APPLIED)
        }
        _check_unchanged(migrations, applied)

        done = []
        for migration in migrations:
            if migration.version in applied:
                continue
            await _apply_one(connection, migration)
            done.append(migration.file_name)
        return done
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


def _check_unchanged(
    migrations: list[Migration], applied: dict[int, asyncpg.Record]
) -> None:
    known = {migration.version: migration for migration in migrations}
    for version, row in sorted(applied.items()):
        migration = known.get(version)
        if migration is None:
            raise MigrationError(
                f"migration {version:03d}_{row['name']}.sql was applied to this "
                "database but is not in this version of the Manager"
            )
        if migration.checksum != row["checksum"]:
            raise MigrationError(
                f"{migration.file_name} changed after it was applied "
                "(checksum differs); restore the file or add a new migration"
            )


async def _apply_one(connection: asyncpg.Connection, migration: Migration) -> None:
    try:
        async with connection.transaction():
            await connection.execute(migration.sql)
            await connection.execute(
                INSERT_APPLIED, migration.version, migration.name, migration.checksum
            )
    except asyncpg.PostgresError as error:
        raise MigrationError(f"{migration.file_name} failed: {error}") from error
    log.info("migration applied", extra={"migration": migration.file_name})
