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

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from viewfinder_common.errors import FailedPrecondition
from viewfinder_common.vectorstore import (
    IndexSchema,
    VectorFilter,
    VectorHit,
    VectorQuery,
    VectorRow,
    VectorStore,
)
from viewfinder_common.vectorstore.factory import VectorStoreSettings, create_vector_store

# Adapter kinds search opens with its own settings (as the embedder does); any
# other name is a database connection stored through ConnectionService.
OWN_KINDS = frozenset({"pgvector", "milvus"})


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
        self._settings = settings
        self._pool = pool
        self._open_stored = open_stored
        self._own = OWN_KINDS | {settings.kind}
        self._stores: dict[str, VectorStore] = {settings.kind: default}
        self._index_stores: dict[str, str] = {}
        self._lock = asyncio.Lock()

    async def _store(self, index: str) -> VectorStore:
        connection = self._index_stores.get(index)
        if connection is None:
            connection = await self._pool.fetchval(
                "SELECT vector_store_connection FROM embedding_indexes WHERE name = $1", index
            )
            if connection is None:
                return self._default
            self._index_stores[index] = connection
        store = self._stores.get(connection)
        if store is not None:
            return store
        if connection not in self._own and self._open_stored is None:
            raise FailedPrecondition(
                f"index {index!r} lives in vector store {connection!r}, which search cannot open"
            )
        async with self._lock:
            store = self._stores.get(connection)
            if store is None:
                if connection in self._own:
                    kind_settings = self._settings.model_copy(update={"kind": connection})
                    store = await create_vector_store(kind_settings, pool=self._pool)
                else:
                    assert self._open_stored is not None
                    store = await self._open_stored(connection)
                self._stores[connection] = store
        return store

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
        for store in self._stores.values():
            await store.close()
