"""Vector stores by connection name, each opened once per process.

An index records the store it lives in (``embedding_indexes.vector_store_connection``):
an adapter kind the service opens with its own settings (``pgvector``,
``milvus`` and the configured kind; pgvector shares the service's catalogue
pool), or a database connection stored through ConnectionService, opened by
name (``factory.stored_vector_store_opener``). Every service that reads or
writes an index's vectors routes through one registry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import asyncpg

from viewfinder_common.errors import NotFound
from viewfinder_common.vectorstore import VectorStore
from viewfinder_common.vectorstore.factory import VectorStoreSettings, create_vector_store

# Opens the vector store of a stored database connection, by name
# (``viewfinder_common.vectorstore.factory.stored_vector_store_opener``).
StoredStoreOpener = Callable[[str], Awaitable[VectorStore]]


class VectorStoreRegistry:
    """The service's own stores by adapter kind (``pgvector``, ``milvus`` and the
    configured kind), then stored database connections by name."""

    def __init__(
        self,
        settings: VectorStoreSettings,
        pool: asyncpg.Pool,
        *,
        stored: StoredStoreOpener | None = None,
        opened: Mapping[str, VectorStore] | None = None,
    ) -> None:
        """``opened``: stores the service already holds, by connection name (closed with the rest)."""
        self._settings = settings
        self._pool = pool
        self._own = {"pgvector", "milvus", settings.kind}
        self._stored = stored
        self._stores: dict[str, VectorStore] = dict(opened or {})
        self._lock = asyncio.Lock()

    def has_connection(self, name: str) -> bool:
        """Whether ``name`` is a known vector store (stored connections are found on first use)."""
        return name in self._own or name in self._stores or self._stored is not None

    async def store(self, connection: str) -> VectorStore:
        """The store, opened on first use. NotFound for a name that is neither an adapter kind
        nor (with ``stored``) a stored connection; the opener's errors otherwise."""
        store = self._stores.get(connection)
        if store is not None:
            return store
        async with self._lock:
            store = self._stores.get(connection)
            if store is None:
                if connection in self._own:
                    kind_settings = self._settings.model_copy(update={"kind": connection})
                    store = await create_vector_store(kind_settings, pool=self._pool)
                elif self._stored is not None:
                    store = await self._stored(connection)
                else:
                    raise NotFound(f"no vector store connection named {connection!r} is configured")
                self._stores[connection] = store
        return store

    async def close(self) -> None:
        """Closes every store opened or handed over."""
        for store in self._stores.values():
            await store.close()
