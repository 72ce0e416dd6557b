"""Models and vector stores by connection name, each loaded or opened once per process.

A name is first looked up in the service's configuration (``model_connections``;
the vector store kinds ``pgvector``, ``milvus`` and the configured one), then
among the connections stored through ConnectionService. An unknown name is
NOT_FOUND and a connection of the wrong family INVALID_ARGUMENT; a model
connection that cannot be loaded (a directory it cannot read, a service that
refuses the key, the URL or the model name) is FAILED_PRECONDITION. All are
domain errors: the pipeline dead-letters the files of a dataset that names
such a connection instead of redelivering the batch (and stalling its
partition) forever. An unreachable or overloaded service still raises as is,
so that the batch is delivered again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import asyncpg

from viewfinder_common.connections.resolve import resolve_connection
from viewfinder_common.connections.secrets import SecretVault
from viewfinder_common.connections.settings import ConnectionSettings
from viewfinder_common.connections.store import ConnectionStore
from viewfinder_common.errors import FailedPrecondition, InvalidArgument, NotFound
from viewfinder_common.http_retry import HTTPStatusError
from viewfinder_embedder.adapters.offline_model import OfflineEmbeddingModel
from viewfinder_embedder.adapters.remote_models import connect_model
from viewfinder_embedder.config import ModelConnection, OfflineModelSettings
from viewfinder_embedder.domain.model import EmbeddingModel, ModelError

# Answers of a model service at connect time that no retry will change.
_REFUSED_STATUSES = frozenset({400, 401, 403, 404})


def load_offline_model(settings: OfflineModelSettings) -> OfflineEmbeddingModel:
    """Blocking: the offline model (exports to ONNX into the cache on first use)."""
    return OfflineEmbeddingModel.load(
        settings.cache_dir, intra_op_threads=settings.intra_op_threads, batch_size=settings.batch_size
    )


class UnknownConnection(NotFound, KeyError):
    """No connection of that name is configured or stored."""

    def __str__(self) -> str:  # KeyError's own str() would quote the message
        return str(self.args[0]) if self.args else ""


# Builds the model of a connection stored through ConnectionService, by name;
# None means "the offline default", which the registry shares with its own.
StoredModelLoader = Callable[[str], Awaitable[EmbeddingModel | None]]


def stored_model_loader(pool: asyncpg.Pool, settings: ConnectionSettings) -> StoredModelLoader:
    """Loads models of stored connections: resolve name → kind, config, secret → model."""
    store, vault = ConnectionStore(pool), SecretVault(settings)

    async def load(name: str) -> EmbeddingModel | None:
        try:
            resolved = await resolve_connection(store, vault, name)
        except NotFound:
            raise UnknownConnection(f"no model connection named {name!r} is configured or stored") from None
        kind = resolved.spec.kind.value
        if kind == "offline_default":
            return None
        if kind not in ("dashscope_embedding", "pai_eas", "local_model_directory"):
            raise InvalidArgument(f"connection {name!r} is a {kind} connection, not an embedding model")
        try:
            return await connect_model(kind, resolved.spec.config, resolved.secret)
        except ModelError as err:
            raise FailedPrecondition(f"model connection {name!r} cannot be loaded: {err}") from err
        except HTTPStatusError as err:  # its message is already free of the secret
            if err.status not in _REFUSED_STATUSES:
                raise
            raise FailedPrecondition(f"model connection {name!r} was refused by its service: {err}") from err

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
                    model = await self._offline_model()
                elif self._stored is not None:
                    stored = await self._stored(connection)
                    model = stored if stored is not None else await self._offline_model()
                else:
                    raise UnknownConnection(f"no model connection named {connection!r} is configured")
                self._models[connection] = model
        return model

    async def _offline_model(self) -> EmbeddingModel:
        """The offline model, loaded once however many connections name it (call under the lock)."""
        for name, connection in self._connections.items():
            if connection.kind == "offline" and name in self._models:
                return self._models[name]
        for model in self._models.values():
            if isinstance(model, OfflineEmbeddingModel):
                return model
        return await asyncio.to_thread(load_offline_model, self._offline)

    async def close(self) -> None:
        """Closes the models this registry loaded, each once (preloaded ones belong to their owner)."""
        borrowed = {id(model) for name, model in self._models.items() if name in self._preloaded}
        closed: set[int] = set()
        for model in self._models.values():
            if id(model) not in borrowed and id(model) not in closed:
                closed.add(id(model))
                await model.close()
