"""Models and vector stores by connection name, each loaded or opened once per process."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import asyncpg

from viewfinder_common.vectorstore import VectorStore
from viewfinder_common.vectorstore.factory import VectorStoreSettings, create_vector_store
from viewfinder_embedder.adapters.offline_model import OfflineEmbeddingModel
from viewfinder_embedder.config import ModelConnection, OfflineModelSettings
from viewfinder_embedder.domain.model import EmbeddingModel


def load_offline_model(settings: OfflineModelSettings) -> OfflineEmbeddingModel:
    """Blocking: the offline model (exports to ONNX into the cache on first use)."""
    return OfflineEmbeddingModel.load(
        settings.cache_dir, intra_op_threads=settings.intra_op_threads, batch_size=settings.batch_size
    )


class ModelRegistry:
    """``ModelProvider`` over the configured model connections."""

    def __init__(
        self,
        connections: Mapping[str, ModelConnection],
        offline: OfflineModelSettings,
        *,
        preloaded: Mapping[str, EmbeddingModel] | None = None,
    ) -> None:
        self._connections = dict(connections)
        self._offline = offline
        self._preloaded = set(preloaded or {})
        self._models: dict[str, EmbeddingModel] = dict(preloaded or {})
        self._lock = asyncio.Lock()

    def has_connection(self, name: str) -> bool:
        """Whether ``name`` is configured."""
        return name in self._connections or name in self._models

    async def model(self, connection: str) -> EmbeddingModel:
        """The connection's model, loaded (in a thread) on first use."""
        model = self._models.get(connection)
        if model is not None:
            return model
        async with self._lock:
            model = self._models.get(connection)
            if model is None:
                spec = self._connections.get(connection)
                if spec is None:
                    raise KeyError(connection)
                # Only "offline" exists so far; other kinds add a branch here.
                model = await asyncio.to_thread(load_offline_model, self._offline)
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
