"""The SQL migration runner against the real PostgreSQL of the local stack."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from viewfinder_common.db import Migration, MigrationError, load_migrations, migrate
from viewfinder_common.settings import DatabaseSettings

pytestmark = pytest.mark.stack


@pytest.fixture
async def scratch_db() -> AsyncIterator[asyncpg.Connection]:
    """A fresh, empty database per test (no migrations applied), dropped afterwards."""
    settings = DatabaseSettings()
    admin = await asyncpg.connect(settings.url)
    name = f"test_mig_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    conn = await asyncpg.connect(settings.url.rsplit("/", 1)[0] + "/" + name)
    try:
        yield conn
    finally:
        await conn.close()
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def test_catalogue_fixture_has_core_tables(catalogue_db_url: str) -> None:
    conn = await asyncpg.connect(catalogue_db_url)
    try:
        for table in ("datasets", "dataset_versions", "files", "jobs"):
            assert await conn.fetchval("SELECT to_regclass($1)", table) is not None, table
    finally:
        await conn.close()


async def test_repo_migrations_apply_once_and_enable_pgvector(scratch_db: asyncpg.Connection) -> None:
    migrations = load_migrations()
    applied = await migrate(scratch_db)
    assert applied == [m.version for m in migrations]
    assert await migrate(scratch_db) == []  # idempotent
    recorded = await scratch_db.fetchval("SELECT count(*) FROM schema_migrations")
    assert recorded == len(migrations)
    ext = await scratch_db.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
    assert ext is not None


async def test_changed_migration_is_refused(scratch_db: asyncpg.Connection) -> None:
    first = [Migration(1, "t", "CREATE TABLE t (id int)")]
    assert await migrate(scratch_db, first) == [1]
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate(scratch_db, [Migration(1, "t", "CREATE TABLE t (id bigint)")])


async def test_failed_migration_rolls_back_and_is_not_recorded(scratch_db: asyncpg.Connection) -> None:
    bad = [
        Migration(1, "ok", "CREATE TABLE a (id int)"),
        Migration(2, "broken", "CREATE TABLE b (id int); SELECT * FROM no_such_table"),
    ]
    with pytest.raises(asyncpg.UndefinedTableError):
        await migrate(scratch_db, bad)
    versions = [r["version"] for r in await scratch_db.fetch("SELECT version FROM schema_migrations")]
    assert versions == [1]
    assert await scratch_db.fetchval("SELECT to_regclass('b')") is None


def test_badly_named_migration_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "1_init.sql").write_text("SELECT 1")
    with pytest.raises(MigrationError, match="NNNN_description"):
        load_migrations(tmp_path)
