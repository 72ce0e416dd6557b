"""The catalogue's PostgreSQL: connection pool and the SQL migration runner.

Migrations are plain SQL files in ``viewfinder_common/migrations`` named
``NNNN_description.sql``, applied in order, each in its own transaction, and
recorded with a checksum in ``schema_migrations``. An advisory lock lets many
replicas (or the Helm migration Job and a service) start at once safely. A
file that changed after it was applied is an error, not a silent skip.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import asyncpg

from viewfinder_common.logging import configure_logging, get_logger
from viewfinder_common.settings import DatabaseSettings, ServiceSettings

log = get_logger(__name__)

_MIGRATION_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")
# Any constant works; it only has to be the same in every process.
_MIGRATION_LOCK_ID = 0x76696577  # "view"


class MigrationError(RuntimeError):
    """The database's recorded migrations disagree with the files in the repo."""


@dataclass(frozen=True)
class Migration:
    """One SQL migration file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


async def create_pool(
    settings: DatabaseSettings, *, server_settings: Mapping[str, str] | None = None
) -> asyncpg.Pool:
    """An asyncpg pool; create it in the app lifespan, never at import.

    ``server_settings``: session settings every connection of the pool starts
    with (e.g. a service's planner costs), sent with the connection request.
    """
    password = settings.password.get_secret_value() if settings.password else None
    pool = await asyncpg.create_pool(
        settings.url,
        password=password,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        command_timeout=settings.command_timeout_s,
        server_settings=dict(server_settings) if server_settings else None,
    )
    assert pool is not None  # asyncpg types it Optional for the `await` form only
    return pool


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """Reads the migration files, sorted by version; rejects bad names and duplicate versions."""
    if directory is None:
        root = resources.files("viewfinder_common") / "migrations"
        entries = [(entry.name, entry.read_text()) for entry in root.iterdir() if entry.name.endswith(".sql")]
    else:
        entries = [(p.name, p.read_text()) for p in directory.glob("*.sql")]
    migrations = []
    for filename, sql in entries:
        match = _MIGRATION_NAME.match(filename)
        if match is None:
            raise MigrationError(f"migration file {filename!r} is not named NNNN_description.sql")
        migrations.append(Migration(int(match["version"]), match["name"], sql))
    migrations.sort(key=lambda m: m.version)
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version: {sorted(versions)}")
    return migrations


async def migrate(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[int]:
    """Applies pending migrations; returns the versions applied by this call."""
    migrations = load_migrations() if migrations is None else migrations
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_ID)
    try:
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version    integer PRIMARY KEY,
                name       text NOT NULL,
                checksum   text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        applied = {
            row["version"]: row["checksum"]
            for row in await conn.fetch("SELECT version, checksum FROM schema_migrations")
        }
        done: list[int] = []
        for migration in migrations:
            recorded = applied.get(migration.version)
            if recorded is not None:
                if recorded != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} changed after it was applied; "
                        "add a new migration instead of editing an applied one"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            log.info("migration_applied", version=migration.version, name=migration.name)
            done.append(migration.version)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_ID)


async def _migrate_from_settings(settings: DatabaseSettings) -> list[int]:
    password = settings.password.get_secret_value() if settings.password else None
    conn = await asyncpg.connect(settings.url, password=password)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


def main() -> None:
    """``viewfinder-migrate``: brings the catalogue schema up to date (Helm hook, make up)."""
    settings = ServiceSettings(service_name="migrate")
    configure_logging("migrate", settings.log_level, settings.log_json)
    applied = asyncio.run(_migrate_from_settings(settings.db))
    log.info("migrations_done", applied=applied)
