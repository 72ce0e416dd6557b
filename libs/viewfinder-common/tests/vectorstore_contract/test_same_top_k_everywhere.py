"""The same vectors give the same top-k through every adapter.

One seeded, clustered data set (two dataset versions, two named fields) is
written into pgvector and Milvus (real servers of the local stack) and into
Elasticsearch, OpenSearch, Lindorm (contract fakes) and Hologres (PostgreSQL
with the Proxima shim); then the same queries — plain, restricted to file ids,
with a score threshold, on either field, exact and ANN — must return the same
file ids in the same order with the same cosine scores everywhere.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import numpy as np
import pytest
from pydantic import SecretStr
from pymilvus import AsyncMilvusClient

from viewfinder_common.settings import DatabaseSettings, MilvusSettings
from viewfinder_common.testing import hologres_shim
from viewfinder_common.testing.fake_search_engine import Dialect, FakeSearchEngine
from viewfinder_common.vectorstore import (
    INDEX_PREFIX,
    IndexSchema,
    VectorField,
    VectorFilter,
    VectorHit,
    VectorQuery,
    VectorRow,
    VectorStore,
)
from viewfinder_common.vectorstore.elasticsearch import ElasticsearchSettings, ElasticsearchVectorStore
from viewfinder_common.vectorstore.hologres import HologresVectorStore
from viewfinder_common.vectorstore.milvus import MilvusVectorStore
from viewfinder_common.vectorstore.opensearch import (
    LindormSettings,
    LindormVectorStore,
    OpenSearchSettings,
    OpenSearchVectorStore,
)
from viewfinder_common.vectorstore.pgvector import PgVectorStore

pytestmark = pytest.mark.stack

VISUAL, SEMANTIC = 24, 8


@contextlib.asynccontextmanager
async def every_adapter(catalogue_db_url: str, index: str) -> AsyncIterator[dict[str, VectorStore]]:
    """One store per adapter, each on its server (real or contract fake)."""
    async with contextlib.AsyncExitStack() as stack:
        stores: dict[str, VectorStore] = {}
        pg_pool = await asyncpg.create_pool(catalogue_db_url, min_size=1, max_size=2)
        assert pg_pool is not None
        stack.push_async_callback(pg_pool.close)
        stores["pgvector"] = PgVectorStore(pg_pool)
        settings = MilvusSettings()
        milvus_admin = AsyncMilvusClient(uri=settings.uri, dedicated=True)

        async def drop_collection() -> None:
            if await milvus_admin.has_collection(INDEX_PREFIX + index):
                await milvus_admin.drop_collection(INDEX_PREFIX + index)
            await milvus_admin.close()

        stack.push_async_callback(drop_collection)
        stores["milvus"] = MilvusVectorStore(settings)
        fakes = {}
        for dialect in Dialect:
            fakes[dialect] = await stack.enter_async_context(FakeSearchEngine(dialect))
        es = fakes[Dialect.ELASTICSEARCH]
        stores["elasticsearch"] = ElasticsearchVectorStore(
            ElasticsearchSettings(uri=es.url, username=es.username, password=SecretStr(es.password))
        )
        opensearch = fakes[Dialect.OPENSEARCH]
        stores["opensearch"] = OpenSearchVectorStore(
            OpenSearchSettings(
                uri=opensearch.url, username=opensearch.username, password=SecretStr(opensearch.password)
            )
        )
        lindorm = fakes[Dialect.LINDORM]
        stores["lindorm"] = LindormVectorStore(
            LindormSettings(uri=lindorm.url, username=lindorm.username, password=SecretStr(lindorm.password))
        )
        holo_pool = await asyncpg.create_pool(await _hologres_database(stack), min_size=1, max_size=2)
        assert holo_pool is not None
        stack.push_async_callback(holo_pool.close)
        async with holo_pool.acquire() as conn:
            await hologres_shim.install(conn)
        stores["hologres"] = HologresVectorStore(holo_pool)
        for store in stores.values():
            stack.push_async_callback(store.close)
        yield stores
        for fake in fakes.values():
            assert fake.rejections == []


async def _hologres_database(stack: contextlib.AsyncExitStack) -> str:
    """A scratch database for the Hologres adapter (its tables would collide with pgvector's)."""
    settings = DatabaseSettings()
    base, _, _ = settings.url.rpartition("/")
    name = f"holo_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(settings.url)
    await admin.execute(f'CREATE DATABASE "{name}"')

    async def drop() -> None:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()

    stack.push_async_callback(drop)
    return f"{base}/{name}"


def dataset(seed: int) -> tuple[list[VectorRow], list[str]]:
    """400 rows in 16 clusters over two versions, fields ``visual`` and ``semantic``."""
    rng = np.random.default_rng(seed)
    centers_v = rng.standard_normal((16, VISUAL))
    centers_s = rng.standard_normal((16, SEMANTIC))
    labels = rng.integers(0, 16, size=400)
    visual = centers_v[labels] + 0.4 * rng.standard_normal((400, VISUAL))
    semantic = centers_s[labels] + 0.4 * rng.standard_normal((400, SEMANTIC))
    versions = [str(uuid.uuid4()), str(uuid.uuid4())]
    rows = [
        VectorRow(
            str(uuid.uuid4()),
            versions[int(i % 5 == 0)],
            f"etag-{i}",
            {"visual": visual[i].tolist(), "semantic": semantic[i].tolist()},
        )
        for i in range(400)
    ]
    return rows, versions


def queries(rows: list[VectorRow], versions: list[str], seed: int) -> list[VectorQuery]:
    rng = np.random.default_rng(seed)
    result = []
    for trial in range(12):
        field, dim = ("visual", VISUAL) if trial % 3 else ("semantic", SEMANTIC)
        anchor = rows[int(rng.integers(0, len(rows)))]
        vector = (np.asarray(anchor.vectors[field]) + 0.2 * rng.standard_normal(dim)).tolist()
        version = versions[trial % 2]
        file_ids = None
        if trial % 4 == 1:
            file_ids = [r.file_id for r in rng.choice(np.array(rows, dtype=object), size=120, replace=False)]
        threshold = 0.6 if trial % 4 == 3 else None
        for exact in (True, False):
            result.append(
                VectorQuery(
                    field,
                    vector,
                    int(rng.choice([1, 5, 10])),
                    VectorFilter(version, file_ids),
                    threshold,
                    exact,
                )
            )
    return result


def describe(hits: list[VectorHit]) -> list[tuple[str, float]]:
    return [(h.file_id, round(h.score, 4)) for h in hits]


async def test_every_adapter_returns_the_same_top_k(catalogue_db_url: str) -> None:
    index = f"same_{uuid.uuid4().hex[:10]}"
    rows, versions = dataset(seed=17)
    schema = IndexSchema(index, [VectorField("visual", VISUAL), VectorField("semantic", SEMANTIC)])
    async with every_adapter(catalogue_db_url, index) as stores:
        for store in stores.values():
            await store.ensure_index(schema)
            await store.upsert(index, rows)
        counts = {kind: await store.count(index, VectorFilter(versions[1])) for kind, store in stores.items()}
        assert set(counts.values()) == {80}, counts
        mismatches: list[Any] = []
        for query in queries(rows, versions, seed=23):
            reference = await stores["pgvector"].search(index, query)
            assert reference, "every query has an answer in this data set"
            for kind, store in stores.items():
                hits = await store.search(index, query)
                if [h.file_id for h in hits] != [h.file_id for h in reference] or any(
                    abs(h.score - r.score) > 1e-4 for h, r in zip(hits, reference, strict=True)
                ):
                    mismatches.append(
                        (
                            kind,
                            query.vector_field,
                            query.top_k,
                            query.exact,
                            describe(hits),
                            describe(reference),
                        )
                    )
        assert mismatches == []
