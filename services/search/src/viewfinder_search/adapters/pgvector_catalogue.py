"""Both planner paths in one statement, for pgvector in the catalogue's database.

With the vectors in a pgvector table next to ``files``, the catalogue filter
can run inside the vector query, so no ids travel between the two:

* **exact pre-filter** (path a): one statement selects the candidates (at
  most ``limit`` + 1) and, if there are at most ``limit``, ranks exactly
  those rows of the index table by cosine distance (``ORDER BY (distance) +
  0, file_id``: no index can serve it, as in the pgvector adapter's exact
  search). Measured at 100k files on the shared 2-core machine, reading
  ~1,000 ids and sending them back cost more than ranking them.
* **filtered ANN** (path b): the HNSW walk checks the filter on each row it
  reaches (a semi-join on ``files``) and, with pgvector 0.8's
  ``hnsw.iterative_scan = relaxed_order``, walks on until ``top_k`` rows
  pass, at the breadth (``hnsw.ef_search``) the planner asks for; the rows
  are materialised and re-sorted (relaxed order may be slightly out of
  order). Measured at 1M files, 10 % tag, 15 queries: 6.7 ms at recall@10
  0.95 (ef 400) against 16 ms at 0.90 for over-fetching neighbours and
  checking them in the catalogue afterwards.
  A walk that comes back short (``hnsw.max_scan_tuples``) returns None and
  the planner's generic path takes over, so results are never silently
  short.

Both use the adapter's table layout (``vf_index_<name>``: ``file_id``,
``dataset_version_id``, one vector column per field); the score is ``1 -
cosine distance`` and the threshold is applied in SQL, as there.
"""

# S608 flags every f-string that looks like SQL. Here the f-strings only join
# constants, validated and quoted identifiers and "$n" placeholders.
# ruff: noqa: S608

from __future__ import annotations

from typing import Any, Final

import asyncpg

from viewfinder_common.vectorstore import VectorHit, validate_field_name
from viewfinder_common.vectorstore.pgvector import (
    MAX_EF_SEARCH,
    fetch_with_hnsw_settings,
    has_iterative_scan,
)
from viewfinder_common.vectorstore.postgres_sql import index_connection, quote_ident, table_name
from viewfinder_search.domain.planner import VectorRequest
from viewfinder_search.domain.sql import CatalogueFilter, SqlParameters

# The store kind (and the registry's connection name) of pgvector.
PGVECTOR: Final = "pgvector"
_CACHE_ENTRIES: Final = 10_000


def _ranked(request: VectorRequest, params: SqlParameters) -> tuple[str, str]:
    """The index table and the cosine distance over its row ``v``."""
    column = quote_ident(validate_field_name(request.vector_field))
    table = quote_ident(table_name(request.index))
    vector = params.add([float(x) for x in request.vector], "real[]")
    return table, f"v.{column} <=> {vector}::vector"


def _hits_sql(nearest: str, params: SqlParameters, request: VectorRequest) -> str:
    """Rows ``(file_id, distance)`` of CTE ``nearest`` above the threshold, best first;
    one row with NULL ``file_id`` when none passes."""
    threshold = params.add(request.score_threshold, "float8")
    return (
        f"SELECT {nearest}.n AS counted, hit.file_id, hit.distance FROM {nearest} "
        "LEFT JOIN LATERAL (SELECT file_id, distance FROM nearest "
        f"WHERE {threshold} IS NULL OR 1 - distance >= {threshold}) AS hit ON true "
        "ORDER BY hit.distance, hit.file_id"
    )


def prefiltered_exact_sql(
    request: VectorRequest, catalogue_filter: CatalogueFilter, limit: int
) -> tuple[str, list[object]]:
    """Path (a): ``counted`` (matching files, at most ``limit`` + 1) on every row, and the
    exact top-k of them when at most ``limit`` match."""
    params = SqlParameters()
    where = catalogue_filter.where(params)
    bound = params.add(limit + 1, "bigint")
    table, distance = _ranked(request, params)
    version = params.add(catalogue_filter.dataset_version_id, "uuid")
    most = params.add(limit, "bigint")
    top_k = params.add(request.top_k, "bigint")
    sql = (
        f"WITH candidates AS MATERIALIZED (SELECT f.id FROM files f WHERE {where} LIMIT {bound}), "
        "counted AS MATERIALIZED (SELECT count(*) AS n FROM candidates), "
        f"nearest AS MATERIALIZED (SELECT v.file_id, {distance} AS distance FROM {table} v "
        f"WHERE v.dataset_version_id = {version} AND v.file_id IN (SELECT id FROM candidates) "
        f"AND (SELECT n FROM counted) <= {most} "
        f"ORDER BY ({distance}) + 0, v.file_id LIMIT {top_k}) "
    ) + _hits_sql("counted", params, request)
    return sql, params.values


def filtered_ann_sql(request: VectorRequest, catalogue_filter: CatalogueFilter) -> tuple[str, list[object]]:
    """Path (b): the top-k rows an HNSW walk finds that pass the filter, with ``counted``
    (rows the walk produced, before the threshold) on every row."""
    params = SqlParameters()
    table, distance = _ranked(request, params)
    version = params.add(catalogue_filter.dataset_version_id, "uuid")
    where = catalogue_filter.where(params)
    top_k = params.add(request.top_k, "bigint")
    sql = (
        f"WITH nearest AS MATERIALIZED (SELECT v.file_id, {distance} AS distance FROM {table} v "
        f"WHERE v.dataset_version_id = {version} "
        f"AND EXISTS (SELECT 1 FROM files f WHERE f.id = v.file_id AND {where}) "
        f"ORDER BY distance LIMIT {top_k}), "
        "fetched AS (SELECT count(*) AS n FROM nearest) "
    ) + _hits_sql("fetched", params, request)
    return sql, params.values


class PgVectorCatalogueSearch:
    """``CatalogueVectorSearch`` over the pool that holds both the catalogue and the pgvector tables.

    It serves the indexes whose rows are in this database: those the registry
    (``embedding_indexes.vector_store_connection``) places in ``pgvector``, and,
    when the configured store (``default_kind``) is pgvector, those it does not
    know — where ``IndexRoutedVectorStore`` sends a search, too.
    """

    def __init__(self, pool: asyncpg.Pool, *, default_kind: str) -> None:
        self._pool = pool
        self._default_kind = default_kind
        # An index never moves to another store.
        self._serves: dict[str, bool] = {}
        self._iterative_scan: bool | None = None

    async def serves(self, index: str) -> bool:
        """True when the index's vectors are pgvector rows in this database."""
        cached = self._serves.get(index)
        if cached is None:
            connection = await self._pool.fetchval(
                "SELECT vector_store_connection FROM embedding_indexes WHERE name = $1", index
            )
            cached = (connection or self._default_kind) == PGVECTOR
            if len(self._serves) >= _CACHE_ENTRIES:
                self._serves.clear()
            self._serves[index] = cached
        return cached

    async def exact_top_k(
        self, request: VectorRequest, catalogue_filter: CatalogueFilter, limit: int
    ) -> list[VectorHit] | None:
        """The exact top-k among the files that pass, or None when more than ``limit`` pass."""
        sql, params = prefiltered_exact_sql(request, catalogue_filter, limit)
        async with index_connection(self._pool, request.index) as conn:
            rows = await conn.fetch(sql, *params)
        if rows[0]["counted"] > limit:
            return None
        return _hits(rows)

    async def filtered_top_k(
        self, request: VectorRequest, catalogue_filter: CatalogueFilter, breadth: int
    ) -> list[VectorHit] | None:
        """The top-k passing files an HNSW walk of ``breadth`` finds, or None when the walk came
        back short (or pgvector is older than 0.8, without iterative scans)."""
        sql, params = filtered_ann_sql(request, catalogue_filter)
        async with index_connection(self._pool, request.index) as conn:
            if self._iterative_scan is None:
                self._iterative_scan = await has_iterative_scan(conn)
            if not self._iterative_scan:
                return None
            ef_search = max(min(breadth, MAX_EF_SEARCH), request.top_k)
            rows = await fetch_with_hnsw_settings(conn, sql, params, ef_search=ef_search, iterative_scan=True)
        if rows[0]["counted"] < request.top_k:
            return None
        return _hits(rows)


def _hits(rows: list[Any]) -> list[VectorHit]:
    return [
        VectorHit(file_id=str(row["file_id"]), score=1.0 - float(row["distance"]))
        for row in rows
        if row["file_id"] is not None
    ]
