"""What the embedder's logic needs from the outside, as protocols.

Adapters (``viewfinder_embedder.adapters``) implement them over S3, the decode
process pool, PostgreSQL and Kafka; unit tests implement them in memory.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from viewfinder_common.vectorstore import VectorStore
from viewfinder_embedder.domain.decode import DecodeResult
from viewfinder_embedder.domain.model import EmbeddingModel, ModelField, ModelIdentity, QueryKind


class ObjectUnavailable(Exception):
    """One object cannot be read (gone, too large, access denied): that file fails, others go on."""


class ObjectReader(Protocol):
    """Reads objects from a bucket."""

    async def read(self, bucket: str, key: str) -> bytes:
        """The object's bytes; ``ObjectUnavailable`` for a per-object problem, anything else is an outage."""


class ImageDecoder(Protocol):
    """Decodes images off the event loop."""

    async def decode(self, data: bytes, size: int) -> DecodeResult:
        """A ``size`` x ``size`` RGB image or the reason it cannot be decoded."""


class IndexState(enum.Enum):
    """Lifecycle of an index (``embedding_indexes.state``).

    BUILDING: an index job is filling it; the pipeline writes new files to it
    as well as to the active index, so a build that becomes active misses
    nothing. FAILED: its job failed or was cancelled; the pipeline no longer
    writes to it (resuming the job rescans the version). READY: complete.
    """

    BUILDING = "building"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True)
class IndexRecord:
    """One registered vector index of a dataset."""

    name: str
    dataset_id: str
    model_connection: str
    model: ModelIdentity
    vector_store_connection: str
    fields: Sequence[ModelField]
    state: IndexState
    active: bool
    create_time: datetime | None = None

    def query_fields(self, kind: QueryKind) -> list[ModelField]:
        """Fields of this index that answer ``kind`` queries."""
        return [f for f in self.fields if kind in f.query_kinds]


@dataclass(frozen=True)
class DatasetIndexing:
    """A dataset's indexing settings (empty strings: the service defaults)."""

    dataset_id: str
    model_connection: str = ""
    vector_store_connection: str = ""


@dataclass(frozen=True)
class EmbeddedFile:
    """What the catalogue records for a file whose vectors were written."""

    file_id: str
    dataset_version_id: str
    etag: str


@dataclass(frozen=True)
class CurrentVectors:
    """The content a file's vectors in an index were computed from."""

    etag: str
    model_version: str


class IndexCatalogue(Protocol):
    """The registry of indexes and the record of what each holds (PostgreSQL)."""

    async def dataset_indexing(self, dataset_id: str) -> DatasetIndexing | None:
        """The dataset's indexing settings; None if the dataset does not exist."""

    async def active_index(self, dataset_id: str) -> IndexRecord | None:
        """The dataset's active index, if any."""

    async def get_index(self, name: str) -> IndexRecord | None:
        """An index by name."""

    async def list_indexes(self, dataset_id: str) -> list[IndexRecord]:
        """A dataset's indexes, the active one first."""

    async def create_index(self, index: IndexRecord) -> IndexRecord:
        """Registers an index (if a same-named one exists, returns that one unchanged)."""

    async def activate_index(self, name: str) -> None:
        """Makes ``name`` its dataset's only active index (and READY)."""

    async def set_index_state(self, name: str, state: IndexState) -> None:
        """Records an index's lifecycle state."""

    async def current_vectors(self, index: str, file_ids: Sequence[str]) -> Mapping[str, CurrentVectors]:
        """For the given files that have vectors in the index: what they were computed from."""

    async def record_embedded(
        self, index: str, files: Sequence[EmbeddedFile], model_version: str, job_id: str | None
    ) -> None:
        """Records that these files' vectors are now in the index."""

    async def forget(self, index: str, file_ids: Sequence[str]) -> None:
        """Records that these files' vectors were removed from the index."""


class ModelProvider(Protocol):
    """Embedding models by connection name, loaded once per process."""

    def has_connection(self, name: str) -> bool:
        """Whether a model connection of that name is configured."""

    async def model(self, connection: str) -> EmbeddingModel:
        """The model of a configured connection (loaded on first use)."""


class VectorStoreProvider(Protocol):
    """Vector stores by connection name, opened once per process."""

    def has_connection(self, name: str) -> bool:
        """Whether a vector store connection of that name is configured."""

    async def store(self, connection: str) -> VectorStore:
        """The store of a configured connection (opened on first use)."""


@dataclass(frozen=True)
class DeadLetter:
    """A record the embedder gives up on, with the reason."""

    value: bytes
    key: bytes | None
    partition: int | None
    offset: int | None
    reason: str
    error_type: str
    headers: Mapping[str, str] = field(default_factory=dict)
