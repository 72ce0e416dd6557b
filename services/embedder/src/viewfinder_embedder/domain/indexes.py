"""Which index a dataset's vectors go to, with which model and vector store.

A dataset's **active** index is what search reads; the pipeline writes new
files to it and to every index a job is still building (so that a dataset
switched to a new index misses no file that arrived during the build). A
dataset without an active index gets a default one on first use, named
``ds_<dataset id hex>`` (deterministic, so concurrent replicas agree), with
the dataset's indexing connections or the service defaults. An index keeps
the model identity it was built with: if the model behind its connection
changes version, writing or querying it is refused (vectors of two versions
are not comparable) until an index job re-embeds into a new index.
"""

from __future__ import annotations

import uuid
from dataclasses import replace

from viewfinder_common.errors import FailedPrecondition, InvalidArgument, NotFound
from viewfinder_common.vectorstore import INDEX_NAME, IndexSchema, VectorField, VectorStore
from viewfinder_embedder.domain.model import EmbeddingModel
from viewfinder_embedder.domain.ports import (
    IndexCatalogue,
    IndexRecord,
    IndexState,
    ModelProvider,
    VectorStoreProvider,
)


def default_index_name(dataset_id: str) -> str:
    """``ds_<32 hex>``: the index a dataset gets when it has none."""
    return f"ds_{uuid.UUID(dataset_id).hex}"


def new_index_name(dataset_id: str) -> str:
    """A fresh index name for a dataset (a new index job without a name)."""
    return f"ds_{uuid.UUID(dataset_id).hex}_{uuid.uuid4().hex[:8]}"


def index_schema(index: IndexRecord) -> IndexSchema:
    """The vector store schema of an index."""
    return IndexSchema(index.name, [VectorField(f.name, f.dimension) for f in index.fields])


def canonical_dataset_id(dataset_id: str) -> str:
    """The dataset id in canonical UUID form, or INVALID_ARGUMENT."""
    try:
        return str(uuid.UUID(dataset_id))
    except (ValueError, TypeError, AttributeError):
        raise InvalidArgument(f"dataset id {dataset_id!r} is not a UUID") from None


class IndexDirectory:
    """Finds or creates indexes and hands out their model and vector store."""

    def __init__(
        self,
        catalogue: IndexCatalogue,
        models: ModelProvider,
        stores: VectorStoreProvider,
        *,
        default_model_connection: str,
        default_store_connection: str,
    ) -> None:
        self.catalogue = catalogue
        self._models = models
        self._stores = stores
        self.default_model_connection = default_model_connection
        self.default_store_connection = default_store_connection
        self._ensured: set[str] = set()

    async def connections_for(self, dataset_id: str) -> tuple[str, str]:
        """(model connection, vector store connection) a new index of the dataset uses."""
        indexing = await self.catalogue.dataset_indexing(dataset_id)
        if indexing is None:
            raise NotFound(f"dataset {dataset_id} does not exist")
        return (
            indexing.model_connection or self.default_model_connection,
            indexing.vector_store_connection or self.default_store_connection,
        )

    async def active_or_default(self, dataset_id: str) -> IndexRecord:
        """The dataset's active index, creating and activating the default one if it has none."""
        dataset_id = canonical_dataset_id(dataset_id)
        active = await self.catalogue.active_index(dataset_id)
        if active is not None:
            return active
        model_connection, store_connection = await self.connections_for(dataset_id)
        index = await self.create(
            dataset_id,
            default_index_name(dataset_id),
            model_connection=model_connection,
            store_connection=store_connection,
            state=IndexState.READY,
        )
        await self.catalogue.activate_index(index.name)
        return replace(index, active=True)

    async def find(self, dataset_id: str, index_name: str) -> IndexRecord | None:
        """The named index (which must belong to the dataset, if one is given) or the dataset's active one."""
        if index_name:
            index = await self.catalogue.get_index(index_name)
            if index is None:
                raise NotFound(f"index {index_name!r} does not exist")
            if dataset_id and index.dataset_id != canonical_dataset_id(dataset_id):
                raise InvalidArgument(f"index {index_name!r} belongs to another dataset than {dataset_id}")
            return index
        if not dataset_id:
            return None
        return await self.catalogue.active_index(canonical_dataset_id(dataset_id))

    async def create(
        self,
        dataset_id: str,
        name: str,
        *,
        model_connection: str,
        store_connection: str,
        state: IndexState,
    ) -> IndexRecord:
        """Registers an index with the connection's current model and creates it in the vector store."""
        if not INDEX_NAME.fullmatch(name):
            raise InvalidArgument(f"index name {name!r} must match {INDEX_NAME.pattern}")
        if not self._models.has_connection(model_connection):
            raise InvalidArgument(f"no model connection named {model_connection!r} is configured")
        if not self._stores.has_connection(store_connection):
            raise InvalidArgument(f"no vector store connection named {store_connection!r} is configured")
        model = await self.model_for_connection(model_connection)
        index = await self.catalogue.create_index(
            IndexRecord(
                name=name,
                dataset_id=dataset_id,
                model_connection=model_connection,
                model=model.identity,
                vector_store_connection=store_connection,
                fields=list(model.fields),
                state=state,
                active=False,
            )
        )
        if index.dataset_id != dataset_id:
            raise FailedPrecondition(f"index name {name!r} is taken by another dataset")
        await self.store_for(index)
        return index

    async def model_for_connection(self, connection: str) -> EmbeddingModel:
        """The model of a configured connection (INVALID_ARGUMENT for an unknown name)."""
        if not self._models.has_connection(connection):
            raise InvalidArgument(f"no model connection named {connection!r} is configured")
        try:
            return await self._models.model(connection)
        except KeyError:  # a stored-connection lookup found no such name
            raise InvalidArgument(
                f"no model connection named {connection!r} is configured or stored"
            ) from None

    async def model_for(self, index: IndexRecord) -> EmbeddingModel:
        """The index's model, if the connection still serves the version the index was built with."""
        if not self._models.has_connection(index.model_connection):
            raise FailedPrecondition(
                f"index {index.name!r} uses model connection {index.model_connection!r}, which is not configured"
            )
        model = await self._models.model(index.model_connection)
        if model.identity != index.model:
            raise FailedPrecondition(
                f"index {index.name!r} holds vectors of {index.model.id} {index.model.version}, but connection "
                f"{index.model_connection!r} now serves {model.identity.id} {model.identity.version}; "
                "re-embed with a FULL index job into a new index"
            )
        return model

    async def abandon_build(self, name: str) -> None:
        """A build whose job failed or was cancelled: its index (if BUILDING, not active) becomes FAILED.

        The pipeline then stops writing new files to it; resuming the job
        makes it BUILDING again and rescans the version.
        """
        index = await self.catalogue.get_index(name)
        if index is not None and index.state is IndexState.BUILDING and not index.active:
            await self.catalogue.set_index_state(name, IndexState.FAILED)

    async def building_indexes(self, dataset_id: str) -> list[IndexRecord]:
        """The dataset's indexes that a job is building (not active): new files go to them too."""
        return [
            index
            for index in await self.catalogue.list_indexes(dataset_id)
            if index.state is IndexState.BUILDING and not index.active
        ]

    def forget_ensured(self, name: str) -> None:
        """Makes the next ``store_for`` check (and if need be create) the index table again."""
        self._ensured.discard(name)

    async def store_for(self, index: IndexRecord) -> VectorStore:
        """The index's vector store, with the index table / collection created (once per process)."""
        if not self._stores.has_connection(index.vector_store_connection):
            raise FailedPrecondition(
                f"index {index.name!r} lives in vector store {index.vector_store_connection!r}, which is not configured"
            )
        store = await self._stores.store(index.vector_store_connection)
        if index.name not in self._ensured:
            await store.ensure_index(index_schema(index))
            self._ensured.add(index.name)
        return store
