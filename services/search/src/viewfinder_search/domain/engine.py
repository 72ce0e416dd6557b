"""One search, from a checked ``SearchSpec`` to a page of results.

The searcher only talks to interfaces (catalogue, query embedder, vector
store, preview signer), so the same logic runs against PostgreSQL and any
vector-store adapter, and tests can hand it in-process servers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from viewfinder_common.errors import InvalidArgument
from viewfinder_common.vectorstore import VectorHit, VectorStore
from viewfinder_search.domain.page_token import PageCursor, PageTokenCodec
from viewfinder_search.domain.planner import (
    CandidateCatalogue,
    CatalogueVectorSearch,
    PlannerSettings,
    Strategy,
    VectorRequest,
    planned_vector_search,
)
from viewfinder_search.domain.records import FacetRecord, FileRecord, TagRecord
from viewfinder_search.domain.request import SearchSpec, SortKey
from viewfinder_search.domain.semantic import SemanticQuery
from viewfinder_search.domain.sql import CatalogueFilter


@dataclass(frozen=True)
class EmbeddedQuery:
    """A query embedded by the index's model: which index and field to search, with what."""

    index_name: str
    vector_field: str
    vector: Sequence[float]


class QueryEmbedder(Protocol):
    """Embeds query texts and images with the model of a dataset's index."""

    async def embed(self, dataset_id: str, index_name: str, query: SemanticQuery) -> EmbeddedQuery:
        """The query's vector for the field that answers its kind."""


class PreviewSigner(Protocol):
    """Signs short-lived preview URLs."""

    async def sign(self, bucket: str, key: str) -> tuple[str, datetime]:
        """A presigned GET URL and when it expires."""


class SearchCatalogue(CandidateCatalogue, Protocol):
    """Catalogue reads of a search."""

    async def dataset_of_version(self, dataset_version_id: str) -> str:
        """The dataset id of a version (NOT_FOUND when unknown)."""

    async def index_holding_version(self, dataset_version_id: str) -> str | None:
        """The index holding the version's vectors: the active one if it holds any, else the
        newest ready one that does; None when none does."""

    async def page(
        self,
        catalogue_filter: CatalogueFilter,
        *,
        descending: bool,
        after: tuple[datetime | None, str] | None,
        limit: int,
    ) -> list[FileRecord]:
        """Matching files in (last_modified, id) order after a keyset cursor."""

    async def files_by_ids(self, file_ids: Sequence[str]) -> dict[str, FileRecord]:
        """Rows of these files by id."""

    async def tags_by_file(self, file_ids: Sequence[str]) -> dict[str, list[TagRecord]]:
        """Tags in effect by file id."""

    async def facets(
        self, catalogue_filter: CatalogueFilter, file_ids: Sequence[str] | None, tag_limit: int
    ) -> FacetRecord:
        """Matched count and tag counts."""


@dataclass(frozen=True)
class ResultItem:
    """One file of a result page."""

    file: FileRecord
    tags: list[TagRecord]
    score: float | None = None
    preview_url: str = ""
    preview_expires: datetime | None = None


@dataclass(frozen=True)
class SearchOutcome:
    """A page of results and what comes with it."""

    items: list[ResultItem]
    next_page_token: str
    facets: FacetRecord | None
    # How the vector part was answered (None without a vector query).
    strategy: Strategy | None = None


class Searcher:
    """Runs searches; one per process, built in the lifespan."""

    def __init__(
        self,
        *,
        catalogue: SearchCatalogue,
        embedder: QueryEmbedder,
        vector_store: VectorStore,
        signer: PreviewSigner | None,
        page_tokens: PageTokenCodec,
        planner: PlannerSettings,
        catalogue_vectors: CatalogueVectorSearch | None = None,
        facet_tag_limit: int = 100,
    ) -> None:
        """``catalogue_vectors``: the exact pre-filter in one statement, when the
        vectors live in the catalogue's database (pgvector)."""
        self._catalogue = catalogue
        self._embedder = embedder
        self._store = vector_store
        self._signer = signer
        self._tokens = page_tokens
        self._planner = planner
        self._catalogue_vectors = catalogue_vectors
        self._facet_tag_limit = facet_tag_limit

    async def search(self, spec: SearchSpec) -> SearchOutcome:
        """One page of the search described by ``spec``."""
        dataset_id = await self._catalogue.dataset_of_version(spec.dataset_version_id)
        cursor = (
            self._tokens.decode(spec.page_token, request_fingerprint=spec.fingerprint)
            if spec.page_token
            else None
        )
        catalogue_filter = CatalogueFilter(spec.dataset_version_id, spec.condition)
        if spec.vector is not None:
            return await self._vector_page(spec, dataset_id, catalogue_filter, cursor)
        return await self._filter_page(spec, catalogue_filter, cursor)

    async def _filter_page(
        self, spec: SearchSpec, catalogue_filter: CatalogueFilter, cursor: PageCursor | None
    ) -> SearchOutcome:
        if cursor is not None and cursor.file_id is None:
            raise InvalidArgument("page_token does not belong to a filter search")
        after = (cursor.last_modified, cursor.file_id) if cursor is not None and cursor.file_id else None
        rows, facets = await asyncio.gather(
            self._catalogue.page(
                catalogue_filter, descending=spec.descending, after=after, limit=spec.page_size + 1
            ),
            self._facets(spec, catalogue_filter, None),
        )
        page = rows[: spec.page_size]
        next_token = ""
        if len(rows) > spec.page_size:
            last = page[-1]
            next_token = self._tokens.encode(
                PageCursor(spec.fingerprint, last_modified=last.last_modified, file_id=last.id)
            )
        items = await self._items(spec, page, {})
        return SearchOutcome(items, next_token, facets)

    async def _vector_page(
        self,
        spec: SearchSpec,
        dataset_id: str,
        catalogue_filter: CatalogueFilter,
        cursor: PageCursor | None,
    ) -> SearchOutcome:
        assert spec.vector is not None
        if cursor is not None and cursor.offset is None:
            raise InvalidArgument("page_token does not belong to a vector search")
        # A version is searched in the index that holds its vectors. That is the
        # active index, except for versions older than an index switch, which
        # built the new index from the latest version only: those stay in the
        # index they were embedded into. Nothing holding the version: the
        # embedder picks the active index (or says there is none).
        index_name = spec.index_name or await self._catalogue.index_holding_version(spec.dataset_version_id)
        embedded = await self._embedder.embed(dataset_id, index_name or "", spec.vector.query)
        planned = await planned_vector_search(
            self._store,
            self._catalogue,
            VectorRequest(
                index=embedded.index_name,
                vector_field=embedded.vector_field,
                vector=embedded.vector,
                top_k=spec.vector.top_k,
                score_threshold=spec.vector.score_threshold,
            ),
            catalogue_filter,
            self._planner,
            catalogue_vectors=self._catalogue_vectors,
        )
        hits = planned.hits
        hit_ids = [hit.file_id for hit in hits]
        tags: dict[str, list[TagRecord]] | None = None
        if len(hits) <= 2 * spec.page_size:
            # Small result: read every hit's tags alongside the files, one round trip less.
            files, tags = await asyncio.gather(
                self._catalogue.files_by_ids(hit_ids), self._catalogue.tags_by_file(hit_ids)
            )
        else:
            files = await self._catalogue.files_by_ids(hit_ids)
        # A file can vanish between the vector search and this read; it is simply not shown.
        hits = [hit for hit in hits if hit.file_id in files]
        ordered = self._order_hits(spec, hits, files)
        offset = (cursor.offset or 0) if cursor is not None else 0
        page = ordered[offset : offset + spec.page_size]
        next_token = ""
        if offset + spec.page_size < len(ordered):
            next_token = self._tokens.encode(PageCursor(spec.fingerprint, offset=offset + spec.page_size))
        scores = {hit.file_id: hit.score for hit in hits}
        items, facets = await asyncio.gather(
            self._items(spec, [files[hit.file_id] for hit in page], scores, tags),
            self._facets(spec, catalogue_filter, [hit.file_id for hit in hits]),
        )
        return SearchOutcome(items, next_token, facets, planned.strategy)

    @staticmethod
    def _order_hits(spec: SearchSpec, hits: list[VectorHit], files: dict[str, FileRecord]) -> list[VectorHit]:
        if spec.sort_key is SortKey.RELEVANCE:
            # Hits arrive best first; ascending relevance shows the least similar of the top-k first.
            return hits if spec.descending else list(reversed(hits))

        # NULL sorts as the latest time, as in filter searches; ties go by file id.
        timed = [h for h in hits if files[h.file_id].last_modified is not None]
        timed.sort(key=lambda h: (files[h.file_id].last_modified, h.file_id))
        untimed = sorted((h for h in hits if files[h.file_id].last_modified is None), key=lambda h: h.file_id)
        ordered = timed + untimed
        return list(reversed(ordered)) if spec.descending else ordered

    async def _facets(
        self, spec: SearchSpec, catalogue_filter: CatalogueFilter, file_ids: list[str] | None
    ) -> FacetRecord | None:
        if not spec.include_facets:
            return None
        return await self._catalogue.facets(catalogue_filter, file_ids, self._facet_tag_limit)

    async def _items(
        self,
        spec: SearchSpec,
        files: list[FileRecord],
        scores: dict[str, float],
        tags: dict[str, list[TagRecord]] | None = None,
    ) -> list[ResultItem]:
        if tags is None:
            tags = await self._catalogue.tags_by_file([record.id for record in files])
        previews: list[tuple[str, datetime | None]] = [("", None)] * len(files)
        if spec.include_preview_urls:
            if self._signer is None:
                raise InvalidArgument("this search service has no storage configured for preview URLs")
            signer = self._signer
            signed = await asyncio.gather(*(signer.sign(record.bucket, record.key) for record in files))
            previews = [(url, expires) for url, expires in signed]
        return [
            ResultItem(
                file=record,
                tags=tags.get(record.id, []),
                score=scores.get(record.id),
                preview_url=url,
                preview_expires=expires,
            )
            for record, (url, expires) in zip(files, previews, strict=True)
        ]
