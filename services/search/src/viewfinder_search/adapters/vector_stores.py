"""One ``VectorStore`` over every store that holds an index: each call goes to the index's own store.

A dataset can switch its indexing connections (say pgvector → Milvus); its
new index then lives in another store than the configured one. The store of
an index is ``embedding_indexes.vector_store_connection``, read once per
index (an index never moves): ``pgvector``, ``milvus`` or the configured
kind, opened with the service's settings, or a database connection stored through
ConnectionService, opened by name. A store is opened on first use and kept.
Indexes the registry does not know (tests that write their own tables) use
the configured store.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from viewfinder_common.errors import FailedPrecondition, NotFound
from viewfinder_common.vectorstore import (
    IndexSchema,
    VectorFilter,
    VectorHit,
    VectorQuery,
    VectorRow,
    VectorStore,
)
from viewfinder_common.vectorstore.factory import VectorStoreSettings
from viewfinder_common.vectorstore.registry import VectorStoreRegistry


class IndexRoutedVectorStore:
    """``VectorStore`` that sends each call to the store holding the index."""

    def __init__(
        self,
        default: VectorStore,
        *,
        settings: VectorStoreSettings,
        pool: asyncpg.Pool,
        open_stored: Callable[[str], Awaitable[VectorStore]] | None = None,
    ) -> None:
        self._default = default
        self._pool = pool
        self._stores = VectorStoreRegistry(
            settings, pool, stored=open_stored, opened={settings.kind: default}
        )
        self._index_stores: dict[str, str] = {}

    async def _store(self, index: str) -> VectorStore:
        connection = self._index_stores.get(index)
        if connection is None:
            connection = await self._pool.fetchval(
                "SELECT vector_store_connection FROM embedding_indexes WHERE name = $1", index
            )
            if connection is None:
                return self._default
            self._index_stores[index] = connection
        try:
            return await self._stores.store(connection)
        except NotFound:
            raise FailedPrecondition(
                f"index {index!r} lives in vector store {connection!r}, which search cannot open"
            ) from None

    async def ensure_index(self, schema: IndexSchema) -> None:
        """Creates or validates the index in its store."""
        await (await self._store(schema.name)).ensure_index(schema)

    async def upsert(self, index: str, rows: Sequence[VectorRow]) -> None:
        """Upserts into the index's store."""
        await (await self._store(index)).upsert(index, rows)

    async def delete(self, index: str, file_ids: Sequence[str]) -> None:
        """Deletes from the index's store."""
        await (await self._store(index)).delete(index, file_ids)

    async def search(self, index: str, query: VectorQuery) -> list[VectorHit]:
        """Searches the index in its store."""
        return await (await self._store(index)).search(index, query)

    async def count(self, index: str, filter: VectorFilter | None = None) -> int:
        """Counts rows of the index in its store."""
        return await (await self._store(index)).count(index, filter)

    async def close(self) -> None:
        """Closes every store opened, the configured one included."""
        await self._stores.close()
