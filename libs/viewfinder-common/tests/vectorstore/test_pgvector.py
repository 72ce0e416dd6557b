"""What only the pgvector adapter has: query plans, user-created tables, PostgreSQL settings."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import numpy as np
import pytest

from viewfinder_common.vectorstore import (
    IndexSchema,
    SchemaMismatch,
    VectorField,
    VectorFilter,
    VectorQuery,
    VectorRow,
)
from viewfinder_common.vectorstore.pgvector import PgVectorStore, search_sql

pytestmark = pytest.mark.stack


def rows_of(vectors: Any, versions: list[str]) -> list[VectorRow]:
    return [
        VectorRow(str(uuid.uuid4()), versions[i % len(versions)], "etag", {"visual": list(map(float, v))})
        for i, v in enumerate(vectors)
    ]


async def test_exact_plan_never_uses_hnsw_while_ann_plan_does(pool: asyncpg.Pool) -> None:
    store = PgVectorStore(pool)
    await store.ensure_index(IndexSchema("plans", [VectorField("visual", 8)]))
    version = str(uuid.uuid4())
    vectors = np.random.default_rng(1).standard_normal((1000, 8))
    await store.upsert("plans", rows_of(vectors, [version, str(uuid.uuid4())]))
    args = [vectors[0].astype(np.float32).tolist(), version, 10, None]
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("ANALYZE vf_index_plans")
        # Even with sequential scans priced out, exact must not walk the graph.
        await conn.execute("SET LOCAL enable_seqscan = off")
        ann_plan = "\n".join(
            r[0]
            for r in await conn.fetch(
                "EXPLAIN " + search_sql("plans", "visual", exact=False, with_file_ids=False), *args
            )
        )
        exact_plan = "\n".join(
            r[0]
            for r in await conn.fetch(
                "EXPLAIN " + search_sql("plans", "visual", exact=True, with_file_ids=False), *args
            )
        )
    assert "vf_index_plans_visual_hnsw" in ann_plan
    assert "hnsw" not in exact_plan, exact_plan


@pytest.mark.parametrize("iterative_scan", [True, False, None])
async def test_a_filtered_graph_walk_returns_the_full_top_k(
    pool: asyncpg.Pool, iterative_scan: bool | None
) -> None:
    """Half the rows match the filter and the planner walks the HNSW graph with a breadth
    of top_k: a plain walk returns about half of top_k. pgvector 0.8's iterative scan keeps
    walking; without it (pgvector < 0.8) the adapter's exact fallback answers; None detects."""
    store = PgVectorStore(pool, iterative_scan=iterative_scan)
    await store.ensure_index(IndexSchema("walk", [VectorField("visual", 32)]))
    half, other = str(uuid.uuid4()), str(uuid.uuid4())
    vectors = np.random.default_rng(2).standard_normal((4000, 32))
    rows = rows_of(vectors, [half, other])
    await store.upsert("walk", rows)
    async with pool.acquire() as conn:
        await conn.execute("ANALYZE vf_index_walk")
        plan = await conn.fetch(
            "EXPLAIN " + search_sql("walk", "visual", exact=False, with_file_ids=False),
            vectors[0].astype(np.float32).tolist(),
            half,
            50,
            None,
        )
    assert "vf_index_walk_visual_hnsw" in "\n".join(r[0] for r in plan)  # the graph is walked
    members = {r.file_id for r in rows if r.dataset_version_id == half}
    for probe in (0, 1, 2001):
        query = VectorQuery("visual", vectors[probe].tolist(), 50, VectorFilter(half), search_breadth=10)
        hits = await store.search("walk", query)
        assert len(hits) == 50
        assert {h.file_id for h in hits} <= members


async def test_identical_redelivery_does_not_rewrite_rows(pool: asyncpg.Pool) -> None:
    store = PgVectorStore(pool)
    await store.ensure_index(IndexSchema("redelivery", [VectorField("visual", 4)]))
    rows = rows_of(np.eye(4), [str(uuid.uuid4())])
    await store.upsert("redelivery", rows)
    read = "SELECT file_id, xmin::text AS xmin FROM vf_index_redelivery ORDER BY file_id"
    async with pool.acquire() as conn:
        before = await conn.fetch(read)
        await store.upsert("redelivery", rows)
        assert await conn.fetch(read) == before
        changed = [VectorRow(rows[0].file_id, rows[0].dataset_version_id, "etag-2", rows[0].vectors)]
        await store.upsert("redelivery", changed)
        after = {r["file_id"]: r["xmin"] for r in await conn.fetch(read)}
    assert (
        after[uuid.UUID(rows[0].file_id)]
        != {r["file_id"]: r["xmin"] for r in before}[uuid.UUID(rows[0].file_id)]
    )
    assert sum(a != b["xmin"] for a, b in zip(after.values(), before, strict=True)) == 1


async def test_a_user_created_table_is_checked_column_by_column(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            "CREATE TABLE vf_index_theirs (file_id uuid, dataset_version_id text, etag integer,"
            " visual vector(7), caption text NOT NULL)"
        )
    with pytest.raises(SchemaMismatch) as caught:
        await PgVectorStore(pool).ensure_index(IndexSchema("theirs", [VectorField("visual", 8)]))
    message = str(caught.value)
    for problem in (
        "column 'dataset_version_id' is text, expected uuid",
        "column 'etag' is integer, expected text",
        "column 'visual' is vector(7), expected vector(8)",
        "column 'updated_at' is missing",
        "extra column 'caption' is NOT NULL without a default",
        "'file_id' has no primary key or unique index",
    ):
        assert problem in message


async def test_a_user_created_table_that_fits_gets_its_missing_indexes(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            "CREATE TABLE vf_index_mine (file_id uuid PRIMARY KEY, dataset_version_id uuid NOT NULL,"
            " etag text NOT NULL, visual vector(8) NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(),"
            " note text)"
        )
    store = PgVectorStore(pool)
    schema = IndexSchema("mine", [VectorField("visual", 8)])
    await store.ensure_index(schema)
    await store.ensure_index(schema)
    indexes = "SELECT indexdef FROM pg_indexes WHERE tablename = 'vf_index_mine'"
    async with pool.acquire() as conn:
        definitions = [r[0] for r in await conn.fetch(indexes)]
    assert sum("USING hnsw (visual vector_cosine_ops)" in d for d in definitions) == 1
    assert sum("btree (dataset_version_id)" in d for d in definitions) == 1
    await store.upsert("mine", rows_of(np.eye(8), [str(uuid.uuid4())]))
    assert await store.count("mine") == 8


async def test_long_names_get_distinct_index_names(pool: asyncpg.Pool) -> None:
    name = "n" * 48
    fields = [VectorField("f" * 38 + "_visual", 4), VectorField("f" * 38 + "_semantic", 4)]
    await PgVectorStore(pool).ensure_index(IndexSchema(name, fields))
    async with pool.acquire() as conn:
        methods = await conn.fetch(
            "SELECT am.amname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " JOIN pg_am am ON am.oid = c.relam WHERE i.indrelid = to_regclass($1)",
            f"vf_index_{name}",
        )
    assert sorted(r[0] for r in methods) == ["btree", "btree", "hnsw", "hnsw"]


async def test_dimensions_beyond_hnsw_are_refused(pool: asyncpg.Pool) -> None:
    with pytest.raises(SchemaMismatch, match="at most 2000"):
        await PgVectorStore(pool).ensure_index(IndexSchema("wide", [VectorField("visual", 2001)]))
