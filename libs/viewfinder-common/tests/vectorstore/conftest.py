"""Fixtures for the vector-store contract suite: one store per adapter, on the real servers.

``backend`` is parametrised over pgvector (a fresh catalogue database per
test) and the Milvus Lite server of the local stack; every test that takes it
runs against both. Index names are unique per test, and Milvus collections
are dropped afterwards (the pgvector database is dropped whole).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
import numpy as np
import numpy.typing as npt
import pytest
from pymilvus import AsyncMilvusClient

from viewfinder_common.settings import MilvusSettings
from viewfinder_common.vectorstore import INDEX_PREFIX, VectorStore
from viewfinder_common.vectorstore.milvus import MilvusVectorStore
from viewfinder_common.vectorstore.pgvector import PgVectorStore


@pytest.fixture
async def pool(catalogue_db_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a fresh catalogue database."""
    pool = await asyncpg.create_pool(catalogue_db_url, min_size=1, max_size=3)
    assert pool is not None
    try:
        yield pool
    finally:
        await pool.close()


@dataclass
class Backend:
    """One adapter under test and what the tests need around it."""

    kind: str
    store: VectorStore
    # Another store on the same server (a second replica, or a fresh process).
    new_store: Callable[[], Awaitable[VectorStore]]
    pool: asyncpg.Pool | None = None
    milvus: AsyncMilvusClient | None = None
    created_indexes: list[str] = field(default_factory=list)
    extra_stores: list[VectorStore] = field(default_factory=list)

    async def settle(self, index: str) -> None:
        """What a running system does in the background after a bulk load: PostgreSQL's
        autovacuum ANALYZE (without statistics the planner never picks the HNSW index
        under a version filter); Milvus seals its in-memory segment into an indexed one
        (before that, Milvus Lite answers by brute force)."""
        if self.pool is not None:
            async with self.pool.acquire() as conn:
                await conn.execute(f'ANALYZE "{INDEX_PREFIX}{index}"')
        if self.milvus is not None:
            await self.milvus.flush(INDEX_PREFIX + index)

    async def other_store(self) -> VectorStore:
        """A second store instance, closed after the test."""
        store = await self.new_store()
        self.extra_stores.append(store)
        return store


@pytest.fixture(params=["pgvector", "milvus"])
async def backend(request: pytest.FixtureRequest, catalogue_db_url: str) -> AsyncIterator[Backend]:
    """The store of one adapter (the test runs once per adapter)."""
    if request.param == "pgvector":
        pool = await asyncpg.create_pool(catalogue_db_url, min_size=1, max_size=4)
        assert pool is not None

        async def new_pg_store() -> VectorStore:
            return PgVectorStore(pool, upsert_batch_size=200)

        backend = Backend("pgvector", PgVectorStore(pool, upsert_batch_size=200), new_pg_store, pool=pool)
        try:
            yield backend
        finally:
            for store in [backend.store, *backend.extra_stores]:
                await store.close()
            await pool.close()
        return

    settings = MilvusSettings()

    async def new_milvus_store() -> VectorStore:
        return MilvusVectorStore(settings, upsert_batch_size=200)

    client = AsyncMilvusClient(uri=settings.uri, dedicated=True)
    backend = Backend(
        "milvus", MilvusVectorStore(settings, upsert_batch_size=200), new_milvus_store, milvus=client
    )
    try:
        yield backend
    finally:
        for store in [backend.store, *backend.extra_stores]:
            await store.close()
        for index in backend.created_indexes:
            if await client.has_collection(INDEX_PREFIX + index):
                await client.drop_collection(INDEX_PREFIX + index)
        await client.close()


@pytest.fixture
def index_name(backend: Backend) -> str:
    """A unique index name, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    backend.created_indexes.append(name)
    return name


@dataclass(frozen=True)
class Clustered:
    """A Gaussian mixture: ``vectors[i]`` belongs to cluster ``labels[i]`` around ``centers``."""

    vectors: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    centers: npt.NDArray[np.float32]


def clustered(n: int, dim: int, clusters: int, seed: int, spread: float = 0.35) -> Clustered:
    """Vectors with a neighbourhood structure (i.i.d. random vectors make every ANN index look broken)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    labels = rng.integers(0, clusters, size=n)
    vectors = centers[labels] + spread * rng.standard_normal((n, dim)).astype(np.float32)
    return Clustered(vectors.astype(np.float32), labels, centers)


def brute_force(
    query: npt.ArrayLike, vectors: npt.NDArray[np.float32], candidates: npt.NDArray[np.int64]
) -> dict[int, float]:
    """Cosine similarity (float64) of the query to each candidate row index."""
    q = np.asarray(query, dtype=np.float64)
    rows = vectors[candidates].astype(np.float64)
    scores = rows @ q / (np.linalg.norm(rows, axis=1) * np.linalg.norm(q))
    return dict(zip(candidates.tolist(), scores.tolist(), strict=True))


ClusteredFactory = Callable[..., Clustered]
BruteForce = Callable[[npt.ArrayLike, npt.NDArray[np.float32], npt.NDArray[np.int64]], dict[int, float]]


@pytest.fixture
def make_clustered() -> ClusteredFactory:
    """``clustered(n, dim, clusters, seed, spread=0.35)`` (tests cannot import conftest)."""
    return clustered


@pytest.fixture
def cosine_reference() -> BruteForce:
    """``brute_force(query, vectors, candidate_rows)`` → {row: cosine similarity}."""
    return brute_force
