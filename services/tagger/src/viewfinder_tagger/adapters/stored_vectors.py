"""Image vectors the embedder already stored, scored against tag texts where they lie.

The zero-shot tagger needs the cosine of the image's vector with each tag
text's vector. When the file's vector is in the dataset's active index and
was computed from the file's current content (the embedder's record in
``embedding_index_files`` has the file's ETag), the tagger asks the vector
store for exactly those cosines: one exact query per tag text, restricted to
the one file, through the shared ``VectorStore`` interface, so it works with
every adapter and never fetches or decodes the image. The query goes to the
store the index lives in (``embedding_indexes.vector_store_connection``):
an adapter kind the tagger opens with its own settings, or a database
connection stored through ConnectionService (Milvus, Elasticsearch, Hologres,
...), through the shared ``VectorStoreRegistry``. Otherwise (no current vector,
or a store the tagger cannot open) ``scores`` answers None and the tagger
embeds the image through EmbedService instead.

The tables read here are the embedder's (migration 0004); like search, the
tagger only reads them.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence

import asyncpg

from viewfinder_common.errors import DomainError
from viewfinder_common.logging import get_logger
from viewfinder_common.vectorstore import (
    IndexNotFound,
    InvalidVectorInput,
    VectorFilter,
    VectorQuery,
)
from viewfinder_common.vectorstore.registry import VectorStoreRegistry
from viewfinder_tagger.domain.models import LabelTarget, ModelUnavailable

log = get_logger(__name__)

# Exact single-file queries in flight per file: they share the catalogue pool.
_QUERIES_IN_FLIGHT = 4

_STORED_ROW = """
SELECT i.name, i.vector_store_connection, i.vector_fields, f.etag, f.dataset_version_id
FROM embedding_indexes i
LEFT JOIN embedding_index_files f ON f.index_name = i.name AND f.file_id = $2
WHERE i.dataset_id = $1 AND CASE WHEN $3 = '' THEN i.active ELSE i.name = $3 END
"""


class StoredVectorScorer:
    """Cosines of tag-text vectors with a file's stored image vector, or None when there is none."""

    def __init__(self, pool: asyncpg.Pool, stores: VectorStoreRegistry) -> None:
        self._pool = pool
        self._stores = stores

    async def scores(
        self,
        target: LabelTarget,
        *,
        index_name: str,
        field: str,
        text_vectors: Sequence[Sequence[float]],
    ) -> list[float] | None:
        """One cosine per text vector, in order; None unless a current stored vector exists."""
        located = await self._locate(target, index_name, field)
        if located is None:
            return None
        index, version, connection = located
        try:
            store = await self._stores.store(connection)
        except DomainError as exc:  # a stored connection deleted, not a store, its secret unreadable
            log.warning("stored_vectors_unreachable", index=index, vector_store=connection, error=str(exc))
            return None
        gate = asyncio.Semaphore(_QUERIES_IN_FLIGHT)

        async def cosine_with(vector: Sequence[float]) -> float | None:
            query = VectorQuery(
                vector_field=field,
                vector=vector,
                top_k=1,
                filter=VectorFilter(dataset_version_id=version, file_ids=[target.file_id]),
                exact=True,
            )
            async with gate:
                hits = await store.search(index, query)
            return hits[0].score if hits else None

        try:
            found = await asyncio.gather(*(cosine_with(vector) for vector in text_vectors))
        except IndexNotFound:
            return None
        except InvalidVectorInput as exc:
            raise ModelUnavailable(
                f"tag text vectors do not fit index {index!r} field {field!r}: {exc}"
            ) from None
        if any(score is None for score in found):
            return None  # the row went away meanwhile (a DELETE)
        return [score for score in found if score is not None]

    async def _locate(self, target: LabelTarget, index_name: str, field: str) -> tuple[str, str, str] | None:
        """(index, dataset version, vector store connection) holding a vector of the file's
        current content in ``field``, or None."""
        try:
            dataset_id, file_id = uuid.UUID(target.dataset_id), uuid.UUID(target.file_id)
        except ValueError:
            return None
        row = await self._pool.fetchrow(_STORED_ROW, dataset_id, file_id, index_name)
        if row is None or row["etag"] is None or row["etag"] != target.etag:
            return None  # no index yet, not embedded yet, or embedded from other content
        if field not in {f.get("name") for f in json.loads(row["vector_fields"])}:
            return None  # EmbedService will say precisely which fields the model has
        return row["name"], str(row["dataset_version_id"]), row["vector_store_connection"]
