"""The catalogue queries search runs, over an asyncpg pool.

The SQL text comes from ``domain.sql`` (parameterised, unit-tested); this
module only executes it and turns rows into records.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import asyncpg

from viewfinder_common.errors import NotFound
from viewfinder_search.domain.records import (
    FacetRecord,
    FileRecord,
    TagCountRecord,
    TagRecord,
)
from viewfinder_search.domain.sql import (
    CatalogueFilter,
    candidate_ids_sql,
    estimate_sql,
    facet_sql,
    files_by_ids_sql,
    matching_ids_sql,
    page_sql,
    tags_by_file_sql,
)

_CACHE_ENTRIES = 10_000
# The index of the version's dataset that holds vectors of the version (the
# embedder's embedding_index_files, read by its (index_name, dataset_version_id)
# index): the active one first, then the newest ready one; a failed or
# unfinished build never, unless it is the active index.
_INDEX_HOLDING_VERSION = """
SELECT i.name FROM dataset_versions v
JOIN embedding_indexes i ON i.dataset_id = v.dataset_id
WHERE v.id = $1::uuid AND (i.active OR i.state = 'ready')
  AND EXISTS (SELECT 1 FROM embedding_index_files f WHERE f.index_name = i.name AND f.dataset_version_id = v.id)
ORDER BY i.active DESC, i.created_at DESC
LIMIT 1
"""

# Planner settings of every connection search opens (asyncpg ``server_settings``),
# whatever the server's postgresql.conf says (measured at 100k files, bench/search):
# - random_page_cost 1.1: search reads by index and the catalogue's hot part is
#   in memory, so a random page costs about what a sequential one does; with the
#   default 4.0 PostgreSQL scanned all of ``files`` for a 1 % tag (27 ms against
#   7 ms by index, EXPLAIN ANALYZE).
# - plan_cache_mode force_custom_plan: asyncpg prepares every statement, and after
#   five runs PostgreSQL may switch to a generic plan that ignores the values; a
#   tag's selectivity (1 % or 50 %) and the length of an id list decide the plan.
#   Generic plans made the 1 % tag's id read take 20 ms instead of 2.5 ms and the
#   id-restricted exact vector search 23 ms instead of 4.7 ms; planning each
#   statement costs ~0.3 ms.
# - jit off: compiling only pays off for long analytical queries; search's
#   reads are short and must not pay for it when an estimate is large.
SERVER_SETTINGS: Final = {"random_page_cost": "1.1", "jit": "off", "plan_cache_mode": "force_custom_plan"}


def _file(row: Any) -> FileRecord:
    return FileRecord(
        id=str(row["id"]),
        dataset_id=str(row["dataset_id"]),
        version_id=str(row["version_id"]),
        bucket=row["bucket"],
        key=row["key"],
        uri=row["uri"],
        size=row["size"],
        etag=row["etag"],
        last_modified=row["last_modified"],
        format=row["format"],
        width=row["width"],
        height=row["height"],
        frames=row["frames"],
        mode=row["mode"],
        status=row["status"],
        error=row["error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class PostgresCatalogue:
    """Reads files and tags of the catalogue for search."""

    def __init__(
        self, pool: asyncpg.Pool, *, version_size_ttl_s: float = 300.0, estimate_ttl_s: float = 60.0
    ) -> None:
        self._pool = pool
        self._version_size_ttl_s = version_size_ttl_s
        self._estimate_ttl_s = estimate_ttl_s
        # Row estimates by filter: a user refining the text of a query keeps the filter.
        self._estimates: dict[CatalogueFilter, tuple[int, float]] = {}
        # A version's dataset never changes; bounded so a long-lived process stays small.
        self._dataset_of_version: dict[str, str] = {}
        self._version_sizes: dict[str, tuple[int, float]] = {}

    async def dataset_of_version(self, dataset_version_id: str) -> str:
        """The dataset id of a version; NOT_FOUND when the version does not exist."""
        cached = self._dataset_of_version.get(dataset_version_id)
        if cached is not None:
            return cached
        dataset_id = await self._pool.fetchval(
            "SELECT dataset_id FROM dataset_versions WHERE id = $1::uuid", dataset_version_id
        )
        if dataset_id is None:
            raise NotFound(f"dataset version {dataset_version_id} does not exist")
        if len(self._dataset_of_version) >= _CACHE_ENTRIES:
            self._dataset_of_version.clear()
        self._dataset_of_version[dataset_version_id] = str(dataset_id)
        return str(dataset_id)

    async def index_holding_version(self, dataset_version_id: str) -> str | None:
        """The index holding the version's vectors: the dataset's active index if it holds
        any, else the newest ready index that does; None when none does. Read on every
        query, as an index switch changes it."""
        name = await self._pool.fetchval(_INDEX_HOLDING_VERSION, dataset_version_id)
        return None if name is None else str(name)

    async def version_size(self, dataset_version_id: str) -> int:
        """Active files of a version, cached for ``version_size_ttl_s`` (it only steers the planner)."""
        now = time.monotonic()
        cached = self._version_sizes.get(dataset_version_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        size = int(
            await self._pool.fetchval(
                "SELECT count(*) FROM files WHERE version_id = $1::uuid AND status = 'active'",
                dataset_version_id,
            )
        )
        if len(self._version_sizes) >= _CACHE_ENTRIES:
            self._version_sizes.clear()
        self._version_sizes[dataset_version_id] = (size, now + self._version_size_ttl_s)
        return size

    async def estimated_matches(self, catalogue_filter: CatalogueFilter) -> int:
        """PostgreSQL's estimate of the matching files (planned with these values, nothing read),
        cached for ``estimate_ttl_s`` (it only steers the planner)."""
        now = time.monotonic()
        cached = self._estimates.get(catalogue_filter)
        if cached is not None and cached[1] > now:
            return cached[0]
        sql, params = estimate_sql(catalogue_filter)
        plan = json.loads(await self._pool.fetchval(sql, *params))
        estimate = int(plan[0]["Plan"]["Plan Rows"])
        if len(self._estimates) >= _CACHE_ENTRIES:
            self._estimates.clear()
        self._estimates[catalogue_filter] = (estimate, now + self._estimate_ttl_s)
        return estimate

    async def candidate_ids(self, catalogue_filter: CatalogueFilter, limit: int) -> list[str]:
        """Ids of matching files, at most ``limit``."""
        sql, params = candidate_ids_sql(catalogue_filter, limit)
        return [str(row[0]) for row in await self._pool.fetch(sql, *params)]

    async def matching_ids(self, catalogue_filter: CatalogueFilter, file_ids: Sequence[str]) -> set[str]:
        """Which of ``file_ids`` match."""
        sql, params = matching_ids_sql(catalogue_filter, file_ids)
        return {str(row[0]) for row in await self._pool.fetch(sql, *params)}

    async def page(
        self,
        catalogue_filter: CatalogueFilter,
        *,
        descending: bool,
        after: tuple[datetime | None, str] | None,
        limit: int,
    ) -> list[FileRecord]:
        """Matching files in (last_modified, id) order after a keyset cursor."""
        sql, params = page_sql(catalogue_filter, descending=descending, after=after, limit=limit)
        return [_file(row) for row in await self._pool.fetch(sql, *params)]

    async def files_by_ids(self, file_ids: Sequence[str]) -> dict[str, FileRecord]:
        """The rows of these files by id (missing ids are absent)."""
        if not file_ids:
            return {}
        sql, params = files_by_ids_sql(file_ids)
        return {record.id: record for record in map(_file, await self._pool.fetch(sql, *params))}

    async def tags_by_file(self, file_ids: Sequence[str]) -> dict[str, list[TagRecord]]:
        """The tags in effect on these files, by file id."""
        tags: dict[str, list[TagRecord]] = {}
        if not file_ids:
            return tags
        sql, params = tags_by_file_sql(file_ids)
        for row in await self._pool.fetch(sql, *params):
            record = TagRecord(
                file_id=str(row["file_id"]),
                name=row["tag"],
                value=row["value"],
                source=row["source"],
                confidence=row["confidence"],
                model=row["model"],
                definition_id=str(row["definition_id"]) if row["definition_id"] is not None else None,
                definition_version=row["definition_version"],
            )
            tags.setdefault(record.file_id, []).append(record)
        return tags

    async def facets(
        self, catalogue_filter: CatalogueFilter, file_ids: Sequence[str] | None, tag_limit: int
    ) -> FacetRecord:
        """Matched-file count and tag counts over the filter (narrowed to ``file_ids`` if given)."""
        sql, params = facet_sql(catalogue_filter, file_ids, tag_limit)
        rows = await self._pool.fetch(sql, *params)
        total = int(rows[0]["n"])
        counts = [TagCountRecord(row["tag"], row["value"], int(row["n"])) for row in rows[1:]]
        return FacetRecord(matched_files=total, tag_counts=counts)
