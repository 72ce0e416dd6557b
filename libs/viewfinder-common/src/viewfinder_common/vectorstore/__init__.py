"""The vector store interface (DESIGN §3-4): one interface, many adapters.

An *index* holds one row per (index, file) with one or more **named vector
fields** (e.g. ``visual`` for image queries and ``semantic`` for text queries
with the offline model; a single field for models with one shared space) and
only the fields needed to filter: dataset version id, file id, etag. Never the
full metadata — the catalogue is the source of truth for that.

Adapters live beside this module (pgvector, Milvus; OpenSearch, Lindorm,
Elasticsearch, Hologres later) and are chosen by configuration. Scores are
similarities where higher is better (cosine similarity for unit vectors), so a
score threshold means the same thing in every adapter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class VectorField:
    """A named vector field of an index and its dimension."""

    name: str
    dim: int


@dataclass(frozen=True)
class IndexSchema:
    """What an index table holds: its name and its named vector fields."""

    name: str
    fields: Sequence[VectorField]


@dataclass(frozen=True)
class VectorRow:
    """One file's vectors in an index."""

    file_id: str
    dataset_version_id: str
    etag: str
    vectors: Mapping[str, Sequence[float]]


@dataclass(frozen=True)
class VectorFilter:
    """Restricts a search to one dataset version and, optionally, a set of file ids."""

    dataset_version_id: str
    file_ids: Sequence[str] | None = None


@dataclass(frozen=True)
class VectorHit:
    """One search result: the file and its similarity (higher is closer)."""

    file_id: str
    score: float


@dataclass(frozen=True)
class VectorQuery:
    """A nearest-neighbour query on one named vector field."""

    vector_field: str
    vector: Sequence[float]
    top_k: int
    filter: VectorFilter
    score_threshold: float | None = None
    # Exact (brute-force) search instead of the ANN index; planners use it
    # when a filter leaves few candidates.
    exact: bool = False
    # ANN search breadth (HNSW ef / Milvus ef); None lets the adapter choose.
    search_breadth: int | None = None
    extra: Mapping[str, str] = field(default_factory=dict)


class SchemaMismatch(RuntimeError):
    """A user-created index table does not match the documented schema."""


class VectorStore(Protocol):
    """What every vector-store adapter provides."""

    async def ensure_index(self, schema: IndexSchema) -> None:
        """Creates the index table if absent, or validates an existing one (``SchemaMismatch``)."""

    async def upsert(self, index: str, rows: Sequence[VectorRow]) -> None:
        """Inserts or replaces rows keyed by file id (idempotent)."""

    async def delete(self, index: str, file_ids: Sequence[str]) -> None:
        """Removes the rows of these files; missing ids are ignored."""

    async def search(self, index: str, query: VectorQuery) -> list[VectorHit]:
        """Top-k rows of one vector field by similarity, filtered, above the threshold."""

    async def count(self, index: str, filter: VectorFilter | None = None) -> int:
        """Rows in the index (optionally only those matching the filter)."""

    async def close(self) -> None:
        """Releases connections."""
