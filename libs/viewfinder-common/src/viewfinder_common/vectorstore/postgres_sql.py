"""SQL pieces shared by the adapters that speak the PostgreSQL protocol (pgvector, Hologres)."""

from __future__ import annotations

from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, Literal

import asyncpg

from viewfinder_common.vectorstore import (
    INDEX_PREFIX,
    IndexNotFound,
    VectorFilter,
    canonical_id,
    validate_index_name,
)
from viewfinder_common.vectorstore.rows import checked_file_ids


def quote_ident(name: str) -> str:
    """A double-quoted SQL identifier (names are validated before; quoting is the second fence)."""
    return '"' + name.replace('"', '""') + '"'


def table_name(index: str) -> str:
    """The table holding ``index``."""
    return INDEX_PREFIX + validate_index_name(index)


@asynccontextmanager
async def index_connection(
    pool: asyncpg.Pool, index: str, schemas: MutableMapping[str, Any] | None = None
) -> AsyncIterator[Any]:
    """A pooled connection for work on ``index``'s table; a vanished table becomes
    ``IndexNotFound`` (and is forgotten from ``schemas``, a cache of table layouts)."""
    try:
        async with pool.acquire() as conn:
            yield conn
    except asyncpg.UndefinedTableError as err:
        if schemas is not None:
            schemas.pop(index, None)
        raise IndexNotFound(f"vector index {index!r} does not exist") from err


async def count_rows(
    conn: asyncpg.Connection, table: str, filter: VectorFilter | None, id_type: Literal["uuid", "text"]
) -> int:
    """Rows of ``table`` (a quoted name), optionally only one version's (and those file ids).

    ``id_type`` is how the table stores ids: pgvector uses ``uuid``, Hologres ``text``.
    """
    if filter is None:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))  # noqa: S608
    version = canonical_id(filter.dataset_version_id, "dataset version id")
    file_ids = checked_file_ids(filter)
    if file_ids is None:
        sql = f"SELECT count(*) FROM {table} WHERE dataset_version_id = $1::{id_type}"  # noqa: S608
        return int(await conn.fetchval(sql, version))
    sql = (
        f"SELECT count(*) FROM {table} "  # noqa: S608
        f"WHERE dataset_version_id = $1::{id_type} AND file_id = ANY($2::{id_type}[])"
    )
    return int(await conn.fetchval(sql, version, file_ids))
