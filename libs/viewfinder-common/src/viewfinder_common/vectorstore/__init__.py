"""The vector store interface (DESIGN §3-4): one interface, many adapters.

An *index* holds one row per (index, file) with one or more **named vector
fields** (e.g. ``visual`` for image queries and ``semantic`` for text queries
with the offline model; a single field for models with one shared space) and
only the fields needed to filter: dataset version id, file id, etag. Never the
full metadata — the catalogue is the source of truth for that.

Adapters live beside this module (pgvector, Milvus, Elasticsearch,
OpenSearch, Lindorm, Hologres) and are chosen by configuration
(``factory.create_vector_store``). Scores are cosine similarities where higher
is better, so a score threshold means the same thing in every adapter.

Contract every adapter keeps (``libs/viewfinder-common/tests/vectorstore`` runs
one suite against each):

* file ids and dataset version ids are the catalogue's UUIDs; adapters accept
  any spelling ``uuid.UUID`` parses and return the canonical lowercase form;
* index and vector field names match ``INDEX_NAME`` / ``FIELD_NAME`` and a field
  may not take a reserved column name (``RESERVED_COLUMNS``);
* every row carries a finite, non-zero vector of the declared dimension for
  every field of the index (``InvalidVectorInput`` otherwise, nothing written);
* ``VectorFilter.file_ids=None`` means "no restriction", an empty sequence
  matches nothing;
* ``exact=True`` returns the true top-k (brute force); ANN results are never
  silently short: when the index returns fewer than ``top_k`` rows while more
  rows match the filter, the adapter falls back to the exact path;
* an index that does not exist raises ``IndexNotFound``; a user-created one
  that does not fit the schema raises ``SchemaMismatch`` from ``ensure_index``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from viewfinder_common.errors import FailedPrecondition, InvalidArgument, NotFound

# Index names end up in table / collection names (``vf_index_<name>``): short
# enough for PostgreSQL's 63-byte identifiers, safe in every backend.
INDEX_NAME: Final = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
FIELD_NAME: Final = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
# Columns every index has besides its vector fields.
RESERVED_COLUMNS: Final = frozenset({"file_id", "dataset_version_id", "etag", "updated_at"})
# Prefix of the table (pgvector) or collection (Milvus) holding an index.
INDEX_PREFIX: Final = "vf_index_"
# HNSW search breadth when a query leaves it to the adapter.
DEFAULT_SEARCH_BREADTH: Final = 100


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

    def vector_field(self, name: str) -> VectorField:
        """The field called ``name``, or ``InvalidVectorInput`` listing the fields there are."""
        for vector_field in self.fields:
            if vector_field.name == name:
                return vector_field
        known = ", ".join(f.name for f in self.fields)
        raise InvalidVectorInput(f"index {self.name!r} has no vector field {name!r} (fields: {known})")


@dataclass(frozen=True)
class VectorRow:
    """One file's vectors in an index."""

    file_id: str
    dataset_version_id: str
    etag: str
    vectors: Mapping[str, Sequence[float]]


@dataclass(frozen=True)
class VectorFilter:
    """Restricts a search to one dataset version and, optionally, a set of file ids.

    ``file_ids=None`` leaves the version unrestricted; an empty sequence matches nothing.
    """

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


class SchemaMismatch(FailedPrecondition, RuntimeError):
    """A user-created index table does not match the documented schema."""


class IndexNotFound(NotFound):
    """The named index (table / collection) does not exist; call ``ensure_index`` first."""


class InvalidVectorInput(InvalidArgument, ValueError):
    """Rows or a query that cannot be stored or answered: bad id, wrong dimension, NaN, zero norm …"""


def validate_schema(schema: IndexSchema) -> None:
    """Rejects index and field names that are not safe identifiers, duplicates and bad dimensions."""
    if not INDEX_NAME.fullmatch(schema.name):
        raise InvalidVectorInput(f"index name {schema.name!r} must match {INDEX_NAME.pattern}")
    if not schema.fields:
        raise InvalidVectorInput(f"index {schema.name!r} has no vector fields")
    seen: set[str] = set()
    for vector_field in schema.fields:
        validate_field_name(vector_field.name)
        if vector_field.name in seen:
            raise InvalidVectorInput(f"index {schema.name!r} declares field {vector_field.name!r} twice")
        seen.add(vector_field.name)
        if vector_field.dim < 1:
            raise InvalidVectorInput(f"vector field {vector_field.name!r} has dimension {vector_field.dim}")


def validate_index_name(index: str) -> str:
    """The index name if it is a safe identifier (``INDEX_NAME``), else ``InvalidVectorInput``."""
    if not INDEX_NAME.fullmatch(index):
        raise InvalidVectorInput(f"index name {index!r} must match {INDEX_NAME.pattern}")
    return index


def validate_field_name(name: str) -> str:
    """The vector field name if it is a safe identifier (``FIELD_NAME``), else ``InvalidVectorInput``."""
    if not FIELD_NAME.fullmatch(name) or name in RESERVED_COLUMNS:
        raise InvalidVectorInput(
            f"vector field name {name!r} must match {FIELD_NAME.pattern} and not be one of {sorted(RESERVED_COLUMNS)}"
        )
    return name


def canonical_id(value: str, what: str = "file id") -> str:
    """The canonical lowercase text of a UUID, or ``InvalidVectorInput`` naming ``what``."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError) as err:
        raise InvalidVectorInput(f"{what} {value!r} is not a UUID") from err


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
