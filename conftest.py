"""Fixtures every test directory shares (services/*/tests, libs/*/tests, tests/).

Service tests run against the real servers of the local stack (`make up`);
their addresses come from the environment (`.local/stack.env`, sourced by
`make test`). Each test gets its own database, topics and bucket names, so
tests never see each other's data.
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import structlog

from viewfinder_common.db import migrate
from viewfinder_common.settings import DatabaseSettings

REPO = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))

from deploy.local.stack import load_env  # noqa: E402 - needs the repo root on sys.path

# Lets a bare `pytest` find a running stack without sourcing stack.env by hand.
load_env()


@pytest.fixture
def unique_name() -> str:
    """A short unique name for topics, buckets, groups, tables of one test."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def catalogue_db_url() -> AsyncIterator[str]:
    """URL of a fresh PostgreSQL database with every migration applied; dropped afterwards."""
    settings = DatabaseSettings()
    base, _, _ = settings.url.rpartition("/")
    name = f"test_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(settings.url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{base}/{name}"
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    try:
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
def isolated_logging() -> Iterator[None]:
    """Services and configure_logging change process-wide logging; restore it afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
