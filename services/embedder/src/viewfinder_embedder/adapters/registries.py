"""Models and vector stores by connection name, each loaded or opened once per process."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import asyncpg

from viewfinder_common.connections.resolve import resolve_connection
from viewfinder_common.connections.secrets import SecretVault
from viewfinder_common.connections.settings import ConnectionSettings
from viewfinder_common.connections.store import ConnectionStore
from viewfinder_common.errors import NotFound
from viewfinder_common.vectorstore import VectorStore
from viewfinder_common.vectorstore.factory import VectorStoreSettings, create_vector_store
from viewfinder_embedder.adapters.offline_model import OfflineEmbeddingModel
from viewfinder_embedder.adapters.remote_models import connect_model
from viewfinder_embedder.config import ModelConnection, OfflineModelSettings
from viewfinder_embedder.domain.model import EmbeddingModel


def load_offline_model(settings: OfflineModelSettings) -> OfflineEmbeddingModel:
    """Blocking: the offline model (exports to ONNX into the cache on first use)."""
    return OfflineEmbeddingModel.load(
        settings.cache_dir, intra_op_threads=settings.intra_op_threads, batch_size=settings.batch_size
    )


# Builds the model of a connection stored through ConnectionService, by name.
StoredModelLoader = Callable[[str], Awaitable[EmbeddingModel]]


def stored_model_loader(pool: asyncpg.Pool, settings: ConnectionSettings) -> StoredModelLoader:
    """Loads models of stored connections: resolve name → kind, config, secret → model."""
    store, vault = ConnectionStore(pool), SecretVault(settings)

    async def load(name: str) -> EmbeddingModel:
        try:
            resolved = await resolve_connection(store, vault, name)
        except NotFound:
            raise KeyError(name) from None
        return await connect_model(resolved.spec.kind.value, resolved.spec.config, resolved.secret)

    return load


class ModelRegistry:
    """``ModelProvider`` over the configured model connections."""

    def __init__(
        self,
        connections: Mapping[str, ModelConnection],
        offline: OfflineModelSettings,
        *,
        preloaded: Mapping[str, EmbeddingModel] | None = None,
        stored: StoredModelLoader | None = None,
    ) -> None:
        self._connections = dict(connections)
        # Connections made through ConnectionService (DashScope, PAI-EAS, CLIP
        # directory), looked up by name when the configuration has none.
        self._stored = stored
        self._offline = offline
        self._preloaded = set(preloaded or {})
        self._models: dict[str, EmbeddingModel] = dict(preloaded or {})
        self._lock = asyncio.Lock()

    def has_connection(self, name: str) -> bool:
        """Whether ``name`` is configured (stored connections are found on first use)."""
        return name in self._connections or name in self._models or self._stored is not None

    async def model(self, connection: str) -> EmbeddingModel:
        """The connection's model, loaded (in a thread) on first use."""
        model = self._models.get(connection)
        if model is not None:
            return model
        async with self._lock:
            model = self._models.get(connection)
            if model is None:
                if connection in self._connections:
                    model = await asyncio.to_thread(load_offline_model, self._offline)
                elif self._stored is not None:
                    model = await self._stored(connection)
                else:
                    raise KeyError(connection)
                self._models[connection] = model
        return model

    async def close(self) -> None:
        """Closes the models this registry loaded (preloaded ones belong to their owner)."""
        for name, model in self._models.items():
            if name not in self._preloaded:
                await model.close()


class VectorStoreRegistry:
    """``VectorStoreProvider``: connection names are the adapter kinds (``pgvector``, ``milvus``)."""

    def __init__(self, settings: VectorStoreSettings, pool: asyncpg.Pool) -> None:
        self._settings = settings
        self._pool = pool
        self._stores: dict[str, VectorStore] = {}
        self._lock = asyncio.Lock()

    def has_connection(self, name: str) -> bool:
        """Whether ``name`` is a known vector store."""
        return name in {"pgvector", "milvus"}

    async def store(self, connection: str) -> VectorStore:
        """The store, opened on first use (pgvector shares the catalogue pool)."""
        store = self._stores.get(connection)
        if store is not None:
            return store
        async with self._lock:
            store = self._stores.get(connection)
            if store is None:
                kind_settings = self._settings.model_copy(update={"kind": connection})
                store = await create_vector_store(kind_settings, pool=self._pool)
                self._stores[connection] = store
        return store

    async def close(self) -> None:
        """Closes every opened store."""
        for store in self._stores.values():
            await store.close()
