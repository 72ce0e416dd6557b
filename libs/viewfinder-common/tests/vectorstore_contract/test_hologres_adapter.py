"""The Hologres adapter's own contract: its DDL, unit vectors, Proxima checks and fallback.

Runs on the local PostgreSQL with ``hologres_shim`` (Hologres' Proxima
procedure and functions as argument-checking shims): the adapter's statements
travel over the real PostgreSQL protocol and every Hologres-specific call is
checked by the shim.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import numpy as np
import pytest
from pydantic import SecretStr

from viewfinder_common.errors import FailedPrecondition, Unavailable
from viewfinder_common.settings import DatabaseSettings
from viewfinder_common.testing import hologres_shim
from viewfinder_common.vectorstore import (
    IndexSchema,
    SchemaMismatch,
    VectorField,
    VectorFilter,
    VectorQuery,
    VectorRow,
)
from viewfinder_common.vectorstore import hologres as hologres_module
from viewfinder_common.vectorstore.hologres import HologresSettings, HologresVectorStore

pytestmark = pytest.mark.stack

DIM = 6


@asynccontextmanager
async def database(*, with_shim: bool = True) -> AsyncIterator[asyncpg.Pool]:
    settings = DatabaseSettings()
    base, _, _ = settings.url.rpartition("/")
    name = f"holo_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(settings.url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    pool = await asyncpg.create_pool(f"{base}/{name}", min_size=1, max_size=3)
    assert pool is not None
    try:
        if with_shim:
            async with pool.acquire() as conn:
                await hologres_shim.install(conn)
        yield pool
    finally:
        await pool.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    async with database() as pool:
        yield pool


def rows_of(vectors: Any, version: str) -> list[VectorRow]:
    return [VectorRow(str(uuid.uuid4()), version, "e", {"visual": [float(x) for x in v]}) for v in vectors]


async def properties(pool: asyncpg.Pool, table: str) -> dict[str, str]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT property_key, property_value FROM hologres.hg_table_properties WHERE table_name = $1",
            table,
        )
    return {row["property_key"]: row["property_value"] for row in rows}


async def test_ensure_index_creates_the_documented_table_and_proxima_indexes(pool: asyncpg.Pool) -> None:
    store = HologresVectorStore(pool)
    await store.ensure_index(IndexSchema("docs", [VectorField("visual", DIM), VectorField("semantic", 3)]))
    found = await properties(pool, "vf_index_docs")
    assert found["orientation"] == "column"
    assert found["clustering_key"] == "dataset_version_id"
    proxima = json.loads(found["proxima_vectors"])
    assert set(proxima) == {"visual", "semantic"}
    for entry in proxima.values():
        assert entry == {
            "algorithm": "Graph",
            "distance_method": "SquaredEuclidean",
            "builder_params": {
                "min_flush_proxima_row_count": 1000,
                "min_compaction_proxima_row_count": 1000,
                "max_total_size_to_merge_mb": 2000,
            },
        }
    async with pool.acquire() as conn:
        types = dict(
            await conn.fetch(
                "SELECT column_name, udt_name FROM information_schema.columns WHERE table_name = 'vf_index_docs'"
            )
        )
    assert types == {
        "file_id": "text",
        "dataset_version_id": "text",
        "etag": "text",
        "visual": "_float4",
        "semantic": "_float4",
        "updated_at": "timestamptz",
    }


async def test_vectors_are_stored_at_unit_length_and_scores_are_cosines(pool: asyncpg.Pool) -> None:
    store = HologresVectorStore(pool)
    await store.ensure_index(IndexSchema("unit", [VectorField("visual", DIM)]))
    version = str(uuid.uuid4())
    vectors = np.random.default_rng(1).standard_normal((20, DIM)) * 7.5
    rows = rows_of(vectors, version)
    await store.upsert("unit", rows)
    async with pool.acquire() as conn:
        stored = await conn.fetch("SELECT visual FROM vf_index_unit")
    norms = [float(np.linalg.norm(np.asarray(r["visual"], dtype=np.float64))) for r in stored]
    assert norms == pytest.approx([1.0] * 20, abs=1e-6)
    query = np.random.default_rng(2).standard_normal(DIM)
    for exact in (False, True):
        hits = await store.search(
            "unit", VectorQuery("visual", (query * 3).tolist(), 20, VectorFilter(version), exact=exact)
        )
        expected = {
            r.file_id: float(vectors[i] @ query / (np.linalg.norm(vectors[i]) * np.linalg.norm(query)))
            for i, r in enumerate(rows)
        }
        assert len(hits) == 20
        for hit in hits:
            assert hit.score == pytest.approx(expected[hit.file_id], abs=1e-5)


async def test_a_database_without_proxima_is_a_failed_precondition() -> None:
    async with database(with_shim=False) as bare:
        store = HologresVectorStore(bare)
        with pytest.raises(FailedPrecondition, match="CREATE EXTENSION proxima"):
            await store.ensure_index(IndexSchema("noproxima", [VectorField("visual", DIM)]))


async def test_an_existing_table_with_inner_product_proxima_is_a_schema_mismatch(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "CREATE TABLE vf_index_ip (file_id text PRIMARY KEY, dataset_version_id text NOT NULL, etag text NOT NULL, "
            f"visual float4[] NOT NULL CHECK (array_ndims(visual) = 1 AND array_length(visual, 1) = {DIM}), "
            "updated_at timestamptz NOT NULL)"
        )
        await conn.execute(
            "CALL set_table_property('vf_index_ip', 'proxima_vectors', "
            '\'{"visual": {"algorithm": "Graph", "distance_method": "InnerProduct"}}\')'
        )
    with pytest.raises(SchemaMismatch, match="InnerProduct"):
        await HologresVectorStore(pool).ensure_index(IndexSchema("ip", [VectorField("visual", DIM)]))


async def test_an_existing_table_without_proxima_gets_its_index(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            "CREATE TABLE vf_index_plain (file_id varchar(64) PRIMARY KEY, dataset_version_id text NOT NULL, "
            "etag text NOT NULL, note text, "
            f"visual float4[] NOT NULL CHECK (array_ndims(visual) = 1 AND array_length(visual, 1) = {DIM}), "
            "updated_at timestamptz NOT NULL)"
        )
    store = HologresVectorStore(pool)
    await store.ensure_index(IndexSchema("plain", [VectorField("visual", DIM)]))
    proxima = json.loads((await properties(pool, "vf_index_plain"))["proxima_vectors"])
    assert proxima["visual"]["distance_method"] == "SquaredEuclidean"
    version = str(uuid.uuid4())
    rows = rows_of(np.eye(DIM), version)
    await store.upsert("plain", rows)
    hits = await store.search(
        "plain", VectorQuery("visual", np.eye(DIM)[2].tolist(), 1, VectorFilter(version))
    )
    assert [h.file_id for h in hits] == [rows[2].file_id]


async def test_an_existing_table_with_other_types_names_each_difference(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            "CREATE TABLE vf_index_wrong (file_id uuid, dataset_version_id text NOT NULL, etag text NOT NULL, "
            "visual float8[] NOT NULL, updated_at timestamptz NOT NULL)"
        )
    with pytest.raises(SchemaMismatch) as caught:
        await HologresVectorStore(pool).ensure_index(IndexSchema("wrong", [VectorField("visual", DIM)]))
    message = str(caught.value)
    assert "'file_id' is uuid" in message
    assert "'visual' is ARRAY _float8" in message
    assert "primary key" in message


async def test_a_short_proxima_answer_is_replaced_by_the_exact_one(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Proxima is lossy ("LIMIT 1000 may return 500"); the shim's approximate function is
    exact, so the loss is simulated by cutting the ANN statement's LIMIT in half."""
    original = hologres_module.search_sql
    statements: list[str] = []

    def lossy(index: str, vector_field: str, top_k: int, *, exact: bool, with_file_ids: bool) -> str:
        sql = original(
            index,
            vector_field,
            top_k if exact else max(1, top_k // 2),
            exact=exact,
            with_file_ids=with_file_ids,
        )
        statements.append(sql)
        return sql

    monkeypatch.setattr(hologres_module, "search_sql", lossy)
    store = HologresVectorStore(pool)
    await store.ensure_index(IndexSchema("lossy", [VectorField("visual", DIM)]))
    version = str(uuid.uuid4())
    vectors = np.random.default_rng(3).standard_normal((50, DIM))
    rows = rows_of(vectors, version)
    await store.upsert("lossy", rows)
    target = vectors[11]
    cosines = vectors @ target / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(target))
    hits = await store.search("lossy", VectorQuery("visual", target.tolist(), 10, VectorFilter(version)))
    assert [h.file_id for h in hits] == [rows[i].file_id for i in np.argsort(-cosines)[:10]]
    assert "pm_approx_squared_euclidean_distance" in statements[0]
    assert "pm_squared_euclidean_distance" in statements[1]


async def test_connect_opens_and_closes_its_own_pool() -> None:
    settings = DatabaseSettings()
    async with database() as pool:
        async with pool.acquire() as conn:
            database_name = await conn.fetchval("SELECT current_database()")
        url = settings.url.rpartition("/")[0]
        host_port = url.split("@")[-1]
        host, _, port = host_port.partition(":")
        user = url.split("//")[1].split("@")[0]
        store = await HologresVectorStore.connect(
            HologresSettings(
                host=host,
                port=int(port),
                database=database_name,
                access_key_id=user,
                access_key_secret=SecretStr("unused"),
            )
        )
        await store.ensure_index(IndexSchema("own", [VectorField("visual", DIM)]))
        assert await store.count("own") == 0
        assert "PostgreSQL" in await store.server_version()
        await store.close()


async def test_an_unreachable_hologres_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(Unavailable, match="unreachable"):
        await HologresVectorStore.connect(
            HologresSettings(
                host="127.0.0.1", port=port, access_key_id="ak", access_key_secret=SecretStr("sk-secret")
            )
        )
